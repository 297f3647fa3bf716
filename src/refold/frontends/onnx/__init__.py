"""The ONNX frontend: safe file reading, import, export, atomic save, raising to core, lowering."""
