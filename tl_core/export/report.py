"""What an export says: status lines while it works, and :class:`ExportReport` at the end
(what it wrote and how well each format matched the app)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ExportReport", "FormatParity", "Progress", "say"]

Progress = Callable[[str], None]


def say(progress: Progress | None, message: str) -> None:
    """Pass ``message`` to ``progress``, if there is one."""
    if progress is not None:
        progress(message)


_RAN = ("ok", "failed")  # statuses of a format whose answers were compared with the app's


@dataclass
class FormatParity:
    """How one exported format agrees with the app on the run's validation pictures (and,
    for the unfamiliar flag, on the everyday pictures too)."""

    format: str  # "safetensors" | "onnx" | "int8" | "web" | "tflite" | "coreml"
    # "ok": checked, agrees | "failed": checked, disagrees (not offered) | "not checked": no
    # validation pictures | "not built": not written (reason says why) | "checked offline":
    # cannot run here; what could be checked in its files holds (``reason`` says what not)
    status: str
    tolerance: float
    images: int = 0
    top1_agree: int = 0  # same top class as the app (full precision)
    max_prob_diff: float | None = None  # largest |probability - app's probability|
    recorded_top1_agree: int | None = None  # same top class as predictions.json
    recorded_max_prob_diff: float | None = None  # vs. the probabilities in predictions.json
    reason: str = ""  # why it was not checked or failed
    flag_images: int = 0  # validation + everyday pictures whose unfamiliar flag was compared
    flag_agree: int = 0  # flagged unfamiliar (or not) as the app flags them
    max_unfamiliarity_diff: float | None = None  # largest |unfamiliarity - app's|
    title: str = ""  # the table's name of the format
    bytes: int = 0  # the size of its files in the bundle
    images_per_second: float | None = None  # measured in the check, reading pictures included
    correct: int | None = None  # validation pictures it classifies right
    app_correct: int | None = None  # ... and the app (full precision), on the same pictures
    # Pictures whose unfamiliar flag is right (validation ones not flagged, everyday ones
    # flagged), for the format and for the app; None without the unfamiliar check
    flag_right: int | None = None
    app_flag_right: int | None = None
    example: str = ""  # how to use it
    # False for a format judged by its accuracy (the 8-bit model): when it is not offered,
    # the export still succeeded; True: it must give the app's answers
    must_match: bool = True

    @property
    def offered(self) -> bool:
        """In the bundle, and nothing found wrong with it."""
        return self.status in ("ok", "not checked", "checked offline")

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class ExportReport:
    """What an export wrote and how well each format matched the app."""

    out_zip: Path
    bytes: int
    model: str  # catalog key
    timm_name: str
    classes: list[str]
    formats: dict[str, FormatParity]
    reference: str  # what the formats were compared with
    recorded_top1_agree: int | None = None  # predictions.json vs. the full-precision app
    recorded_max_prob_diff: float | None = None
    notes: list[str] = field(default_factory=list)
    unfamiliar_threshold: float | None = None  # the run's; None: it has no unfamiliar check
    foreign_images: int = 0  # everyday pictures whose unfamiliar flag was compared

    app_images_per_second: float | None = None  # the app's own speed in the parity check

    @property
    def parity_ok(self) -> bool:
        """True when at least one format was checked against the app and every format that
        must give the app's answers did."""
        matched = [f for f in self.formats.values() if f.must_match and f.status in _RAN]
        return bool(matched) and all(f.ok for f in matched)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (what the ``export`` command prints)."""
        return {
            "out": str(self.out_zip),
            "bytes": self.bytes,
            "model": self.model,
            "timm_name": self.timm_name,
            "classes": self.classes,
            "parity_ok": self.parity_ok,
            "formats": {
                k: {**asdict(v), "ok": v.ok, "offered": v.offered} for k, v in self.formats.items()
            },
            "reference": self.reference,
            "recorded_top1_agree": self.recorded_top1_agree,
            "recorded_max_prob_diff": self.recorded_max_prob_diff,
            "unfamiliar_threshold": self.unfamiliar_threshold,
            "foreign_images": self.foreign_images,
            "app_images_per_second": self.app_images_per_second,
            "notes": self.notes,
        }
