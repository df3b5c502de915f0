"""The bundle's parts, one module each: the timm folder (safetensors), the ONNX model, the timm
model's unfamiliar check (familiarity.npz) and predict.py; :mod:`.registry` lists them.

Importing the package loads nothing heavy: import the module you need."""
