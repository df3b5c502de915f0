"""The bundle's model card (README.md): what the model is, what it learned from, how well it
did, how to run it, what it must not be used for, and the parity check's result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tl_core.analysis import metrics
from tl_core.analysis.results import Predictions
from tl_core.data.dataset import MAX_SIDE, DatasetManifest, split_dataset
from tl_core.errors import DataError
from tl_core.export.formats import registry
from tl_core.export.formats.base import BundlePart
from tl_core.export.formats.onnx_model import UNFAMILIARITY_NAME
from tl_core.export.report import ExportReport
from tl_core.export.table import format_rows, markdown_table
from tl_core.models.catalog import DataConfig
from tl_core.models.facts import freeze_sentence
from tl_core.training.engine import TrainConfig
from tl_core.training.familiarity import FamiliarityReport
from tl_core.training.inputs import cache_side

__all__ = ["DataFacts", "data_facts", "model_card", "present_parts", "weaknesses"]


@dataclass
class DataFacts:
    """The pictures per class the run learned from and was validated on."""

    train: dict[str, int] | None  # images per class; None when the data set is not at hand
    val: dict[str, int]
    explicit_val: bool | None
    note: str = ""


def data_facts(
    classes: list[str],
    preds: Predictions | None,
    data_root: Path | None,
    cfg: TrainConfig,
    corrections: dict[str, Any] | None,
) -> DataFacts:
    """Validation counts from ``preds``; training counts from the data set at ``data_root``
    split as the run split it (with its label review, ``corrections``), when it is at hand."""
    val = dict.fromkeys(classes, 0)
    if preds is not None:
        for y in preds.labels:
            val[classes[y]] += 1
    if data_root is None:
        return DataFacts(None, val, None)
    try:
        manifest = DatasetManifest.load(data_root)
        split = split_dataset(manifest, cfg.val_fraction, cfg.seed)
    except DataError:
        return DataFacts(None, val, None)
    from tl_core.data import review

    fixes = review.Corrections.from_dict(corrections)
    if fixes:
        split = review.apply(split, fixes, manifest.classes)
    train = dict.fromkeys(classes, 0)
    for item in split.train:
        if item.label in train:
            train[item.label] += 1
    note = ""
    if preds is not None and sorted(i.file for i in split.val) != sorted(preds.files):
        note = "The training counts are from the data set as it is now; it may have changed."
    return DataFacts(train, val, manifest.has_explicit_val, note)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _fmt_diff(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def model_card(
    *,
    title: str,
    spec_title: str,
    timm_name: str,
    cfg: TrainConfig,
    data_config: DataConfig,
    classes: list[str],
    data: DataFacts,
    n_backbone: int,
    best_epoch: int | None,
    val_accuracy: float | None,
    preds: Predictions | None,
    report: ExportReport,
    familiar: FamiliarityReport | None = None,
    extra_sections: dict[str, str] | None = None,
) -> str:
    """The bundle's README.md: what the model is, how well it did and how to run it.

    ``familiar``: the run's measured unfamiliar check (its threshold is
    ``report.unfamiliar_threshold``; None there: the run has no check). ``extra_sections``
    (heading -> Markdown body) are added after "How well it did": the place for more
    evaluation (accuracy intervals, per-class scores, calibration).
    """
    has_check = report.unfamiliar_threshold is not None
    parts = present_parts(report)
    lines = [
        f"# {title}",
        "",
        *_card_use(classes, has_check, parts),
        "## The data",
        "",
        *_card_data(cfg, classes, data),
    ]
    lines += _card_model(spec_title, timm_name, cfg, data_config, n_backbone, best_epoch)
    lines += ["## How well it did", "", _card_accuracy(val_accuracy, preds), ""]
    # Extra sections (e.g. accuracy intervals, per-class scores, calibration) go here.
    for heading, body in (extra_sections or {}).items():
        lines += [f"## {heading}", "", body.strip(), ""]
    lines += ["## Known weaknesses", ""]
    if preds is not None and preds.labels:
        lines += weaknesses(preds)
    else:
        lines.append("Not measured: the run has no validation predictions.")
    lines += _card_unfamiliar(report, familiar)
    lines += _card_limits(has_check)
    lines += _card_formats(report)
    lines += _card_parity(report)
    files = [line for part in parts for line in part.files(has_check)]
    lines += ["", "## Files", "", *files, ""]
    return "\n".join(lines)


def present_parts(report: ExportReport) -> list[BundlePart]:
    """The parts in the bundle: those written whatever is chosen, and the formats offered."""
    out = []
    for part in registry.PARTS:
        if part.option is None:
            out.append(part)
            continue
        parity = report.formats.get(part.name)
        if parity is not None and parity.offered:
            out.append(part)
    return out


def _card_formats(report: ExportReport) -> list[str]:
    """The model card's "Formats": the table, then how to use each offered format."""
    rows = format_rows(report)
    lines = [
        "",
        "## Formats",
        "",
        "Measured at export on the validation pictures, on the machine that exported it "
        "(pictures per second include reading each picture). A format whose check failed is "
        "not in this folder; its note says why.",
        "",
        *markdown_table(rows),
    ]
    for row in rows:
        if row.offered and row.example:
            lines += ["", f"**{row.title}**", "", "```", row.example, "```"]
    return lines


