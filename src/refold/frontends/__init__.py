"""Frontends turn ONNX files and torch programs into refold IR, and IR back into them."""
