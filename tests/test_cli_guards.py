"""The command line refuses what it cannot do exactly as asked, before torch and before any
project; it waits in the shared queue; signals end a run cleanly; leftovers are swept."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import make_shapes, tree_digest, wait_until

from tl_core import service
from tl_core.cli import _parser
from tl_core.config import RunSpec
from tl_core.data import paths
from tl_core.errors import RunError, StudioError
from tl_core.runs import jobs, supervisor
from tl_core.runs.store import Store

HEAVY = ("torch", "timm", "numpy", "PIL")
# Runs the command line as ``python -m tl_core`` does and reports the heavy modules it loaded.
_RUNNER = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('HEAVY=' + ','.join(m for m in "
    f"{HEAVY!r} if m in sys.modules) + '\\n'))\n"
    "from tl_core.cli import main\n"
    "raise SystemExit(main())\n"
)
FAST = ("--model", "test_resnet", "--epochs", "1", "--batch-size", "8")


def _cli(*args: str, workspace: Path, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-c", _RUNNER, "--workspace", str(workspace), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def _start(*args: str, workspace: Path, env: dict[str, str] | None = None):
    return subprocess.Popen(
        [sys.executable, "-m", "tl_core", "--workspace", str(workspace), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _refused(proc: subprocess.CompletedProcess[str], *, heavy_ok: bool = False) -> str:
    """Exit 2, one plain sentence on stderr, the JSON error last on stdout; no torch."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("HEAVY=")]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and len(errors[0]) > 20, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["error"] == errors[0][7:]
    loaded = next(line for line in proc.stderr.splitlines() if line.startswith("HEAVY="))
    if not heavy_ok:
        assert loaded == "HEAVY=", loaded
    assert "torch" not in loaded and "timm" not in loaded
    return errors[0][7:]


def _nothing_created(ws: Path) -> None:
    """No project, no run, no folder of either, no staging leftovers."""
    store = Store(ws)
    with store.transaction() as db:
        assert db.execute("SELECT COUNT(*) FROM projects").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
    for sub in ("projects", "runs", "incoming"):
        assert not any((ws / sub).glob("*")) if (ws / sub).exists() else True


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes") / "data", per_class=12)


