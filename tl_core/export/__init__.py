"""Taking the model home: the bundle (:mod:`.bundle`), its parts one module each
(:mod:`.formats`: safetensors, ONNX, predict.py), its model card (:mod:`.card`) and its parity
check (:mod:`.parity`).

Importing the package loads nothing heavy: import the module you need."""
