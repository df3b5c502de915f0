"""Live guesses per second on the Try page: the studio's own route against a fragment rerun.

    uv run --group test python bench/live_rate.py [--seconds 20] [--epochs 1]

Trains one head-only run on the bundled demo set, then, side by side in one run:

- ``server``: the route alone, without a browser: the same 320x240 JPEG POSTed to
  ``/api/live-guess`` one after the other from this process, as fast as answers come
  (what the server can give one live view on this machine);
- ``route``: the real app (``streamlit run app.py``) and a headless Chromium whose fake camera
  plays a generated video, on the Try page's live view: answers counted in the page
  (the view's ``data-n``) over ``--seconds``;
- ``rerun``: the same page served without the route (``streamlit run studio.py``), where each
  frame is a trigger value answered in a fragment rerun.

Prints one JSON line: guesses per second of each, the route's ratio to the rerun, the load
average before and after. Chromium, the server and this script share the machine's cores,
as a teacher's laptop running the app and its browser would.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browserflags import CHROMIUM, camera_browser, serve_app  # noqa: E402 - the browser walks' own

from tl_core.config import TrainConfig  # noqa: E402
from tl_core.data.dataset import import_folder, split_dataset  # noqa: E402
from tl_core.runs.store import Store  # noqa: E402
from tl_ui.live_route import ROUTE, TOKEN_HEADER  # noqa: E402

DEMO = ROOT / "assets" / "demo" / "fashion_mnist"
W, H, FPS, FRAMES = 640, 480, 15, 45


def trained_project(workspace: Path, epochs: int) -> tuple[str, str, str]:
    """A project on the demo set with one finished head-only run: (project id, run folder,
    a picture of its data as a camera JPEG in base64)."""
    from tl_core.training.engine import fit

    store = Store(workspace)
    project = store.create_project()
    manifest = import_folder(DEMO, workspace / "demo-data")
    store.set_data_dir(project.id, manifest.root)
    cfg = TrainConfig(model="efficientnet_lite0", epochs=epochs, trainable_groups=0)
    run = store.create_job(project.id, asdict(cfg), manifest.root)
    fit(cfg, split_dataset(manifest), manifest.root, manifest.classes, Path(run.run_dir))
    store.update_job(run.id, status="finished", result={"val_accuracy": 1.0})
    src = next(manifest.root.rglob("*.png"))
    out = io.BytesIO()
    Image.open(src).convert("RGB").resize((320, 240)).save(out, "JPEG", quality=80)
    return project.id, run.run_dir, base64.b64encode(out.getvalue()).decode()


def write_y4m(path: Path) -> Path:
    """A looping camera video: a grey garment-like shape drifting over a dark background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{W} H{H} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for k in range(FRAMES):
            y = np.full((H, W), 30.0, np.float32)
            cx, cy = W / 2 + 40 * np.sin(k / 7), H / 2 + 20 * np.cos(k / 5)
            y[(np.abs(xx - cx) < 120) & (np.abs(yy - cy) < 160)] = 170
            y += rng.normal(0, 6, y.shape)
            f.write(b"FRAME\n" + y.clip(0, 255).astype(np.uint8).tobytes())
            f.write(np.full((H // 2) * (W // 2) * 2, 128, np.uint8).tobytes())
    return path


def server_alone(url: str, token: str, jpeg: bytes, seconds: float) -> dict[str, float]:
    """Answers a second from the route with nothing but this loop asking."""
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "image/jpeg", TOKEN_HEADER: token}
    n, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        conn.request("POST", ROUTE, body=jpeg, headers=headers)
        res = conn.getresponse()
        body = json.loads(res.read())
        assert res.status == 200 and "bars" in body, (res.status, body)
        n += 1
    elapsed = time.monotonic() - start
    conn.close()
    per_s, ms = round(n / elapsed, 2), round(1000 * elapsed / n, 1)
    return {"guesses": n, "per_s": per_s, "ms_per_guess": ms}


def in_browser(
    url: str, project: str, video: Path, seconds: float, shot: Path | None
) -> tuple[dict, str | None]:
    """Guesses a second the Try page's live view shows, counted in the page, and its token
    for the route (None: it sent its frames as trigger values)."""
    from playwright.sync_api import expect

    with camera_browser(video, url, height=1000) as page:
        tokens: list[str] = []  # the live view's token, from its requests to the route

        def seen(request: Any) -> None:
            if request.url.endswith(ROUTE):
                tokens.append(request.headers[TOKEN_HEADER.lower()])

        page.on("request", seen)
        page.goto(f"{url}/try_it?project={project}")
        verdict = page.get_by_test_id("tlcam-verdict")
        expect(verdict).to_have_attribute("data-n", re.compile(r"\d+"), timeout=180_000)
        time.sleep(3)  # past the first answers (the model loads on the first)
        n0, t0 = int(verdict.get_attribute("data-n") or 0), time.monotonic()
        time.sleep(seconds)
        n1, t1 = int(verdict.get_attribute("data-n") or 0), time.monotonic()
        shown = page.get_by_test_id("tlcam-rate").get_attribute("data-rate")
        if shot:
            page.screenshot(path=shot, full_page=True)
    said = {"guesses": n1 - n0, "per_s": round((n1 - n0) / (t1 - t0), 2), "page_says": shown}
    return said, (tokens[0] if tokens else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="each measurement's length")
    parser.add_argument("--epochs", type=int, default=1, help="of the head-only run")
    parser.add_argument("--shots", type=Path, help="save a screenshot of each live view here")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print("Chromium is missing: install it with `apt-get install -y chromium`.")
        return 1
    work = Path(tempfile.mkdtemp(prefix="tl-live-rate-"))
    try:
        workspace = work / "ws"
        workspace.mkdir()
        project, _run_dir, jpeg64 = trained_project(workspace, args.epochs)
        video = write_y4m(work / "camera.y4m")
        load_before = os.getloadavg()[0]
        result: dict = {}
        for mode, script in (("route", "app.py"), ("rerun", "studio.py")):
            with serve_app(workspace, work / f"{mode}.log", script=script) as url:
                shot = args.shots / f"live_{mode}.png" if args.shots else None
                if shot:
                    shot.parent.mkdir(parents=True, exist_ok=True)
                result[mode], token = in_browser(url, project, video, args.seconds, shot)
                assert (token is not None) == (mode == "route"), (mode, token)
                if token:  # the grant outlives the page a while (tl_ui.live_route.IDLE_S)
                    jpeg = base64.b64decode(jpeg64)
                    result["server"] = server_alone(url, token, jpeg, args.seconds)
        route, rerun = result["route"]["per_s"], result["rerun"]["per_s"]
        result["route_vs_rerun"] = round(route / max(rerun, 1e-9), 2)
        result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        result["cpu_count"] = os.cpu_count()
        print(json.dumps(result))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
