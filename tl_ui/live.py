"""A run's live panel: status, queue place, progress with ETA, curves; polls while active."""

from __future__ import annotations

import streamlit as st

from tl_core import service
from tl_core.config import StepRow
from tl_core.errors import RunError
from tl_core.events import describe
from tl_core.models import catalog
from tl_core.runs import jobs, supervisor
from tl_core.runs.store import Job, Store
from tl_core.runs.supervisor import STALLED, is_stalled
from tl_ui.charts import comparison_figure, curves_figure
from tl_ui.jobs import wait_text
from tl_ui.session import get_store, run_state
from tl_ui.state import state
from tl_ui.text import literal

POLL_S = 1.0


def _eta(steps: list[StepRow]) -> str:
    if not steps:
        return ""
    first, last = steps[0], steps[-1]
    done, total = last.step, last.total_steps
    if done <= first.step:
        return ""
    per_step = (last.elapsed_s - first.elapsed_s) / (done - first.step)
    left = max(0.0, per_step * (total - done))
    return f" · about {left:.0f} s left" if left < 120 else f" · about {left / 60:.0f} min left"


def _mb(n: int) -> str:
    value = n / 1024**2
    return f"{value:.1f} MB" if value < 10 else f"{value:,.0f} MB"


def cache_text(cache: object) -> str | None:
    """The run's caches on disk in one sentence (a run's ``cache_bytes``), or None."""
    if not isinstance(cache, dict):
        return None
    decoded, activations = int(cache.get("decoded") or 0), int(cache.get("activations") or 0)
    if not decoded and not activations:
        return None
    parts = []
    if decoded:
        parts.append(f"decoded images {_mb(decoded)} (kept with the data set for later runs)")
    if activations:
        parts.append(
            f"frozen-layer outputs {_mb(activations)} (in the run's folder while it trained, "
            "removed at its end)"
        )
    return "Caches on disk: " + "; ".join(parts) + "."


def _render(run_id: str) -> None:
    store = get_store()
    run = store.job(run_id)
    if run is None:
        st.warning("This run no longer exists.")
        return
    steps = store.steps(run.id)
    epochs = store.epochs(run.id)
    _state(store, run, steps)
    if run.placement and run.status != "queued":
        st.caption(f"{'Runs' if run.active else 'Ran'} on {literal(run.placement)}.")
    caches = cache_text((run.result or {}).get("cache_bytes"))
    if caches:
        st.caption(caches)
    c1, c2, _ = st.columns([1, 1, 4])
    if run.active and c1.button("Stop", key=f"stop_{run.id}", disabled=run.stop_requested):
        jobs.request_stop(store, run.id)
        st.rerun()
    if run.status in ("interrupted", "stopped") and c2.button("Resume", key=f"resume_{run.id}"):
        try:
            service.resume_run(store, run.id)
        except RunError as exc:
            st.error(literal(exc))
        else:
            st.rerun(scope="app")
    if steps or epochs:
        figure = curves_figure(steps, epochs, run.spec.config.epochs)
        st.plotly_chart(figure, key=f"curves_{run.id}")
    transfer_id = run.spec.baseline_of
    if transfer_id and epochs:  # a from-scratch baseline: draw it against its pretrained twin
        st.markdown("**The pretrained start against this run from random weights**")
        st.plotly_chart(
            comparison_figure(store.epochs(transfer_id), epochs),
            key=f"versus_{run.id}",
        )
    if run.active:
        supervisor.pump(store)  # a page that is watching also keeps the queue moving
    elif state().run_polling == run.id:
        state().run_polling = None
        st.rerun(scope="app")  # the run just ended: refresh the whole page once


def _state(store: Store, run: Job, steps: list[StepRow]) -> None:
    """Where the run stands: waiting, stuck, working (its progress bars) or how it ended."""
    if run.status == "queued":
        wait = wait_text(store, run)
        st.info(
            f"Waiting for a free slot: {wait or 'in the queue'}. Training starts by "
            "itself; you can leave this page."
        )
    elif is_stalled(run):  # its worker reports nothing: say so, beside the Stop button
        why = (run.message or "")[len(STALLED) :].strip()
        st.warning(f"Training seems stuck: {why}", icon=":material/hourglass_disabled:")
    elif run.active:
        _working(store, run, steps)
    else:
        _ended(run)


def _working(store: Store, run: Job, steps: list[StepRow]) -> None:
    """A working run's bars: its counted phase (decoding, the one pass through the frozen
    layers) while it is in one, then its steps with the time left."""
    reported = run.reported
    if reported is not None and reported.fraction is not None:
        st.progress(reported.fraction, text=describe(reported))
    step_text = ""
    frac = 0.0
    if steps:
        frac = steps[-1].step / max(1, steps[-1].total_steps)
        step_text = f" · step {steps[-1].step}/{steps[-1].total_steps}"
    st.progress(frac, text=f"{run_state(store, run)}{step_text}{_eta(steps)}")


def _ended(run: Job) -> None:
    """How the run ended, in one box."""
    if run.status == "finished":
        title = catalog.get_spec(run.spec.config.model).title
        acc = (run.result or {}).get("val_accuracy")
        st.success(
            f"Finished: {title} reached {acc:.1%} validation accuracy "
            f"(best epoch {(run.result or {}).get('best_epoch')})."
            if acc is not None
            else f"Finished: {title} (no validation score was recorded)."
        )
        st.page_link(
            "app_pages/evaluate.py", label="See how good it is", icon=":material/insights:"
        )
    elif run.status == "stopped":
        best = (run.result or {}).get("best_epoch")
        if best:
            said = f"The best model so far (epoch {best}) is kept."
        elif run.result is None and run.message not in ("", "Stopped"):
            said = run.message  # ended by the server: its worker did not stop when asked
        else:
            said = "It stopped before finishing an epoch, so no model was kept."
        st.info(f"Stopped. {said}")
    elif run.status == "interrupted":
        st.warning(f"{run.message} Resume continues from the last finished epoch.")
    elif run.status == "failed":
        st.error(run.error or "Training failed.")


def run_panel(run_id: str) -> None:
    """Show a run; while it is unfinished, refresh every second without rerunning the page."""
    run = get_store().job(run_id)
    active = run is not None and run.active
    if active:
        state().run_polling = run_id
    st.fragment(_render, run_every=POLL_S if active else None)(run_id)
