"""User-given text (class names, file names, importer messages quoting them) shown literally.

Streamlit renders the text of ``st.markdown``, ``st.caption``, ``st.warning`` and the like,
and of widget and metric labels, as Markdown with LaTeX (``$x$``), colour and icon directives
(``:red[x]``) and emoji codes; a class named ``**bold**`` or ``[x](javascript:…)`` would be
rendered, not shown. :func:`literal` escapes every character Markdown gives a meaning to, so
the text reads exactly as the user typed it. Plotly renders a little HTML in its labels
(``<b>``, ``<a href>``): :func:`plot_literal` escapes that.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

# Every ASCII punctuation character may be backslash-escaped in CommonMark; these are the ones
# Markdown, GFM, Streamlit's LaTeX, directives, emoji codes and HTML give a meaning to.
_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>$:~=^&@%])")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c]+")


def literal(text: object) -> str:
    """``text`` as Markdown source that renders as exactly that text, on one line."""
    return _SPECIAL.sub(r"\\\1", _LINE_BREAKS.sub(" ", str(text)))


def plot_literal(names: Iterable[str]) -> list[str]:
    """Labels for a Plotly chart, shown as typed (its labels render some HTML tags)."""
    return [html.escape(str(n), quote=False) for n in names]
