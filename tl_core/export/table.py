"""The formats table: one row per format the export was asked for, the same on the Export
page, in the model card and in ``export``'s JSON.

Each row says whether the format is offered, its size, its measured speed on the machine that
exported it, how often it gives the app's top class on the validation pictures (with a 95%
interval), its accuracy beside the app's, and how to use it; a format that is not offered
says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tl_core.analysis.metrics import wilson_interval
from tl_core.export.report import ExportReport, FormatParity

__all__ = ["FormatRow", "format_rows", "markdown_table", "rows_json"]


@dataclass(frozen=True)
class FormatRow:
    """One format, as a user chooses among them."""

    key: str
    title: str
    offered: bool
    status: str  # FormatParity.status
    megabytes: float | None  # its files in the bundle; None when not in it
    images_per_second: float | None  # reading the picture included; None: not run here
    pictures: int  # validation pictures compared with the app (0: none)
    same_answer: int  # ... of them with the app's top class
    same_answer_interval: tuple[float, float] | None  # 95% (Wilson) for the share above
    correct: int | None  # validation pictures it classifies right
    app_correct: int | None  # ... and the app, on the same pictures
    note: str  # why it is not offered, or what could not be checked
    example: str  # how to use it (code), offered formats only

    @property
    def agreement(self) -> str:
        """'48 of 48 (93-100%)', or '-' when it was not compared."""
        if not self.pictures:
            return "-"
        text = f"{self.same_answer} of {self.pictures}"
        if self.same_answer_interval is not None:
            lo, hi = self.same_answer_interval
            text += f" ({lo:.0%}-{hi:.0%})"
        return text

    @property
    def accuracy(self) -> str:
        """'45 of 48 right (83%-98%; app: 46)' with the 95% (Wilson) interval, or '-'."""
        if self.correct is None or not self.pictures:
            return "-"
        lo, hi = wilson_interval(self.correct, self.pictures)
        app = f"; app: {self.app_correct}" if self.app_correct is not None else ""
        return f"{self.correct} of {self.pictures} right ({lo:.0%}-{hi:.0%}{app})"


def _row(parity: FormatParity) -> FormatRow:
    n = parity.images if parity.status in ("ok", "failed") else 0
    return FormatRow(
        key=parity.format,
        title=parity.title or parity.format,
        offered=parity.offered,
        status=parity.status,
        megabytes=parity.bytes / 1e6 if parity.offered and parity.bytes else None,
        images_per_second=parity.images_per_second if n else None,
        pictures=n,
        same_answer=parity.top1_agree if n else 0,
        same_answer_interval=wilson_interval(parity.top1_agree, n) if n else None,
        correct=parity.correct if n else None,
        app_correct=parity.app_correct if n else None,
        note=parity.reason,
        example=parity.example if parity.offered else "",
    )


def format_rows(report: ExportReport) -> list[FormatRow]:
    """The table's rows, in the bundle's order; formats that are parts only (predict.py,
    the unfamiliar check's file) have no row."""
    return [_row(p) for p in report.formats.values()]


def rows_json(report: ExportReport) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts (what ``export`` prints under "table")."""
    return [
        {**asdict(r), "agreement": r.agreement, "accuracy": r.accuracy} for r in format_rows(report)
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[FormatRow]) -> list[str]:
    """The rows as a Markdown table (the model card's)."""
    lines = [
        "| format | offered | size | pictures per second here | same top class as the app "
        "(95% interval) | accuracy | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        size = f"{r.megabytes:.1f} MB" if r.megabytes is not None else "-"
        speed = f"{r.images_per_second:.0f}" if r.images_per_second else "-"
        lines.append(
            f"| {_cell(r.title)} | {'yes' if r.offered else 'no'} | {size} | {speed} | "
            f"{r.agreement} | {r.accuracy} | {_cell(r.note)} |"
        )
    return lines
