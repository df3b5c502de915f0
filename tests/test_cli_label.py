"""``python -m tl_core label``: suggestions for a folder's unlabelled pictures as a CSV, likely
wrong labels, and the CSV applied to the folder (every row checked before anything moves)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tree_digest

from tl_core.cli import _parser, main
from tl_core.labeling import assist

CLASSES = ("bag", "sneaker", "trouser")  # three classes of the bundled demo set
LABELLED = 4
UNLABELLED = 7  # per class


def _make(demo_dir: Path, root: Path) -> Path:
    """Class folders with LABELLED pictures each and an unlabelled/ folder whose names start
    with the true class (for scoring the suggestions only)."""
    for label in CLASSES:
        files = sorted((demo_dir / "train" / label).iterdir())
        (root / label).mkdir(parents=True)
        (root / "unlabelled").mkdir(exist_ok=True)
        for f in files[:LABELLED]:
            shutil.copy(f, root / label / f.name)
        for f in files[LABELLED : LABELLED + UNLABELLED]:
            shutil.copy(f, root / "unlabelled" / f"{label}-{f.name}")
    return root


@pytest.fixture(scope="module")
def source(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make(demo_dir, tmp_path_factory.mktemp("label") / "photos")


@pytest.fixture
def folder(source: Path, tmp_path: Path) -> Path:
    """A copy of the folder that a test may change."""
    return Path(shutil.copytree(source, tmp_path / "photos"))


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict, str]:
    """(exit code, the JSON last line, stderr) of ``python -m tl_core label ...``, in-process."""
    capsys.readouterr()
    code = main(["label", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, json.loads(out.strip().splitlines()[-1]), err


def _refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Exit code 2, one sentence on stderr and the same as ``{"error": ...}`` last."""
    code, last, err = _run(capsys, *args)
    errors = [line[7:] for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and errors == [last["error"]], err
    return last["error"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _state(folder: Path) -> tuple[dict[str, str], list[str]]:
    """Every file by content and every folder: to show nothing changed."""
    dirs = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_dir())
    return tree_digest(folder), dirs


def _suggest(capsys, folder: Path, out: Path, *extra: str) -> dict:
    code, summary, err = _run(capsys, "suggest", "--data", str(folder), "--out", str(out), *extra)
    assert code == 0, err
    return summary


# ---------------------------------------------------------------------------------- suggest


def test_suggest_writes_one_row_per_unlabelled_picture_mostly_right(
    capsys, source: Path, tmp_path: Path
) -> None:
    before = _state(source)
    out = tmp_path / "suggestions.csv"
    summary = _suggest(capsys, source, out)
    assert _state(source) == before  # the folder is only read
    rows = _rows(out)
    assert list(rows[0]) == ["file", "suggested_class", "confidence", "confident"]
    assert sorted(r["file"] for r in rows) == sorted(
        f"unlabelled/{p.name}" for p in (source / "unlabelled").iterdir()
    )
    assert all(r["suggested_class"] in CLASSES for r in rows)
    confidence = [float(r["confidence"]) for r in rows]
    assert all(
        0 <= c <= 1 and len(r["confidence"].split(".")[1]) == 3
        for c, r in zip(confidence, rows, strict=True)
    )
    assert confidence == sorted(confidence, reverse=True)  # surest first
    at = summary["confident_at"]
    assert [r["confident"] for r in rows] == [
        "yes" if at is not None and c >= at else "no" for c in confidence
    ]
    right = sum(r["file"].split("/")[1].startswith(r["suggested_class"] + "-") for r in rows)
    assert right >= 0.8 * len(rows), rows  # easy classes for pretrained features
    assert summary["labelled"] == dict.fromkeys(CLASSES, LABELLED)
    assert summary["unlabelled"] == len(rows) == UNLABELLED * len(CLASSES)
    assert summary["confident"] == sum(r["confident"] == "yes" for r in rows)
    assert sum(summary["suggested"].values()) == len(rows)
    assert summary["ci_low"] <= summary["estimated_accuracy"] <= summary["ci_high"]
    assert summary["estimated_accuracy"] >= 0.6
    assert Path(summary["csv"]) == out.resolve()


def test_suggest_refuses_an_existing_out_file_unless_forced(
    capsys, folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mine.csv"
    out.write_text("keep me")
    assert "--force" in _refused(capsys, "suggest", "--data", str(folder), "--out", str(out))
    assert out.read_text() == "keep me"
    summary = _suggest(capsys, folder, out, "--force")
    assert len(_rows(out)) == summary["unlabelled"]


def _no_unlabelled(folder: Path) -> None:
    shutil.rmtree(folder / "unlabelled")


def _one_class(folder: Path) -> None:
    for label in CLASSES[1:]:
        shutil.rmtree(folder / label)


def _thin_class(folder: Path) -> None:
    for f in sorted((folder / "sneaker").iterdir())[: LABELLED - assist.MIN_PER_CLASS + 1]:
        f.unlink()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (_no_unlabelled, "no unlabelled/ folder"),
        (_one_class, "at least two classes"),
        (_thin_class, f"'sneaker' has {assist.MIN_PER_CLASS - 1}"),
    ],
    ids=["no-unlabelled-folder", "one-class", "thin-class"],
)
def test_suggest_says_what_the_folder_lacks(
    capsys, folder: Path, tmp_path: Path, change, words: str
) -> None:
    change(folder)
    out = tmp_path / "s.csv"
    assert words in _refused(capsys, "suggest", "--data", str(folder), "--out", str(out))
    assert not out.exists()


