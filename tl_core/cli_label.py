"""The ``label`` commands: from a folder with a few labelled pictures per class and an
``unlabelled/`` folder to a labelled folder, without the app.

``suggest`` writes a CSV with a suggested class and a confidence for every unlabelled
picture (a classifier on the pretrained network's frozen features, :mod:`tl_core.labeling.
assist`); ``issues`` lists the labelled pictures whose label the features doubt
(:mod:`tl_core.labeling.issues`); ``apply`` files the pictures a CSV names into their class
folders, after checking every row. The folder given is only read, except by ``apply``.
Torch is loaded only when features are computed.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tl_core.data import paths
from tl_core.data.layout import (
    SPLIT_FOLDER_NAMES,
    UNLABELLED_FOLDER_NAMES,
    class_dir,
    clean_name,
    in_unlabelled_folder,
    label_key,
    nfc,
)
from tl_core.errors import DataError, StudioError
from tl_core.models.catalog import get_spec

if TYPE_CHECKING:
    import numpy as np

    from tl_core.data.records import DatasetManifest, ImageItem
    from tl_core.labeling.assist import Estimate

__all__ = ["CSV_COLUMNS", "Bars", "apply", "check_out_file", "issues", "run", "suggest"]

# The columns ``suggest`` writes; ``apply`` reads ``file`` and ``label`` or ``suggested_class``.
CSV_COLUMNS = ("file", "suggested_class", "confidence", "confident")
MIN_TO_CHECK = 2  # labelled pictures a class needs before its labels can be checked


class Bars(Protocol):
    """The progress bars of the command line (``tl_core.cli``)."""

    def progress(self, key: str) -> Callable[[int, int], None]: ...

    def close(self) -> None: ...


def run(args: argparse.Namespace, bars: Bars) -> dict[str, object]:
    """The ``label`` command named by ``args.label_command``; its JSON summary."""
    if args.label_command == "suggest":
        return suggest(args, bars)
    if args.label_command == "issues":
        return issues(args, bars)
    return apply(args)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _imported(data: Path, dest: Path, bars: Bars, model: str) -> DatasetManifest:
    """``data`` imported into ``dest`` (decoded once, with ``model``'s squares made on the
    way); its warnings said."""
    from tl_core.data.dataset import import_folder

    try:
        squares = [get_spec(model).square]
        manifest = import_folder(data, dest, bars.progress("Importing your images"), squares)
    finally:
        bars.close()
    for warning in manifest.warnings:
        _say(f"warning: {warning.text}")
    return manifest


def _features(
    manifest: DatasetManifest, model: str, bars: Bars
) -> tuple[list[ImageItem], np.ndarray]:
    """Pooled features of every picture, sorted by file."""
    from tl_core.analysis.transfer import picture_features

    preparing = bars.progress("Preparing your pictures")
    running = bars.progress(f"Running them through {get_spec(model).title}")

    def progress(done: int, total: int) -> None:  # decoding all, then the network's pass
        half = total // 2
        if done <= half and done < total:
            preparing(done, half)
        else:
            running(done - half, total - half)

    try:
        return picture_features(manifest, model, progress=progress)
    finally:
        bars.close()


def _names(classes: list[str]) -> str:
    quoted = [f"'{c}'" for c in classes]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _per_class(counts: Counter[str]) -> str:
    return ", ".join(f"{c} {n}" for c, n in sorted(counts.items()))


# ---------------------------------------------------------------------------------- suggest


def check_out_file(out: Path, force: bool) -> None:
    """``--out`` of ``suggest``: a file that can be written (an existing one only with
    ``force``); raises DataError before any work."""
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise DataError(f"'{out}' is a folder. Give --out a file name, such as labels.csv.")
    if not parent.is_dir():
        raise DataError(
            f"The folder '{parent}' does not exist. Create it first or choose another --out."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"The folder '{parent}' cannot be written to. Choose another --out.")
    if out.exists() and not force:
        raise DataError(
            f"The file '{out}' already exists. Choose another --out, or add --force to replace it."
        )
    if out.exists() and not os.access(out, os.W_OK):
        raise DataError(f"The file '{out}' cannot be written to. Choose another --out.")


def _has_unlabelled_folder(data: Path) -> bool:
    """Whether ``data`` (or a folder in it, such as train/) has an unlabelled/ folder."""
    try:
        for folder in (data, *(p for p in data.iterdir() if p.is_dir())):
            for entry in folder.iterdir():
                if entry.is_dir() and entry.name.casefold() in UNLABELLED_FOLDER_NAMES:
                    return True
    except OSError:  # the import says what cannot be read
        return True
    return False


def _no_unlabelled(data: Path) -> DataError:
    return DataError(
        f"'{data}' has no unlabelled/ folder with pictures in it. Put the pictures to label "
        "in a folder named unlabelled beside the class folders."
    )


def _check_labelled(manifest: DatasetManifest, data: Path, per_class: int) -> Counter[str]:
    """Labelled pictures per class; DataError without unlabelled pictures, with fewer than
    two classes or a class with fewer than ``per_class`` pictures."""
    if not manifest.unlabelled:
        raise _no_unlabelled(data)
    counts = Counter(i.label for i in manifest.items)
    if len(counts) < 2:
        have = f" (only '{next(iter(counts))}')" if counts else ""
        raise DataError(
            f"'{data}' needs labelled pictures of at least two classes{have}: beside "
            f"unlabelled/, put at least {per_class} pictures of each class in a folder named "
            "after the class."
        )
    thin = sorted(c for c, n in counts.items() if n < per_class)
    if thin:
        few = ", ".join(f"'{c}' has {counts[c]}" for c in thin)
        raise DataError(
            f"Every class needs at least {per_class} labelled pictures before suggestions can "
            f"be made: {few}. Add pictures to {'that class' if len(thin) == 1 else 'them'}."
        )
    return counts


def _left_out(manifest: DatasetManifest) -> int:
    """Pictures of an unlabelled folder the import could not use or found twice."""
    sources = [s.source for s in manifest.skipped] + [a for a, _ in manifest.duplicates]
    return sum(1 for s in sources if in_unlabelled_folder(tuple(s.split("/"))[:-1]))


def _write_csv(out: Path, rows: list[dict[str, str]]) -> None:
    """Write the rows next to ``out`` first, then put them in its place."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StudioError(
            f"The CSV could not be written to '{out}': {exc.strerror or exc}."
        ) from None


