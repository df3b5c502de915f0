"""Finding a run's record and data set from its folder alone (the command line's way in)."""

from __future__ import annotations

from pathlib import Path

from tl_core.runs.store import Job, Store, StoreDamagedError, default_workspace, read_run_record

__all__ = ["find_data_root", "find_run", "locate_data_root"]


def find_run(run_dir: Path, workspace: Path | None = None) -> Job | None:
    """The store's record of the run in ``run_dir``.

    Tried in order: ``workspace``, the workspace that holds ``run_dir`` (runs/<id>/), the
    default workspace. None when none of them knows the run.
    """
    target = Path(run_dir).resolve()
    for ws in (workspace, target.parent.parent, default_workspace()):
        if ws is None or not (Path(ws) / "studio.db").is_file():
            continue
        try:
            runs = Store(Path(ws)).runs()
        except StoreDamagedError:  # a run folder alone is enough: its data set is then passed
            continue
        for run in runs:
            if Path(run.run_dir).resolve() == target:
                return run
    return None


def find_data_root(run_dir: Path, workspace: Path | None = None) -> Path | None:
    """The imported data set a run trained on, looked up in the workspace's store."""
    run = find_run(run_dir, workspace)
    return Path(run.data_dir) if run is not None else None


def locate_data_root(run_dir: Path, workspace: Path | None = None) -> tuple[Path | None, str]:
    """The imported data set the run was validated on, and where it was looked for.

    First the ``data_dir`` the run folder's run.json records, then the workspace's index
    (which may be damaged or not know the run: then only run.json counts).
    """
    record = read_run_record(Path(run_dir))
    recorded = Path(record["data_dir"]) if record else None
    if recorded is not None and recorded.is_dir():
        return recorded, str(recorded)
    try:
        found = find_data_root(Path(run_dir), workspace)
    except StoreDamagedError:
        found = None
    if found is not None and found.is_dir():
        return found, str(found)
    where = str(recorded or found) if (recorded or found) else "the run folder or the workspace"
    return None, where
