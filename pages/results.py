"""Step 4: how good is the trained model? Final curves, accuracy, confusion matrix."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import streamlit as st

from tl_core import catalog
from tl_core.charts import confusion_figure, curves_figure
from tl_core.results import load_predictions
from tl_core.store import Run
from tl_ui.session import active_project, get_store


def _label(run: Run) -> str:
    when = dt.datetime.fromtimestamp(run.created).strftime("%d %b %H:%M")
    acc = (run.result or {}).get("val_accuracy")
    score = f" · {acc:.1%}" if acc is not None else ""
    title = catalog.get_spec(run.config["model"]).title
    return f"{when} · {title} · {run.config.get('trainable_groups', 0)} group(s) learn{score}"


def page() -> None:
    st.title("4. Results")
    project = active_project()
    store = get_store()
    runs = [r for r in store.runs(project.id) if r.result] if project else []
    if not runs:
        st.info("No finished training yet.")
        st.page_link("pages/train.py", label="Go to training", icon=":material/arrow_back:")
        return
    runs.reverse()  # newest first
    run = st.selectbox("Run", runs, format_func=_label, key="results_run")
    result = run.result or {}
    c1, c2, c3, c4 = st.columns(4)
    acc = result.get("val_accuracy")
    c1.metric("Validation accuracy", "—" if acc is None else f"{acc:.1%}")
    c2.metric("Best epoch", f"{result.get('best_epoch')} of {result.get('epochs_done')}")
    c3.metric("Training time", f"{result.get('seconds', 0):.0f} s")
    c4.metric("Parameters that learned", f"{result.get('trainable_params', 0):,}")
    st.caption(f"Computed on {result.get('compute', '?')}. Run status: {run.status}.")
    log = Path(run.run_dir) / "run.log"
    if log.exists():
        with st.expander("Run log: what the engine did and why"):
            st.code(log.read_text(encoding="utf-8"), language=None)

    steps = store.metrics(run.id, "step")
    epochs = store.metrics(run.id, "epoch")
    st.subheader("Learning curves")
    st.plotly_chart(
        curves_figure(steps, epochs, int(run.config.get("epochs", 1))), key="final_curves"
    )

    st.subheader("Confusion matrix")
    preds = load_predictions(Path(run.run_dir))
    if preds is None:
        st.info("This run stopped before its predictions were scored.")
        return
    st.caption(
        "Each row is the true class, each column what the model said. The diagonal "
        f"counts correct answers: {preds.correct}"
        f" of {len(preds.labels)} validation images."
    )
    st.plotly_chart(confusion_figure(preds.confusion(), preds.classes), key="confusion")


page()
