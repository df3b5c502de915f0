"""The Data page's near-duplicate panel: pairs side by side, and one click to leave them out.

Leaving out goes through the label review (:mod:`tl_core.data.review`), so it is stored in the
data folder's ``corrections.json``, applies to the next run and never deletes a file.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from tl_core.config import SplitSettings
from tl_core.data import dataset as tl_data
from tl_core.data import neardup, review
from tl_ui.gallery import show_thumbnail
from tl_ui.session import get_store

PER_PAGE = 8
_SUBSET = {"train": "training", "val": "validation"}


def _findings(
    project_id: str, manifest: tl_data.DatasetManifest, corrections: review.Corrections
) -> list[neardup.Finding]:
    project = get_store().project(project_id)
    chosen = project.typed_settings.split if project else SplitSettings()
    split = tl_data.split_dataset(manifest, chosen.val_fraction, chosen.seed)
    with st.spinner("Looking for near-duplicate images…"):
        pairs = neardup.manifest_pairs(manifest)
    return neardup.classify(pairs, split, corrections)


def _leave_out(manifest: tl_data.DatasetManifest, files: set[str], what: str) -> None:
    corrections = review.load(manifest.root)
    corrections.exclude |= files
    review.save(manifest.root, corrections)
    st.toast(f"{what}: left out of the next run")
    st.rerun()


def _side(col, root: Path, item: tl_data.ImageItem, subset: str) -> None:
    with col:
        show_thumbnail(root / item.file, 256, width=128)
    col.text(f"{item.label} · {_SUBSET[subset]}\n{item.source}")


def _pair(manifest: tl_data.DatasetManifest, k: int, f: neardup.Finding) -> None:
    left, right, act = st.columns([1, 1, 2])
    _side(left, manifest.root, f.a, f.a_subset)
    _side(right, manifest.root, f.b, f.b_subset)
    act.caption(
        f"{f.similarity:.1%} alike (perceptual hashes {f.bits} of 64 bits apart)"
        + (" · two classes" if f.kind == "cross_class" else "")
    )
    if f.kind == "train_val":
        val = f.val_side
        assert val is not None
        if act.button("Leave out the validation copy", key=f"nd_val_{k}"):
            _leave_out(manifest, {val.file}, "1 validation copy")
    else:
        if act.button("Leave out both", key=f"nd_both_{k}"):
            _leave_out(manifest, {f.a.file, f.b.file}, "2 images")
        for n, (keep, drop) in enumerate(((f.a, f.b), (f.b, f.a))):
            if act.button(f"Keep only the one in '{keep.label}'", key=f"nd_keep{n}_{k}"):
                _leave_out(manifest, {drop.file}, "1 image")


def near_duplicates_panel(project_id: str, manifest: tl_data.DatasetManifest) -> None:
    """Near-copies across training and validation, and across classes, for the current split."""
    corrections = review.load(manifest.root)
    findings = _findings(project_id, manifest, corrections)
    found = neardup.counts(findings)
    if not findings:
        st.caption(
            f"No near-duplicates: none of the {len(manifest.items)} images is a resized, "
            "re-compressed or re-saved copy of an image on the other side of the validation "
            "split or in another class."
        )
        return
    st.subheader("Near-duplicate images")
    text = neardup.warning(found)
    st.warning(text or "")
    st.markdown(
        "A validation image that is a near-copy of a training image checks the model on a "
        "picture it has already learned, so the score looks better than it is: leave out the "
        "**validation copy** (the training copy keeps teaching). A picture in two classes has "
        "two labels and at most one is right: leave out **both**, unless you know which class "
        "is right. Nothing is deleted; the change applies to the next run (undo it in the "
        "label review on the Evaluate page)."
    )
    if not manifest.has_explicit_val:
        st.caption(
            "Which images are near-copies across the split depends on the share held back and "
            "the shuffle seed above; this list follows the current settings."
        )
    val_side = {f.val_side.file for f in findings if f.kind == "train_val" and f.val_side}
    cross = {x.file for f in findings if f.kind == "cross_class" for x in (f.a, f.b)}
    c1, c2 = st.columns(2)
    if val_side and c1.button(
        f"Leave out all {len(val_side)} validation copies", type="primary", key="nd_all_val"
    ):
        _leave_out(manifest, val_side, f"{len(val_side)} validation copies")
    if cross and c2.button(
        f"Leave out both images of all {found['cross_class']} pairs in two classes",
        key="nd_all_cross",
    ):
        _leave_out(manifest, cross, f"{len(cross)} images in two classes")
    pages = (len(findings) + PER_PAGE - 1) // PER_PAGE
    page = (
        int(st.number_input(f"Page (of {pages})", 1, pages, 1, key="nd_page")) if pages > 1 else 1
    )
    first = (page - 1) * PER_PAGE
    st.caption(f"Pairs {first + 1}–{min(first + PER_PAGE, len(findings))} of {len(findings)}.")
    for k, f in enumerate(findings[first : first + PER_PAGE], first):
        _pair(manifest, k, f)