def suggest(args: argparse.Namespace, bars: Bars) -> dict[str, object]:
    """Suggest a class for every unlabelled picture of ``--data``; write them to ``--out``."""
    get_spec(args.model)  # an unknown name fails before any work
    paths.check_data_folder(args.data)
    check_out_file(args.out, args.force)
    if not _has_unlabelled_folder(args.data):
        raise _no_unlabelled(args.data)
    import numpy as np

    from tl_core.labeling import assist

    with tempfile.TemporaryDirectory(prefix="tl-label-") as tmp:
        manifest = _imported(args.data, Path(tmp) / "data", bars, args.model)
        counts = _check_labelled(manifest, args.data, assist.MIN_PER_CLASS)
        items, vectors = _features(manifest, args.model, bars)
    classes = manifest.classes
    index = {c: k for k, c in enumerate(classes)}
    labels = np.array([index[i.label] if i.label else assist.UNLABELLED for i in items])
    space = assist.reduce(vectors)
    found = assist.suggest(space, labels, len(classes))
    estimate = assist.cv_accuracy(space, labels)
    at = found.confident_at
    rows = sorted(
        (
            (float(found.confidence[k]), item.source, classes[int(found.label[k])])
            for k, item in enumerate(items)
            if labels[k] == assist.UNLABELLED
        ),
        key=lambda r: (-r[0], r[1]),
    )
    _write_csv(
        args.out,
        [
            {
                "file": source,
                "suggested_class": label,
                "confidence": f"{conf:.3f}",
                "confident": "yes" if at is not None and conf >= at else "no",
            }
            for conf, source, label in rows
        ],
    )
    summary = {
        "labelled": dict(sorted(counts.items())),
        "unlabelled": len(rows),
        "left_out": _left_out(manifest),
        "suggested": dict(sorted(Counter(r[2] for r in rows).items())),
        "confident": sum(1 for r in rows if at is not None and r[0] >= at),
        "confident_at": None if at is None else round(float(at), 3),
        **_estimate_json(estimate),
        "model": args.model,
        "csv": str(args.out.resolve()),
    }
    _say_suggested(summary)
    return summary


