"""The Label page's parts: the board (every picture with its label or none), the classes,
the map, the next pictures to label, the confident suggestions, and making the labels the
project's data.

Labels are written the moment they are given (:mod:`tl_core.data.labels`), so a refresh, a
restart or a second tab shows them; suggestions are recomputed from them on each run of the
page (a classifier on the survey's space: about a second at 5,000 pictures).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from tl_core import service
from tl_core.data import labels as tl_labels
from tl_core.data.dataset import DatasetManifest
from tl_core.data.layout import label_key
from tl_core.errors import DataError
from tl_core.labeling import assist
from tl_core.labeling.survey import Survey
from tl_core.runs.store import Project
from tl_ui.gallery import THUMB_SIDE, pager, show_thumbnail
from tl_ui.picture_map import MapSelection, ThumbSource, clear_selection, picture_map
from tl_ui.session import get_store
from tl_ui.text import literal

__all__ = [
    "Board",
    "board",
    "classes_panel",
    "confident_panel",
    "map_panel",
    "next_panel",
    "sidebar_counts",
    "suggestions_of",
    "survey_loaded",
    "use_labels_panel",
]

BATCH = 12  # pictures in "label these next"
PAGE = 24  # pictures in a page of confident suggestions
GRID = 6
SKIP = "(skip)"


@dataclass(frozen=True)
class Board:
    """Every picture of the data version in the survey's order, with its label now."""

    manifest: DatasetManifest
    survey: Survey
    classes: list[str]  # the data version's classes, then those named on this page
    labels: np.ndarray  # (n,) class index, or assist.UNLABELLED
    pool: np.ndarray  # (n,) bool: an unlabelled picture of the data version (labels change)
    given: int  # pool pictures labelled so far
    names: list[str]  # each picture's name as the user had it

    def path(self, row: int) -> Path:
        return Path(self.manifest.root) / self.survey.files[row]

    def counts(self) -> Counter[str]:
        return Counter(self.classes[k] for k in self.labels if k >= 0)


@st.cache_resource(max_entries=8, show_spinner=False)
def _survey(path: str, stamp: int) -> Survey | None:
    from tl_core.labeling import survey

    return survey.load(Path(path))


def survey_loaded(job_run_dir: str) -> Survey | None:
    """The survey in a finished job's folder, read once per process (it does not change)."""
    from tl_core.labeling import survey

    path = Path(job_run_dir) / survey.FILE_NAME
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    return _survey(str(path), stamp)


def board(manifest: DatasetManifest, survey: Survey) -> Board:
    labelling = tl_labels.read(manifest.root)
    named = {label_key(c): c for c in labelling.classes}
    named.update({label_key(c): c for c in manifest.classes})
    classes = sorted(named.values())  # as the data version will sort them: colours stay
    index = {c: k for k, c in enumerate(classes)}
    given = labelling.labels()
    label_of = {i.file: index[i.label] for i in manifest.items}
    pool_files = {i.file for i in manifest.unlabelled}
    files = survey.files
    source = {i.file: i.source for i in [*manifest.items, *manifest.unlabelled]}
    names = [source.get(f, f).rpartition("/")[2] for f in files]  # 20,000 Paths cost 0.25 s
    labels = np.full(len(files), assist.UNLABELLED, dtype=np.int64)
    pool = np.zeros(len(files), dtype=bool)
    n_given = 0
    for row, f in enumerate(files):
        if f in label_of:
            labels[row] = label_of[f]
        elif f in pool_files:
            pool[row] = True
            if f in given and given[f] in index:
                labels[row] = index[given[f]]
                n_given += 1
    return Board(manifest, survey, classes, labels, pool, n_given, names)


@st.cache_resource(max_entries=16, show_spinner=False)
def _suggest(_space: np.ndarray, key: str, labels: bytes, n_classes: int) -> assist.Suggestions:
    return assist.suggest(_space, np.frombuffer(labels, dtype=np.int64), n_classes)


def suggestions_of(b: Board) -> assist.Suggestions | None:
    """Suggestions once every class has a few labels; None before."""
    if not assist.ready(b.labels, len(b.classes)):
        return None
    key = f"{b.manifest.root}|{len(b.survey.files)}"
    digest = hashlib.sha1(b.labels.tobytes()).hexdigest()
    return _suggest(b.survey.space, key + digest, b.labels.tobytes(), len(b.classes))


@st.cache_resource(max_entries=16, show_spinner=False)
def _estimate(_space: np.ndarray, key: str, labels: bytes) -> assist.Estimate | None:
    return assist.cv_accuracy(_space, np.frombuffer(labels, dtype=np.int64))


