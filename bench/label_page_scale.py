"""How long the Label page takes on the server at 1,000, 5,000 and 20,000 pictures.

For each size, in a fresh process: a data version with a few labelled pictures per class
(5 classes x 3) and the rest unlabelled (the bundled demo pictures hard-linked under many
names: the page reads only the files of the thumbnails it shows), and a finished survey
job whose ``survey.npz`` holds a clustered space (each class a few modes, overlapping as
real features do) and a map drawn from the same clusters, written without running the
network. Then the Label page, drawn with Streamlit's AppTest straight from its address:

- first: the process's first run (imports, the survey read, the first suggestions);
- rerun: the same page again with nothing changed (what any click costs);
- after a batch: 12 pictures of "Label these next" given their true class
  (:func:`tl_core.data.labels.give`, as the page's form does), then the page's rerun: the
  new suggestions, next pictures, accuracy estimate and map, as the user waits for them;
- new visit: a second AppTest in the same process (a new tab; the caches are warm).

Also, on the same label states: :func:`assist.suggest` + :func:`assist.next_batch` alone
(the part said to take about a second at 5,000 pictures) and :func:`assist.cv_accuracy`
(the sidebar's estimate), and the map's payload (:func:`tl_ui.picture_map.map_payload`).
Prints one markdown table of seconds (median and worst of the runs of a kind).

    uv run --group test --group bench python bench/label_page_scale.py
        [--sizes 1000 5000 20000] [--batches 4] [--profile 5000]

``--profile N`` runs cProfile on one after-a-batch rerun at N pictures and prints its
slowest functions (cumulative time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
APP = ROOT / "studio.py"
DEMO = ROOT / "assets" / "demo" / "fashion_mnist" / "train"
LABEL_PAGE = "app_pages/label.py"
CLASSES = ("bag", "dress", "sandal", "sneaker", "trouser")
SHARE = (0.3, 0.25, 0.2, 0.15, 0.1)  # of the pictures in each class: not balanced
START_PER_CLASS = 3  # labelled at import
MODES = 3  # clusters per class
DIMS = 128
NOISE = 4.0  # spread within a mode: about 90% right with 200 labels, as real features
BATCH = 12
PROFILE_LINES = 45
METHOD = "t-SNE (openTSNE)"  # the survey's map method, for the caption


def _link(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:  # another disk: a copy (the pictures are small)
        shutil.copyfile(src, dest)


def make_data(root: Path, n: int, seed: int = 0) -> dict[str, int]:
    """A data version in ``root``: ``n`` pictures, START_PER_CLASS of each class labelled,
    the rest under ``images/_pool/``. Returns each picture's true class index by file."""
    from tl_core.data.records import DatasetManifest, ImageItem

    rng = np.random.default_rng(seed)
    truth = rng.choice(len(CLASSES), n, p=SHARE)
    sources = {c: sorted((DEMO / c).glob("*.png")) for c in CLASSES}
    seen = {c: 0 for c in range(len(CLASSES))}
    items, pool, out = [], [], {}
    for c in range(len(CLASSES)):
        (root / "images" / CLASSES[c]).mkdir(parents=True, exist_ok=True)
    (root / "images" / "_pool").mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(truth.tolist()):
        labelled = seen[c] < START_PER_CLASS
        seen[c] += 1
        folder = CLASSES[c] if labelled else "_pool"
        rel = f"images/{folder}/{i:05d}.png"
        src = sources[CLASSES[c]][i % len(sources[CLASSES[c]])]
        _link(src, root / rel)
        item = ImageItem(
            rel, CLASSES[c] if labelled else "", None, f"photo_{i:05d}.png", f"{i:064x}", 28, 28
        )
        (items if labelled else pool).append(item)
        out[rel] = c
    DatasetManifest(
        root=root,
        items=items,
        classes=list(CLASSES),
        skipped=[],
        duplicates=[],
        warnings=[],
        has_explicit_val=False,
        near_links=[],
        unlabelled=pool,
    ).save()
    return out


