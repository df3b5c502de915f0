"""Does default training reach a plain logistic regression on frozen features?

For each data set laid out as ``<name>/train/<class>/*`` and ``<name>/test/<class>/*``, runs in
one process:
- ``python -m tl_core train --data train --val test`` with default settings (the app's engine),
- scikit-learn's LogisticRegression (default C, standardised features) on the frozen
  EfficientNet-Lite0 pooled features of the same images, same split,
and prints one JSON object per data set, then a summary JSON line.

    uv run --group test python bench/accuracy_vs_logreg.py [DATASETS_DIR ...]

Default: every data set under ../shared/datasets when present, else the bundled demo set.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import timm.data
import torch
from cli_run import data_sets, train_cli
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tl_core.models.catalog import create_model, get_spec

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _files(folder: Path) -> tuple[list[Path], list[str]]:
    paths, labels = [], []
    for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
        for f in sorted(cls.rglob("*")):
            if f.suffix.lower() in SUFFIXES:
                paths.append(f)
                labels.append(cls.name)
    return paths, labels


@torch.inference_mode()
def _features(model: torch.nn.Module, tf, paths: list[Path]) -> np.ndarray:
    out = []
    for i in range(0, len(paths), 64):
        batch = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[i : i + 64]])
        out.append(model.forward_head(model.forward_features(batch), pre_logits=True))
    return torch.cat(out).float().numpy()


def logreg_accuracy(train: Path, test: Path) -> float:
    model = create_model(get_spec("efficientnet_lite0"), num_classes=2).eval()
    eval_tf = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    tr_paths, tr_labels = _files(train)
    te_paths, te_labels = _files(test)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(_features(model, eval_tf, tr_paths), tr_labels)
    return float(clf.score(_features(model, eval_tf, te_paths), te_labels))


def engine_run(train: Path, test: Path) -> dict:
    return train_cli(train, test)


def main(argv: list[str]) -> None:
    sets = data_sets(argv)
    rows = []
    for ds in sets:
        test = ds / "test" if (ds / "test").is_dir() else ds / "val"
        started = time.monotonic()
        engine = engine_run(ds / "train", test)
        engine_s = time.monotonic() - started
        lr_acc = logreg_accuracy(ds / "train", test)
        row = {
            "dataset": ds.name,
            "engine_val_accuracy": engine["val_accuracy"],
            "logreg_val_accuracy": lr_acc,
            "engine_seconds": round(engine_s, 1),
            "engine_at_least_logreg": engine["val_accuracy"] >= lr_acc,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        json.dumps(
            {
                "datasets": len(rows),
                "all_at_least_logreg": all(r["engine_at_least_logreg"] for r in rows),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
