"""Where other machines in the room reach the app, for the exported web page's address and QR.

The address the browser used is the one to give when it is not this computer's own
(``localhost``): students reach the app the same way. When the teacher's browser is on the
server itself, the app is reachable from other machines only when Streamlit listens on every
address (its default) or on a named one; then the server's address on the local network is
the one Streamlit prints as its "Network URL". Bound to this computer alone, there is none.
"""

from __future__ import annotations

import io
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

import streamlit as st

__all__ = ["SharedAddress", "app_address", "qr_png"]

_ALL = ("", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True)
class SharedAddress:
    """An address of the app that other machines can open."""

    base: str  # e.g. "http://192.168.1.20:8501" (no trailing slash)
    camera: bool  # browsers open the camera only over https (or on the machine itself)


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.endswith(".localhost")


def _base_path() -> str:
    path = str(st.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{path}" if path else ""


def app_address(browser_url: str | None = None) -> SharedAddress | None:
    """The app's address for other machines, or None when it listens on this one only.

    ``browser_url``: the address this browser opened the app at (default: Streamlit's
    ``st.context.url``)."""
    url = urlsplit(browser_url if browser_url is not None else (st.context.url or ""))
    if url.hostname and not _loopback(url.hostname):
        base = f"{url.scheme}://{url.netloc}{_base_path()}"
        return SharedAddress(base, url.scheme == "https")
    bound = str(st.get_option("server.address") or "")
    port = int(st.get_option("server.port") or 8501)
    if bound in _ALL:
        from streamlit import net_util

        host = net_util.get_internal_ip()  # what Streamlit prints as the Network URL
    elif not _loopback(bound):
        host = bound
    else:
        return None
    if not host:
        return None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return SharedAddress(f"http://{host}:{port}{_base_path()}", False)


def qr_png(text: str, scale: int = 6) -> bytes:
    """A QR code of ``text`` as a PNG (segno: pure Python, no other dependency)."""
    import segno

    out = io.BytesIO()
    segno.make(text, error="m").save(out, kind="png", scale=scale, border=2)
    return out.getvalue()