# ------------------------------------------------------------------------------- --help


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["", *_subcommands()])
def test_every_help_works_and_every_option_has_a_help_line(command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tl_core", *([command] if command else []), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    parser = _subcommands()[command] if command else _parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help and choice.dest in proc.stdout
            continue
        assert action.help and action.help != argparse.SUPPRESS, action
        for name in action.option_strings or [action.metavar or action.dest]:
            assert name in proc.stdout, (name, proc.stdout)


def test_the_cli_module_imports_without_torch() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import tl_core.cli, tl_core.config, "
        "tl_core.data.paths, tl_core.runs.jobs; print(time.perf_counter() - t); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    seconds, loaded = out.stdout.splitlines()
    assert loaded == "[]" and float(seconds) < 1.0


def test_engine_still_exports_the_config() -> None:
    from tl_core import config
    from tl_core.training import engine

    assert engine.TrainConfig is config.TrainConfig
    assert engine.scratch_config is config.scratch_config
    assert engine.SCRATCH_LR == config.SCRATCH_LR


def test_the_pre_check_knows_every_kind_the_importer_reads() -> None:
    from tl_core.data.dataset import IMAGE_SUFFIXES

    assert IMAGE_SUFFIXES <= paths.IMAGE_SUFFIXES


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_the_pre_check_accepts_pictures_whose_names_say_nothing(tmp_path, fmt) -> None:
    from PIL import Image

    data, val = tmp_path / "data", tmp_path / "val"
    for root in (data, val):
        for label in ("a", "b"):
            (root / label).mkdir(parents=True)
            Image.new("RGB", (16, 16), (200, 10, 10)).save(root / label / "IMG_0001", fmt)
    paths.check_val_folder(data, val)  # no refusal: the importer reads these by content
    for label in ("a", "b"):
        (val / label / "IMG_0001").write_text("not a picture")
    with pytest.raises(StudioError):
        paths.check_val_folder(data, val)


# ------------------------------------------------------------------------------- --val


def _missing(tmp: Path, data: Path) -> Path:
    return tmp / "nowhere"


def _a_file(tmp: Path, data: Path) -> Path:
    (tmp / "val.png").write_bytes((data / "disc" / "0.png").read_bytes())
    return tmp / "val.png"


def _broken_link(tmp: Path, data: Path) -> Path:
    (tmp / "val").symlink_to(tmp / "gone")
    return tmp / "val"


def _empty(tmp: Path, data: Path) -> Path:
    (tmp / "val").mkdir()
    return tmp / "val"


def _empty_class_folders(tmp: Path, data: Path) -> Path:
    for label in ("disc", "square"):
        (tmp / "val" / label).mkdir(parents=True)
    return tmp / "val"


def _no_images(tmp: Path, data: Path) -> Path:
    (tmp / "val" / "disc").mkdir(parents=True)
    (tmp / "val" / "disc" / "notes.txt").write_text("not a picture")
    return tmp / "val"


def _only_hidden(tmp: Path, data: Path) -> Path:
    (tmp / "val" / ".cache").mkdir(parents=True)
    (tmp / "val" / ".cache" / "0.png").write_bytes((data / "disc" / "0.png").read_bytes())
    return tmp / "val"


def _same(tmp: Path, data: Path) -> Path:
    return data


def _same_trailing_slash(tmp: Path, data: Path) -> Path:
    return Path(str(data) + "/")


def _same_relative(tmp: Path, data: Path) -> Path:
    return data / "disc" / ".." / "."


def _same_via_symlink(tmp: Path, data: Path) -> Path:
    (tmp / "alias").symlink_to(data, target_is_directory=True)
    return tmp / "alias"


def _inside(tmp: Path, data: Path) -> Path:
    return data / "disc"


def _inside_via_symlink(tmp: Path, data: Path) -> Path:
    (tmp / "alias").symlink_to(data / "square", target_is_directory=True)
    return tmp / "alias"


def _containing(tmp: Path, data: Path) -> Path:
    return data.parent


def _hard_links(tmp: Path, data: Path) -> Path:
    make_shapes(tmp / "val", per_class=3, seed=5)
    os.link(data / "disc" / "0.png", tmp / "val" / "disc" / "linked.png")
    return tmp / "val"


def _file_symlinks(tmp: Path, data: Path) -> Path:
    make_shapes(tmp / "val", per_class=3, seed=5)
    (tmp / "val" / "square" / "s.png").symlink_to(data / "square" / "1.png")
    return tmp / "val"


def _linked_class_folder(tmp: Path, data: Path) -> Path:
    make_shapes(tmp / "val", per_class=3, seed=5)
    shutil.rmtree(tmp / "val" / "stripes")
    (tmp / "val" / "stripes").symlink_to(data / "stripes", target_is_directory=True)
    return tmp / "val"


def _unknown_class(tmp: Path, data: Path) -> Path:
    make_shapes(tmp / "val", per_class=3, seed=5)
    shutil.move(tmp / "val" / "stripes", tmp / "val" / "zebra")
    return tmp / "val"


def _loose_images(tmp: Path, data: Path) -> Path:
    make_shapes(tmp / "val", per_class=3, seed=5)
    shutil.copy(tmp / "val" / "disc" / "0.png", tmp / "val" / "loose.png")
    return tmp / "val"


BAD_VAL = [
    _missing,
    _a_file,
    _broken_link,
    _empty,
    _empty_class_folders,
    _no_images,
    _only_hidden,
    _same,
    _same_trailing_slash,
    _same_relative,
    _same_via_symlink,
    _inside,
    _inside_via_symlink,
    _containing,
    _hard_links,
    _file_symlinks,
    _linked_class_folder,
    _unknown_class,
    _loose_images,
]


@pytest.mark.parametrize("command", ["train", "recommend"])
@pytest.mark.parametrize("bad", BAD_VAL, ids=lambda f: f.__name__.strip("_"))
def test_a_validation_folder_that_cannot_be_used_as_given_is_refused(
    bad, command: str, tmp_path: Path
) -> None:
    data = make_shapes(tmp_path / "data", per_class=4)
    val = bad(tmp_path, data)
    before = tree_digest(data)
    ws = tmp_path / "ws"
    extra = FAST if command == "train" else ()
    proc = _cli(command, "--data", str(data), "--val", str(val), *extra, workspace=ws)
    message = _refused(proc)
    assert "valid" in message or "--val" in message
    _nothing_created(ws)
    assert tree_digest(data) == before


def test_the_refusal_gives_the_importers_own_reason_for_what_it_would_skip(tmp_path) -> None:
    data = make_shapes(tmp_path / "data", per_class=4)
    with pytest.raises(StudioError, match=r"hidden folder '\.cache' \(1 file\) ignored"):
        paths.check_val_folder(data, _only_hidden(tmp_path, data))


def test_a_data_folder_with_its_own_split_and_val_is_refused(demo_dir: Path, tmp_path: Path):
    val = make_shapes(tmp_path / "val", per_class=2)
    proc = _cli("train", "--data", str(demo_dir), "--val", str(val), workspace=tmp_path / "ws")
    assert "already has its own" in _refused(proc)
    _nothing_created(tmp_path / "ws")


@pytest.mark.parametrize("how", ["copies", "renamed copies"])
def test_a_validation_folder_of_training_copies_is_refused_as_leakage(how, tmp_path: Path):
    data = make_shapes(tmp_path / "data", per_class=10)
    val = tmp_path / "val"
    shutil.copytree(data, val)
    if how == "renamed copies":
        for p in val.rglob("*.png"):
            p.rename(p.with_name(f"v{p.name}"))
    proc = _cli("train", "--data", str(data), "--val", str(val), *FAST, workspace=tmp_path / "ws")
    assert "val" in _refused(proc, heavy_ok=True)  # the importer or the split says why
    _nothing_created(tmp_path / "ws")


def test_summary_says_where_validation_images_came_from(demo_dir: Path, tmp_path: Path):
    ws = tmp_path / "ws"
    named = _cli(
        "train",
        "--data",
        str(demo_dir / "train"),
        "--val",
        str(demo_dir / "val"),
        *FAST,
        workspace=ws,
    )
    assert named.returncode == 0, named.stderr
    summary = json.loads(named.stdout.strip().splitlines()[-1])
    assert (summary["validation"], summary["train_images"], summary["val_images"]) == (
        "folder",
        500,
        200,
    )
    rows = json.loads((Path(summary["run_dir"]) / "predictions.json").read_text())["rows"]
    assert len(rows) == 200

    data = make_shapes(tmp_path / "data", per_class=10)
    split = _cli("train", "--data", str(data), *FAST, workspace=ws)
    summary = json.loads(split.stdout.strip().splitlines()[-1])
    assert (summary["validation"], summary["train_images"], summary["val_images"]) == (
        "split",
        24,
        6,
    )


# ------------------------------------------------------------------------------- --out


@pytest.fixture(scope="module")
def finished(shapes: Path, tmp_path_factory) -> tuple[Path, Path, str]:
    """A workspace with one finished command-line run in the folder ``out``."""
    root = tmp_path_factory.mktemp("finished")
    ws, out = root / "ws", root / "out"
    proc = _cli("train", "--data", str(shapes), *FAST, "--out", str(out), workspace=ws)
    assert proc.returncode == 0, proc.stderr
    return ws, out, json.loads(proc.stdout.strip().splitlines()[-1])["run_id"]


def _out_a_file(tmp: Path, run: Path, data: Path) -> tuple[Path, list[str]]:
    (tmp / "model.pt").write_bytes(b"keep me")
    return tmp / "model.pt", []


def _out_under_a_file(tmp: Path, run: Path, data: Path) -> tuple[Path, list[str]]:
    (tmp / "model.pt").write_bytes(b"keep me")
    return tmp / "model.pt" / "run", []


def _out_broken_link(tmp: Path, run: Path, data: Path) -> tuple[Path, list[str]]:
    (tmp / "out").symlink_to(tmp / "gone")
    return tmp / "out", []


def _out_not_empty(tmp: Path, run: Path, data: Path) -> tuple[Path, list[str]]:
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")
    return tmp / "out", []


def _out_a_run(tmp: Path, run: Path, data: Path) -> tuple[Path, list[str]]:
    return run, []


def _out_a_run_via_symlink(tmp: Path, run: Path, data: Path) -> tuple[Path, list[str]]:
    (tmp / "alias").symlink_to(run, target_is_directory=True)
    return tmp / "alias", []


def _out_overwrite_the_data(tmp: Path, run: Path, data: Path) -> tuple[Path, list[str]]:
    return data, ["--overwrite"]


def _out_overwrite_above_the_data(tmp: Path, run: Path, data: Path) -> tuple[Path, list[str]]:
    return data.parent, ["--overwrite"]


def _out_overwrite_the_workspace(tmp: Path, run: Path, data: Path) -> tuple[Path, list[str]]:
    return run.parent / "ws", ["--overwrite"]


BAD_OUT = [
    _out_a_file,
    _out_under_a_file,
    _out_broken_link,
    _out_not_empty,
    _out_a_run,
    _out_a_run_via_symlink,
    _out_overwrite_the_data,
    _out_overwrite_above_the_data,
    _out_overwrite_the_workspace,
]


@pytest.mark.parametrize("bad", BAD_OUT, ids=lambda f: f.__name__.removeprefix("_out_"))
def test_an_out_folder_that_would_be_overwritten_or_shared_is_refused(
    bad, finished, shapes: Path, tmp_path: Path
) -> None:
    ws, run_dir, run_id = finished
    out, extra = bad(tmp_path, run_dir, shapes)
    store = Store(ws)
    with store.transaction() as db:
        counts = [
            db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("projects", "runs")
        ]
    folders = sorted(p.name for p in (ws / "projects").iterdir())
    best = (run_dir / "best.pt").read_bytes()
    watched = [run_dir, shapes, tmp_path]
    before = [tree_digest(f) for f in watched]
    proc = _cli("train", "--data", str(shapes), *FAST, "--out", str(out), *extra, workspace=ws)
    _refused(proc)
    with store.transaction() as db:
        assert [
            db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("projects", "runs")
        ] == counts
    assert sorted(p.name for p in (ws / "projects").iterdir()) == folders
    assert not any((ws / "incoming").glob("*"))
    assert (run_dir / "best.pt").read_bytes() == best
    assert [tree_digest(f) for f in watched] == before
    assert store.job(run_id).run_dir == str(run_dir.resolve())


def test_overwrite_replaces_a_folder_cleanly(shapes: Path, tmp_path: Path) -> None:
    ws, out = tmp_path / "ws", tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("old")
    proc = _cli(
        "train", "--data", str(shapes), *FAST, "--out", str(out), "--overwrite", workspace=ws
    )
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout.strip().splitlines()[-1])["run_id"]
    assert not (out / "notes.txt").exists() and (out / "best.pt").exists()
    proc = _cli(
        "train", "--data", str(shapes), *FAST, "--out", str(out), "--overwrite", workspace=ws
    )
    assert proc.returncode == 0, proc.stderr
    second = json.loads(proc.stdout.strip().splitlines()[-1])["run_id"]
    store = Store(ws)
    assert store.job(first) is None  # the replaced run's record is gone with its files
    assert [r.id for r in store.runs() if r.run_dir == str(out.resolve())] == [second]


