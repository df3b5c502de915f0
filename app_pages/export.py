"""Step 7: take the model home: safetensors + ONNX + predict.py + model card, parity-checked."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from tl_core import service
from tl_ui.jobs import watch
from tl_ui.runs import pick_run
from tl_ui.session import get_store

BUNDLE_PARTS = """
- `model/`: the weights as **safetensors** with timm's `config.json` (class names, input size,
  mean/std, interpolation, crop): `timm.create_model("local-dir:model")` loads it.
- `model.onnx`: takes raw RGB pictures (uint8, any size) and does the resizing and
  normalisation itself, so it cannot be fed wrongly. Runs with onnxruntime anywhere.
- `predict.py` + `requirements.txt`: `python predict.py FOLDER` sorts a folder of pictures
  with either file.
- `README.md`: the model card: data, settings, accuracy with its interval, weak spots, and
  what the model should not be used for.
"""


def _show_report(summary: dict, bundle: Path) -> None:
    """The parity table and the download of a finished export job's bundle."""
    ok = summary["parity_ok"]
    rows = []
    for name, f in summary["formats"].items():
        rows.append(
            {
                "format": name,
                "check": f["status"],
                "images": f["images"],
                "same top class": f"{f['top1_agree']} of {f['images']}" if f["images"] else "—",
                "largest probability difference": (
                    f"{f['max_prob_diff']:.1e}" if f["max_prob_diff"] is not None else "—"
                ),
                "allowed": f"{f['tolerance']:.0e}",
                "same unfamiliar flag": (
                    f"{f['flag_agree']} of {f['flag_images']}" if f.get("flag_images") else "—"
                ),
                "note": f["reason"],
            }
        )
    (st.success if ok else st.warning)(
        "Parity check passed: every exported format gives the app's answer on every "
        "validation picture"
        + (
            ", and the app's unfamiliar flag on them and on 70 everyday pictures."
            if any(f.get("flag_images") for f in summary["formats"].values())
            else "."
        )
        if ok
        else "Parity check did not pass for every format: see the table and the model card."
    )
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    st.download_button(
        f"Download {bundle.name} ({summary['bytes'] / 1e6:.0f} MB)",
        bundle.read_bytes(),
        file_name=bundle.name,
        mime="application/zip",
        type="primary",
        icon=":material/download:",
        key="download_bundle",
    )


def page() -> None:
    picked = pick_run("take it home")
    if picked is None:
        return
    project, run = picked
    st.markdown("One zip with everything needed to use the model outside this app:" + BUNDLE_PARTS)
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


page()
