"""Deployment export (a face): the scoring model of a run as an ONNX graph of standard
operators, checked against PyTorch, and scoring with onnxruntime alone."""

from patchvq.export.onnx import ExportCheck, OnnxScorer, export_onnx

__all__ = ["ExportCheck", "OnnxScorer", "export_onnx"]
