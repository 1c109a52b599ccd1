"""Export: checkpoint -> ONNX artifact folder (torch is not needed here)."""