def _estimate_json(estimate: Estimate | None) -> dict[str, object]:
    """The estimated accuracy with its 95% interval (None: too few labels to say)."""
    if estimate is None:
        return {"estimated_accuracy": None, "ci_low": None, "ci_high": None}
    return {
        "estimated_accuracy": round(float(estimate.accuracy), 4),
        "ci_low": round(float(estimate.low), 4),
        "ci_high": round(float(estimate.high), 4),
    }


def _say_suggested(summary: dict) -> None:
    """The summary in words, on standard error."""
    labelled = Counter(summary["labelled"])
    _say(
        f"Labelled: {_per_class(labelled)} ({sum(labelled.values())} pictures); "
        f"unlabelled: {summary['unlabelled']}."
    )
    if summary["left_out"]:
        _say(f"{summary['left_out']} unlabelled files were left out (copies or unreadable).")
    at = summary["confident_at"]
    _say(
        f"Suggested: {_per_class(Counter(summary['suggested']))}; "
        + (
            f"{summary['confident']} are confident (confidence {at:.0%} or more)."
            if at is not None
            else "too few labels yet to say which suggestions are safe."
        )
    )
    if summary["estimated_accuracy"] is not None:
        _say(
            f"A model trained on these labels would be right about "
            f"{summary['estimated_accuracy']:.0%} of the time (95% interval "
            f"{summary['ci_low']:.0%}-{summary['ci_high']:.0%})."
        )
    _say(f"Wrote {summary['csv']}: check the suggestions, then run 'label apply'.")


# ----------------------------------------------------------------------------------- issues


def issues(args: argparse.Namespace, bars: Bars) -> dict[str, object]:
    """Labelled pictures of ``--data`` whose label the frozen features doubt, worst first."""
    get_spec(args.model)
    paths.check_data_folder(args.data)
    if args.top < 1:
        raise DataError("--top must be 1 or more.")
    import numpy as np

    from tl_core.labeling import assist
    from tl_core.labeling import issues as label_issues

    with tempfile.TemporaryDirectory(prefix="tl-label-") as tmp:
        folder, thin = _checkable(args.data, Path(tmp))
        manifest = _imported(folder, Path(tmp) / "data", bars, args.model)
        counts = Counter(i.label for i in manifest.items)
        checked = [c for c in manifest.classes if counts[c] >= MIN_TO_CHECK]
        unchecked = thin + [c for c in manifest.classes if counts[c] < MIN_TO_CHECK]
        if len(checked) < 2:
            raise _cannot_check(args.data)
        items, vectors = _features(manifest, args.model, bars)
    space = assist.reduce(vectors)
    index = {c: k for k, c in enumerate(checked)}
    rows = np.array([k for k, i in enumerate(items) if i.label in index], dtype=np.int64)
    labels = np.array([index[items[k].label] for k in rows], dtype=np.int64)
    found = label_issues.find_issues(space[rows], labels)
    listed = [
        {
            "file": items[rows[i.row]].source,
            "label": checked[i.label],
            "suggested": checked[i.suggested],
            "confidence": round(float(i.confidence), 3),
            "quality": round(float(i.quality), 3),
        }
        for i in found[: args.top]
    ]
    for c in unchecked:
        _say(
            f"Class '{c}' has fewer than {MIN_TO_CHECK} labelled pictures: its labels could "
            "not be checked."
        )
    _print_issues(listed, len(found), len(rows))
    return {
        "checked": len(rows),
        "classes_checked": checked,
        "classes_not_checked": unchecked,
        "unlabelled_ignored": len(manifest.unlabelled),
        "issues_found": len(found),
        "issues": listed,
        "model": args.model,
    }