def test_two_runs_never_share_a_folder_in_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "ws")
    project = store.create_project()
    folder = tmp_path / "run"
    store.create_job(project.id, {}, tmp_path, run_dir=folder)
    for alias in (folder, Path(str(folder) + "/"), folder / ".." / "run"):
        with pytest.raises(RunError, match="cannot share a folder"):
            store.create_job(project.id, {}, tmp_path, run_dir=alias)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "afile").write_text("x")
    for busy in (tmp_path / "full", tmp_path / "afile"):
        with pytest.raises(RunError, match="new or empty"):
            store.create_job(project.id, {}, tmp_path, run_dir=busy)
    assert len(store.runs()) == 1


# ------------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "case", ["one class", "no images", "unknown model", "bad fraction", "too many groups"]
)
def test_a_failed_import_or_setting_leaves_nothing(case: str, tmp_path: Path) -> None:
    data = make_shapes(tmp_path / "data", per_class=10)
    args = [*FAST]
    if case == "one class":
        for label in ("square", "stripes"):
            shutil.rmtree(data / label)
    elif case == "no images":
        for p in data.rglob("*.png"):
            p.write_bytes(b"")
            p.rename(p.with_suffix(".txt"))
    elif case == "unknown model":
        args[1] = "no_such_net"
    elif case == "bad fraction":
        args += ["--val-fraction", "1.5"]
    else:  # the run starts and fails in the engine, before its first epoch
        args += ["--trainable-groups", "99"]
    proc = _cli("train", "--data", str(data), *args, workspace=tmp_path / "ws")
    if case == "too many groups":
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "layer groups" in json.loads(proc.stdout.strip().splitlines()[-1])["error"]
    else:
        _refused(proc, heavy_ok=True)
    _nothing_created(tmp_path / "ws")


