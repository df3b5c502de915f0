"""Step 1: bring images (a folder, a .zip, the camera, or the demo set), labelled or not, and
see what they hold."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import streamlit as st

from tl_core import service
from tl_core.config import SplitSettings
from tl_core.data import dataset as tl_data
from tl_ui import importing
from tl_ui.charts import class_counts_figure
from tl_ui.gallery import THUMB_SIDE, pager, thumbnails
from tl_ui.grow import add_images_panel
from tl_ui.label_issues import label_issues_panel
from tl_ui.neardup import near_duplicates_panel
from tl_ui.recording import camera_panel, done_notice
from tl_ui.session import active_project, get_store, project_manifest
from tl_ui.text import literal, plot_literal

DEMO_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo" / "fashion_mnist"
THUMBS_PER_CLASS = 6
CLASSES_PER_PAGE = 10  # classes shown with thumbnails at a time (a page selector for more)
RECORD = "Record with the camera"


def _has_shots(project_id: str) -> bool:
    """Whether the project holds camera shots not yet used (then their panel is open)."""
    return any(c.count for c in service.camera_state(get_store(), project_id).classes)


def _import(way: str, path: Path | None = None) -> None:
    """Start an import job into a fresh folder of the (possibly new) project; the page then
    watches it (tl_ui.importing). On error nothing changes."""
    importing.start_import(way, path=path)


def _ways_in(has_data: bool, busy: bool = False) -> None:
    if not has_data and importing.import_panel(active_project()):
        return  # one import at a time: its panel, no second one
    if busy:
        st.caption("Images are being imported or added (above); wait for it to finish.")
        return
    if has_data:
        st.caption(
            "Bringing new images replaces the current set for new runs; earlier runs keep theirs."
        )
    ways = ["Demo set", "Use a folder on this computer", "Upload a folder", "Upload a .zip"]
    if not has_data:  # with images, the camera adds classes to them (the panel below them)
        ways.append(RECORD)
    demo, local, folder, archive, *record = st.tabs(ways)
    with demo:
        st.markdown(
            "**Fashion-MNIST demo**: 700 small photos of clothing in 10 classes (T-shirt, "
            "trouser, sneaker, …), already split into 500 for training and 200 for validation."
        )
        if st.button("Use the demo set", type="primary", key="use_demo"):
            _import("demo", DEMO_DIR)
    with local:
        importing.folder_tab()
    with folder:
        importing.upload_folder_tab()
    with archive:
        importing.upload_zip_tab()
    for tab in record:
        with tab:
            camera_panel()


# The importer's warnings the page words itself: too few images (one class, or many), with a list.
_OWN_WORDING = frozenset({"few_images"})


def _few_images(counts: dict[str, int]) -> None:
    """One warning for every class under the recommended count, with the list behind it."""
    least = tl_data.MIN_IMAGES_PER_CLASS
    few = sorted((c for c in counts if counts[c] < least), key=lambda c: (counts[c], c))
    if not few:
        return
    if len(few) == 1:
        st.warning(
            literal(
                f"Class '{few[0]}' has only {counts[few[0]]} image(s); at least {least} are "
                "recommended."
            )
        )
        return
    named = ", ".join(f"'{c}' ({counts[c]})" for c in few[:3])
    named += f" and {len(few) - 3:,} more" if len(few) > 3 else ""
    st.warning(
        literal(
            f"{len(few):,} classes have fewer than {least} images: {named}. At least {least} "
            "per class are recommended: add images to them, or leave them out."
        )
    )
    with st.expander(f"The {len(few):,} classes with fewer than {least} images"):
        st.dataframe(
            pd.DataFrame({"class": few, "images": [counts[c] for c in few]}),
            hide_index=True,
            key="few_classes",
        )


def _thumbnails(manifest: tl_data.DatasetManifest, counts: dict[str, int]) -> None:
    """A few pictures of each class, one page of classes at a time."""
    st.subheader("A few images of each class")
    shown = pager(len(manifest.classes), CLASSES_PER_PAGE, "thumb_page", "classes")
    labels = [manifest.classes[k] for k in shown]
    firsts: dict[str, list[str]] = {name: [] for name in labels}
    for item in manifest.items:
        kept = firsts.get(item.label)
        if kept is not None and len(kept) < THUMBS_PER_CLASS:
            kept.append(str(manifest.root / item.file))
    for label in labels:
        st.markdown(f"**{literal(label)}** · {counts[label]:,} images")
        pictures = thumbnails(firsts[label])
        if pictures:
            st.image(pictures, width=THUMB_SIDE)
        else:
            st.caption("Its image files are missing from the data folder.")


def _unlabelled(manifest: tl_data.DatasetManifest) -> None:
    n = len(manifest.unlabelled)
    st.info(
        f"**{n:,}** picture(s) have no label yet. On the Label page a map of your pictures and "
        "the model's suggestions do most of the sorting: you label a few of each class and "
        "check the rest.",
        icon=":material/label:",
    )
    st.page_link("app_pages/label.py", label="Label them", icon=":material/arrow_forward:")


def _summary(manifest: tl_data.DatasetManifest) -> None:
    counts = manifest.counts()
    cols = st.columns(4 if manifest.unlabelled else 3)
    title = "Labelled images" if manifest.unlabelled else "Images"
    cols[0].metric(title, f"{len(manifest.items):,}")
    cols[1].metric("Classes", f"{len(manifest.classes):,}")
    cols[-1].metric("Skipped files", f"{len(manifest.skipped):,}")
    if manifest.unlabelled:
        cols[2].metric("Not labelled yet", f"{len(manifest.unlabelled):,}")
        _unlabelled(manifest)
    if len(manifest.classes) < 2:
        for warning in manifest.warnings:
            st.warning(literal(warning.text))
        return
    _few_images(counts)
    for warning in manifest.warnings:
        if warning.kind not in _OWN_WORDING:
            st.warning(literal(warning.text))
    shown = dict(zip(plot_literal(counts), counts.values(), strict=True))
    st.plotly_chart(class_counts_figure(shown, tl_data.MIN_IMAGES_PER_CLASS), key="class_counts")
    if manifest.skipped:
        with st.expander(f"{len(manifest.skipped):,} file(s) were skipped — why"):
            st.dataframe(
                pd.DataFrame([{"file": s.source, "reason": s.reason} for s in manifest.skipped]),
                hide_index=True,
            )
    if manifest.duplicates:
        with st.expander(f"{len(manifest.duplicates):,} exact duplicate(s) were left out"):
            st.dataframe(
                pd.DataFrame(manifest.duplicates, columns=["left out", "same as"]),
                hide_index=True,
            )
    _thumbnails(manifest, counts)


def _split(project_id: str, manifest: tl_data.DatasetManifest, saved: SplitSettings) -> None:
    st.subheader("Training and validation images")
    if manifest.has_explicit_val:
        st.info(
            "Your data came with its own validation folder: the model is checked on those "
            "images and never trains on them."
        )
        fraction, seed = saved.val_fraction, saved.seed
    else:
        st.caption(
            "Some images are held back to check the model honestly: it never trains on them."
        )
        c1, c2 = st.columns([3, 1])
        fraction = c1.slider(
            "Share of images held back for validation",
            0.1,
            0.5,
            saved.val_fraction,
            0.05,
            key="val_fraction",
        )
        seed = int(c2.number_input("Shuffle seed", 0, 10_000, saved.seed, key="split_seed"))
        if (fraction, seed) != (saved.val_fraction, saved.seed):
            get_store().update_settings(project_id, val_fraction=fraction, seed=seed)
    split = tl_data.split_dataset(manifest, fraction, seed)
    n_train, n_val = Counter(i.label for i in split.train), Counter(i.label for i in split.val)
    rows = [{"class": c, "train": n_train[c], "validation": n_val[c]} for c in manifest.classes]
    st.dataframe(rows, hide_index=True)
    if not manifest.has_explicit_val:
        st.caption(tl_data.split_rule_text(manifest, fraction, seed))


def page() -> None:
    done_notice()
    project = active_project()
    manifest = project_manifest(project)
    if manifest is None:
        st.markdown(
            "Bring labelled images: **one folder per class**. Or try the demo set. Pictures "
            "without labels yet are welcome too: a folder of them, or an `unlabelled/` folder "
            "beside the class folders."
        )
        _ways_in(has_data=False)
        return
    assert project is not None
    busy = importing.import_panel(project)  # an addition or a new set under way
    _summary(manifest)
    if len(manifest.classes) >= 2:
        _split(project.id, manifest, project.typed_settings.split)
        label_issues_panel(project, manifest)
    near_duplicates_panel(project.id, manifest)
    add_images_panel(project, manifest, busy)
    with st.expander(RECORD, expanded=_has_shots(project.id)):
        camera_panel()
    if len(manifest.classes) >= 2:
        st.page_link(
            "app_pages/model.py", label="Next: choose a model", icon=":material/arrow_forward:"
        )
    with st.expander("Bring different images"):
        _ways_in(has_data=True, busy=busy)


page()
