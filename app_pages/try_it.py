"""Step 6: try the trained model on new pictures: the live camera, uploads or one photo."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from tl_core import service
from tl_core.analysis.evaluation import Calibration, load_calibration
from tl_core.data.dataset import IMAGE_SUFFIXES
from tl_core.errors import StudioError
from tl_core.runs.store import Job
from tl_core.training import familiarity
from tl_ui.batch import results_table
from tl_ui.charts import top_classes_figure
from tl_ui.jobs import watch
from tl_ui.liveguess import camera_problem, live_view, verdict
from tl_ui.runs import pick_run, trained_model
from tl_ui.session import get_store
from tl_ui.state import state
from tl_ui.text import literal, plot_literal

LIVE = "Live camera"
OFF = "off"  # the unfamiliar check's choice that turns it off


def _predict_one(run_dir: str, name: str, data: bytes, temperature: float):
    """(name, probabilities or None, error or None, unfamiliarity or None) of one picture,
    in this process (fast)."""
    try:
        guessed = trained_model(run_dir).guess([data], temperature=temperature)
    except StudioError as exc:
        return name, None, str(exc), None
    far = guessed.unfamiliarity
    return name, guessed.probs[0], None, None if far is None else float(far[0])


def _predict_many(run: Job, named: list[tuple[str, bytes]], temperature: float):
    """The same for many pictures, as a job of the queue; None while it waits or works."""
    job = service.submit_predict(get_store(), run, named, temperature)
    done = watch(job, f"Looking at {len(named)} pictures")
    if done is None:
        return None
    return [
        (
            r["name"],
            np.asarray(r["probs"]) if r["probs"] is not None else None,
            r["error"],
            r.get("unfamiliarity"),  # None from a job of a run without the check
        )
        for r in (done.result or {}).get("rows", [])
    ]


def _uploads() -> list[tuple[str, bytes]]:
    """The pictures dropped on the uploader, as (name, bytes)."""
    files = st.file_uploader(
        "Drop one or more pictures",
        type=sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES),  # as at import
        accept_multiple_files=True,
        key="try_upload",
    )
    # getvalue() hands back the uploaded bytes themselves (no copy): the pictures are in
    # memory once, then written to the job's folder, which reads them a batch at a time.
    return [(f.name, f.getvalue()) for f in files or []]


def _probabilities_note(calibration: Calibration) -> str:
    """Which probabilities the page shows, and why (the calibration's own reason)."""
    if calibration.calibrated:
        return (
            "Probabilities are calibrated on the validation images (temperature "
            f"{calibration.temperature:.2f}). {calibration.reason()}"
        )
    return f"Probabilities are as trained (temperature 1.00). {calibration.reason()}"


def _accept_label(accept: float | str) -> str:
    if accept == OFF:
        return "off (no check)"
    if accept == 1.0:
        return "all of your validation pictures"
    return f"{accept:.0%} of your validation pictures"


def _unfamiliar_threshold(run: Job) -> float | None:
    """The unfamiliar check's control, kept per run across reruns and pages; its threshold
    (None: off, or a run trained before the check existed, which a caption says)."""
    fam = trained_model(run.run_dir).familiarity
    if fam is None:
        st.caption(
            "This model was trained before the unfamiliar check existed, so it cannot say when "
            "a picture looks like none of your classes; train it again to get the check."
        )
        return None
    kept = state().unfamiliar_accepts
    key = f"try_unfamiliar_{run.id}"
    if key not in st.session_state:  # a page switch forgets the widget, not the choice
        st.session_state[key] = kept.get(run.id, familiarity.ACCEPT)
    # right is more careful, as for 'not sure': off, then all of them, then fewer
    choices: list[float | str] = [OFF, *sorted(familiarity.ACCEPT_CHOICES, reverse=True)]
    accept = st.select_slider(
        "Call a picture unfamiliar when it is further from your training pictures than",
        choices,
        format_func=_accept_label,
        key=key,
        help="The model compares a new picture with every training picture; one unlike all "
        "of them is answered 'Unfamiliar' instead of a class. The default lets through "
        f"{familiarity.ACCEPT:.0%} of your validation pictures (new pictures of your classes); "
        "fewer catches more pictures of other things, and more of yours by mistake.",
    )
    kept[run.id] = accept
    st.caption(
        "'Unfamiliar': the picture looks like none of your classes, further from every "
        "training picture than your own new pictures are. 'Not sure' is different: it looks "
        "like two of your classes at once."
    )
    return None if accept == OFF else fam.threshold_at(float(accept))


def _thresholds(run: Job, calibration: Calibration) -> tuple[float, float | None]:
    """The 'not sure' threshold and the unfamiliar check's (None: off), side by side."""
    c1, c2 = st.columns(2)
    with c1:
        threshold = st.slider(
            "Say 'not sure' when the top class is below",
            0.0,
            1.0,
            float(round(calibration.threshold, 2)),
            0.01,
            format="%.2f",
            help="The default was chosen on the validation images. Raise it to be more careful.",
        )
    with c2:
        unfamiliar_threshold = _unfamiliar_threshold(run)
    return threshold, unfamiliar_threshold


def _photo(label: str) -> list[tuple[str, bytes]]:
    """A photo taken with the browser's camera, as (name, bytes); none until it is taken."""
    shot = st.camera_input(label, key="try_camera")
    return [("camera.jpg", shot.getvalue())] if shot is not None else []


def _pictures(
    run: Job, calibration: Calibration, threshold: float, unfamiliar_threshold: float | None
) -> list[tuple[str, bytes]] | None:
    """The pictures to look at, from the source chosen; None when the live camera works
    (it answers by itself)."""
    source = st.radio(
        "Pictures from",
        [LIVE, "Upload", "Camera"],
        horizontal=True,
        label_visibility="collapsed",
        key="try_source",
    )
    if source == "Upload":
        return _uploads()
    if source != LIVE:
        return _photo("Take a photo")
    st.caption(
        "Hold things in front of the camera: the bars follow what it sees. The pictures "
        "are looked at on this server and not kept."
    )
    live_view(run.run_dir, calibration.temperature, threshold, unfamiliar_threshold)
    trouble = camera_problem()
    if trouble is None:
        return None
    # no camera in this browser: single pictures instead (uploads open a phone's camera)
    named = _uploads()
    if trouble in ("denied", "error"):
        named = _photo("Or take a photo") or named
    return named


def _one_result(
    named: tuple[str, bytes],
    found: tuple,
    classes: list[str],
    threshold: float,
    unfamiliar_threshold: float | None,
) -> None:
    """One picture beside its answer and the bars of its top classes."""
    name, probs, error, far = found
    if error or probs is None:
        st.error(f"{literal(name)}: {literal(error)}")
        return
    flagged = far is not None and unfamiliar_threshold is not None and far > unfamiliar_threshold
    c1, c2 = st.columns([1, 2])
    c1.image(Image.open(io.BytesIO(named[1])), caption=name, width="stretch")
    with c2:
        said = verdict(probs, classes, threshold, unfamiliar=flagged)
        if said.unfamiliar:
            st.warning(literal(said.text), icon=":material/help:")
            st.caption("The model's guesses if it had to choose one of your classes:")
        elif said.sure:
            st.success(f"**{literal(said.top)}** ({said.probability:.0%})")
        else:
            st.warning(literal(said.text))
        st.plotly_chart(
            top_classes_figure(
                plot_literal(classes), probs.tolist(), threshold, unfamiliar=said.unfamiliar
            ),
            key="try_bars",
            config={"displayModeBar": False},
        )


def page() -> None:
    picked = pick_run("try it on new pictures")
    if picked is None:
        return
    _, run = picked
    try:  # a damaged predictions.json or best.pt: one sentence instead of a traceback
        calibration = load_calibration(Path(run.run_dir))
        trained_model(run.run_dir)
    except StudioError as exc:
        st.error(str(exc), icon=":material/error:")
        return
    threshold, unfamiliar_threshold = _thresholds(run, calibration)
    named = _pictures(run, calibration, threshold, unfamiliar_threshold)
    st.caption(_probabilities_note(calibration))
    if not named:
        return
    classes = trained_model(run.run_dir).classes
    if len(named) == 1:
        with st.spinner("Looking at your picture…"):
            results = [_predict_one(run.run_dir, *named[0], calibration.temperature)]
    else:
        found = _predict_many(run, named, calibration.temperature)
        if found is None:
            return
        results = found
    if len(results) == 1:
        _one_result(named[0], results[0], list(classes), threshold, unfamiliar_threshold)
        return
    results_table(results, classes, threshold, unfamiliar_threshold)


page()
