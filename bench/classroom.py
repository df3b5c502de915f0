"""A classroom on one server: N students at once, each imports the demo set, sees the head
start, trains 2 epochs (head only) and sees the finished result.

    uv run --group test python bench/classroom.py [--students 10] [--browsers 2]

It starts the real app (``streamlit run app.py`` on a free port, a fresh ``TL_STUDIO_HOME``
in a temporary folder, ``TL_STUDIO_MAX_RUNS`` unset so the machine's default applies). In a
classroom each browser runs on its own computer, so only ``--browsers`` students walk the
real pages in Chromium (Playwright, the selectors and waits of tests/test_browser.py); the
others are simulated in one separate process that does what a page does through the store
of the server's workspace: create the project, import the demo set, submit the jobs and
poll the store every 0.5 s, recording the queue place and estimated wait it would show. The
server runs every job (the app serves the queue; a pump from another process leaves jobs to
it). Beside them, a plain HTTP prober hits ``/_stcore/health`` every 0.5 s. In a classroom
each browser runs on its own computer; here the real browsers share the cores with the
class, so the server (its workers further down) and the simulated students run
``--class-nice`` levels (default 5) below them.

For browsers, "click answered" is the time from a click to the page showing its effect (the
next element the walk waits for). It is split in three from the page's own WebSocket frames
(Streamlit's messages): the browser's part before its request leaves (``request_s``: the
click's event, the page's code; ``press_s`` is Playwright's click itself), the server's
(``server_s``: from that request until the server's "script finished" arrives), and the
rest, drawing the answer (``draw_s``). Prints one JSON object (per student and totals) and
exits non-zero when a student failed or never saw its run finish.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browserflags import CHROMIUM, FLAGS, free_port  # noqa: E402 - the browser walk's own settings

DEMO = ROOT / "assets" / "demo" / "fashion_mnist"
POLL_S = 0.5  # how often a page (and the prober) looks
SLOW_CLICK_S = 2.0
# In a classroom each browser has its own computer: here the real browsers go first on the
# shared cores, the class they stand beside (the server, its workers, the simulated students)
# after them. The server's own part of each click is measured either way (``server_s``).
CLASS_NICE = 5
EPOCHS = 2


def _stats(values: list[float]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "worst": None}
    return {"median": round(statistics.median(vals), 2), "worst": round(max(vals), 2)}


# --- one browser student (its own process) ------------------------------------------------


class FrameLog:
    """When each of a page's own requests left it (a rerun the user asked for, not a
    fragment's timed one) and when each "script finished" came back, read from the page's
    WebSocket frames (Streamlit's BackMsg and ForwardMsg)."""

    def __init__(self, page: Any) -> None:
        self.requests: list[float] = []
        self.finished: list[float] = []
        page.on("websocket", self._watch)

    def _watch(self, ws: Any) -> None:
        ws.on("framesent", self._sent)
        ws.on("framereceived", self._received)

    def _sent(self, payload: Any) -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg

        now = time.perf_counter()
        with contextlib.suppress(Exception):  # not one of Streamlit's messages
            msg = BackMsg.FromString(payload)
            if msg.WhichOneof("type") == "rerun_script" and not msg.rerun_script.is_auto_rerun:
                self.requests.append(now)

    def _received(self, payload: Any) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        now = time.perf_counter()
        with contextlib.suppress(Exception):
            msg = ForwardMsg.FromString(payload)
            if msg.WhichOneof("type") == "script_finished" and msg.script_finished in (
                ForwardMsg.FINISHED_SUCCESSFULLY,
                ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY,
            ):
                self.finished.append(now)

    def split(self, clicked: float, shown: float) -> dict[str, float]:
        """The click's time in parts: before its request left, the server's, the drawing."""
        sent = next((t for t in self.requests if clicked <= t <= shown), None)
        if sent is None:  # answered without asking the server (a panel opened in the page)
            return {}
        done = next((t for t in self.finished if t >= sent), shown)
        done = min(done, shown)
        return {
            "request_s": round(sent - clicked, 2),
            "server_s": round(done - sent, 2),
            "draw_s": round(shown - done, 2),
        }


def browser_student(url: str, index: int, deadline: float) -> dict[str, Any]:
    """Walk the real pages in Chromium: demo set, head start, 2 epochs head only, result."""
    from playwright.sync_api import expect, sync_playwright

    out: dict[str, Any] = {"student": index, "kind": "browser", "clicks": [], "status": None}
    clicks: list[dict[str, Any]] = out["clicks"]
    started = time.perf_counter()

    def left_ms() -> float:
        return max(1_000.0, (deadline - time.time()) * 1000)

    def click(name: str, target: Any, answer: Any, key: str | None = None) -> float:
        """Click (or press ``key`` in) ``target``, then wait until the page shows ``answer``;
        record how long that took."""
        t = time.perf_counter()
        target.press(key) if key else target.click()
        pressed = time.perf_counter()  # Playwright has dispatched the click in the page
        expect(answer.first).to_be_visible(timeout=left_ms())
        shown = time.perf_counter()
        clicks.append(
            {
                "click": name,
                "answered_s": round(shown - t, 2),
                "press_s": round(pressed - t, 2),
                **frames.split(t, shown),
            }
        )
        return t

    def idle(pg: Any) -> None:
        expect(pg.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=left_ms())

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            frames = FrameLog(pg)
            pg.set_default_timeout(60_000)
            main = pg.get_by_test_id("stMain")
            pg.goto(url)
            expect(pg.get_by_role("heading", name="1. Your images")).to_be_visible(
                timeout=left_ms()
            )
            out["page_load_s"] = round(time.perf_counter() - started, 2)

            done = pg.get_by_text("A few images of each class")
            t = click(  # answered by the import's panel (its place, or its progress) or the images
                "Use the demo set",
                pg.get_by_role("button", name="Use the demo set"),
                pg.get_by_text(re.compile(r"^Importing your images: ")).or_(done),
            )
            expect(done).to_be_visible(timeout=left_ms())
            out["import_s"] = round(time.perf_counter() - t, 2)
            m = re.search(r"project=([^&#]+)", pg.url)
            out["project_id"] = m[1] if m else None
            idle(pg)

            t = click(
                "Choose a model",
                pg.get_by_role("link", name=re.compile("Choose a model")).first,
                pg.get_by_role("heading", name="3. Choose a model"),
            )
            expect(pg.get_by_text("Sorted right before any training")).to_be_visible(
                timeout=left_ms()
            )
            out["head_start_s"] = round(time.perf_counter() - t, 2)
            idle(pg)

            click(
                "Train (page)",
                pg.get_by_role("link", name=re.compile("Train")).first,
                pg.get_by_role("heading", name="4. Train"),
            )
            expect(pg.get_by_text("parameters learn")).to_be_visible(timeout=left_ms())
            expect(pg.get_by_text("only the new head").first).to_be_visible(timeout=left_ms())
            idle(pg)
            epochs = pg.get_by_label("Epochs (passes over your images)")
            click("Advanced settings", pg.get_by_text("Advanced settings"), epochs)
            epochs.fill(str(EPOCHS))
            # the field is saved as it is entered
            click("Epochs entered", epochs, pg.get_by_text(f"{EPOCHS} epochs ·"), key="Enter")
            idle(pg)

            waiting = pg.get_by_text(re.compile(r"place \d+ in the queue"))
            t = click(
                "Train",
                main.get_by_role("button", name="Train", exact=True),
                main.get_by_role("button", name="Stop").or_(waiting),
            )
            _watch_browser_run(pg, t, deadline, out)
            if out["status"] == "finished":
                train = main.get_by_role("button", name="Train", exact=True)
                expect(train).to_be_enabled(timeout=left_ms())
        finally:
            browser.close()
    return out


def _watch_browser_run(pg: Any, clicked: float, deadline: float, out: dict[str, Any]) -> None:
    """Read the run panel every 0.5 s: queue place, first epoch point, the finished line."""
    places: list[dict[str, Any]] = []
    out["queue"] = places
    place_re = re.compile(r"place (\d+) in the queue")
    first = re.compile(rf"epoch {EPOCHS}/{EPOCHS}")  # the panel counts the epoch in progress
    while time.time() < deadline:
        now = time.perf_counter() - clicked
        text = pg.get_by_test_id("stMain").inner_text(timeout=30_000)
        m = place_re.search(text)
        if m and (not places or places[-1]["place"] != int(m[1])):
            places.append({"t": round(now, 1), "place": int(m[1])})
        if out.get("first_point_s") is None and (first.search(text) or "Finished:" in text):
            out["first_point_s"] = round(now, 2)
        if re.search(r"Finished: .* validation accuracy", text):
            out["finish_s"] = round(now, 2)
            out["status"] = "finished"
            return
        for word in ("Training failed", "Stopped.", "interrupted"):
            if word in text:
                out["status"] = "failed"
                out["error"] = text[text.index(word) :][:200]
                return
        time.sleep(POLL_S)
    out["status"] = "timed out"


# --- the simulated students (one process, a thread each) -----------------------------------


def simulated_student(workspace: Path, index: int, deadline: float) -> dict[str, Any]:
    """What the pages do for a student, through the store of the server's workspace."""
    from tl_core import service
    from tl_core.config import RunSpec, TrainConfig
    from tl_core.models import catalog
    from tl_core.runs.store import Store

    store = Store(workspace)
    out: dict[str, Any] = {"student": index, "kind": "simulated", "status": None}
    t = time.perf_counter()
    job = service.submit_import(store, None, "demo", path=DEMO)  # as the Data page does
    end = _watch_job(store, job.id, t, deadline)
    out["import_s"] = end.get("finish_s")
    out["import_queue"] = end["queue"]
    if end["status"] != "finished":
        out["status"] = f"import {end['status']}"
        out["error"] = end.get("error")
        return out
    store.update_settings(job.project_id, model=catalog.DEFAULT_MODEL)
    project = store.project(job.project_id)
    data = Path(project.data_dir)
    out["project_id"] = project.id

    if True:  # the Model page's head start, as a job
        t = time.perf_counter()
        project = store.project(project.id)
        split = service.split_settings(project)
        job = service.submit_features(
            store, project, catalog.DEFAULT_MODEL, split.val_fraction, split.seed
        )
        end = _watch_job(store, job.id, t, deadline)
        out["head_start_queue"] = end["queue"]
        out["head_start_s"] = end.get("finish_s")
        if end["status"] != "finished":
            out["status"] = f"head start {end['status']}"
            out["error"] = end.get("error")
            return out

    t = time.perf_counter()
    run = service.submit_job(store, project.id, RunSpec(TrainConfig(epochs=EPOCHS)), data)
    end = _watch_job(store, run.id, t, deadline)
    out.update({k: end[k] for k in ("first_point_s", "finish_s", "status", "queue") if k in end})
    if end.get("error"):
        out["error"] = end["error"]
    return out


def _watch_job(store: Any, job_id: str, clicked: float, deadline: float) -> dict[str, Any]:
    """Poll like a page: place and estimated wait while queued, the first point, the end."""
    from tl_core.runs import jobs, supervisor
    from tl_core.runs.store import UNFINISHED

    seen: list[dict[str, Any]] = []
    end: dict[str, Any] = {"queue": seen, "first_point_s": None}
    while time.time() < deadline:
        now = time.perf_counter() - clicked
        run = store.job(job_id)
        if run is None:
            end.update(status="lost", error="the job disappeared")
            return end
        if run.status == "queued":
            place = store.queue_position(job_id)
            wait = jobs.estimated_wait(store, job_id)
            if not seen or seen[-1]["place"] != place:
                seen.append({"t": round(now, 1), "place": place, "wait_s": wait and round(wait, 1)})
        if end["first_point_s"] is None and store.epochs(job_id):
            end["first_point_s"] = round(now, 2)
        if run.status not in (*UNFINISHED, "held"):
            end.update(status=run.status, finish_s=round(now, 2), error=run.error)
            return end
        supervisor.pump(store)  # a watching page keeps the queue moving (the server runs the job)
        time.sleep(POLL_S)
    end["status"] = "timed out"
    return end


def simulated_students(workspace: Path, indices: list[int], deadline: float) -> list[dict]:
    results: dict[int, dict[str, Any]] = {}

    def one(i: int) -> None:
        try:
            results[i] = simulated_student(workspace, i, deadline)
        except Exception as exc:  # reported as this student's failure
            results[i] = {"student": i, "kind": "simulated", "status": "failed", "error": repr(exc)}

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in indices]
    for th in threads:
        th.start()
    for th in threads:
        th.join(max(1.0, deadline - time.time() + 30))
    return [
        results.get(i, {"student": i, "kind": "simulated", "status": "timed out"}) for i in indices
    ]


