"""Step 7: take the model home: safetensors, ONNX, 8-bit ONNX, a web page, LiteRT and Core ML,
each checked against the app before it is offered, with predict.py and a model card."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from tl_core import service
from tl_ui import share, web_route
from tl_ui.jobs import watch
from tl_ui.runs import pick_run
from tl_ui.session import get_store

BUNDLE_PARTS = """
- `model/`: the weights as **safetensors** with timm's `config.json`:
  `timm.create_model("local-dir:model")` loads it.
- `model.onnx`: takes raw RGB pictures (uint8, any size) and does the resizing and
  normalisation itself, so it cannot be fed wrongly. Runs with onnxruntime anywhere.
- `model_int8.onnx`: the same, 8-bit: about 4 times smaller and faster, offered only when it
  is as accurate as the full model on your validation pictures.
- `web/`: a web page that runs the model in the browser of a phone or computer, no server.
- `model.tflite` (LiteRT, for Android and small devices) and `model.mlpackage` (Core ML, for
  iPhone, iPad and Mac), when their converters are installed.
- `predict.py` + `requirements.txt`: `python predict.py FOLDER` sorts a folder of pictures.
- `README.md`: the model card: data, settings, accuracy with its interval, weak spots, the
  formats table below, and what the model should not be used for.
"""

HOSTING = """
**Put the web page online.** Unzip `web.zip` and upload the `web` folder's files to any
static web host (a school or company web server, GitHub Pages, Netlify, an S3 bucket): the
page needs no server of its own and loads nothing from anywhere else. Phones open the camera
only on an **https** address; choosing pictures works everywhere. To try it on this computer:
`python -m http.server --directory web 8000`, then open http://localhost:8000.
"""


def _format_table(table: list[dict]) -> pd.DataFrame:
    rows = []
    for r in table:
        rows.append(
            {
                "format": r["title"],
                "offered": "yes" if r["offered"] else "no",
                "size": f"{r['megabytes']:.1f} MB" if r["megabytes"] else "—",
                "pictures per second here": (
                    f"{r['images_per_second']:.0f}" if r["images_per_second"] else "—"
                ),
                "same answer as the app": r["agreement"] if r["pictures"] else "—",
                "accuracy": r["accuracy"] if r["pictures"] else "—",
                "note": r["note"],
            }
        )
    return pd.DataFrame(rows)


def _show_report(summary: dict, bundle: Path) -> None:
    """The formats table, the parity verdict and the downloads of a finished export job."""
    ok = summary["parity_ok"]
    flagged = any(f.get("flag_images") for f in summary["formats"].values())
    (st.success if ok else st.warning)(
        "Parity check passed: every format that runs here gives the app's answer on every "
        "validation picture"
        + (
            ", and the app's unfamiliar flag on them and on 70 everyday pictures."
            if flagged
            else "."
        )
        if ok
        else "Parity check did not pass for every format: see the table and the model card."
    )
    table = summary.get("table") or []
    if not table:
        st.info(
            "This bundle was built before the web page, the 8-bit model, LiteRT and Core ML "
            "were offered: build it again to get them."
        )
    st.dataframe(_format_table(table), hide_index=True)
    st.caption(
        "Speed: pictures per second on this server, reading each picture included. Same "
        "answer: validation pictures with the app's top class, with its 95% interval. A "
        "format that is not offered is not in the zip; its note says why."
    )
    st.download_button(
        f"Download {bundle.name} ({summary['bytes'] / 1e6:.0f} MB)",
        bundle.read_bytes,  # read when clicked, not on every rerun (tens of MB)
        file_name=bundle.name,
        mime="application/zip",
        type="primary",
        icon=":material/download:",
        key="download_bundle",
    )
    for r in table:
        if r["offered"] and r["example"]:
            with st.expander(f"How to use: {r['title']}"):
                language = {"coreml": "swift", "web": "bash"}.get(r["key"], "python")
                st.code(r["example"], language=language)
    web = summary.get("web")
    if web and Path(web).is_file():
        _web_page(Path(web))


def _web_page(web_zip: Path) -> None:
    """The web page's download, how to put it online, and the app's own address for it."""
    st.subheader("The web page: the model on every phone")
    st.download_button(
        f"Download the web page alone ({web_zip.stat().st_size / 1e6:.0f} MB)",
        web_zip.read_bytes,
        file_name="web.zip",
        mime="application/zip",
        icon=":material/language:",
        key="download_web",
    )
    st.markdown(HOSTING)
    if not web_route.mounted():
        return
    address = share.app_address()
    if address is None:
        st.info(
            "This app listens on this computer only, so phones cannot open the page from "
            "it. Start it with `--server.address 0.0.0.0` to share the page with the room."
        )
        return
    url = address.base + web_route.page_path(web_route.share(web_zip))
    left, right = st.columns([1, 2])
    left.image(share.qr_png(url), caption="Scan to open the page", width=220)
    right.markdown(f"**Open it on a phone in this network:** [{url}]({url})")
    right.caption(
        "The page runs the model on the phone itself; this server only hands out its files."
        + (
            ""
            if address.camera
            else " This address is http, so phones will let the page choose pictures but "
            "not open the camera: for the camera, put the page on an https host."
        )
    )


def page() -> None:
    picked = pick_run("take it home")
    if picked is None:
        return
    project, run = picked
    st.markdown("One zip with everything needed to use the model outside this app:" + BUNDLE_PARTS)
    if not _has_mobile_converters():
        st.caption(
            "LiteRT and Core ML need the optional converters: install them with "
            "`uv sync --extra export` (or `pip install 'tl-studio[export]'`) and restart."
        )
    store = get_store()
    job = service.submit_export(store, project, run, submit=False)
    built = job is not None and job.status == "finished"
    if st.button(
        "Build it again" if built else "Build the bundle",
        type="secondary" if built else "primary",
        icon=":material/package_2:",
        key="build_bundle",
        disabled=job is not None and job.active,
    ):
        job = service.rebuild_export(store, project, run)
    done = watch(job, "Building the bundle")
    if done is None or not done.result:
        return
    bundle = Path(done.result["bundle"])
    if not bundle.is_file():
        st.warning("The bundle file is gone from the disk; build it again.")
        return
    _show_report(done.result, bundle)


def _has_mobile_converters() -> bool:
    from tl_core.export import extras

    return not extras.missing_sentence("", extras.LITERT_MODULES + extras.COREML_MODULES)


page()
