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

# Any ASCII punctuation may be backslash-escaped in CommonMark. These characters mean something
# anywhere in a line (emphasis, code, links, HTML, entities, Streamlit's LaTeX, colour and icon
# directives, emoji codes, GFM strike-through and e-mail links); "(", "!", "|", "." and the like
# only next to them, at the start of a line (headings, lists, quotes) or in "www." links.
_SPECIAL = re.compile(r"([\\`*_{}\[\]<>$:~&@])")
_LINE_START = re.compile(r"^(\s*)([#+\-=]|\d+(?=[.)]))")
_WWW = re.compile(r"(?i)\b(www)\.")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c]+")


def literal(text: object) -> str:
    """``text`` as Markdown source that renders as exactly that text, on one line."""
    out = _SPECIAL.sub(r"\\\1", _LINE_BREAKS.sub(" ", str(text)))
    out = _WWW.sub(r"\1\\.", out)
    match = _LINE_START.match(out)
    if match and match.group(2).isdigit():  # "1. x" / "1) x" would start a list
        end = match.end()
        return out[:end] + "\\" + out[end:]
    return _LINE_START.sub(r"\1\\\2", out, count=1)


def plot_literal(names: Iterable[str]) -> list[str]:
    """Labels for a Plotly chart, shown as typed (its labels render some HTML tags)."""
    return [html.escape(str(n), quote=False) for n in names]