def test_suggest_refuses_an_out_file_it_cannot_write(capsys, folder: Path, tmp_path: Path):
    missing = tmp_path / "nowhere" / "s.csv"
    assert "does not exist" in _refused(
        capsys, "suggest", "--data", str(folder), "--out", str(missing)
    )
    assert "is a folder" in _refused(
        capsys, "suggest", "--data", str(folder), "--out", str(tmp_path)
    )
    assert "does not exist" in _refused(
        capsys, "suggest", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "s.csv")
    )


# ----------------------------------------------------------------------------------- issues


def test_issues_finds_a_swapped_label_and_skips_a_class_too_small_to_check(
    capsys, demo_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "labelled"
    for label in CLASSES:
        (root / label).mkdir(parents=True)
        for f in sorted((demo_dir / "train" / label).iterdir())[:8]:
            shutil.copy(f, root / label / f.name)
    wrong = sorted((demo_dir / "train" / "trouser").iterdir())[20]
    shutil.copy(wrong, root / "bag" / "swapped.png")  # a trouser labelled bag
    (root / "coat").mkdir()
    shutil.copy(sorted((demo_dir / "train" / "coat").iterdir())[0], root / "coat")
    capsys.readouterr()
    code = main(["label", "issues", "--data", str(root), "--top", "3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["classes_not_checked"] == ["coat"] and "'coat'" in err
    assert summary["checked"] == 3 * 8 + 1
    top = summary["issues"]
    assert 1 <= len(top) <= 3 and summary["issues_found"] >= len(top)
    swapped = next(x for x in top if x["file"] == "bag/swapped.png")
    assert swapped["label"] == "bag" and swapped["suggested"] == "trouser"
    assert "bag/swapped.png" in out  # listed for the reader too


# ------------------------------------------------------------------------------------ apply


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_apply_moves_the_confident_ones_and_suggest_then_sees_fewer(
    capsys, folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s.csv"
    first = _suggest(capsys, folder, out)
    rows = _rows(out)
    cut = rows[len(rows) // 2]["confidence"]
    code, summary, err = _run(
        capsys, "apply", "--data", str(folder), "--labels", str(out), "--min-confidence", cut
    )
    assert code == 0, err
    moved = [r for r in rows if float(r["confidence"]) >= float(cut)]
    assert sum(summary["moved"].values()) == len(moved) >= len(rows) // 2
    assert len(summary["skipped"]) == len(rows) - len(moved)
    for r in moved:
        name = r["file"].split("/")[1]
        assert (folder / r["suggested_class"] / name).is_file()
        assert not (folder / r["file"]).exists()
    second = _suggest(capsys, folder, tmp_path / "again.csv")
    assert second["unlabelled"] == first["unlabelled"] - len(moved)
    assert sum(second["labelled"].values()) == sum(first["labelled"].values()) + len(moved)


def test_apply_copies_with_own_labels_new_classes_and_free_names(
    capsys, folder: Path, tmp_path: Path
) -> None:
    pool = sorted(p.name for p in (folder / "unlabelled").iterdir())
    shutil.copy(folder / "unlabelled" / pool[2], folder / "bag" / pool[2])  # the name is taken
    labels = _write_csv(
        tmp_path / "mine.csv",
        ["file", "suggested_class", "confidence", "label"],
        [
            [f"unlabelled/{pool[0]}", "bag", "0.300", "Winter coat"],  # own label, a new class
            [f"unlabelled/{pool[1]}", "sneaker", "0.950", ""],  # the suggestion
            [f"unlabelled/{pool[2]}", "bag", "0.990", ""],  # renamed: bag/ has that name
            [f"unlabelled/{pool[3]}", "", "", ""],  # nothing to apply: skipped
            [f"unlabelled/{pool[4]}", "trouser", "0.100", ""],  # below --min-confidence
            [f"unlabelled/{pool[5]}", "", "", "winter  COAT"],  # the same class, spelt otherwise
        ],
    )
    before = tree_digest(folder)
    code, summary, err = _run(
        capsys,
        "apply",
        "--data",
        str(folder),
        "--labels",
        str(labels),
        "--copy",
        "--min-confidence",
        "0.5",
    )
    assert code == 0, err
    assert summary["copied"] == {"Winter coat": 2, "bag": 1, "sneaker": 1}
    assert summary["new_class_folders"] == ["Winter coat"]
    assert summary["renamed"] == 1
    assert {s["file"] for s in summary["skipped"]} == {
        f"unlabelled/{pool[3]}",
        f"unlabelled/{pool[4]}",
    }
    after = tree_digest(folder)
    assert all(after[k] == v for k, v in before.items())  # copies: every picture stays
    stem, ext = os.path.splitext(pool[2])
    assert after[f"bag/{stem}-2{ext}"] == before[f"unlabelled/{pool[2]}"]
    assert after[f"Winter coat/{pool[0]}"] == before[f"unlabelled/{pool[0]}"]
    assert after[f"Winter coat/{pool[5]}"] == before[f"unlabelled/{pool[5]}"]
    assert after[f"sneaker/{pool[1]}"] == before[f"unlabelled/{pool[1]}"]
    assert len(after) == len(before) + 4


def test_apply_dry_run_reports_and_changes_nothing(capsys, folder: Path, tmp_path: Path):
    pool = sorted(p.name for p in (folder / "unlabelled").iterdir())
    labels = _write_csv(
        tmp_path / "l.csv", ["file", "label"], [[f"unlabelled/{n}", "new class"] for n in pool]
    )
    before = _state(folder)
    code, summary, err = _run(
        capsys, "apply", "--data", str(folder), "--labels", str(labels), "--dry-run"
    )
    assert code == 0, err
    assert summary["dry_run"] and summary["moved"] == {"new class": len(pool)}
    assert summary["new_class_folders"] == ["new class"]
    assert {f["to"] for f in summary["files"]} == {f"new class/{n}" for n in pool}
    assert "Would move" in err
    assert _state(folder) == before


@pytest.mark.parametrize(
    ("header", "last_row", "words"),
    [
        (["file", "class"], None, "needs a 'file' column"),
        (["file", "label"], ["../elsewhere.png", "bag"], "outside"),
        (["file", "label"], ["bag/{labelled}", "sneaker"], "not in the unlabelled/ folder"),
        (["file", "label"], ["unlabelled/missing.png", "bag"], "no picture"),
        (["file", "label"], ["unlabelled/{second}", "a/b"], "cannot contain"),
        (["file", "label"], ["unlabelled/{second}", "unlabelled"], "cannot be a class name"),
        (["file", "label"], ["unlabelled/{first}", "sneaker"], "another class"),
    ],
    ids=["columns", "outside", "not-unlabelled", "missing", "slash", "reserved", "twice"],
)
def test_a_bad_csv_moves_nothing(
    capsys, folder: Path, tmp_path: Path, header, last_row, words: str
) -> None:
    pool = sorted(p.name for p in (folder / "unlabelled").iterdir())
    names = {
        "first": pool[0],
        "second": pool[1],
        "labelled": next((folder / "bag").iterdir()).name,
    }
    rows = [[f"unlabelled/{pool[0]}", "bag"]]  # fine, but must not move: a later row is bad
    if last_row is not None:
        rows.append([cell.format(**names) for cell in last_row])
    labels = _write_csv(tmp_path / "bad.csv", header, rows)
    before = _state(folder)
    message = _refused(capsys, "apply", "--data", str(folder), "--labels", str(labels))
    assert words in message
    assert _state(folder) == before


def test_apply_needs_a_number_to_compare_with_min_confidence(
    capsys, folder: Path, tmp_path: Path
) -> None:
    pool = sorted(p.name for p in (folder / "unlabelled").iterdir())
    labels = _write_csv(
        tmp_path / "c.csv",
        ["file", "suggested_class", "confidence"],
        [[f"unlabelled/{pool[0]}", "bag", "0.9"], [f"unlabelled/{pool[1]}", "bag", "high"]],
    )
    before = _state(folder)
    args = ("apply", "--data", str(folder), "--labels", str(labels))
    assert "not a number" in _refused(capsys, *args, "--min-confidence", "0.5")
    assert "between 0 and 1" in _refused(capsys, *args, "--min-confidence", "90")
    assert _state(folder) == before


def test_apply_and_refusals_load_no_torch(folder: Path, tmp_path: Path) -> None:
    """As ``python -m tl_core``: apply (and a suggest refused before its import) stay light."""
    pool = sorted(p.name for p in (folder / "unlabelled").iterdir())
    labels = _write_csv(tmp_path / "l.csv", ["file", "label"], [[f"unlabelled/{pool[0]}", "bag"]])
    runner = (
        "import sys\nfrom tl_core.cli import main\ncode = main()\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'timm') if m in sys.modules))\n"
        "raise SystemExit(code)\n"
    )
    for args, code in (
        (["apply", "--data", str(folder), "--labels", str(labels)], 0),
        (["suggest", "--data", str(folder), "--out", str(tmp_path / "x" / "s.csv")], 2),
    ):
        proc = subprocess.run(
            [sys.executable, "-c", runner, "label", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == code, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "HEAVY=", proc.stdout
        json.loads(proc.stdout.strip().splitlines()[-2])
    assert (folder / "bag" / pool[0]).is_file()


def _steps() -> dict[str, argparse.ArgumentParser]:
    def sub(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return dict(action.choices)

    return sub(sub(_parser())["label"])


@pytest.mark.parametrize("step", ["suggest", "issues", "apply"])
def test_every_step_has_a_help_line_for_every_option(step: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tl_core", "label", step, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    for action in _steps()[step]._actions:
        assert action.help and action.help != argparse.SUPPRESS, action
        for name in action.option_strings:
            assert name in proc.stdout, (name, proc.stdout)
