"""Images in: folder layout, safe zips, decoding, duplicates and near-duplicates, the seeded split,
label review.

Importing the package loads nothing heavy: import the module you need."""
