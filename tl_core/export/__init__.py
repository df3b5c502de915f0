"""Taking the model home: the bundle (safetensors, ONNX, predict.py, model card) and its parity
check.

Importing the package loads nothing heavy: import the module you need."""
