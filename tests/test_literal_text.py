"""User-given names are shown as literal text: Markdown, HTML, LaTeX and directives inert."""

from __future__ import annotations

import html
import io
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from markdown_it import MarkdownIt
from PIL import Image
from streamlit.testing.v1 import AppTest

from tl_core.data.dataset import import_zip
from tl_core.runs.store import Store
from tl_ui.text import literal, plot_literal

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = [
    "**bold**",
    "[x](javascript:alert(1))",
    "<b>hi</b>",
    "$x^2$",
    ":red[x]",
    "# heading",
    "1. listed",
    "`code`",
    "a_b_c_",
    "&lt;entity&gt;",
    "![img](http://e.com/i.png)",
    "~~strike~~",
    "| a | b |",
    "> quoted",
    "back\\slash",
    "- item",
    "+ item",
    "2) second",
    "=== x",
    "www.example.com",
    "mail a@b.com",
    "http://e.com",
    ":smile: :material/home:",
]


@pytest.mark.parametrize("text", PAYLOADS)
def test_literal_renders_as_exactly_the_text_in_commonmark(text) -> None:
    rendered = MarkdownIt("commonmark").render(literal(text))
    assert rendered == f"<p>{html.escape(text, quote=False)}</p>\n"
    for directive in ("$", ":", "[", "*", "_", "<", "`"):  # Streamlit's own syntax too
        assert re.search(rf"(?<!\\){re.escape(directive)}", literal(text)) is None


def test_literal_keeps_one_line_and_plot_labels_escape_html() -> None:
    assert "\n" not in literal("a\nb\r\nc\u2028d")
    assert plot_literal(["<b>x</b>", "a&b"]) == ["&lt;b&gt;x&lt;/b&gt;", "a&amp;b"]


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _dataset(tmp_path: Path, names: list[str], per_class: int) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, name in enumerate(names):
            for i in range(per_class):
                zf.writestr(f"{name}/{i}.png", _png(k * per_class + i))
    return import_zip(io.BytesIO(buf.getvalue()), tmp_path / "data").root


def _data_page(tmp_path: Path, monkeypatch, data_dir: Path) -> AppTest:
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st.cache_resource.clear()
    st.cache_data.clear()
    store = Store(tmp_path / "ws")
    project = store.create_project()
    store.set_data_dir(project.id, data_dir)
    at = AppTest.from_file(str(ROOT / "studio.py"), default_timeout=120)
    at.query_params["project"] = project.id
    at.run()
    assert not at.exception
    return at


def test_the_data_page_shows_markdown_and_html_class_names_literally(tmp_path, monkeypatch):
    names = [p for p in PAYLOADS if "/" not in p and "\\" not in p]
    at = _data_page(tmp_path, monkeypatch, _dataset(tmp_path, names, 2))
    markdown = [m.value for m in at.markdown]
    for page in range(2, -(-len(names) // 10) + 1):  # ten classes a page of thumbnails
        at.number_input(key="thumb_page").set_value(page).run()
        markdown += [m.value for m in at.markdown]
    for name in names:
        assert f"**{literal(name)}** · 2 images" in markdown, name
    warnings = [str(w.value) for w in at.warning]
    assert warnings and all(w == literal(w.replace("\\", "")) for w in warnings)
    assert any(literal("'# heading' (2)") in w for w in warnings)  # the small-classes summary


def test_the_data_page_with_many_classes_stays_short(tmp_path, monkeypatch) -> None:
    names = [f"class {k:03d}" for k in range(1000)]
    data_dir = _dataset(tmp_path, names, 2)
    at = _data_page(tmp_path, monkeypatch, data_dir)
    start = time.perf_counter()
    at.run()  # a rerun, as after any click: the first run also pays for imports
    seconds = time.perf_counter() - start
    print(f"Data page with 1,000 classes: {seconds:.1f} s a run")
    assert len(at.warning) == 1 and "1,000 classes have fewer than 10 images" in at.warning[0].value
    thumbs = [m for m in at.markdown if " · 2 images" in m.value]
    assert len(thumbs) == 10  # one page of classes; a page selector for the others
    assert at.number_input(key="thumb_page").max == 100
    assert any("Classes 1–10 of 1,000." in c.value for c in at.caption)
    assert not at.exception and seconds < 10, seconds


def test_class_names_reach_markdown_only_through_literal() -> None:
    """Every f-string that puts a class name into page text wraps it in literal()."""
    sources = [*ROOT.glob("app_pages/*.py"), *ROOT.glob("tl_ui/*.py")]
    bare = re.compile(r"\{(?:[\w.]*classes\[[^{}]*\]|label)(?:![rsa])?(?::[^{}]*)?\}")
    offenders = [
        f"{path.name}: {line.strip()}"
        for path in sources
        for line in path.read_text(encoding="utf-8").splitlines()
        if bare.search(line) and "rows.append" not in line and '"note"' not in line
    ]
    assert offenders == []