def _cannot_check(data: Path) -> DataError:
    return DataError(
        f"The labels of '{data}' cannot be checked: that needs at least two classes with "
        f"{MIN_TO_CHECK} or more labelled pictures each."
    )


def _checkable(data: Path, tmp: Path) -> tuple[Path, list[str]]:
    """``data``, or a folder of links to its entries without the class folders holding fewer
    than MIN_TO_CHECK pictures (the import refuses a class of one); those classes' names."""
    try:
        entries = sorted(e for e in data.iterdir() if not e.name.startswith("."))
        if any(e.name.casefold() in SPLIT_FOLDER_NAMES for e in entries):
            return data, []  # train/ + val/: the import says what it cannot use
        classes = [
            e for e in entries if e.is_dir() and e.name.casefold() not in UNLABELLED_FOLDER_NAMES
        ]
        thin = [
            e
            for e in classes
            if sum(p.suffix.lower() in paths.IMAGE_SUFFIXES for p in e.rglob("*")) < MIN_TO_CHECK
        ]
    except OSError:  # the import says what cannot be read
        return data, []
    if not thin:
        return data, []
    if len(classes) - len(thin) < 2:
        raise _cannot_check(data)
    view = tmp / "checkable"
    view.mkdir()
    for e in entries:
        if e not in thin:
            (view / e.name).symlink_to(e.resolve(), target_is_directory=e.is_dir())
    return view, [clean_name(nfc([e.name])[0]) for e in thin]


def _print_issues(listed: list[dict], found: int, checked: int) -> None:
    if not found:
        print(f"No likely wrong labels among the {checked} pictures checked.")
        return
    shown = f"the first {len(listed)} of " if len(listed) < found else ""
    print(f"Likely wrong labels ({shown}{found}, of {checked} pictures checked), worst first:")
    for x in listed:
        print(
            f"  {x['file']}: labelled '{x['label']}', looks like '{x['suggested']}' "
            f"(confidence {x['confidence']:.0%})"
        )


# ------------------------------------------------------------------------------------ apply


@dataclass(frozen=True)
class _Move:
    file: str  # as the CSV names it
    source: Path
    target: Path
    label: str


def _row_error(where: str, text: str) -> DataError:
    return DataError(f"{where}: {text} Nothing was moved.")


