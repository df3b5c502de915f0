"""The recommendation says when it cannot tell: ties within noise, the fastest suggested."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import make_shapes
from scipy.stats import binomtest
from streamlit.testing.v1 import AppTest

from tl_core.analysis import metrics
from tl_core.analysis.transfer import ModelScore, rank_models, suggested, verdict

ROOT = Path(__file__).resolve().parent.parent
# (images/s, parameters in M) as in the catalog: Lite0 is the fastest and smallest.
SPEED = {"lite0": (60, 4.7), "lite1": (40, 5.4), "lite2": (28, 6.1), "resnet": (12, 25.6)}


def _correct(n: int, wrong: list[int]) -> np.ndarray:
    out = np.ones(n, dtype=bool)
    out[wrong] = False
    return out


def _score(key: str, correct: np.ndarray, logme: float = 0.0) -> ModelScore:
    speed, params = SPEED[key]
    return ModelScore(key, key.title(), correct, logme, params, speed)


def _by_key(ranking):
    return {r.key: r for r in ranking}


def test_the_same_accuracy_on_153_images_is_a_tie_and_the_fastest_is_suggested() -> None:
    # The observed case: 97.4% each (149 of 153), the slower, larger model first by LogME.
    a = _correct(153, [3, 40, 77, 120])
    b = _correct(153, [3, 41, 90, 150])
    ranking = rank_models([_score("lite0", b, logme=-1.0), _score("resnet", a, logme=-0.5)])
    assert [r.key for r in ranking] == ["resnet", "lite0"]  # ranked as before
    assert all(r.tied for r in ranking)
    assert suggested(ranking).key == "lite0"
    text = verdict(ranking)
    assert "as good as each other" in text and "within the noise of 153 images" in text
    assert "The fastest of them is **Lite0**" in text
    for r in ranking:
        assert r.probe_accuracy == pytest.approx(149 / 153)
        assert r.ci_low < r.probe_accuracy < r.ci_high
        assert (r.ci_low, r.ci_high) == pytest.approx(metrics.wilson_interval(149, 153))


@pytest.mark.parametrize(
    ("n", "lead_wrong", "other_wrong"),
    [
        (153, 4, 6),  # two more mistakes on 153 images
        (40, 2, 5),  # 95% against 87.5% on 40 images
        (500, 20, 30),  # 96% against 94% on 500 images
        (20, 0, 3),  # 100% against 85% on 20 images
    ],
)
def test_small_gaps_on_few_images_are_ties(n, lead_wrong, other_wrong) -> None:
    lead = _correct(n, list(range(lead_wrong)))
    other = _correct(n, list(range(n - other_wrong, n)))
    ranking = rank_models([_score("lite2", lead), _score("lite0", other)])
    assert ranking[0].key == "lite2" and ranking[1].tied
    assert suggested(ranking).key == "lite0"


@pytest.mark.parametrize(
    ("n", "lead_wrong", "other_wrong"),
    [(153, 2, 20), (1000, 10, 60), (60, 0, 12), (5000, 100, 180)],
)
def test_a_clear_winner_is_named_best(n, lead_wrong, other_wrong) -> None:
    lead = _correct(n, list(range(lead_wrong)))
    other = _correct(n, list(range(n - other_wrong, n)))
    ranking = rank_models([_score("lite0", other), _score("resnet", lead)])
    by = _by_key(ranking)
    assert not by["lite0"].tied and by["resnet"].tied
    assert suggested(ranking).key == "resnet"  # slower, but clearly better
    text = verdict(ranking)
    assert text.startswith("Best on your images: **Resnet**")
    assert "clearly behind" in text and f"on {n} images" in text


def test_a_three_way_tie_suggests_the_fastest_and_keeps_a_clear_loser_out() -> None:
    n = 200
    scores = [
        _score("resnet", _correct(n, [0, 1, 2, 3, 4])),
        _score("lite2", _correct(n, [5, 6, 7, 8, 9, 10])),
        _score("lite0", _correct(n, [0, 11, 12, 13, 14, 15, 16])),
        _score("lite1", _correct(n, list(range(100, 140)))),  # 40 wrong: clearly worse
    ]
    ranking = rank_models(scores)
    assert [r.key for r in ranking] == ["resnet", "lite2", "lite0", "lite1"]
    assert [r.tied for r in ranking] == [True, True, True, False]
    assert suggested(ranking).key == "lite0"
    assert [r.suggested for r in ranking] == [False, False, True, False]
    text = verdict(ranking)
    assert "Resnet (97.5%), Lite2 (97.0%), Lite0 (96.5%)" in text and "Lite1" not in text


def test_equal_speed_is_decided_by_fewer_parameters() -> None:
    n = 100
    scores = [
        ModelScore("big", "Big", _correct(n, [1]), 0.0, 20.0, 50),
        ModelScore("small", "Small", _correct(n, [2]), 0.0, 5.0, 50),
    ]
    assert suggested(rank_models(scores)).key == "small"


def test_the_tied_group_ends_at_the_first_clearly_worse_model() -> None:
    n = 300
    lead = _correct(n, list(range(3)))
    worse = _correct(n, list(range(100, 130)))  # 30 wrong: clearly worse
    # Lower accuracy but its mistakes are mostly the leader's: alone it would be a tie.
    overlap = _correct(n, [*range(3), *range(200, 240)])
    ranking = rank_models(
        [_score("resnet", lead), _score("lite2", worse), _score("lite0", overlap)]
    )
    assert [r.tied for r in ranking] == [True, False, False]
    assert suggested(ranking).key == "resnet"


def test_one_model_and_no_model() -> None:
    only = rank_models([_score("lite0", _correct(50, [1]))])
    assert only[0].suggested and "only model" in verdict(only)
    assert rank_models([]) == [] and suggested([]) is None


def test_models_scored_on_different_images_are_refused() -> None:
    with pytest.raises(ValueError):
        rank_models([_score("lite0", _correct(10, [])), _score("lite1", _correct(11, []))])


@pytest.mark.parametrize(("only_a", "only_b"), [(0, 0), (4, 4), (0, 5), (1, 9), (3, 17), (30, 55)])
def test_mcnemar_is_the_exact_binomial_test(only_a, only_b) -> None:
    both = 20
    a = np.array([True] * both + [True] * only_a + [False] * only_b)
    b = np.array([True] * both + [False] * only_a + [True] * only_b)
    expected = 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b).pvalue
    assert metrics.mcnemar_p(a, b) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_on_many_images_uses_the_normal_approximation() -> None:
    a = np.array([True] * 600 + [False] * 700)
    b = ~a
    exact = binomtest(600, 1300).pvalue
    assert metrics.mcnemar_p(a, b) == pytest.approx(exact, rel=0.05)


# -------------------------------------------------------------------------------- the page


def test_model_page_says_when_the_leaders_are_tied(tmp_path, monkeypatch) -> None:
    import streamlit as st

    from tl_core.data.dataset import import_folder
    from tl_core.runs.store import Store

    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st.cache_resource.clear()
    st.cache_data.clear()
    manifest = import_folder(make_shapes(tmp_path / "shapes", per_class=10), tmp_path / "data")
    store = Store(tmp_path / "ws")
    project = store.create_project()
    store.set_data_dir(project.id, manifest.root)
    # A model that needs a download: the page skips its head start (no feature pass here).
    store.update_settings(project.id, model="resnet50")
    n = 153
    lite2 = ModelScore(
        "efficientnet_lite2", "EfficientNet-Lite2", _correct(n, [1, 2, 3, 4]), 0, 6.1, 28
    )
    lite0 = ModelScore(
        "efficientnet_lite0", "EfficientNet-Lite0", _correct(n, [5, 6, 7, 8]), 0, 4.7, 60
    )
    ranking = rank_models([lite2, lite0])
    # the comparison as the recommend job left it (the page reads finished jobs)
    from dataclasses import asdict

    from tl_core import service
    from tl_core.analysis import transfer

    job = service.submit_recommend(
        store, store.project(project.id), transfer.offline_models(), submit=False
    ) or jobs_submit(store, project.id)
    store.update_job(
        job.id,
        status="finished",
        result=json.loads(json.dumps({"ranking": [asdict(r) for r in ranking]})),
    )
    at = AppTest.from_file(str(ROOT / "studio.py"), default_timeout=120)
    at.query_params["project"] = project.id
    at.run()
    at.switch_page("app_pages/model.py").run()
    assert not at.exception
    text = "\n".join(m.value for m in at.markdown)
    assert "as good as each other on your images (within the noise of 153 images)" in text
    assert "The fastest of them is **EfficientNet-Lite0**" in text
    table = at.dataframe[-1].value
    low, high = metrics.wilson_interval(149, n)
    assert list(table["95% interval"]) == [f"{low:.1%}–{high:.1%}"] * 2
    assert list(table["as good as the best"]) == ["yes", "yes"]
    at.button(key="use_best").click().run()
    assert Store(tmp_path / "ws").project(project.id).settings["model"] == "efficientnet_lite0"


def jobs_submit(store, project_id: str):
    """A recommend job with the key the Model page looks for, not yet run."""
    from tl_core import service
    from tl_core.analysis import transfer
    from tl_core.runs import jobs

    project = store.project(project_id)
    keys = transfer.offline_models()
    split = service.split_settings(project)
    fraction, seed = split.val_fraction, split.seed
    key = f"recommend|{Path(project.data_dir).resolve()}|{fraction:g}|{seed}|{','.join(keys)}"
    params = {"keys": keys, "val_fraction": fraction, "seed": seed}
    job = store.create_job(
        project_id, params, Path(project.data_dir), status="held", kind="recommend", key=key
    )
    assert jobs.find_job(store, project_id, key) is not None
    return job


@pytest.mark.parametrize("n", [6, 11, 21, 153, 1999])
def test_the_interval_always_holds_the_score(n) -> None:
    for correct in (0, 1, n // 2, n - 1, n):
        low, high = metrics.wilson_interval(correct, n)
        assert 0.0 <= low <= correct / n <= high <= 1.0
    assert metrics.wilson_interval(n, n)[1] == 1.0 and metrics.wilson_interval(0, n)[0] == 0.0
