"""Bringing images in: the import job's panel, the uploads, and a folder on this computer.

Every import runs as a job (tl_core.service.submit_import): the page only saves what the
browser sent into the job's folder, or names a folder on the server's own disk, and watches.
"Use a folder on this computer" reads a path on the server's disk, so it is on only while the
app serves this computer alone (``server.address`` is a loopback address), unless
``TL_STUDIO_FOLDER_IMPORT=on|off`` says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import streamlit as st

from tl_core import service
from tl_core.data.dataset import MAX_IMPORT_MB
from tl_core.errors import DataError, DiskFullError
from tl_core.runs.store import Job, Project, Store
from tl_ui import jobs as job_panel
from tl_ui.session import active_project, get_store, open_project
from tl_ui.state import state
from tl_ui.text import literal

__all__ = [
    "FOLDER_IMPORT_ENV",
    "LOCAL_ADDRESSES",
    "folder_import",
    "folder_import_setting",
    "folder_tab",
    "gone_project_text",
    "import_panel",
    "remember",
    "start_import",
    "upload_folder_tab",
    "upload_zip_tab",
]

FOLDER_IMPORT_ENV = "TL_STUDIO_FOLDER_IMPORT"
LOCAL_ADDRESSES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_ON, _OFF = ("on", "1", "true", "yes"), ("off", "0", "false", "no")
WHAT = "Importing your images"
GROW_WHAT = "Adding your images"


def folder_import_setting(address: str | None, setting: str | None) -> tuple[bool, str]:
    """Whether a folder path may be imported, and why, from the server's address and the
    ``TL_STUDIO_FOLDER_IMPORT`` value (``on``/``off``; anything else: by the address)."""
    value = (setting or "").strip().lower()
    if value in _ON:
        return True, f"{FOLDER_IMPORT_ENV}=on"
    if value in _OFF:
        return False, (
            f"The person who started the studio turned this off ({FOLDER_IMPORT_ENV}=off). "
            f"Upload the images instead, or start it with {FOLDER_IMPORT_ENV}=on."
        )
    if (address or "").strip().lower() in LOCAL_ADDRESSES:
        return True, "the app serves this computer only"
    return False, (
        "This studio is shared over the network, so a folder path would be read from the "
        "server's disk, not from your computer; it is off. Upload the folder or a .zip instead. "
        f"Whoever started the studio can turn it on with {FOLDER_IMPORT_ENV}=on."
    )


def folder_import() -> tuple[bool, str]:
    """:func:`folder_import_setting` for this server."""
    address = st.get_option("server.address")
    return folder_import_setting(address, os.environ.get(FOLDER_IMPORT_ENV))


def start_import(way: str, path: str | Path | None = None, upload: Any = None) -> None:
    """Submit an import of the session's project (a new one when none) and rerun to watch it;
    a problem found before the job starts (a full disk) is shown here."""
    store = get_store()
    try:
        job = service.submit_import(store, active_project(), way, path=path, upload=upload)
    except (DataError, DiskFullError) as exc:
        st.error(literal(exc))
        return
    project = store.project(job.project_id)
    if project is not None:
        open_project(project)
    remember(job)
    state().import_round += 1  # new upload widgets: the old files are freed
    st.rerun()


def remember(job: Job) -> None:
    """Mark ``job`` as started by this session: its panel keeps showing how it ended."""
    state().imports_seen.add(job.id)


def gone_project_text(store: Store, project_id: str) -> str:
    """What a page says about a project link that leads nowhere: why its project was removed
    when its first import was cut off (said once), else that the link is unknown."""
    cut_off = service.import_cut_off(store, project_id)
    if cut_off:
        return literal(cut_off)
    return "That project link is unknown here; start a new project below."


def _shown(project: Project | None) -> Job | None:
    """The import job to show: one under way (seen from any tab), one this session started
    that did not succeed (its message stays until the next import), or the failed import
    of a project that has no images yet (whoever opens it sees why, and imports again)."""
    if project is None:
        return None
    job = service.latest_import(get_store(), project.id)
    if job is None or job.status == "finished":
        return None
    if job.active:
        return job
    if job.status == "held":  # another tab is saving its upload
        return None
    if not project.data_dir:
        return job
    return job if job.id in state().imports_seen else None


def import_panel(project: Project | None) -> bool:
    """The project's import job (place, progress with an ETA, Stop, its error); True while it
    waits or works, so the page offers no second import meanwhile."""
    job = _shown(project)
    if job is None:
        return False
    job_panel.watch(job, GROW_WHAT if job.config.get("grow") else WHAT)
    if job.status in ("stopped", "interrupted", "failed"):
        st.caption(
            "Nothing was kept from this import; the project has the images it had."
            if project is not None and project.data_dir
            else "Nothing was kept from this import and the project has no images yet: "
            "import them again below."
        )
    return job.active


def _round() -> int:
    return state().import_round


def folder_tab() -> None:
    """A folder (or .zip) on the server's disk, imported where it is."""
    allowed, why = folder_import()
    if not allowed:
        st.info(why, icon=":material/lock:")
        return
    st.markdown(
        "Type the path of a folder on this computer that holds **one sub-folder per class** "
        "(or of a .zip). It is read where it is: nothing goes through the browser, so large "
        "folders come in fastest this way."
    )
    path = st.text_input(
        "Folder on this computer",
        key="import_path",
        placeholder=str(Path.home() / "photos"),
    )
    if st.button("Import the folder", key="import_path_go", disabled=not path.strip()):
        start_import("folder", path=path)


def upload_folder_tab() -> None:
    st.markdown(
        "Choose a folder that holds **one sub-folder per class**, e.g. "
        "`leaves/healthy/…`, `leaves/rust/…`. A `train/` + `val/` pair is honoured."
    )
    files = st.file_uploader(
        "Folder of images",
        accept_multiple_files="directory",
        key=f"upload_dir_{_round()}",
        max_upload_size=MAX_IMPORT_MB,
    )
    if files and st.button(f"Import {len(files)} files", key="import_dir"):
        start_import("files", upload=[(f.name, f) for f in files])


def upload_zip_tab() -> None:
    st.markdown(
        f"A **.zip** with one folder per class inside (up to {MAX_IMPORT_MB:,} MB unpacked)."
    )
    upload = st.file_uploader(
        "Zip file", type=["zip"], key=f"upload_zip_{_round()}", max_upload_size=MAX_IMPORT_MB
    )
    if upload is not None and st.button("Import the zip", key="import_zip"):
        start_import("zip", upload=upload)