def _read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows, with the column names tidied (lower case, no spaces around)."""
    if not path.is_file():
        raise DataError(f"There is no file '{path}'. Give --labels the CSV to apply.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"'{path}' is not a CSV file saved as UTF-8 text.") from None
    except OSError as exc:
        raise DataError(f"'{path}' cannot be read ({exc.strerror or exc}).") from None
    head = text.split("\n", 1)[0]
    delimiter = next((d for d in (";", "\t") if d in head and "," not in head), ",")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    fields = [(f or "").strip().lower() for f in reader.fieldnames or []]
    if "file" not in fields or not ({"label", "suggested_class"} & set(fields)):
        raise DataError(
            f"'{path}' needs a 'file' column and a 'label' (or 'suggested_class') column; "
            f"it has {', '.join(repr(f) for f in fields if f) or 'none'}. Nothing was moved."
        )
    reader.fieldnames = fields
    return [
        {k: (v or "").strip() for k, v in row.items() if isinstance(k, str) and k} for row in reader
    ]


def _choose(
    rows: list[dict[str, str]], labels_csv: Path, min_confidence: float | None
) -> tuple[dict[str, tuple[str, str]], list[dict[str, str]]]:
    """(file -> (label, where), skipped rows with reasons): a row's own ``label`` first, else
    its ``suggested_class`` when its confidence is at least ``min_confidence``."""
    chosen: dict[str, tuple[str, str]] = {}
    skipped: list[dict[str, str]] = []
    for n, row in enumerate(rows, start=2):
        where = f"Row {n} of '{labels_csv}'"
        file, label = row.get("file", ""), row.get("label", "")
        if not file:
            if any(row.values()):
                raise _row_error(where, "it names no file.")
            continue
        if not label and row.get("suggested_class"):
            label = row["suggested_class"]
            if min_confidence is not None:
                conf = _confidence(row.get("confidence", ""), where)
                if conf < min_confidence:
                    skipped.append(
                        {
                            "file": file,
                            "reason": f"confidence {conf:.3f} is below {min_confidence:g}",
                        }
                    )
                    continue
        if not label:
            skipped.append({"file": file, "reason": "no label"})
            continue
        if file in chosen and label_key(chosen[file][0]) != label_key(label):
            raise _row_error(where, f"'{file}' is listed again with another class.")
        chosen[file] = (label, where)
    return chosen, skipped


def _confidence(text: str, where: str) -> float:
    try:
        value = float(text.replace(",", "."))
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise _row_error(
            where, f"its confidence '{text}' is not a number (--min-confidence needs one)."
        )
    return value


def _source(data: Path, file: str, where: str) -> tuple[Path, Path]:
    """(the picture, the folder holding its unlabelled folder); DataError when the path
    leaves ``data``, is not in an unlabelled folder or names no file."""
    root = data.resolve()
    path = Path(os.path.normpath(root / file.replace("\\", "/")))
    if not path.is_relative_to(root) or not path.parent.resolve().is_relative_to(root):
        raise _row_error(where, f"'{file}' is outside '{data}'.")
    parts = path.relative_to(root).parts
    folder = next(
        (k for k, p in enumerate(parts[:-1]) if p.casefold() in UNLABELLED_FOLDER_NAMES), None
    )
    if folder is None:
        raise _row_error(where, f"'{file}' is not in the unlabelled/ folder of '{data}'.")
    return path, root.joinpath(*parts[:folder])


def _class_folder(base: Path, label: str, where: str, planned: set[str]) -> tuple[Path, str]:
    """(the folder of class ``label`` in ``base``, existing or to be made; the name kept).
    ``planned``: the new folders' names in ``base`` so far, case-folded (added to)."""
    from tl_core.data.camera import check_label

    try:
        name = check_label(label)
    except DataError as exc:
        raise _row_error(where, str(exc)) from None
    reserved = UNLABELLED_FOLDER_NAMES | SPLIT_FOLDER_NAMES
    if label_key(name) in reserved or label_key(name).lstrip("_") in reserved:
        raise _row_error(where, f"'{name}' cannot be a class name here. Choose another name.")
    entries = sorted(base.iterdir()) if base.is_dir() else []
    for entry in entries:
        if entry.is_dir() and label_key(clean_name(nfc([entry.name])[0])) == label_key(name):
            return entry, clean_name(nfc([entry.name])[0])
    taken = planned | {e.name.casefold() for e in entries}
    folder = base / class_dir(name, taken)
    planned.add(folder.name.casefold())
    return folder, name


def _free_name(folder: Path, name: str, taken: set[str]) -> str:
    """``name``, or ``stem-2.ext`` (-3, ...) when the folder has or will have that name."""
    stem, suffix = os.path.splitext(name)
    candidate, n = name, 2
    while candidate.casefold() in taken:
        candidate, n = f"{stem}-{n}{suffix}", n + 1
    taken.add(candidate.casefold())
    return candidate


