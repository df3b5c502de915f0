"""The exported model's web page: static files and the vendored onnxruntime-web."""
