"""Step 6: take the model home: safetensors + ONNX + predict.py + model card, parity-checked."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from tl_core.errors import StudioError
from tl_core.runs.store import Project, Run
from tl_ui.runs import pick_run
from tl_ui.text import literal

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


def _bundle_path(project: Project, run: Run) -> Path:
    name = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in (project.name or "model"))
    return Path(run.run_dir) / "export" / f"{name.strip('-') or 'model'}-{run.config['model']}.zip"


def _show_report(summary: dict, bundle: Path) -> None:
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
                "note": f["reason"],
            }
        )
    (st.success if ok else st.warning)(
        "Parity check passed: every exported format gives the app's answer on every "
        "validation picture."
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
    st.title("6. Export")
    picked = pick_run("take it home")
    if picked is None:
        return
    project, run = picked
    st.markdown("One zip with everything needed to use the model outside this app:" + BUNDLE_PARTS)
    bundle = _bundle_path(project, run)
    report_file = bundle.with_suffix(".json")
    if st.button(
        "Build the bundle" if not bundle.exists() else "Build it again",
        type="secondary" if bundle.exists() else "primary",
        icon=":material/package_2:",
        key="build_bundle",
    ):
        from tl_core.export.bundle import export_run

        bundle.parent.mkdir(parents=True, exist_ok=True)
        with st.status("Building the bundle…", expanded=True) as status:
            try:
                report = export_run(
                    Path(run.run_dir), bundle, Path(run.data_dir), progress=status.write
                )
            except StudioError as exc:
                status.update(label="The bundle could not be built", state="error")
                st.error(literal(exc))
                return
            report_file.write_text(json.dumps(report.summary()))
            status.update(label="Bundle ready", state="complete", expanded=False)
    if bundle.exists() and report_file.exists():
        _show_report(json.loads(report_file.read_text()), bundle)


page()
