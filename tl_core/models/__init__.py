"""Models: the catalog (timm names, bundled or hub weights), the model families, layer groups,
stage cuts, devices, loading a trained model.

Importing the package loads nothing heavy: import the module you need."""
