"""A project's settings, typed: ProjectSettings read from stored dicts of any age."""

from __future__ import annotations

from dataclasses import asdict, replace

from tl_core.config import ProjectSettings, SplitSettings, TrainConfig, scratch_config
from tl_core.runs.store import Store


def test_a_new_project_has_the_defaults_and_no_model_chosen() -> None:
    settings = ProjectSettings.from_dict({})
    assert settings.model is None and settings.preset is None
    assert settings.train == TrainConfig()
    assert settings.split == SplitSettings() and settings.trainable_groups == 0
    assert settings.advanced() == {
        "epochs": 20,
        "lr": 0.01,
        "batch_size": 32,
        "augment": "none",
        "seed": 0,
    }
    assert ProjectSettings.from_dict(None) == settings


def test_what_the_pages_saved_is_read_back_typed() -> None:
    stored = {
        "model": "resnet50",
        "trainable_groups": 2,
        "val_fraction": 0.3,
        "seed": 7,
        "epochs": 5,
        "lr": 1,  # JSON keeps a whole number as an int
        "batch_size": 16,
        "augment": "light",
        "preset": "classroom",
    }
    settings = ProjectSettings.from_dict(stored)
    assert settings.model == settings.train.model == "resnet50"
    assert settings.preset == "classroom" and settings.trainable_groups == 2
    assert settings.split == SplitSettings(0.3, 7)
    assert settings.advanced() == {
        "epochs": 5,
        "lr": 1.0,
        "batch_size": 16,
        "augment": "light",
        "seed": 7,
    }
    assert isinstance(settings.train.lr, float)


def test_odd_and_unknown_values_fall_back_to_the_defaults() -> None:
    settings = ProjectSettings.from_dict(
        {
            "model": 3,
            "preset": None,
            "trainable_groups": None,
            "epochs": "many",
            "seed": "4",
            "pretrained": 0,
            "augment": 2,
            "cli_pid": 1234,  # the command line's marker: not a setting
        }
    )
    assert settings.model is None and settings.preset is None
    assert settings.train == replace(TrainConfig(), seed=4)


def test_a_command_line_project_keeps_every_run_setting() -> None:
    """The command line saves the whole TrainConfig (a run from scratch too): the next run
    from the Train page starts from all of it."""
    config = scratch_config(TrainConfig(model="resnet50", epochs=3, val_fraction=0.25), 5)
    settings = ProjectSettings.from_dict({"cli_pid": None, **asdict(config)})
    assert settings.train == config
    assert not settings.train.pretrained and settings.train.head_epochs == 0
    assert settings.model == "resnet50"


def test_the_store_reads_a_projects_settings_typed(tmp_path) -> None:
    store = Store(tmp_path / "ws")
    project = store.create_project()
    assert project.typed_settings == ProjectSettings()
    store.update_settings(project.id, model="resnet50", val_fraction=0.4, seed=3)
    again = store.project(project.id)
    assert again.settings == {"model": "resnet50", "val_fraction": 0.4, "seed": 3}  # as stored
    assert again.typed_settings.model == "resnet50"
    assert again.typed_settings.split == SplitSettings(0.4, 3)