def _card_use(
    classes: list[str], has_check: bool = False, parts: list[BundlePart] | None = None
) -> list[str]:
    """The model card's opening and "How to use it": predict.py, then each format."""
    parts = list(registry.PARTS) if parts is None else parts
    if has_check:
        rows = (
            "`predict.py` writes one row per picture: file, prediction (the class, or "
            "`unfamiliar` for a picture that looks like none of them), the nearest class's "
            "probability, problem (a file it could not read), `nearest_class` (the class it "
            'is closest to, always filled) and `unfamiliarity` (see "Pictures of none of its '
            'classes"). '
        )
    else:
        rows = (
            "`predict.py` writes one row per picture: file, predicted class, its probability, "
            "problem (a file it could not read), the same class again as `nearest_class`, and "
            "an empty `unfamiliarity` (this model has no unfamiliar check). "
        )
    return [
        f"An image classifier trained with Transfer Learning Studio. It sorts a picture into "
        f"one of {len(classes)} classes: {', '.join(classes)}.",
        "",
        "## How to use it",
        "",
        "```",
        "python -m pip install -r requirements.txt",
        "python predict.py FOLDER_OF_PICTURES --out predictions.csv",
        "```",
        "",
        rows + "`--format onnx` runs `model.onnx` with onnxruntime, numpy and Pillow only "
        "(no PyTorch).",
        "",
        *[line for part in parts for line in part.usage(has_check)],
        f"- The app first turns each picture upright (EXIF), makes it RGB (transparent parts "
        f"white) and shrinks it to at most {MAX_SIDE} pixels a side; `predict.py` does the "
        "same (`open_image`). Feed other code's pictures through the same steps to get the "
        "app's exact answers.",
        "",
    ]


def _card_data(cfg: TrainConfig, classes: list[str], data: DataFacts) -> list[str]:
    """The model card's "The data": pictures per class and how validation was held back."""
    lines: list[str] = []
    if data.train is not None:
        lines += ["| class | training pictures | validation pictures |", "| --- | ---: | ---: |"]
        lines += [f"| {c} | {data.train[c]} | {data.val[c]} |" for c in classes]
        lines += [
            f"| **all** | {sum(data.train.values())} | {sum(data.val.values())} |",
            "",
        ]
    else:
        lines += ["| class | validation pictures |", "| --- | ---: |"]
        lines += [f"| {c} | {data.val[c]} |" for c in classes]
        lines += ["", "(The training pictures were not at hand when this was exported.)", ""]
    if data.explicit_val:
        lines.append(
            "The validation pictures came from a separate folder and were never trained on."
        )
    else:
        lines.append(
            f"{_pct(cfg.val_fraction)} of each class was held back at random (seed {cfg.seed}) "
            "for validation and never trained on."
        )
    if data.note:
        lines.append(data.note)
    return lines