# --- the conductor ------------------------------------------------------------------------


def _session_procs(sid: int) -> Iterator[tuple[str, list[str]]]:
    """(pid, /proc/PID/stat fields after the name) of every process in session ``sid``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # fields[0] is the state; [3] the session id
                yield entry, fields
        except (OSError, ValueError, IndexError):
            continue


def _session_rss_mb(sid: int) -> float:
    """Resident memory of every process in session ``sid`` (the server and its workers)."""
    total = 0
    for pid, _ in _session_procs(sid):
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total / 2**20


def _session_cpu_s(sid: int) -> float:
    """CPU seconds used so far by every process in session ``sid``."""
    ticks = sum(int(fields[11]) + int(fields[12]) for _, fields in _session_procs(sid))
    return ticks / os.sysconf("SC_CLK_TCK")  # utime + stime


def _wait_until_warm(sid: int, timeout_s: float = 180) -> float:
    """The teacher started the app before the class: wait until the server and its warm
    worker have done their start-up (less than 0.2 CPU seconds in 2 s). Returns the wait."""
    started = time.perf_counter()
    last = _session_cpu_s(sid)
    while time.perf_counter() - started < timeout_s:
        time.sleep(2)
        now = _session_cpu_s(sid)
        if now - last < 0.2:
            break
        last = now
    return round(time.perf_counter() - started, 1)


class Sampler:
    """Background loops beside the students: the health prober and the server's memory."""

    def __init__(self, port: int, server_pid: int) -> None:
        self.url = f"http://127.0.0.1:{port}/_stcore/health"
        self.pid = server_pid
        self.health: list[float] = []
        self.health_failures = 0
        self.rss_peak_mb = 0.0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._probe, daemon=True),
            threading.Thread(target=self._memory, daemon=True),
        ]

    def start(self) -> None:
        for th in self._threads:
            th.start()

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(35)

    def _probe(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=30) as resp:
                    resp.read()
                self.health.append(time.perf_counter() - t)
            except OSError:
                self.health_failures += 1
            self._stop.wait(max(0.0, POLL_S - (time.perf_counter() - t)))

    def _memory(self) -> None:
        while not self._stop.is_set():
            self.rss_peak_mb = max(self.rss_peak_mb, _session_rss_mb(self.pid))
            self._stop.wait(1.0)


