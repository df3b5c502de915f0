"""Refresh the web page's copy of onnxruntime-web (``ort/``) from the npm registry.

    python -m tl_core.export.web.vendor

Installs the exact version pinned in ``package.json`` and ``package-lock.json`` (checked
against the lock's integrity hashes by ``npm ci``) into a temporary folder, copies the files
the WebAssembly CPU backend needs into ``ort/``, writes the licence, and lists every file with
its SHA-256 in ``ort/FILES.json`` (which the export's offline check compares). Needs node and
npm; nothing is fetched when the page runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["HERE", "LICENSE_TEXT", "MANIFEST", "ORT_DIR", "RUNTIME_FILES", "main", "sha256"]

HERE = Path(__file__).resolve().parent
ORT_DIR = HERE / "ort"
MANIFEST = "FILES.json"
PACKAGE = "onnxruntime-web"
# The ES module of the WebAssembly-only build, its Emscripten glue and the WebAssembly binary
# (SIMD; threads are used only when the page is cross-origin isolated).
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
# The npm package carries no licence file; its package.json says "MIT" and the ONNX Runtime
# repository's LICENSE is this text.
LICENSE_TEXT = """\
onnxruntime-web {version} (ONNX Runtime for the web), from the npm registry.

MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _install(into: Path) -> Path:
    """``npm ci`` of the pinned package into ``into``; the installed package's folder."""
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(HERE / name, into / name)
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is not installed: install Node.js (with npm) first.")
    subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--omit=dev"],
        cwd=into,
        check=True,
    )
    return into / "node_modules" / PACKAGE


def main() -> int:
    """Install the pinned onnxruntime-web and copy its runtime files into ``ort/``."""
    with tempfile.TemporaryDirectory() as tmp:
        package = _install(Path(tmp))
        meta = json.loads((package / "package.json").read_text(encoding="utf-8"))
        if meta.get("license") != "MIT":
            raise SystemExit(f"{PACKAGE}'s licence is now {meta.get('license')!r}: check it.")
        ORT_DIR.mkdir(exist_ok=True)
        for old in ORT_DIR.iterdir():
            old.unlink()
        for name in RUNTIME_FILES:
            shutil.copy2(package / "dist" / name, ORT_DIR / name)
    version = str(meta["version"])
    (ORT_DIR / "LICENSE").write_text(LICENSE_TEXT.format(version=version), encoding="utf-8")
    files = {p.name: sha256(p) for p in sorted(ORT_DIR.iterdir()) if p.name != MANIFEST}
    manifest = {"package": PACKAGE, "version": version, "files": files}
    (ORT_DIR / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"{PACKAGE} {version}: {len(files)} files in {ORT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