# ------------------------------------------------------------------------------- queue


def _holder(store: Store) -> tuple[subprocess.Popen[bytes], str]:
    """An app run that holds the only slot, 'trained' by a live sleeping process."""
    project = store.create_project()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    run = store.create_job(project.id, {}, store.workspace, status="running")
    store.update_job(run.id, pid=sleeper.pid, heartbeat=time.time())
    return sleeper, run.id


def _next_wait(proc: subprocess.Popen[str]) -> str:
    """The next 'waiting: …' line the command prints (warnings may come before)."""
    while line := proc.stderr.readline():
        if line.startswith("waiting:"):
            return line.strip()
    raise AssertionError("the command ended without waiting")


def test_a_cli_run_waits_its_turn_in_the_shared_queue(shapes: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "ws")
    sleeper, holder = _holder(store)
    ahead = store.create_job(store.create_project().id, {}, store.workspace)  # an app run
    env = {"TL_STUDIO_MAX_RUNS": "1"}
    proc = _start("train", "--data", str(shapes), *FAST, workspace=store.workspace, env=env)
    try:
        assert _next_wait(proc) == "waiting: place 2 in the queue"
        cli_run = next(r for r in store.runs(statuses=("queued",)) if r.source == "cli")
        assert cli_run.pid == proc.pid
        jobs.request_stop(store, ahead.id)  # cancelled in the app: the command line is next
        assert _next_wait(proc) == "waiting: place 1 in the queue"
        assert supervisor.pump(store, limit=2) == []  # never the run a command line waits for
        assert store.job(cli_run.id).status == "queued"
        sleeper.kill()
        sleeper.wait()
        _, err = proc.communicate(timeout=300)
    finally:
        sleeper.kill()
        proc.kill()
    assert proc.returncode == 0, err
    assert store.job(holder).status == "interrupted"
    assert store.job(cli_run.id).status == "finished"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_while_waiting_leaves_no_project_and_no_run(sig, shapes: Path, tmp_path: Path):
    store = Store(tmp_path / "ws")
    sleeper, holder = _holder(store)
    try:
        proc = _start(
            "train",
            "--data",
            str(shapes),
            *FAST,
            workspace=store.workspace,
            env={"TL_STUDIO_MAX_RUNS": "1"},
        )
        assert _next_wait(proc) == "waiting: place 1 in the queue"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        sleeper.kill()
    assert proc.returncode == 128 + sig and "Traceback" not in err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "interrupted"
    assert [r.id for r in store.runs()] == [holder]
    assert len(list((store.workspace / "projects").iterdir())) == 1
    assert not any((store.workspace / "incoming").glob("*"))


