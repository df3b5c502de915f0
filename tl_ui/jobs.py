"""Watching a queued job: its place and wait, its progress, Stop, its error or its result.

One panel for every job kind that is not a training run (those have tl_ui.live's panel);
it reads the job's row each second while the job waits or works, then reruns the page once
so the page can draw the result. A job that has reported nothing for too long (stalled, see
:mod:`tl_core.runs.supervisor`) is shown as a warning beside its Stop button.
"""

from __future__ import annotations

import streamlit as st

from tl_core import service
from tl_core.runs import jobs, supervisor
from tl_core.runs.store import Job, Store
from tl_core.runs.supervisor import STALLED, is_stalled
from tl_ui.session import get_store
from tl_ui.state import state
from tl_ui.text import literal

POLL_S = 1.0


def wait_text(store: Store, job: Job) -> str:
    """'place 2 in the queue, about 40 s' for a waiting job; '' otherwise."""
    place = store.queue_position(job.id)
    if place is None:
        return ""
    text = f"place {place} in the queue"
    estimate = getattr(jobs, "estimated_wait", None)
    seconds = estimate(store, job.id) if estimate is not None else None
    if seconds is not None:
        text += f", about {seconds:.0f} s" if seconds < 120 else f", about {seconds / 60:.0f} min"
    return text


def state_text(store: Store, job: Job) -> str:
    """One line of what the job is doing now, the same wherever it is shown."""
    if job.status == "queued":
        return f"waiting: {wait_text(store, job)}"
    if is_stalled(job):
        return "stalled: press Stop to end it"
    if job.status in ("starting", "running", "held"):
        return job.message or "starting"
    if job.status == "failed":
        return "failed"
    return job.status


def _render(job_id: str, what: str) -> None:
    store = get_store()
    job = store.job(job_id)
    if job is None:
        st.warning("This job no longer exists; reload the page to start it again.")
        return
    if job.status == "queued":
        st.info(
            f"{what}: waiting for a free worker, {wait_text(store, job)}. It starts by itself; "
            "you can leave this page and come back.",
            icon=":material/hourglass_top:",
        )
    elif is_stalled(job):
        why = (job.message or "")[len(STALLED) :].strip()
        st.warning(f"{what} seems stuck: {why}", icon=":material/hourglass_disabled:")
    elif job.active:
        st.progress(
            min(max(job.progress or 0.0, 0.0), 1.0), text=f"{what}: {job.message or 'starting'}"
        )
        if job.placement:
            st.caption(f"Runs on {literal(job.placement)}.")
    elif job.status == "failed":
        st.error(job.error or f"{what} did not succeed.", icon=":material/error:")
    elif job.status in ("stopped", "interrupted"):
        st.info(f"{what} was {job.status}.", icon=":material/stop_circle:")
    if job.active:
        if st.button("Stop", key=f"stop_job_{job.id}", disabled=job.stop_requested):
            jobs.request_stop(store, job.id)
            st.rerun()
        supervisor.pump(store)  # a page that is watching also keeps the queue moving
    else:
        if job.status != "finished" and st.button("Try again", key=f"retry_job_{job.id}"):
            service.retry_job(store, job)
            st.rerun(scope="app")
        if job.id in state().watching:
            state().watching.discard(job.id)
            st.rerun(scope="app")  # it just ended: draw the page with its result once


def watch(job: Job | None, what: str) -> Job | None:
    """The job when it has finished with a result; else its panel (polling while it is
    waiting or working) and None."""
    if job is None:
        return None
    if not job.active:  # this full run already shows the end: no second refresh
        state().watching.discard(job.id)
    if job.status == "finished" and job.result is not None and not job.result.get("stopped"):
        return job
    if job.active:
        state().watching.add(job.id)
    st.fragment(_render, run_every=POLL_S if job.active else None)(job.id, what)
    return None