def _plan(
    data: Path, chosen: dict[str, tuple[str, str]], copy: bool
) -> tuple[list[_Move], list[dict[str, str]]]:
    """Every move checked before any is made; (moves, rows already done)."""
    moves: list[_Move] = []
    done: list[dict[str, str]] = []
    taken: dict[Path, set[str]] = {}
    seen: dict[Path, str] = {}
    folders: dict[tuple[Path, str], tuple[Path, str]] = {}  # (base, class key): folder, name
    planned: dict[Path, set[str]] = {}
    for file, (label, where) in chosen.items():
        source, base = _source(data, file, where)
        key = (base, label_key(clean_name(label)))
        if key not in folders:
            folders[key] = _class_folder(base, label, where, planned.setdefault(base, set()))
        folder, name = folders[key]
        if source in seen:
            if label_key(seen[source]) != label_key(label):
                raise _row_error(where, f"'{file}' is listed again with another class.")
            continue
        seen[source] = label
        if not source.is_file():
            if (folder / source.name).is_file():
                done.append({"file": file, "reason": f"already in {folder.name}/"})
                continue
            raise _row_error(where, f"there is no picture '{file}' in '{data}'.")
        _check_writable(source, folder, copy, where)
        names = taken.setdefault(
            folder, {p.name.casefold() for p in folder.iterdir()} if folder.is_dir() else set()
        )
        target = folder / _free_name(folder, source.name, names)
        moves.append(_Move(file, source, target, name))
    return moves, done


def _check_writable(source: Path, folder: Path, copy: bool, where: str) -> None:
    target = folder if folder.is_dir() else folder.parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise _row_error(where, f"the folder '{target}' cannot be written to.")
    if not copy and not os.access(source.parent, os.W_OK | os.X_OK):
        raise _row_error(
            where, f"pictures cannot be moved out of '{source.parent}' (add --copy to copy them)."
        )


def _carry_out(moves: list[_Move], copy: bool) -> None:
    done = 0
    try:
        for m in moves:
            m.target.parent.mkdir(exist_ok=True)
            if m.target.exists():
                raise FileExistsError(0, "a file of that name appeared", str(m.target))
            if copy:
                shutil.copy2(m.source, m.target)
            else:
                shutil.move(m.source, m.target)
            done += 1
    except OSError as exc:
        verb = "Copying" if copy else "Moving"
        where = f" ('{exc.filename}')" if exc.filename else ""
        raise StudioError(
            f"{verb} stopped after {done} of {len(moves)} pictures: {exc.strerror or exc}"
            f"{where}. Fix this and run the command again with the same CSV: the pictures "
            "already in their class folders are skipped."
        ) from None


def apply(args: argparse.Namespace) -> dict[str, object]:
    """File the pictures the CSV names into their class folders (nothing moves unless every
    row can be done); the summary of what was, or with ``--dry-run`` would be, done."""
    paths.check_data_folder(args.data)
    low = args.min_confidence
    if low is not None and not 0 <= low <= 1:
        raise DataError("--min-confidence must be between 0 and 1, such as 0.9.")
    chosen, skipped = _choose(_read_rows(args.labels), args.labels, low)
    moves, done = _plan(args.data, chosen, args.copy)
    created = sorted({m.target.parent.name for m in moves if not m.target.parent.exists()})
    if not args.dry_run:
        _carry_out(moves, args.copy)
    verb = "copied" if args.copy else "moved"
    per_class = Counter(m.label for m in moves)
    summary = {
        verb: dict(sorted(per_class.items())),
        "dry_run": bool(args.dry_run),
        "new_class_folders": created,
        "files": [
            {"file": m.file, "to": m.target.relative_to(args.data.resolve()).as_posix()}
            for m in moves
        ],
        "renamed": sum(1 for m in moves if m.target.name != m.source.name),
        "skipped": skipped + done,
    }
    said = f"{len(moves)} picture{'' if len(moves) == 1 else 's'}" + (
        f" ({_per_class(per_class)})" if moves else ""
    )
    if args.dry_run:
        _say(f"Would {'copy' if args.copy else 'move'} {said}; nothing was changed.")
    else:
        _say(f"{verb.capitalize()} {said}.")
    if skipped or done:
        _say(f"Skipped {len(skipped) + len(done)} rows ({_reasons(skipped + done)}).")
    return summary


def _reasons(skipped: list[dict[str, str]]) -> str:
    kinds = Counter(
        "below --min-confidence"
        if s["reason"].startswith("confidence")
        else "already in their class folder"
        if s["reason"].startswith("already")
        else s["reason"]
        for s in skipped
    )
    return ", ".join(f"{n} {k}" for k, n in kinds.items())