# ------------------------------------------------------------------------------- signals

SIGNAL_MESSAGES = {
    signal.SIGINT: "Stopped from the command line (Ctrl-C).",
    signal.SIGTERM: "Stopped by a termination signal.",
}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_a_cli_run_marks_it_interrupted_and_resume_works(
    sig, shapes: Path, tmp_path: Path
) -> None:
    store = Store(tmp_path / "ws")
    proc = _start(
        "train",
        "--data",
        str(shapes),
        "--model",
        "test_efficientnet",
        "--epochs",
        "300",
        "--batch-size",
        "4",
        "--trainable-groups",
        "3",
        workspace=store.workspace,
    )
    try:
        run = wait_until(lambda: next(iter(store.runs(statuses=("running",))), None))
        wait_until(lambda: store.epochs(run.id))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and SIGNAL_MESSAGES[sig] in err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "interrupted"
    run = store.job(run.id)
    assert run.status == "interrupted" and run.message == SIGNAL_MESSAGES[sig]
    assert (Path(run.run_dir) / "last.pt").exists()
    assert store.project(run.project_id).settings.get(jobs.CLI_PENDING) is None
    done = len(store.epochs(run.id))

    service.resume_run(store, run.id)
    wait_until(lambda: len(store.epochs(run.id)) > done + 1)
    jobs.request_stop(store, run.id)
    wait_until(lambda: store.job(run.id).status == "stopped", timeout=60)
    epochs = [e.epoch for e in store.epochs(run.id)]
    assert epochs == list(range(1, len(epochs) + 1))