def sidebar_counts(b: Board, s: assist.Suggestions | None) -> None:
    """Labelled / suggested / unlabelled, and the accuracy a model trained now would reach."""
    labelled = int((b.labels >= 0).sum())
    confident = 0
    if s is not None and s.confident_at is not None:
        confident = int(((b.labels < 0) & (s.confidence >= s.confident_at)).sum())
    unlabelled = len(b.labels) - labelled
    with st.sidebar:
        st.markdown("**Labels**")
        c1, c2 = st.columns(2)
        c1.metric("labelled", f"{labelled:,}")
        c2.metric("unlabelled", f"{unlabelled:,}")
        c1.metric(
            "suggested",
            f"{confident:,}",
            help="Unlabelled pictures the model is sure about: accept them page by page.",
        )
        est = s.estimate if s is not None else None  # suggest cross-validated already
        if est is None and labelled:
            key = f"{b.manifest.root}|{hashlib.sha1(b.labels.tobytes()).hexdigest()}"
            est = _estimate(b.survey.space, key, b.labels.tobytes())
        if est is None:
            st.caption("An accuracy estimate appears once each class has a few labels.")
        else:
            st.metric(
                "A model trained now",
                f"≈ {est.accuracy:.0%}",
                help=(
                    f"Cross-validated on your {est.n_labels:,} labels with the frozen network "
                    f"(95% interval {est.low:.0%}–{est.high:.0%}). Fine-tuning usually does "
                    "at least as well."
                ),
            )
            st.caption(f"95% interval {est.low:.0%}–{est.high:.0%}, from {est.n_labels:,} labels")


def _give(b: Board, rows: Sequence[int], label: str | None, by: str = "user") -> int:
    files = [b.survey.files[r] for r in rows if b.pool[r]]
    if not files:
        return 0
    return tl_labels.give(b.manifest, files, label, by=by)


def classes_panel(b: Board) -> None:
    """The classes with their counts, and a field to name a new one."""
    counts = b.counts()
    if b.classes:
        st.markdown("Classes: " + " · ".join(f"**{literal(c)}** {counts[c]:,}" for c in b.classes))
    else:
        st.info("Name the classes you want the model to tell apart, e.g. 'healthy' and 'sick'.")
    with st.form("add_class", clear_on_submit=True, border=False):
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        name = c1.text_input("New class", placeholder="a class name", key="new_class_name")
        if c2.form_submit_button("Add class", icon=":material/add:"):
            try:
                tl_labels.add_class(b.manifest, name)
                st.rerun()
            except DataError as exc:
                st.warning(literal(exc))


def _guess_text(b: Board, s: assist.Suggestions | None, row: int) -> str:
    """A picture's label, or the model's guess, as plain text (escape it for markdown)."""
    k = b.labels[row]
    if k >= 0:
        return str(b.classes[k])
    if s is None:
        return "unlabelled"
    cls, sure = b.classes[s.label[row]], float(s.confidence[row])
    return f"maybe {cls} ({sure:.0%})"


def _texts(b: Board, s: assist.Suggestions | None) -> list[str]:
    """The map's hover texts (plain text: the component shows them as text, not markdown)."""
    return [f"{name}: {_guess_text(b, s, row)}" for row, name in enumerate(b.names)]


def map_panel(
    b: Board, s: assist.Suggestions | None, caption: str, key: str
) -> MapSelection | None:
    """The map coloured by label; a box or lasso selection can be labelled at once."""
    thumbs = ThumbSource(Path(b.manifest.root), b.survey.files)
    selection = picture_map(
        b.survey.xy, b.labels.tolist(), b.classes, _texts(b, s), thumbs, key=key
    )
    st.caption(caption)
    if selection is None or not selection.indices:
        return None
    rows = selection.indices
    free = [r for r in rows if b.pool[r]]
    st.markdown(
        f"**{len(rows):,}** picture(s) selected, {len(free):,} of them from the unlabelled "
        "pictures (labels given at import are changed on the Data page's review)."
    )
    if free and b.classes:
        with st.form(f"label_selection_{key}", border=False):
            c1, c2, c3 = st.columns([2, 1, 1], vertical_alignment="bottom")
            choice = c1.selectbox("Label them as", b.classes, key=f"selection_class_{key}")
            if c2.form_submit_button("Label them", type="primary"):
                n = _give(b, free, choice)
                clear_selection(key)
                st.toast(literal(f"{n:,} picture(s) labelled '{choice}'."))
                st.rerun()
            if c3.form_submit_button("Take their labels back"):
                n = _give(b, free, None)
                clear_selection(key)
                st.toast(f"{n:,} label(s) taken back.")
                st.rerun()
    with st.expander(f"See the {len(rows):,} selected picture(s)"):
        shown = pager(len(rows), 4 * GRID, f"selection_page_{key}", "pictures")
        grid = st.columns(GRID)
        for k, i in enumerate(shown):
            with grid[k % GRID]:
                show_thumbnail(b.path(rows[i]), THUMB_SIDE)
                st.caption(literal(f"{b.names[rows[i]]} · {_guess_text(b, s, rows[i])}"))
    return selection