def _card_model(
    spec_title: str,
    timm_name: str,
    cfg: TrainConfig,
    data_config: DataConfig,
    n_backbone: int,
    best_epoch: int | None,
) -> list[str]:
    """The model card's "The model" and "Settings"."""
    return [
        "",
        "## The model",
        "",
        f"- Base: {spec_title} (timm `{timm_name}`), "
        + ("started from ImageNet weights." if cfg.pretrained else "started from random weights."),
        f"- Layers that learned: {cfg.trainable_groups} of {n_backbone} layer groups plus the "
        f"new last layer. {freeze_sentence(cfg.trainable_groups, n_backbone)}",
        f"- Input: {data_config.input_size[-1]}x{data_config.input_size[-2]} pixels, cut from "
        f"the picture's centre after resizing its shorter side to "
        f"{cache_side(data_config)} pixels ({data_config.interpolation}); "
        f"mean {list(data_config.mean)}, std {list(data_config.std)}.",
        "",
        "## Settings",
        "",
        f"- Epochs: {cfg.epochs} (the best was epoch {best_epoch}); head-only epochs first: "
        f"{cfg.head_epochs}",
        f"- Learning rate: {cfg.lr:g}, batch size: {cfg.batch_size}, weight decay: "
        f"{cfg.weight_decay:g}",
        f"- Augmentation: {cfg.augment}",
        f"- Seed: {cfg.seed}",
        "",
    ]


def _card_accuracy(val_accuracy: float | None, preds: Predictions | None) -> str:
    """The model card's validation accuracy line."""
    if preds is not None and preds.labels:
        return (
            f"Validation accuracy: **{_pct(preds.accuracy)}** ({preds.correct} of "
            f"{len(preds.labels)} pictures right)."
        )
    if val_accuracy is not None:
        return f"Validation accuracy: **{_pct(val_accuracy)}**."
    return "This run has no validation score."


def weaknesses(preds: Predictions) -> list[str]:
    """The worst classes by recall and the most common mix-up, as Markdown lines."""
    classes, n = preds.classes, len(preds.labels)
    matrix = metrics.confusion_matrix(preds.labels, preds.preds, len(classes))
    worst = metrics.weakest_classes(
        metrics.per_class_report(preds.labels, preds.preds, len(classes))
    )
    lines: list[str] = []
    if not worst:
        lines.append(
            "It got every validation picture right. It will still make mistakes on new "
            "pictures, most likely on ones unlike those it learned from."
        )
    else:
        lines += ["The classes it most often misses (on the validation pictures):", ""]
        lines += [
            f"- {classes[c.index]}: found {c.tp} of {c.support} ({_pct(c.recall)})" for c in worst
        ]
        off = matrix - np.diag(np.diag(matrix))
        true, pred = np.unravel_index(int(off.argmax()), off.shape)
        lines += [
            "",
            f"The most common mix-up: {classes[true]} taken for {classes[pred]} "
            f"({off[true, pred]} times).",
        ]
    summary = metrics.accuracy_summary(preds.labels, preds.preds)
    if metrics.is_small_sample(summary.total, summary.ci_low, summary.ci_high):
        lines += ["", f"These numbers come from only {n} validation pictures: treat them as rough."]
    return lines


def _share(part: float, whole: int) -> str:
    """'64 of 70 (91.4%)' from a share of ``whole``."""
    return f"{round(part * whole)} of {whole} ({_pct(part)})"