def make_space(truth: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A survey's space (rows L2-normalised, float32) and map for pictures of the classes
    ``truth``: each class MODES clusters that overlap the other classes' a little."""
    rng = np.random.default_rng(seed + 1)
    n, k = len(truth), len(CLASSES)
    mode = rng.integers(0, MODES, n)
    centre = rng.normal(0, 1, (k, DIMS))
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    modes = centre[:, None, :] + 0.8 * rng.normal(0, 1, (k, MODES, DIMS)) / np.sqrt(DIMS)
    space = modes[truth, mode] + NOISE * rng.normal(0, 1, (n, DIMS)) / np.sqrt(DIMS)
    space /= np.linalg.norm(space, axis=1, keepdims=True)
    angle = 2 * np.pi * np.arange(k) / k
    spot = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    offset = 0.35 * rng.normal(0, 1, (k, MODES, 2))
    xy = spot[truth] + offset[truth, mode] + 0.18 * rng.normal(0, 1, (n, 2))
    xy = (xy - xy.min(axis=0)) / (xy.max(axis=0) - xy.min(axis=0))
    return space.astype(np.float32), xy.astype(np.float32)


def finished_survey(
    store, project_id: str, data_dir: Path, files: list[str], truth: np.ndarray
) -> None:
    """The project's survey job, finished, with its ``survey.npz``: what the page finds."""
    from tl_core import service
    from tl_core.events import End
    from tl_core.labeling import survey
    from tl_core.models.catalog import DEFAULT_MODEL
    from tl_core.runs import jobs
    from tl_core.runs.kinds import SurveyParams
    from tl_core.runs.recording import record

    project = store.project(project_id)
    model = project.typed_settings.model or DEFAULT_MODEL
    key = service.survey_key(str(data_dir), model)
    job = jobs.submit(store, project_id, SurveyParams("", model), data_dir, key=key)
    space, xy = make_space(truth)
    np.savez(
        Path(job.run_dir) / survey.FILE_NAME,
        format=np.array(survey.FORMAT),
        files=np.array(files, dtype=str),
        space=space,
        xy=xy,
        method=np.array(METHOD),
        trained=np.array(False),
        model=np.array(model),
        issue_rows=np.zeros(0, np.int64),
        issue_suggested=np.array([], dtype=str),
        issue_confidence=np.zeros(0, np.float32),
        issue_quality=np.zeros(0, np.float32),
    )
    result = {"pictures": len(files), "method": METHOD, "trained": False, "seconds": 0.0}
    record(store, job.id, Path(job.run_dir), End("finished", "Finished", result=result))


def make_project(tmp: Path, n: int) -> tuple[str, Path, dict[str, int]]:
    """A workspace with one project on ``n`` pictures and its finished survey."""
    from tl_core.runs.store import Store

    store = Store(tmp / "ws")
    project = store.create_project()
    data_dir = store.new_data_dir(project.id)
    truth = make_data(data_dir, n)
    store.set_data_dir(project.id, data_dir)
    files = sorted(truth)
    finished_survey(store, project.id, data_dir, files, np.array([truth[f] for f in files]))
    return project.id, data_dir, truth


def open_page(project_id: str):
    """The app opened at the Label page's address for the project, drawn once."""
    from streamlit.testing.v1 import AppTest

    quiet = "streamlit.runtime.scriptrunner_utils.script_run_context"
    logging.getLogger(quiet).setLevel(logging.ERROR)  # AppTest's set-up, outside a page
    at = AppTest.from_file(str(APP), default_timeout=600)
    at.query_params["project"] = project_id
    at.switch_page(LABEL_PAGE)
    at.run()
    return at


def timed_run(at) -> float:
    start = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - start
    if at.exception:
        sys.exit(f"the page failed: {at.exception[0].message}")
    return seconds


def next_files(at) -> list[str]:
    """The pictures "Label these next" shows, by file."""
    return [str(b.key)[len("next_") :] for b in at.selectbox if str(b.key).startswith("next_")]


def labelled_metric(at) -> int:
    return int(next(m.value for m in at.sidebar.metric if m.label == "labelled").replace(",", ""))


def give_batch(data_dir: Path, files: list[str], truth: dict[str, int]) -> None:
    """The user's answers to one batch: each picture its true class."""
    from tl_core.data import labels
    from tl_core.data.dataset import DatasetManifest

    manifest = DatasetManifest.load(data_dir)
    for c in sorted({truth[f] for f in files}):
        labels.give(manifest, [f for f in files if truth[f] == c], CLASSES[c])


def label_states(data_dir: Path, files: list[str], batches: list[list[str]], truth) -> list:
    """The label array (survey order) before each batch was given: what the page computed on."""
    from tl_core.data.dataset import DatasetManifest

    manifest = DatasetManifest.load(data_dir)
    row = {f: k for k, f in enumerate(files)}
    labels = np.full(len(files), -1, dtype=np.int64)
    for i in manifest.items:
        labels[row[i.file]] = CLASSES.index(i.label)
    states = [labels.copy()]
    for batch in batches:
        for f in batch:
            labels[row[f]] = truth[f]
        states.append(labels.copy())
    return states


def map_texts(files: list[str], labels: np.ndarray, s) -> list[str]:
    """Hover texts as the Label page writes them."""
    out = []
    for row, f in enumerate(files):
        name = f"photo_{Path(f).stem}.png"
        k = labels[row]
        if k >= 0:
            out.append(f"{name}: {CLASSES[k]}")
        else:
            maybe = f"{CLASSES[s.label[row]]}, {s.confidence[row]:.0%}"
            out.append(f"{name}: unlabelled (maybe {maybe})")
    return out


def assist_times(space: np.ndarray, xy: np.ndarray, files: list[str], states: list) -> dict:
    """suggest + next_batch, cv_accuracy and the map payload, on each label state."""
    from tl_core.labeling import assist
    from tl_ui.picture_map import map_payload

    refresh, estimate, payload, size = [], [], [], 0
    for labels in states:
        start = time.perf_counter()
        s = assist.suggest(space, labels, len(CLASSES))
        assist.next_batch(space, labels, s, k=BATCH)
        refresh.append(time.perf_counter() - start)
        start = time.perf_counter()
        assist.cv_accuracy(space, labels)
        estimate.append(time.perf_counter() - start)
        texts = map_texts(files, labels, s)
        start = time.perf_counter()
        data = map_payload(xy, labels.tolist(), list(CLASSES), texts)
        payload.append(time.perf_counter() - start)
        size = len(json.dumps(data))
    return {"assist": refresh, "estimate": estimate, "payload": payload, "payload_bytes": size}


def profile_run(at, what: str) -> None:
    """cProfile of one rerun (in the thread that runs the page's script): the slowest
    functions by cumulative time, to stderr."""
    from streamlit.runtime.scriptrunner.script_runner import ScriptRunner

    profiler = cProfile.Profile()
    real = ScriptRunner._run_script

    def profiled(self, rerun_data) -> None:
        profiler.runcall(real, self, rerun_data)

    ScriptRunner._run_script = profiled
    try:
        timed_run(at)
    finally:
        ScriptRunner._run_script = real
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(PROFILE_LINES)
    print(f"--- profile of a rerun: {what}\n{text.getvalue()}", file=sys.stderr)


def one_size(n: int, batches: int, profile: bool) -> dict:
    """Every timing at ``n`` pictures (run in its own process)."""
    with tempfile.TemporaryDirectory(prefix="label_scale_") as name:
        tmp = Path(name)
        os.environ.update(
            TL_STUDIO_HOME=str(tmp / "ws"),
            TL_STUDIO_SERVE="0",
            TL_STUDIO_PREWARM="0",
            TL_STUDIO_LABEL_CHECK="off",
            HF_HUB_OFFLINE="1",
        )
        start = time.perf_counter()
        project_id, data_dir, truth = make_project(tmp, n)
        made = time.perf_counter() - start
        start = time.perf_counter()
        at = open_page(project_id)
        first = time.perf_counter() - start
        if at.exception:
            sys.exit(f"the page failed: {at.exception[0].message}")
        reruns = [timed_run(at) for _ in range(3)]
        given, after = [], []
        for _ in range(batches):
            batch = next_files(at)
            if len(batch) != BATCH:
                sys.exit(f"'Label these next' showed {len(batch)} pictures, not {BATCH}")
            give_batch(data_dir, batch, truth)
            given.append(batch)
            after.append(timed_run(at))
        if labelled_metric(at) != len(CLASSES) * START_PER_CLASS + BATCH * batches:
            sys.exit(f"the page counts {labelled_metric(at)} labelled pictures")
        if not any(m.label == "A model trained now" for m in at.sidebar.metric):
            sys.exit("the page shows no accuracy estimate after the batches")
        if profile:
            profile_run(at, "nothing changed")
            give_batch(data_dir, next_files(at), truth)
            profile_run(at, "after 12 labels")
        start = time.perf_counter()
        open_page(project_id)
        visit = time.perf_counter() - start
        from tl_core.labeling.survey import load

        survey = load(next(tmp.glob("ws/jobs/*/survey.npz")))
        states = label_states(data_dir, survey.files, given, truth)[:-1]
        parts = assist_times(survey.space, survey.xy, survey.files, states)
        return {"n": n, "make": made, "first": first, "rerun": reruns, "after": after,
                "visit": visit, **parts}  # fmt: skip


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} / {max(values):.2f}"


