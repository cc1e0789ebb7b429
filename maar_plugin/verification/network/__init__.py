"""The model graph: ONNX import into torch layers, and the original file run by onnxruntime."""
