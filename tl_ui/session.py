"""The session's project (mirrored in the URL), the store, the sidebar and the damaged-index page.

What a session keeps between reruns is one typed object: :mod:`tl_ui.state`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from pathlib import Path

import streamlit as st

from tl_core import service
from tl_core.data.dataset import DatasetManifest
from tl_core.errors import StudioError
from tl_core.models.catalog import get_spec
from tl_core.runs import jobs, supervisor
from tl_core.runs.store import Job, Project, Store, StoreDamagedError, repair
from tl_ui.server import freeze_startup_objects
from tl_ui.state import state

DONE = ":material/check_circle:"
TODO = ":material/radio_button_unchecked:"
BUSY = ":material/hourglass_top:"


@st.cache_resource(show_spinner="Starting the studio…")
def get_store() -> Store:
    """One store per server process; at start, runs whose worker is gone become interrupted,
    and this process starts serving the job queue (warm workers, see tl_core.runs.supervisor.serve).

    Raises StoreDamagedError (not cached) when studio.db cannot be used.
    """
    store = Store()
    store.check()
    jobs.recover(store)
    if os.environ.get("TL_STUDIO_SERVE", "1") != "0":  # 0: another process serves the queue
        supervisor.serve(store)
        if os.environ.get("TL_STUDIO_PREWARM", "1") != "0":
            _prewarm_pages()
    return store


_prewarmed = threading.Event()
_STACK = threading.Lock()
# The engine's modules this process may use: torch, torchvision and timm come with them
# (and what torch.load imports only when it first reads a checkpoint).
MODEL_STACK = (
    "tl_core.models.freezing",
    "tl_core.training.inference",
    "tl_core.analysis.gradcam",
    "torch.utils.serialization",
)


def import_model_stack() -> None:
    """Import torch, torchvision and timm (with :data:`MODEL_STACK`), one thread at a time.

    Two threads importing them at once (the start-up's background import and a page opening
    a model) can each hold a module the other is waiting for; Python then breaks the cycle
    by handing one of them a half-initialised torchvision ("cannot import name ... from
    partially initialized module"). Every use of a model in this process comes through here
    first; once imported, this is a dictionary lookup per module."""
    with _STACK:
        for name in MODEL_STACK:
            importlib.import_module(name)


def _prewarm_pages() -> None:
    """Import torch and timm in the background once per server: the Try and Evaluate pages
    run one picture through a model in this process (a Try picture, a Grad-CAM map), and the
    first student to open them should not wait for those imports while the workers train."""
    if _prewarmed.is_set():
        return
    _prewarmed.set()

    def warm() -> None:
        with contextlib.suppress(Exception):  # the page says what is wrong, if anything
            import_model_stack()
        freeze_startup_objects()  # later full collections skip what the imports built

    threading.Thread(target=warm, name="tl-studio-prewarm-pages", daemon=True).start()


def store_trouble(error: StoreDamagedError) -> None:
    """The page shown instead of the studio when its index cannot be used: what and a way on."""
    st.title("Transfer Learning Studio")
    st.error(str(error), icon=":material/database:")
    st.markdown(
        "Nothing has been deleted. **Repair** renames the damaged file (it is kept beside the "
        "new one as `studio.db.damaged-<time>`) and builds a new index from your project and "
        "run folders, so your imported images and trained models come back."
    )
    if st.button("Repair", type="primary", icon=":material/build:", key="repair_store"):
        try:
            report = repair()
        except (StudioError, OSError) as exc:
            st.error(f"The repair did not succeed: {exc}")
            return
        get_store.clear()
        state().repaired = report.sentence()
        st.rerun()


def repaired_notice() -> None:
    """Once, after a repair (what it did) or a project's deletion."""
    kept = state()
    sentence, kept.repaired = kept.repaired, None
    if sentence:
        st.success(sentence, icon=":material/build:")
    deleted, kept.deleted_project = kept.deleted_project, None
    if deleted:
        st.success(f"The project “{deleted}” was deleted.", icon=":material/delete:")


def active_project() -> Project | None:
    """The project of this session, from session state or the URL's ``?project=`` id."""
    kept = state()
    store = get_store()
    url_id = st.query_params.get("project")
    if url_id and url_id != kept.project_id:
        kept.project_id = url_id
    project = store.project(kept.project_id) if kept.project_id else None
    if kept.project_id and project is None:
        from tl_ui.importing import gone_project_text

        st.warning(gone_project_text(store, kept.project_id))
        kept.project_id = None
        st.query_params.pop("project", None)
    if project is not None and st.query_params.get("project") != project.id:
        st.query_params["project"] = project.id  # page switches drop it; put it back
    return project


def open_project(project: Project) -> None:
    state().project_id = project.id
    st.query_params["project"] = project.id


@st.cache_data(max_entries=32, show_spinner=False)
def load_manifest(data_dir: str) -> DatasetManifest:
    """An imported data set's manifest (immutable once written, so safe to cache)."""
    return DatasetManifest.load(Path(data_dir))


def project_manifest(project: Project | None) -> DatasetManifest | None:
    if project is None or not project.data_dir:
        return None
    return load_manifest(project.data_dir)


def project_with_data() -> tuple[Project | None, DatasetManifest | None]:
    """The project and its images, or a pointer back to step 1 when there are none yet."""
    project = active_project()
    manifest = project_manifest(project)
    if project is None or manifest is None:
        st.info("First bring your images.")
        st.page_link("app_pages/data.py", label="Go to step 1", icon=":material/arrow_back:")
    elif len(manifest.classes) < 2:
        st.info(
            "Your pictures need labels first: at least two classes, a few pictures each. Label "
            "them on the Label page, then use the labels for training."
        )
        st.page_link("app_pages/label.py", label="Go to step 2", icon=":material/arrow_back:")
        return project, None
    elif manifest.unlabelled:
        from tl_core.data.labels import pending

        waiting = pending(manifest)
        if waiting:
            st.info(
                f"{waiting:,} picture(s) labelled on the Label page are not in the training "
                "data yet: press 'Use these labels for training' there to include them."
            )
    return project, manifest


def latest_run(project: Project | None) -> Job | None:
    if project is None:
        return None
    runs = get_store().runs(project.id)
    return runs[-1] if runs else None


POLL_S = 1.0


def run_state(store: Store, run: Job) -> str:
    """What a training run is doing now, from its row and its epochs: the words the sidebar
    and the run panel both use, so they never disagree."""
    if run.status == "queued":
        place = store.queue_position(run.id)
        return f"waiting, place {place} in the queue" if place else "waiting"
    if run.active:
        epochs = store.epochs(run.id)
        total = run.spec.config.epochs
        done = epochs[-1].epoch if epochs else 0
        return f"{run.message or run.status} · epoch {min(done + 1, total)}/{total}"
    return run.status


def _training_line(run_id: str) -> None:
    """The sidebar's training line; re-read every second while the run is going."""
    store = get_store()
    run = store.job(run_id)
    if run is None:
        st.markdown(f"{TODO} Training: not started")
        return
    st.markdown(f"{BUSY if run.active else DONE} Training: {run_state(store, run)}")
    kept = state()
    if run.active:
        kept.sidebar_polling = run.id
    elif kept.sidebar_polling == run.id:
        kept.sidebar_polling = None
        st.rerun(scope="app")  # the run just ended: stop polling, refresh the page once


def sidebar(project: Project | None) -> None:
    """The wizard's progress: what is done, what is next."""
    with st.sidebar:
        st.markdown("### Your project")
        if project is None:
            st.caption("Start by bringing your images on page 1.")
            return
        manifest = project_manifest(project)
        if manifest is None:
            st.markdown(f"{TODO} Images: not yet")
        else:
            line = f"Images: {len(manifest.items):,} in {len(manifest.classes)} classes"
            if manifest.unlabelled:
                line += f", {len(manifest.unlabelled):,} not labelled yet"
            st.markdown(f"{DONE if len(manifest.classes) >= 2 else TODO} {line}")
        model = project.typed_settings.model
        title = get_spec(model).title if model else None
        st.markdown(f"{DONE} Model: {title}" if title else f"{TODO} Model: not chosen")
        run = latest_run(project)
        if run is None:
            st.markdown(f"{TODO} Training: not started")
        else:
            if not run.active:  # this full run already shows the end: no second refresh
                state().sidebar_polling = None
            st.fragment(_training_line, run_every=POLL_S if run.active else None)(run.id)
        st.caption("Bookmark this page's address to come back to this project.")
        st.code(f"?project={project.id}", language=None)
        delete_control(project)


def delete_control(project: Project) -> None:
    """ "Delete this project", behind a confirmation: images, runs and caches go for good."""
    with st.expander("Delete this project", icon=":material/delete:"):
        st.caption(
            "Deletes its images, trained models and cached data from this computer. "
            "This cannot be undone."
        )
        sure = st.checkbox("Yes, delete this project for good", key="delete_project_sure")
        pressed = st.button(
            "Delete this project", disabled=not sure, key="delete_project", type="primary"
        )
        if pressed:
            store = get_store()
            folders = [run.run_dir for run in store.runs(project.id)]
            try:
                service.delete_project(store, project.id)
            except StudioError as exc:
                st.error(str(exc))
                return
            from tl_ui import live_route

            live_route.revoke(folders)  # its live views stop, its models leave the cache
            kept = state()
            kept.project_id = None
            st.query_params.pop("project", None)
            st.session_state.pop("delete_project_sure", None)  # a widget's: the box unticked
            kept.deleted_project = project.name
            st.rerun(scope="app")
