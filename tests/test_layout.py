"""The house: tl_core's sub-packages import only the ones before them in the walk, no cycles,
no private names across packages, and the torch-free modules stay torch-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each place may import only places of a lower rank (the walk of docs/ARCHITECTURE.md).
RANK = {
    "__init__": 0,
    "errors": 0,
    "config": 1,
    "diskspace": 1,
    "data": 2,
    "models": 2,
    "training": 3,
    "analysis": 4,
    "export": 5,
    "runs": 6,
    "service": 7,
    "cli": 8,
    "__main__": 9,
}


def _place(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tl_core" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every tl_core import in the file, at any depth (lazy ones too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tl_core"):
            names = [a.name for a in node.names]
            if node.module == "tl_core":  # from tl_core import config
                found += [(f"tl_core.{n}", []) for n in names]
            else:
                found.append((node.module, names))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("tl_core")]
    return found


def _modules() -> list[Path]:
    return sorted((ROOT / "tl_core").rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_walk_only(path: Path) -> None:
    rel = path.relative_to(ROOT / "tl_core")
    me = rel.parts[0].removesuffix(".py")
    assert me in RANK, f"{rel}: a new place in tl_core needs its rank in the walk"
    for module, names in _imports(path):
        other = _place(module)
        if other is None or other == me:
            continue
        assert RANK[other] < RANK[me], f"{rel} imports {module}: back up the walk"
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{rel} imports private {private} from {module}"


def test_the_engine_never_imports_streamlit_or_the_ui() -> None:
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                assert not any(n.split(".")[0] in ("streamlit", "tl_ui") for n in names), path


@pytest.mark.parametrize(
    "module",
    [
        "tl_core.config",
        "tl_core.service",
        "tl_core.cli",
        "tl_core.runs.jobs",
        "tl_core.runs.supervisor",
        "tl_core.runs.executor",
        "tl_core.runs.worker",
        "tl_core.data",
        "tl_core.models",
        "tl_core.training",
        "tl_core.analysis",
        "tl_core.export",
    ],
)
def test_torch_free_modules_load_no_torch(module: str) -> None:
    code = (
        f"import sys, {module}; print(','.join(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "", f"importing {module} loads {out.stdout.strip()}"
