"""Does the freeze advice pick a depth as good as the best of a measured sweep?

For each data set laid out as ``<name>/train/<class>/*`` and ``<name>/test/<class>/*``:
computes the advice the Train page shows (data size, head start, domain gauge, for
EfficientNet-Lite0), then trains the sweep's short runs (``python -m tl_core train
--trainable-groups K --epochs 4``, one fresh process each) and prints each depth's validation
accuracy, the best depth, and whether the advice is within the validation set's noise
(Wilson 95% half-width) of the best. One JSON object per data set, then a summary line.

    uv run python bench/freeze_advice.py [DATASETS_DIR ...]

Default: every data set under ../shared/datasets when present, else the bundled demo set.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from cli_run import data_sets, train_cli

from tl_core.analysis import transfer
from tl_core.analysis.advice import SWEEP_EPOCHS, freeze_advice
from tl_core.analysis.metrics import wilson_interval
from tl_core.cli import _import
from tl_core.data.dataset import split_dataset
from tl_core.models.facts import model_info

MODEL = "efficientnet_lite0"


def measure(root: Path) -> dict[str, object]:
    train, test = root / "train", root / "test"
    with tempfile.TemporaryDirectory() as tmp:
        manifest = _import(train, test, Path(tmp) / "data")
        feats = transfer.frozen_features(manifest, split_dataset(manifest), MODEL)
        hs = transfer.head_start(feats)
        gauge = transfer.domain_gauge(feats)
    n_backbone = model_info(MODEL, len(manifest.classes)).n_backbone
    advice = freeze_advice(
        feats.n_train, len(manifest.classes), n_backbone, hs.ncm_accuracy, hs.chance, gauge.level
    )
    runs = {}
    for depth in advice.sweep:
        started = time.monotonic()
        out = train_cli(
            train, test, "--trainable-groups", str(depth), "--epochs", str(SWEEP_EPOCHS)
        )
        runs[depth] = {"accuracy": out["val_accuracy"], "seconds": time.monotonic() - started}
    n_val = len(feats.val_y)
    best = max(runs, key=lambda d: (runs[d]["accuracy"], -d))
    low, high = wilson_interval(round(runs[best]["accuracy"] * n_val), n_val)
    noise = (high - low) / 2
    gap = runs[best]["accuracy"] - runs[advice.trainable_groups]["accuracy"]
    return {
        "data": root.name,
        "train_images": feats.n_train,
        "val_images": n_val,
        "head_start": round(hs.ncm_accuracy, 3),
        "domain": gauge.level,
        "advice": advice.trainable_groups,
        "reason": advice.reason,
        "sweep": {str(d): {k: round(v, 3) for k, v in r.items()} for d, r in runs.items()},
        "best": best,
        "advice_gap": round(gap, 3),
        "noise": round(noise, 3),
        "advice_within_noise": gap <= noise,
    }


def main(argv: list[str]) -> None:
    sets = data_sets(argv)
    rows = []
    for root in sets:
        row = measure(root)
        rows.append(row)
        print(json.dumps(row), flush=True)
    hits = sum(bool(r["advice_within_noise"]) for r in rows)
    print(json.dumps({"data_sets": len(rows), "advice_within_noise_of_best": hits}))


if __name__ == "__main__":
    main(sys.argv[1:])
