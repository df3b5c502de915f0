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
    "events": 1.5,  # a job's events carry config's step and epoch rows
    "data": 2,
    "models": 2.5,  # a model names the square its input is cut from (data.pixelcache)
    "training": 3,
    "analysis": 4,
    "labeling": 4.5,  # labels from frozen features: after analysis, before export
    "export": 5,
    "runs": 6,
    "service": 7,
    "cli_label": 7.5,  # the label commands, dispatched by cli
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
        "tl_core.runs.kinds",
        "tl_core.runs.jobs",
        "tl_core.runs.supervisor",
        "tl_core.runs.recording",
        "tl_core.runs.executor",
        "tl_core.runs.ray_executor",
        "tl_core.runs.worker",
        "tl_core.runs.tasks",
        "tl_core.data",
        "tl_core.models",
        "tl_core.training",
        "tl_core.analysis",
        "tl_core.labeling.assist",
        "tl_core.labeling.issues",
        "tl_core.labeling.projection",
        "tl_core.export",
        "tl_core.export.extras",
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


# ------------------------------------------------------------------ rules across the tree

CODE_ROOTS = ("tl_core", "tl_ui", "app_pages")
MAX_FUNCTION_LINES = 80


def _code_files() -> list[Path]:
    files = [p for root in CODE_ROOTS for p in sorted((ROOT / root).rglob("*.py"))]
    return [*files, ROOT / "app.py", ROOT / "studio.py"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Every tl_core module and the tl_core modules it imports (lazy imports too)."""
    names = {_module_name(p) for p in _modules()}
    graph: dict[str, set[str]] = {}
    for path in _modules():
        me = _module_name(path)
        deps: set[str] = set()
        for module, imported in _imports(path):
            subs = [f"{module}.{n}" for n in imported if f"{module}.{n}" in names]
            deps.update(subs or ([module] if module in names else []))
        graph[me] = deps - {me}
    return graph


def test_no_import_cycles_between_modules() -> None:
    graph = _import_graph()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = [*path[path.index(node) :], node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for dep in sorted(graph.get(node, ())):
            if dep.startswith(node + "."):  # a package importing its own modules
                continue
            visit(dep, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def _module_aliases(tree: ast.Module) -> dict[str, str]:
    """Local names bound to tl_core modules (``from tl_core.runs import jobs``, ``as`` names)."""
    names = {_module_name(p) for p in _modules()}
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tl_core"):
            for a in node.names:
                if f"{node.module}.{a.name}" in names:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("tl_core") and a.asname:
                    aliases[a.asname] = a.name
    return aliases


@pytest.mark.parametrize("path", _code_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_crosses_a_module(path: Path) -> None:
    tree = ast.parse(path.read_text())
    me = _module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tl_"):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{me} imports private {private} from {node.module}"
    aliases = _module_aliases(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            pytest.fail(f"{me} uses private {aliases[node.value.id]}.{node.attr}")


@pytest.mark.parametrize("path", _code_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_is_over_80_lines(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            assert lines <= MAX_FUNCTION_LINES, f"{path.name}: {node.name} is {lines} lines"


# Where progress travels: it is typed (tl_core.events.Progress), so nothing here needs a regex.
PROGRESS_PATH = (
    "tl_core/runs",
    "tl_core/events.py",
    "tl_core/cli.py",
    "tl_ui/live.py",
    "tl_ui/jobs.py",
)


def test_no_regex_reads_progress() -> None:
    for path in _code_files():
        rel = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text())
        if rel.startswith(PROGRESS_PATH):
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    assert all(a.name != "re" for a in node.names), f"{rel} imports re"
        for node in ast.walk(tree):  # a count read back out of a sentence, anywhere
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert r"\d+)/" not in node.value and r"\d+/\d+" not in node.value, rel


def test_job_kinds_are_listed_in_the_registry_only() -> None:
    from tl_core.runs.kinds import KINDS

    kinds = set(KINDS)
    assert {"train", "import", "features", "recommend", "verify", "export", "predict"} <= kinds
    for path in _code_files():
        rel = str(path.relative_to(ROOT))
        # events.py names phases, and a task's one phase is named after its kind
        if rel in ("tl_core/runs/kinds.py", "tl_core/events.py"):
            continue
        tree = ast.parse(path.read_text())
        exports = {  # a module's public names: not a list of kinds
            id(n.value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Assign | ast.AnnAssign)
            and any(
                getattr(t, "id", "") == "__all__"
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            )
        }
        for node in ast.walk(tree):
            if id(node) in exports:
                continue
            elements = []
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                elements = node.elts
            elif isinstance(node, ast.Dict):
                elements = [k for k in node.keys if k is not None]
            named = {e.value for e in elements if isinstance(e, ast.Constant)} & kinds
            assert len(named) < 2, f"{rel}:{node.lineno} lists job kinds {sorted(named)}"