def _card_unfamiliar(report: ExportReport, familiar: FamiliarityReport | None) -> list[str]:
    """The model card's "Pictures of none of its classes": the unfamiliar check, measured."""
    lines = ["", "## Pictures of none of its classes", ""]
    threshold = report.unfamiliar_threshold
    if threshold is None:
        return [
            *lines,
            "This model has no unfamiliar check: it was trained before the check existed, so "
            "it names one of its classes for any picture, even one of none of them. Train it "
            "again to get one.",
        ]
    if familiar is not None:
        lines += [familiar.sentence(), ""]
        if familiar.foreign_flagged is not None and familiar.foreign_images:
            lines.append(
                "- Everyday pictures of none of these classes (photos shipped with the app) "
                f"flagged unfamiliar: {_share(familiar.foreign_flagged, familiar.foreign_images)}."
            )
        if familiar.left_out_flagged is not None:
            auroc = familiar.left_out_auroc
            lines.append(
                "- Each class left out of the check in turn, as if never taught: "
                f"{_pct(familiar.left_out_flagged)} of its pictures flagged on average"
                + ("." if auroc is None else f" (mean AUROC {auroc:.2f}).")
            )
        lines.append(
            "- Its own validation pictures flagged by mistake: "
            f"{_share(familiar.val_flagged, familiar.val_images)}."
        )
        accepts = f"; it accepts {_pct(familiar.accept)} of the validation pictures"
    else:
        lines += ["(The check's measurements were not found with the run.)", ""]
        accepts = ""
    lines += [
        f"- Threshold: {threshold:.4f} (a picture whose unfamiliarity is above it is flagged"
        f"{accepts}).",
        "",
        "A picture's unfamiliarity is the cosine distance from its features (what the last "
        "layer sees) to those of the nearest training picture kept with the model, in units "
        "of that picture's class's own spread (how far its training pictures lie from each "
        "other): 0 for a copy of a training picture, larger the less it looks like any of "
        "them.",
        "",
        "`predict.py` answers `unfamiliar` in the `prediction` column for a picture above the "
        "threshold, with the class it is closest to in `nearest_class` and the score in "
        "`unfamiliarity`. `--unfamiliar-threshold X` moves the threshold (higher flags fewer "
        "pictures); `--no-unfamiliar` always names the nearest class. The ONNX model gives the "
        f"score as its output `{UNFAMILIARITY_NAME}` and the threshold as its metadata "
        "`unfamiliar_threshold`; `familiarity.npz` holds the training pictures' features for "
        "the timm model.",
    ]
    return lines


def _card_limits(has_check: bool) -> list[str]:
    """The model card's "What it must not be used for"."""
    return [
        "",
        "## What it must not be used for",
        "",
        "- Pictures of anything but these classes: it flags many of them `unfamiliar` (see "
        "above) but not all, and answers with one of its classes for the rest."
        if has_check
        else "- Pictures of anything but these classes: it always answers with one of them, "
        "even for a picture of something else.",
        "- Pictures unlike the ones it learned from (other cameras, lighting, backgrounds, "
        "sizes): check it on such pictures first.",
        "- Decisions about people's health, safety, money, rights or jobs: it was not built "
        "or tested for that.",
    ]


def _card_parity(report: ExportReport) -> list[str]:
    """The model card's "Same answers elsewhere": each format's parity check and the notes."""
    lines = [
        "",
        "## Same answers elsewhere (parity check)",
        "",
        f"At export, each format below was loaded from the files in this folder and run on "
        f"the validation pictures, then compared with {report.reference}."
        + (
            f" The unfamiliar flag was compared on the validation pictures and on "
            f"{report.foreign_images} everyday pictures of none of the classes."
            if report.foreign_images
            else ""
        ),
        "",
        "| format | pictures | same top class | largest probability difference | allowed | "
        "same unfamiliar flag | largest unfamiliarity difference | result |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for f in report.formats.values():
        result = f.status + (f" ({f.reason})" if f.reason else "")
        flag = f"{f.flag_agree} of {f.flag_images}" if f.flag_images else "-"
        lines.append(
            f"| {f.format} | {f.images} | {f.top1_agree} | {_fmt_diff(f.max_prob_diff)} | "
            f"{f.tolerance:g} | {flag} | {_fmt_diff(f.max_unfamiliarity_diff)} | {result} |"
        )
    lines += [""]
    lines += [f"- {note}" for note in report.notes]
    return lines
