"""Export a trained bundle to a verified, self-describing ONNX file."""

from segkit.export.onnx import export_onnx, onnx_card, read_onnx_metadata

__all__ = ["export_onnx", "onnx_card", "read_onnx_metadata"]
