"""Which optional converters are installed (torch-free: the Export page asks it).

LiteRT and Core ML need the ``export`` extra (litert-torch, ai-edge-litert, coremltools):
large, so not in the default install. Asking costs nothing: the modules are looked up, not
imported (importing coremltools with torch takes about 20 s)."""

from __future__ import annotations

import importlib.util

__all__ = ["COREML_MODULES", "EXTRA_INSTALL", "LITERT_MODULES", "missing_sentence"]

EXTRA_INSTALL = "install them with `uv sync --extra export` (or `pip install 'tl-studio[export]'`)"
LITERT_MODULES = ("litert_torch", "ai_edge_litert")
COREML_MODULES = ("coremltools",)


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module blocked or half-imported
        return False


def missing_sentence(what: str, modules: tuple[str, ...]) -> str:
    """ "{what} needs the optional converters: install them ..." when one of ``modules`` is
    not installed, else ""."""
    if all(_installed(name) for name in modules):
        return ""
    return f"{what} needs the optional converters: {EXTRA_INSTALL}."
