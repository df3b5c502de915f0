"""What the pages show about a model's structure, without torch: read from a JSON table.

Building a model to count its parameters takes torch, timm and about a second of CPU in the
web server, for every student who opens the Model or Train page. The numbers only change with
timm, so they are measured once per catalog model into ``model_facts.json`` beside this module
(``python -m tl_core.models.facts`` writes it; tests/test_model_facts.py checks it against a
real build). A head is a linear layer, so its size for any number of classes follows from its
size for 1 and 2 classes. Models not in the table are built (:func:`build_model_info`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "FACTS_FILE",
    "ModelInfo",
    "build_model_info",
    "freeze_sentence",
    "measure",
    "model_info",
]

FACTS_FILE = Path(__file__).with_name("model_facts.json")


@dataclass(frozen=True)
class ModelInfo:
    """What the Train page shows about a model's structure, without its weights."""

    groups: tuple[tuple[str, int], ...]  # (name, parameter count), head last
    total_params: int
    data_config: dict[str, object]

    @property
    def n_backbone(self) -> int:
        return len(self.groups) - 1

    def trainable_params(self, trainable_groups: int) -> int:
        chosen = self.groups[self.n_backbone - trainable_groups :]
        return sum(p for _, p in chosen)


def _groups(n: int) -> str:
    return "layer group" if n == 1 else f"{n} layer groups"


def freeze_sentence(trainable_groups: int, n_backbone: int) -> str:
    """One plain sentence on what a freeze choice means."""
    if trainable_groups == 0:
        return (
            "Only the new last layer learns: fastest, and best when your images look like "
            "everyday photos or when you have few of them."
        )
    if trainable_groups >= n_backbone:
        return (
            "The whole network learns: slowest, needs many images, and can forget what it "
            "already knew; best when your images look nothing like everyday photos."
        )
    if trainable_groups <= max(1, n_backbone // 3):
        return (
            f"The last {_groups(trainable_groups)} and the new last layer learn: a good "
            "balance when you have a few hundred images or they differ from everyday photos."
        )
    return (
        f"The last {trainable_groups} of {n_backbone} layer groups learn: more flexible but "
        "slower, and it needs more images to avoid memorising them."
    )


@cache
def _table() -> dict[str, Any]:
    try:
        return json.loads(FACTS_FILE.read_text())
    except (OSError, ValueError):
        return {}


def model_info(key: str, num_classes: int) -> ModelInfo:
    """Layer groups, parameter counts and data config of the catalog model ``key`` with a
    ``num_classes`` head, from the measured table; models not in it are built."""
    row = _table().get(key)
    if row is None:
        return build_model_info(key, num_classes)
    one, two = row["head_params"]  # the head's size with 1 and with 2 classes
    head = one + (num_classes - 1) * (two - one)
    groups = (*((name, int(n)) for name, n in row["groups"]), (row["head_name"], head))
    config = row["data_config"]
    data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return ModelInfo(groups, sum(n for _, n in groups), data_config)


def build_model_info(key: str, num_classes: int) -> ModelInfo:
    """:func:`model_info` measured: builds the architecture with random weights (torch; no
    download, about a second)."""
    from tl_core.models.catalog import DataConfig, create_model, get_spec
    from tl_core.models.freezing import layer_groups

    model = create_model(get_spec(key), num_classes=num_classes, pretrained=False)
    return ModelInfo(
        groups=tuple((g.name, g.params) for g in layer_groups(model)),
        total_params=sum(p.numel() for p in model.parameters()),
        data_config=asdict(DataConfig.of(model)),
    )


def measure(key: str) -> dict[str, Any]:
    """The table's row for ``key``, from two real builds (torch)."""
    one, two = build_model_info(key, 1), build_model_info(key, 2)
    if one.groups[:-1] != two.groups[:-1] or one.data_config != two.data_config:
        raise ValueError(f"{key}: only the head may depend on the number of classes")
    return {
        "groups": [list(g) for g in one.groups[:-1]],
        "head_name": one.groups[-1][0],
        "head_params": [one.groups[-1][1], two.groups[-1][1]],
        "data_config": one.data_config,
    }


def main() -> None:  # pragma: no cover - run by hand after a timm upgrade
    from tl_core.models.catalog import CATALOG

    table = {spec.key: measure(spec.key) for spec in CATALOG}
    FACTS_FILE.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {FACTS_FILE} ({len(table)} models)")


if __name__ == "__main__":  # pragma: no cover
    main()