def test_sigterm_to_an_app_worker_says_the_server_stopped_it(shapes: Path, tmp_path: Path):
    from tl_core.data.dataset import import_folder

    store = Store(tmp_path / "ws")
    project = store.create_project()
    data_dir = store.new_data_dir(project.id)
    import_folder(shapes, data_dir)
    config = {
        "model": "test_efficientnet",
        "epochs": 300,
        "batch_size": 4,
        "pretrained": False,
        "trainable_groups": 6,
    }
    run = service.submit_job(store, project.id, RunSpec.from_dict(config), data_dir)
    wait_until(lambda: store.epochs(run.id))
    pid = store.job(run.id).pid
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: store.job(run.id).status == "interrupted", timeout=60)
    wait_until(lambda: not jobs.pid_alive(pid), timeout=30)
    final = store.job(run.id)
    assert final.message == "Interrupted: the server stopped the training process."
    assert (Path(final.run_dir) / "last.pt").exists()
    assert "Traceback" not in (Path(final.run_dir) / "worker.log").read_text()


# ------------------------------------------------------------------------------- sweep


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_start_up_sweep_removes_leftovers_of_killed_processes_only(tmp_path: Path):
    store = Store(tmp_path / "ws")
    old = time.time() - 2 * jobs.PARTIAL_IMPORT_AGE_S
    dead = _dead_pid()

    # A project a killed command line was setting up, with a partial import: removed.
    orphan = store.create_project("cli")
    store.update_settings(orphan.id, **{jobs.CLI_PENDING: dead})
    (store.new_data_dir(orphan.id) / "images").mkdir(parents=True)
    # One that a live command line is still setting up: kept.
    busy = store.create_project("cli busy")
    store.update_settings(busy.id, **{jobs.CLI_PENDING: os.getpid()})
    # A project the app created, empty, that a user is filling: kept.
    filling = store.create_project("app")
    fresh = store.new_data_dir(filling.id)
    (fresh / ".incoming").mkdir(parents=True)
    # An old cut-off import in an app project: removed; a finished one: kept.
    app = store.create_project("app 2")
    done = store.new_data_dir(app.id)
    done.mkdir()
    (done / "manifest.json").write_text("{}")
    store.set_data_dir(app.id, done)
    cut = store.new_data_dir(app.id)
    (cut / "images" / "cat").mkdir(parents=True)
    for folder in (cut, cut / "images", cut / "images" / "cat"):
        os.utime(folder, (old, old))
    # A queued command-line run whose process died: removed, with its pending project.
    queued = store.create_project("cli queued")
    store.update_settings(queued.id, **{jobs.CLI_PENDING: dead})
    waiting = store.create_job(queued.id, {}, done, source="cli", pid=dead)
    # A killed command-line run that saved an epoch: kept as interrupted, project kept.
    kept_project = store.create_project("cli kept")
    store.update_settings(kept_project.id, **{jobs.CLI_PENDING: dead})
    kept = store.create_job(kept_project.id, {}, done, source="cli", status="running", pid=dead)
    (Path(kept.run_dir) / "last.pt").write_bytes(b"x")
    # A killed command-line run in its first epoch: removed.
    first = store.create_job(kept_project.id, {}, done, source="cli", status="running", pid=dead)
    # Temporary files: old ones of stopped runs go; those of a live run stay.
    stopped = store.create_job(app.id, {}, done, status="interrupted")
    live = store.create_job(app.id, {}, done, status="running", pid=os.getpid())
    for run in (stopped, live):
        tmp = Path(run.run_dir) / "last.pt.tmp"
        tmp.write_bytes(b"partial")
        os.utime(tmp, (old, old))
    young = Path(stopped.run_dir) / "best.pt.tmp"
    young.write_bytes(b"being written")
    staging = store.workspace / "incoming"
    (staging / f"{dead}-abc").mkdir(parents=True)
    (staging / f"{os.getpid()}-def").mkdir()

    jobs._swept.discard(store.workspace.resolve())
    assert jobs.recover(store) == [kept.id]

    assert store.project(orphan.id) is None and not store.project_dir(orphan.id).exists()
    assert store.project(busy.id) is not None
    assert store.project(filling.id) is not None and fresh.exists()
    assert done.exists() and not cut.exists()
    assert store.job(waiting.id) is None and store.project(queued.id) is None
    assert store.job(kept.id).status == "interrupted"
    assert "command-line run stopped unexpectedly" in store.job(kept.id).message
    assert store.project(kept_project.id).settings.get(jobs.CLI_PENDING) is None
    assert store.job(first.id) is None and not Path(first.run_dir).exists()
    assert not (Path(stopped.run_dir) / "last.pt.tmp").exists() and young.exists()
    assert (Path(live.run_dir) / "last.pt.tmp").exists()
    assert not (staging / f"{dead}-abc").exists() and (staging / f"{os.getpid()}-def").exists()
