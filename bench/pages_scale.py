"""How long the Data page takes to draw at 100 classes and 20,000 images.

It writes a data set folder the way the importer leaves one (``manifest.json`` and tiny PNGs,
without running the importer), a workspace with one project on it, and draws the Data page
with Streamlit's AppTest: the first draw (imports, the manifest not yet cached), a rerun
(what a click costs) and a new visit (a new tab). The near-duplicate search, done once per
data set and then read from disk, is timed on its own. It prints one JSON line of seconds.

    uv run python bench/pages_scale.py [--classes 100] [--per-class 200] [--side 320]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "studio.py"


def _picture(rng: np.random.Generator, colour: np.ndarray, side: int) -> Image.Image:
    """A smooth picture with some noise, like a photo after the importer's normalising."""
    h, w = (side * 3) // 4, side
    yy, xx = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 6.3)
    wave = 60 * np.sin(xx / rng.uniform(8, 40) + phase) + 40 * np.cos(yy / rng.uniform(8, 40))
    pixels = colour[None, None, :] + wave[..., None] + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def make_manifest(
    root: Path,
    classes: int = 100,
    per_class: int = 200,
    side: int = 320,
    few: int = 0,
    distinct: int = 6,
) -> Path:
    """A data set folder as an import leaves it: ``classes`` classes of ``per_class`` PNGs
    (the last ``few`` classes get 5 each), ``distinct`` different pictures a class (``side``
    pixels wide) and the rest hard links to them, distinct perceptual hashes. The manifest
    carries the importer's own few-images warning when there are small classes."""
    from tl_core.data.dataset import MANIFEST_NAME, MIN_IMAGES_PER_CLASS

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    items = []
    names = [f"class {c:03d}" for c in range(classes)]
    counts = {}
    for c, label in enumerate(names):
        folder = root / "images" / f"c{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        n = 5 if c >= classes - few else per_class
        counts[label] = n
        colour = rng.integers(40, 215, 3).astype(np.float64)
        for i in range(n):
            rel = f"images/c{c:03d}/{i:05d}.png"
            if i < distinct:
                _picture(rng, colour, side).save(root / rel, compress_level=1)
            else:
                os.link(root / f"images/c{c:03d}/{i % distinct:05d}.png", root / rel)
            items.append(
                {
                    "file": rel,
                    "label": label,
                    "subset": None,
                    "source": f"{label}/{i}.png",
                    "sha256": f"{c:08x}{i:056x}",
                    "width": side,
                    "height": (side * 3) // 4,
                    "phash": "".join(f"{int(h):016x}" for h in rng.integers(0, 2**63, 6)),
                }
            )
    warnings = []
    small = [c for c in names if counts[c] < MIN_IMAGES_PER_CLASS]
    if len(small) > 1:  # worded as the importer words it
        named = ", ".join(f"'{c}' ({counts[c]})" for c in small[:3])
        named += f" and {len(small) - 3:,} more" if len(small) > 3 else ""
        warnings.append(
            f"{len(small):,} classes have fewer than {MIN_IMAGES_PER_CLASS} images: {named}. "
            f"At least {MIN_IMAGES_PER_CLASS} per class are recommended."
        )
    data = {
        "version": 1,
        "classes": sorted(names),
        "has_explicit_val": False,
        "items": items,
        "skipped": [],
        "duplicates": [],
        "warnings": warnings,
    }
    (root / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    return root


def project_on(workspace: Path, data_dir: Path) -> str:
    """A project of a new workspace whose data set is ``data_dir``."""
    from tl_core.runs.store import Store

    store = Store(workspace)
    project = store.create_project()
    store.set_data_dir(project.id, data_dir)
    return project.id


def data_page(project_id: str, timeout: float = 300):
    """The app on ``project_id``'s Data page, drawn once (an AppTest)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.query_params["project"] = project_id
    at.run()
    return at


def count_image_bytes() -> list[int]:
    """Wrap Streamlit's image encoder so that each draw's picture bytes can be summed: the
    list returned gets the size of every picture a page hands to the browser."""
    from streamlit.elements.lib import image_utils

    sizes: list[int] = []
    real = image_utils.image_to_url

    def counted(image, *args, **kwargs):
        if isinstance(image, bytes):
            sizes.append(len(image))
        elif isinstance(image, str | Path) and os.path.isfile(image):
            sizes.append(os.path.getsize(image))
        return real(image, *args, **kwargs)

    image_utils.image_to_url = counted
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--side", type=int, default=320, help="picture width in pixels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(
            TL_STUDIO_HOME=str(Path(tmp) / "ws"),
            TL_STUDIO_SERVE="0",
            TL_STUDIO_PREWARM="0",
            HF_HUB_OFFLINE="1",
        )
        start = time.perf_counter()
        data = make_manifest(Path(tmp) / "data-1", args.classes, args.per_class, args.side)
        made = time.perf_counter() - start
        project_id = project_on(Path(tmp) / "ws", data)
        from tl_core.data import neardup
        from tl_core.data.dataset import DatasetManifest

        start = time.perf_counter()
        neardup.manifest_pairs(DatasetManifest.load(data))  # once a data set, kept on disk
        search = time.perf_counter() - start
        sizes = count_image_bytes()
        start = time.perf_counter()
        at = data_page(project_id)
        first = time.perf_counter() - start
        sent = sum(sizes)
        if at.exception:
            sys.exit(f"the page failed: {at.exception[0].message}")
        start = time.perf_counter()
        at.run()
        again = time.perf_counter() - start
        start = time.perf_counter()
        data_page(project_id)
        fresh = time.perf_counter() - start
        print(
            json.dumps(
                {
                    "classes": args.classes,
                    "images": args.classes * args.per_class,
                    "make_s": round(made, 2),
                    "near_duplicate_search_s": round(search, 2),  # once, then read from disk
                    "data_page_first_s": round(first, 2),
                    "data_page_rerun_s": round(again, 2),  # a click on the page
                    "data_page_new_visit_s": round(fresh, 2),  # a new browser tab
                    "pictures_sent": len(sizes) // 3,  # in each draw
                    "picture_mb_sent": round(sent / 2**20, 2),  # in each draw
                }
            )
        )


if __name__ == "__main__":
    main()
