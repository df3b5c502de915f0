"""Step 5: how good is the model, where is it wrong and why? Review labels, retrain."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st
from PIL import Image

from tl_core import service
from tl_core.analysis import alarms, comparison, metrics
from tl_core.analysis.evaluation import RunEvaluation, Verdict, evaluate_run
from tl_core.data import review
from tl_core.errors import RunError, StudioError
from tl_core.runs.store import Job, Project
from tl_core.training import familiarity
from tl_ui.alarms import show_alarm
from tl_ui.charts import (
    LABELLED_CELLS,
    TRAIN_COLOR,
    VAL_COLOR,
    comparison_figure,
    confusion_figure,
    curves_figure,
    reliability_figure,
    unfamiliar_figure,
)
from tl_ui.gallery import pager, show_thumbnail, thumbnails
from tl_ui.jobs import watch
from tl_ui.models import model_info
from tl_ui.review import review_widgets
from tl_ui.runs import pick_run, trained_model
from tl_ui.session import get_store
from tl_ui.text import literal, plot_literal

PER_PAGE = 12  # mistakes a page
PAIRS_PER_PAGE = 10  # confused pairs a page
PAIR_EXAMPLES = 6  # images shown for each confused pair
PAIR_THUMB = 96  # their width in pixels
THUMB_SIDE = 192  # thumbnails of the confusion view
MISTAKE_SIDE = 320  # thumbnails of the mistakes, shown larger
LOW_AUROC = 0.8  # below this a new class is hard to notice: the page suggests a 'nothing' class


@st.cache_data(max_entries=8, show_spinner="Scoring the validation images…")
def _evaluation(run_dir: str, mtime: float) -> RunEvaluation | None:
    return evaluate_run(Path(run_dir))


def _verdict(run: Job) -> Verdict | None:
    """The saved model's check, a job of the queue keyed by the run's file stamps (once per
    run and version of its files); None while it waits or works (its panel shows)."""
    done = watch(service.submit_verify(get_store(), run), "Checking the saved model")
    return Verdict(**done.result) if done is not None and done.result else None


def _show_verdict(run: Job) -> bool:
    """The saved model's verdict above the scores; False when no score may be shown.

    As on the command line, scores are shown only for a model that loads and reproduces
    the recorded predictions on the validation images.
    """
    verdict = _verdict(run)
    if verdict is None:
        return False
    if verdict.status in ("unusable", "differs"):
        st.error(verdict.sentence, icon=":material/error:")
        return False
    if verdict.status == "unchecked":
        st.warning(
            f"{verdict.sentence} Its scores are shown once its images are back in place.",
            icon=":material/warning:",
        )
        return False
    st.caption(f":material/verified: {verdict.sentence}")
    return True


@st.cache_data(max_entries=64, show_spinner=False)
def _heat(run_dir: str, image: str, target: int) -> Image.Image:
    model = trained_model(run_dir)  # the model's modules first, one importer at a time
    from tl_core.analysis.gradcam import heatmap, overlay

    return overlay(heatmap(model, Path(image), target_class=target))


def _baselines(project: Project, run: Job) -> tuple[float | None, float | None]:
    """(from scratch, frozen features) accuracies to hold this run against, where they exist
    (:func:`tl_core.service.baselines`); the frozen one once its job has finished."""
    found = service.baselines(get_store(), project, run)
    if found.frozen_job is None:
        return found.scratch, None
    done = watch(found.frozen_job, "Scoring the frozen pretrained features")
    frozen = float((done.result or {})["probe_accuracy"]) if done is not None else None
    return found.scratch, frozen


def _alarms(project: Project, run: Job, ev: RunEvaluation) -> None:
    """Overfitting, negative transfer and too little data: each with what to do."""
    acc, n_val = ev.summary.accuracy, ev.summary.total
    scratch, frozen = _baselines(project, run)
    said = alarms.run_alarms(get_store().epochs(run.id), acc, n_val, scratch, frozen, ev.warning)
    for alarm in said.alarms:
        show_alarm(alarm)
    if said.warning:
        st.warning(said.warning, icon=":material/warning:")
    if frozen is not None:
        st.caption(comparison.frozen_sentence(acc, frozen))


def _headline(project: Project, run: Job, ev: RunEvaluation) -> None:
    result = run.result or {}
    s = ev.summary
    c1, c2, c3, c4 = st.columns(4)
    c1.metric(
        "Validation accuracy",
        f"{s.accuracy:.1%}",
        help="Share of the validation images (never trained on) that the model got right.",
    )
    c2.metric(
        "95% confidence interval",
        f"{s.ci_low:.0%} – {s.ci_high:.0%}",
        help="Wilson interval: with this many validation images, the true accuracy on new "
        "images like these very likely lies in this range.",
    )
    c3.metric("Best epoch", f"{result.get('best_epoch')} of {result.get('epochs_done')}")
    c4.metric("Training time", f"{result.get('seconds', 0):.0f} s")
    _alarms(project, run, ev)
    worst = ev.worst_classes(2)
    if worst:
        names = " and ".join(
            f"'{literal(ev.classes[c.index])}' ({c.recall:.0%} found)" for c in worst
        )
        st.markdown(f"Weakest classes: {names}.")


def _per_class(ev: RunEvaluation) -> None:
    taken_for = {}
    for pair in ev.confused_pairs():  # most images first: the first seen is the biggest
        taken_for.setdefault(pair.true, pair)
    rows = []
    for c in ev.per_class:
        pair = taken_for.get(c.index)
        rows.append(
            {
                "class": ev.classes[c.index],
                "validation images": c.support,
                "found (recall)": c.recall,
                "right when it says so (precision)": c.precision,
                "F1": c.f1,
                "most often taken for": ev.classes[pair.pred] if pair else "",
                "images taken for it": pair.count if pair else 0,
            }
        )
    pct = st.column_config.ProgressColumn(format="percent", min_value=0.0, max_value=1.0)
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        key="per_class",
        column_config={
            "found (recall)": pct,
            "right when it says so (precision)": pct,
            "F1": st.column_config.NumberColumn(format="%.2f"),
        },
    )
    st.caption(
        "Recall: of the images that really are this class, the share the model found. "
        "Precision: of the images the model called this class, the share that really are. "
        "F1 combines both. A class with no predictions has precision 0. Click a column's "
        "title to sort by it."
    )


def _thumbs(root: Path, ev: RunEvaluation, rows: list[int], cols: int = 6) -> None:
    grid = st.columns(cols)
    for k, i in enumerate(rows):
        with grid[k % cols]:
            show_thumbnail(root / ev.files[i], THUMB_SIDE)
            st.caption(
                f"{literal(ev.classes[ev.labels[i]])} → **{literal(ev.classes[ev.preds[i]])}** "
                f"({ev.probs[i].max():.0%})"
            )


def _pair_line(ev: RunEvaluation, rank: int, pair: metrics.ConfusedPair) -> str:
    true, pred = literal(ev.classes[pair.true]), literal(ev.classes[pair.pred])
    return (
        f"**{rank}.** '{true}' taken for '{pred}': **{pair.count}** image(s), "
        f"{pair.share:.0%} of the '{true}' images"
    )


def _ranked_pairs(root: Path, ev: RunEvaluation, pairs: list[metrics.ConfusedPair]) -> None:
    """The most confused pairs, most images first, each with a few of its images."""
    st.markdown("**The most confused pairs**")
    shown = pager(len(pairs), PAIRS_PER_PAGE, "pairs_page", "pairs")
    for rank in shown:
        pair = pairs[rank]
        st.markdown(_pair_line(ev, rank + 1, pair))
        files = [root / ev.files[i] for i in ev.cell(pair.true, pair.pred)[:PAIR_EXAMPLES]]
        pictures = thumbnails(files, THUMB_SIDE)
        if pictures:
            st.image(pictures, width=PAIR_THUMB)
    with st.expander(f"All {len(pairs):,} confused pairs as a table"):
        st.dataframe(
            pd.DataFrame(
                {
                    "true class": [ev.classes[p.true] for p in pairs],
                    "taken for": [ev.classes[p.pred] for p in pairs],
                    "images": [p.count for p in pairs],
                    "share of the true class": [p.share for p in pairs],
                }
            ),
            hide_index=True,
            key="confused_pairs",
            column_config={
                "share of the true class": st.column_config.ProgressColumn(
                    format="percent", min_value=0.0, max_value=1.0
                )
            },
        )


def _confusion(root: Path, ev: RunEvaluation) -> None:
    n = len(ev.classes)
    pairs = ev.confused_pairs()
    st.caption(
        f"{ev.summary.correct} of {ev.summary.total} validation images were right; the "
        f"mistakes fall in {len(pairs):,} (true class, answer) pairs, the most frequent first."
    )
    if pairs:
        _ranked_pairs(root, ev, pairs)
    else:
        st.success("The model confused no two classes on the validation images.")
    if st.toggle(
        "Show the full confusion matrix",
        value=n <= LABELLED_CELLS,
        key="full_matrix",
        help="Rows: the true class. Columns: what the model said. The diagonal counts right "
        "answers. With many classes, point at a cell to read it.",
    ):
        st.plotly_chart(
            confusion_figure(ev.confusion.tolist(), plot_literal(ev.classes)),
            key="confusion",
            config={"displayModeBar": False},
        )
    st.markdown("**Look at one cell**")
    default_t, default_p = (pairs[0].true, pairs[0].pred) if pairs else (0, 0)
    c1, c2 = st.columns(2)
    names = list(range(n))
    true = c1.selectbox("True class", names, default_t, format_func=ev.classes.__getitem__)
    pred = c2.selectbox("Predicted as", names, default_p, format_func=ev.classes.__getitem__)
    rows = ev.cell(true, pred)
    if not rows:
        st.info("No validation image falls in this cell.")
        return
    st.markdown(
        f"**{len(rows)}** image(s): true '{literal(ev.classes[true])}', said "
        f"'{literal(ev.classes[pred])}'."
    )
    shown = pager(len(rows), 2 * PER_PAGE, "cell_page", "images")
    _thumbs(root, ev, [rows[k] for k in shown])


def _mistakes(project: Project, run: Job, root: Path, ev: RunEvaluation) -> None:
    wrong = ev.wrong_by_loss
    if not wrong:
        st.success("The model got every validation image right.")
        return
    data_dir = service.review_folder(project, run)
    corrections = review.load(data_dir)
    c1, c2 = st.columns([1, 2])
    missed = sorted({int(ev.labels[i]) for i in wrong})
    only = c1.selectbox(
        "Images of",
        [-1, *missed],
        format_func=lambda c: "every class" if c < 0 else ev.classes[c],
        key="mistakes_class",
    )
    explain = c2.toggle(
        "Show what the model looked at (Grad-CAM)",
        key="gradcam",
        help="Red marks the parts of the picture that pushed the model most towards its answer.",
    )
    if only >= 0:
        wrong = [i for i in wrong if ev.labels[i] == only]
    st.caption(
        f"{len(wrong)} misclassified validation image(s), most confidently wrong first. A "
        "confident mistake is often a wrong label: fix it, or leave the image out. Nothing is "
        "deleted; changes apply to the next run."
    )
    shown = [wrong[k] for k in pager(len(wrong), PER_PAGE, "mistakes_page", "mistakes")]
    with st.form("review"):
        grid = st.columns(4)
        edits = []
        for k, i in enumerate(shown):
            file = ev.files[i]
            with grid[k % 4]:
                if explain:
                    st.image(_heat(run.run_dir, str(root / file), int(ev.preds[i])))
                else:
                    show_thumbnail(root / file, MISTAKE_SIDE)
                st.markdown(
                    f"labelled **{literal(ev.classes[ev.labels[i]])}**, model said "
                    f"**{literal(ev.classes[ev.preds[i]])}** ({ev.probs[i].max():.0%} sure)"
                )
                edits.append(
                    review_widgets(file, ev.classes[ev.labels[i]], ev.classes, corrections)
                )
        if st.form_submit_button("Save review", icon=":material/save:"):
            service.save_review(data_dir, corrections, edits)
            st.toast("Review saved")
    if explain:
        st.caption(
            "Heat maps: red marks what pushed the model most towards its answer, blue what "
            "did not matter."
        )
    st.markdown(f"Your review so far: {corrections.describe()}.")
    if corrections and st.button(
        "Retrain with these changes", type="primary", icon=":material/replay:"
    ):
        try:
            service.retrain(get_store(), project, run)
        except RunError as exc:
            st.warning(literal(exc))
        else:
            st.switch_page("app_pages/train.py")


def _versus_scratch(project: Project, run: Job, ev: RunEvaluation) -> None:
    """The same run from random weights, on one chart with this one, and the three gains."""
    if not run.spec.config.pretrained:
        st.info("This run learned from random weights: the baseline for transfer learning.")
        return
    store = get_store()
    baseline = service.baseline_run(store, project.id, run)
    st.markdown("**How much is the pretrained start worth here?**")
    if baseline is None:
        st.caption(
            "Train the same model with the same images and epochs from random weights, every "
            "layer learning, and compare the curves. It runs in the background queue."
        )
        if st.button("Train the same from scratch", icon=":material/compare_arrows:"):
            n_backbone = model_info(run.spec.config.model, len(ev.classes)).n_backbone
            try:
                service.train_scratch_baseline(store, project, run, n_backbone)
            except RunError as exc:
                st.warning(literal(exc))
                return
            st.switch_page("app_pages/train.py")
        return
    scratch = store.epochs(baseline.id)
    if baseline.active or not scratch:
        st.caption(f"The run from scratch is {baseline.status}; its curve appears here as it goes.")
    transfer = store.epochs(run.id)
    st.plotly_chart(comparison_figure(transfer, scratch), key="versus_scratch")
    for gain in comparison.gains(transfer, scratch, ev.summary.total):
        icon = {True: ":material/check:", False: ":material/close:", None: ":material/remove:"}
        st.markdown(f"{icon[gain.holds]} **{gain.name.capitalize()}**: {gain.sentence}")


def _ece_text(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "—"


def _ece_interval(ci: list[float] | None) -> str | None:
    return f"95% interval {ci[0]:.1%}–{ci[1]:.1%}" if ci else None


def _calibration(ev: RunEvaluation) -> None:
    cal = ev.calibration
    st.markdown(
        "When the model says it is 90% sure, is it right 9 times in 10? Points on the dotted "
        "line mean yes; below it, the model is over-confident."
    )
    st.plotly_chart(
        reliability_figure(
            [
                (
                    "as trained",
                    ev.reliability_before.confidence,
                    ev.reliability_before.accuracy,
                    ev.reliability_before.count,
                    VAL_COLOR,
                ),
                (
                    "temperature-scaled (held-out halves)",
                    ev.reliability_after.confidence,
                    ev.reliability_after.accuracy,
                    ev.reliability_after.count,
                    TRAIN_COLOR,
                ),
            ]
        ),
        key="reliability",
        config={"displayModeBar": False},
    )
    c1, c2, c3 = st.columns(3)
    c1.metric(
        "Calibration error as trained",
        _ece_text(cal.ece_before),
        delta=_ece_interval(cal.ece_before_ci),
        delta_color="off",
        delta_arrow="off",
        help="Expected calibration error: the average gap between how sure the model says "
        "it is and how often it is right (10 bins). The interval shows how much it could "
        "change with other validation images of the same kind (bootstrap).",
    )
    c2.metric(
        "After calibration",
        _ece_text(cal.ece_after),
        delta=_ece_interval(cal.ece_after_ci),
        delta_color="off",
        delta_arrow="off",
        help="Temperature scaling fitted on one half of the validation images and scored on "
        "the other, both ways round: an honest estimate.",
    )
    fitted = cal.fitted_temperature if cal.fitted_temperature is not None else cal.temperature
    c3.metric(
        "Temperature",
        f"{cal.temperature if cal.calibrated else fitted:.2f}",  # used: held back, if it was
        delta="used" if cal.calibrated else "not used",
        delta_color="off",
        delta_arrow="off",
        help="Above 1: the model was over-confident and its probabilities would be softened; "
        "below 1 they would be sharpened. It is used only when the validation images hold "
        "enough mistakes to fit it on, it lowers the calibration error by more than their "
        "noise, and (to sharpen) the model is measurably less sure than it is right.",
    )
    if cal.calibrated:
        st.success(cal.reason(), icon=":material/check:")
        used = (
            "The Try page uses the calibrated probabilities (the exported files give the raw "
            "ones; the model card says how to calibrate them)."
        )
    else:
        st.info(cal.reason(), icon=":material/info:")
        used = (
            "The Try page uses the probabilities as trained, as the exported files do "
            "(temperature 1.00)."
        )
    if cal.images and cal.images < 100:
        st.caption(
            f"With {cal.images} validation images the calibration error itself is uncertain "
            "(see the intervals): more validation images give a firmer reading."
        )
    st.caption(
        f"{used} Below {cal.threshold:.0%} it says 'not sure' (chosen on the validation images)."
    )


def _unfamiliar(run: Job) -> None:
    """How well the unfamiliar check notices pictures of none of the classes (measured at the
    end of training: familiarity.json), and what to do when it cannot."""
    rep = familiarity.load_report(Path(run.run_dir))
    if rep is None:
        st.caption(
            "This model was trained before the unfamiliar check existed; train it again to see "
            "how well it notices pictures of none of your classes."
        )
        return
    st.markdown(rep.sentence())
    names = plot_literal(c.name for c in rep.left_out)
    st.plotly_chart(
        unfamiliar_figure(
            rep.foreign_flagged if rep.foreign_images else None,
            [(name, c.flagged) for name, c in zip(names, rep.left_out, strict=True)],
            rep.val_flagged,
        ),
        key="unfamiliar_shares",
        config={"displayModeBar": False},
    )
    st.caption(
        f"The threshold lets through {rep.accept:.0%} of your validation pictures; the Try "
        "page can move it. Everyday pictures: photos of people, animals, objects and textures "
        "that belong to no one's classes."
    )
    told_apart = rep.left_out_auroc
    if told_apart is None:
        return
    st.metric(
        "A new class told apart (left-out AUROC)",
        f"{told_apart:.2f}",
        help="The mean over your classes, each left out in turn.",
    )
    st.caption(
        "This says how alike your classes are: when one of your classes is left out, how well "
        "its pictures are told apart from the others' (1.0 is perfectly, 0.5 is not at all); "
        "alike classes make a new class hard to notice."
    )
    if told_apart < LOW_AUROC:
        st.info(
            "A picture of something new may pass for one of your classes. To teach the model "
            "'none of these', add a class of pictures of nothing in particular (background, "
            "empty scenes, other things) and train again.",
            icon=":material/lightbulb:",
        )


def page() -> None:
    picked = pick_run("see how good it is")
    if picked is None:
        return
    project, run = picked
    preds_file = Path(run.run_dir) / "predictions.json"
    try:
        ev = _evaluation(run.run_dir, preds_file.stat().st_mtime)
    except StudioError as exc:  # a damaged or foreign predictions.json
        st.error(str(exc), icon=":material/error:")
        return
    if ev is None:
        st.info("This run stopped before its predictions were scored.")
        return
    if not _show_verdict(run):
        return
    root = Path(run.data_dir)
    _headline(project, run, ev)
    tabs = st.tabs(
        [
            "Learning curves",
            "Per class",
            "Confusion matrix",
            "Mistakes",
            "Calibration",
            "Pictures of none of your classes",
        ]
    )
    with tabs[0]:
        store = get_store()
        st.plotly_chart(
            curves_figure(
                store.steps(run.id),
                store.epochs(run.id),
                run.spec.config.epochs,
            ),
            key="final_curves",
        )
        st.caption(f"Computed on {(run.result or {}).get('compute', '?')}.")
        _versus_scratch(project, run, ev)
        st.page_link(
            "app_pages/label.py",
            label="See the map of your pictures before and after training (Label page)",
            icon=":material/scatter_plot:",
        )
        log = Path(run.run_dir) / "run.log"
        if log.exists():
            with st.expander("Run log: what the engine did and why"):
                st.code(log.read_text(encoding="utf-8"), language=None)
    with tabs[1]:
        _per_class(ev)
    with tabs[2]:
        _confusion(root, ev)
    with tabs[3]:
        _mistakes(project, run, root, ev)
    with tabs[4]:
        _calibration(ev)
    with tabs[5]:
        _unfamiliar(run)


page()
