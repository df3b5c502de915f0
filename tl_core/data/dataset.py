"""The importer's public names in one place, for the code outside ``tl_core.data``.

Where each lives:

- :mod:`tl_core.data.records`: the data types (:class:`ImageItem`, :class:`SkippedFile`,
  :class:`DataWarning`, :class:`DatasetManifest` with its ``save``/``load``, :class:`Split`);
- :mod:`tl_core.data.manifest`: data versions (:func:`link_import`, :func:`batch_count`);
- :mod:`tl_core.data.ingest`: an import of a folder, a .zip or uploaded files
  (:func:`import_folder`, :func:`import_zip`, :func:`import_files`,
  :func:`source_fingerprint`);
- :mod:`tl_core.data.checks`: what an import is refused for and warns about;
- :mod:`tl_core.data.grow`: adding images as a new data version (:func:`grow`);
- :mod:`tl_core.data.split`: the seeded split (:func:`split_dataset`, :func:`split_groups`,
  :func:`split_rule_text`, :func:`camera_run`);
- :mod:`tl_core.data.neardup`: the near-duplicate links the split keeps (:func:`near_links`).

The modules of ``tl_core.data`` import from those modules, never from here.
"""

from __future__ import annotations

from tl_core.data.checks import IMBALANCE_RATIO, MIN_IMAGES_PER_CLASS
from tl_core.data.grow import GrowSource, Growth, grow
from tl_core.data.ingest import (
    MAX_IMPORT_MB,
    MAX_SIDE,
    MAX_SOURCE_PIXELS,
    SNIFFED_FORMATS,
    Progress,
    import_files,
    import_folder,
    import_zip,
    source_fingerprint,
)
from tl_core.data.manifest import batch_count, link_import
from tl_core.data.neardup import near_links
from tl_core.data.records import (
    MANIFEST_NAME,
    DatasetManifest,
    DataWarning,
    ImageItem,
    SkippedFile,
    Split,
)
from tl_core.data.split import RUN_FRAMES, camera_run, split_dataset, split_groups, split_rule_text
from tl_core.data.standalone_predict import IMAGE_SUFFIXES

__all__ = [
    "IMAGE_SUFFIXES",
    "IMBALANCE_RATIO",
    "MANIFEST_NAME",
    "MAX_IMPORT_MB",
    "MAX_SIDE",
    "MAX_SOURCE_PIXELS",
    "MIN_IMAGES_PER_CLASS",
    "RUN_FRAMES",
    "SNIFFED_FORMATS",
    "DataWarning",
    "DatasetManifest",
    "GrowSource",
    "Growth",
    "ImageItem",
    "Progress",
    "SkippedFile",
    "Split",
    "batch_count",
    "camera_run",
    "grow",
    "import_files",
    "import_folder",
    "import_zip",
    "link_import",
    "near_links",
    "source_fingerprint",
    "split_dataset",
    "split_groups",
    "split_rule_text",
]