def next_panel(b: Board, s: assist.Suggestions | None) -> None:
    """The next pictures to label: those that teach the classifier most."""
    free = b.pool & (b.labels < 0)
    if not free.any():
        st.success("Every picture has a label.")
        return
    if not b.classes:
        st.info("Name at least two classes above, then label the pictures shown here.")
    rows = _next_rows(b, s)
    if s is None:
        st.caption(
            "Pictures that stand for many others, spread over the map. Suggestions start once "
            f"each class has {assist.MIN_PER_CLASS} labels."
        )
    else:
        st.caption(
            "The pictures the model is least sure about, unlike each other: each label here "
            "teaches it most. The model's guess is preselected."
        )
    options = [SKIP, *b.classes]
    with st.form("next_batch", border=False):
        grid = st.columns(GRID)
        chosen: dict[int, str] = {}
        for k, row in enumerate(rows):
            with grid[k % GRID]:
                show_thumbnail(b.path(row), THUMB_SIDE)
                guess = b.classes[s.label[row]] if s is not None else SKIP
                chosen[row] = st.selectbox(
                    literal(f"{b.names[row]} · {_guess_text(b, s, row)}"),
                    options,
                    index=options.index(guess),
                    key=f"next_{b.survey.files[row]}",
                )
        if st.form_submit_button("Save these labels", type="primary", disabled=not b.classes):
            n = _save_choices(b, s, chosen)
            st.toast(f"{n:,} label(s) saved.")
            st.rerun()


@st.cache_resource(max_entries=16, show_spinner=False)
def _next(_space: np.ndarray, key: str, labels: bytes, _s: object, k: int) -> list[int]:
    arr = np.frombuffer(labels, dtype=np.int64).copy()
    return [int(r) for r in assist.next_batch(_space, arr, _s, k=k)]  # type: ignore[arg-type]


def _next_rows(b: Board, s: assist.Suggestions | None) -> list[int]:
    """Only unlabelled pictures are offered (the data version's labelled ones never are)."""
    key = f"{b.manifest.root}|{hashlib.sha1(b.labels.tobytes()).hexdigest()}|{s is not None}"
    return _next(b.survey.space, key, b.labels.tobytes(), s, BATCH)


def _save_choices(b: Board, s: assist.Suggestions | None, chosen: dict[int, str]) -> int:
    """Give each chosen label: a suggestion kept as it was is the suggestion's."""
    n = 0
    by_label: dict[tuple[str, str], list[int]] = {}
    for row, choice in chosen.items():
        if choice == SKIP:
            continue
        kept = s is not None and b.classes[s.label[row]] == choice
        by_label.setdefault((choice, "suggestion" if kept else "user"), []).append(row)
    for (label, by), rows in by_label.items():
        n += _give(b, rows, label, by=by)
    return n


def confident_panel(b: Board, s: assist.Suggestions | None) -> None:
    """Pages of pictures the model is surest about, one suggested class a page: accept a
    page in one click, correcting the pictures it got wrong."""
    if s is None:
        st.caption(f"Suggestions start once each class has {assist.MIN_PER_CLASS} labels.")
        return
    if s.confident_at is None:
        st.caption(
            "Label a few more pictures: the model needs more labels before it can say which "
            "of its suggestions are safe to accept."
        )
        return
    pages = assist.confident_pages(s, b.labels, PAGE)
    if not pages:
        st.caption("No suggestion is sure enough yet: label the pictures above.")
        return
    st.caption(
        f"{sum(len(r) for _, r in pages):,} picture(s) the model is at least "
        f"{s.confident_at:.0%} sure about. Change the ones it got wrong, then accept the page."
    )
    k = int(pager(len(pages), 1, "confident_page", "pages").start)
    cls, rows = pages[k]
    name = b.classes[cls]
    st.markdown(f"**Suggested: {literal(name)}** · {len(rows):,} picture(s)")
    options = [name, *[c for c in b.classes if c != name], SKIP]
    with st.form(f"confident_{k}", border=False):
        grid = st.columns(GRID)
        chosen: dict[int, str] = {}
        for j, row in enumerate(rows):
            with grid[j % GRID]:
                show_thumbnail(b.path(int(row)), THUMB_SIDE)
                chosen[int(row)] = st.selectbox(
                    literal(f"{b.names[row]} · {s.confidence[row]:.0%} sure"),
                    options,
                    key=f"sure_{b.survey.files[row]}",
                )
        if st.form_submit_button("Accept this page", type="primary"):
            n = _save_choices(b, s, chosen)
            st.toast(f"{n:,} label(s) saved.")
            st.rerun()


def use_labels_panel(project: Project, b: Board) -> None:
    """Make the labels given here the project's data, for the next run."""
    if not b.given:
        return
    st.markdown(f"**{b.given:,}** picture(s) labelled here are not in your training data yet.")
    if st.button("Use these labels for training", type="primary", icon=":material/check:"):
        try:
            service.use_labels(get_store(), project)
        except DataError as exc:
            st.warning(literal(exc))
            return
        st.toast("A new version of your data was made with these labels.")
        st.rerun()
