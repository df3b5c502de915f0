"""Images in: folder layout, safe zips, decoding, duplicates and near-duplicates, the seeded split,
label review.

The records (images, manifest, warnings, split) are in :mod:`tl_core.data.records`; an import
in :mod:`tl_core.data.ingest`, an addition in :mod:`tl_core.data.grow`, data versions in
:mod:`tl_core.data.manifest`, the split in :mod:`tl_core.data.split`;
:mod:`tl_core.data.dataset` gathers their public names for the rest of the code. Importing the
package loads nothing heavy: import the module you need."""