def table(rows: list[dict]) -> str:
    """The markdown table of every size, and the growth from the smallest size."""
    head = ["", *[f"{r['n']:,} pictures" for r in rows]]
    lines = [
        ("first run (new process)", [f"{r['first']:.2f}" for r in rows]),
        ("new visit (warm process)", [f"{r['visit']:.2f}" for r in rows]),
        ("rerun, nothing changed (median / worst)", [_cell(r["rerun"]) for r in rows]),
        ("rerun after 12 labels (median / worst)", [_cell(r["after"]) for r in rows]),
        ("assist.suggest + next_batch (median / worst)", [_cell(r["assist"]) for r in rows]),
        ("assist.cv_accuracy, sidebar (median / worst)", [_cell(r["estimate"]) for r in rows]),
        ("map_payload (median / worst)", [_cell(r["payload"]) for r in rows]),
        ("map payload (JSON)", [f"{r['payload_bytes'] / 2**20:.2f} MB" for r in rows]),
    ]
    base = rows[0]
    for kind, name in (("rerun", "nothing-changed rerun"), ("after", "after-12-labels rerun")):
        cells = [f"{statistics.median(r[kind]) / statistics.median(base[kind]):.1f}x" for r in rows]
        lines.append((f"{name} vs {base['n']:,} pictures", cells))
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in lines]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--batches", type=int, default=4, help="batches of 12 labels given")
    parser.add_argument("--profile", type=int, default=0, help="profile a rerun at this size")
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args.batches, args.profile == args.one)))
        return
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--batches", str(args.batches)]
        cmd += ["--profile", str(args.profile)]
        start = time.perf_counter()
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{n:,} pictures: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(table(rows))


if __name__ == "__main__":
    main()