def _niced(cmd: list[str], levels: int) -> list[str]:
    """``cmd`` run ``levels`` nice levels below this process (``nice`` execs it: same pid)."""
    return ["nice", "-n", str(levels), *cmd] if levels else cmd


@contextlib.contextmanager
def app_server(
    home: Path, log: Path, port: int, nice_levels: int = 0
) -> Iterator[subprocess.Popen]:
    """The real app on ``port``, in its own session (so its workers go with it), run
    ``nice_levels`` below the browsers (its workers go a further ``WORKER_NICE`` down)."""
    env = {k: v for k, v in os.environ.items() if k != "TL_STUDIO_MAX_RUNS"}
    env.update(TL_STUDIO_HOME=str(home), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    cmd += ["--server.port", str(port), "--server.address", "127.0.0.1"]
    cmd += ["--browser.gatherUsageStats", "false"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            _niced(cmd, nice_levels),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """Ask the process to stop (it stops its own children), then kill what is left of its
    session's process group."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers and Chromium the group still holds
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.5)
    raise SystemExit(f"{what} did not happen within {timeout_s:.0f} s.")


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _child(
    role: str, args: list[str], folder: Path, name: str, nice_levels: int = 0
) -> tuple[subprocess.Popen, Path]:
    result = folder / f"{name}.json"
    cmd = [sys.executable, __file__, "--role", role, "--result", str(result), *args]
    cmd = _niced(cmd, nice_levels)
    with (folder / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return proc, result


def _wake_server(url: str, timeout_s: float) -> None:
    """Open the app once in a browser: the server starts serving the queue on its first page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            browser.new_page().goto(url, timeout=timeout_s * 1000)
            time.sleep(5)
        finally:
            browser.close()


def conduct(opts: argparse.Namespace) -> int:
    from tl_core.runs import jobs, supervisor
    from tl_core.runs.store import Store

    n_browsers = min(opts.browsers, opts.students)
    folder = Path(tempfile.mkdtemp(prefix="tl-classroom-"))
    home = folder / "home"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    children: list[tuple[subprocess.Popen, Path]] = []
    out: dict[str, Any] = {
        "students": opts.students,
        "browsers": n_browsers,
        "cpu_cores": jobs.cpu_count(),
        "job_slots": jobs.machine_slots(),  # the server's default: TL_STUDIO_MAX_RUNS is unset
        "load_average_before": os.getloadavg()[0],
        "class_nice": opts.class_nice,
    }
    try:
        with app_server(home, folder / "streamlit.log", port, opts.class_nice) as server:
            _wait_until(lambda: _healthy(port), 120, "The app server's start")
            _wake_server(url, 120)
            out["server_warm_up_s"] = _wait_until_warm(server.pid)
            sampler = Sampler(port, server.pid)
            sampler.start()
            started = time.perf_counter()
            deadline = time.time() + opts.timeout
            common = ["--url", url, "--workspace", str(home), "--deadline", str(deadline)]
            for i in range(n_browsers):
                children.append(_child("browser", [*common, "--index", str(i)], folder, f"b{i}"))
            simulated = list(range(n_browsers, opts.students))
            if simulated:
                # until the server serves the queue, a pump elsewhere would start lone workers
                _wait_until(lambda: supervisor.served_elsewhere(home), 180, "Serving the queue")
                ids = ",".join(map(str, simulated))
                sim = [*common, "--index", ids]
                children.append(_child("simulated", sim, folder, "sim", opts.class_nice))
            while any(p.poll() is None for p, _ in children) and time.time() < deadline + 60:
                if server.poll() is not None:  # the students would only wait for nothing
                    out["server_exit_code"] = server.returncode
                    break
                time.sleep(1.0)
            for proc, _ in children:
                if proc.poll() is None:
                    _kill_group(proc, 2)
            out["wall_s"] = round(time.perf_counter() - started, 1)
            sampler.stop()
            students = _collect(children, opts.students, n_browsers)
            _add_store_view(Store(home), students)
            out["per_student"] = students
            out["totals"] = _totals(students, sampler)
            out["server_alive_at_end"] = server.poll() is None
    finally:
        for proc, _ in children:
            if proc.poll() is None:
                _kill_group(proc, 2)
        if opts.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(out, indent=1))
    bad = out["totals"]["failures"] + out["totals"]["unfinished"]
    return 1 if bad else 0


def _collect(children: list[tuple[subprocess.Popen, Path]], n: int, n_browsers: int) -> list:
    found: dict[int, dict[str, Any]] = {}
    for _, result in children:
        try:
            value = json.loads(result.read_text())
        except (OSError, ValueError):
            continue
        for s in value if isinstance(value, list) else [value]:
            found[int(s["student"])] = s
    return [
        found.get(
            i,
            {
                "student": i,
                "kind": "browser" if i < n_browsers else "simulated",
                "status": "no result",
            },
        )
        for i in range(n)
    ]


def _add_store_view(store: Any, students: list[dict[str, Any]]) -> None:
    """What the store says of each student's jobs: how long each waited in the queue."""
    for s in students:
        if not s.get("project_id"):
            continue
        s["jobs"] = [
            {
                "kind": j.kind,
                "status": j.status,
                "waited_s": round(j.started - (j.queued_at or j.created), 1) if j.started else None,
                "ran_s": round(j.finished - j.started, 1) if j.started and j.finished else None,
            }
            for j in store.jobs(s["project_id"])
        ]


def _saw_no_place(s: dict[str, Any]) -> bool:
    """The store says the training run waited, yet the student never saw a queue place."""
    waited = [j["waited_s"] or 0.0 for j in s.get("jobs", []) if j["kind"] == "train"]
    return bool(waited) and max(waited) > 3.0 and not s.get("queue")


def _totals(students: list[dict[str, Any]], sampler: Sampler) -> dict[str, Any]:
    clicks = [c["answered_s"] for s in students for c in s.get("clicks", [])]

    def part(key: str) -> dict[str, float | None]:
        return _stats([c[key] for s in students for c in s.get("clicks", []) if key in c])

    def each(key: str) -> list[float]:
        return [s[key] for s in students if s.get(key) is not None]

    statuses = [s.get("status") for s in students]
    return {
        "head_start_s": _stats(each("head_start_s")),
        "first_point_s": _stats(each("first_point_s")),
        "finish_s": _stats(each("finish_s")),
        "import_s": _stats(each("import_s")),
        "click_answered_s": _stats(clicks),
        "clicks": len(clicks),
        "clicks_over_2s": sum(c > SLOW_CLICK_S for c in clicks),
        "click_parts_s": {k: part(k) for k in ("press_s", "request_s", "server_s", "draw_s")},
        "students_who_saw_a_queue_place": sum(
            bool(s.get("queue") or s.get("head_start_queue")) for s in students
        ),
        "waited_but_saw_no_place": sum(_saw_no_place(s) for s in students),
        "train_waited_s": _stats(
            [j["waited_s"] for s in students for j in s.get("jobs", []) if j["kind"] == "train"]
        ),
        "health_s": _stats(sampler.health),
        "health_checks": len(sampler.health),
        "health_failures": sampler.health_failures,
        "finished": statuses.count("finished"),
        "failures": sum(st not in ("finished", "timed out", "no result") for st in statuses),
        "unfinished": sum(st in ("timed out", "no result") for st in statuses),
        "server_rss_peak_mb": round(sampler.rss_peak_mb),
    }


def _as_child(opts: argparse.Namespace) -> int:
    """Run one browser student or the simulated ones; write the result for the conductor."""
    deadline = float(opts.deadline)
    try:
        if opts.role == "browser":
            result: Any = browser_student(opts.url, int(opts.index), deadline)
        else:
            indices = [int(i) for i in opts.index.split(",")]
            result = simulated_students(Path(opts.workspace), indices, deadline)
    except Exception as exc:  # reported as this student's failure
        traceback.print_exc()
        result = {"student": int(opts.index.split(",")[0]), "kind": opts.role}
        result.update(status="failed", error=f"{type(exc).__name__}: {str(exc)[:300]}")
    Path(opts.result).write_text(json.dumps(result))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=10)
    parser.add_argument("--browsers", type=int, default=2, help="students in real Chromium")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for the whole run")
    parser.add_argument("--keep", action="store_true", help="keep the workspace and logs")
    parser.add_argument(
        "--class-nice",
        type=int,
        default=CLASS_NICE,
        help="nice levels the server (its workers further down) and the simulated students "
        "run below the real browsers; 0: all at the same priority",
    )
    for hidden in ("--role", "--result", "--url", "--workspace", "--deadline", "--index"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.role:
        return _as_child(opts)
    if opts.browsers and not Path(CHROMIUM).exists():
        raise SystemExit("Chromium is missing: install it with `apt-get install -y chromium`.")
    # a Ctrl-C or a kill still runs the clean-up (server, workers, browsers)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return conduct(opts)


if __name__ == "__main__":
    sys.exit(main())
