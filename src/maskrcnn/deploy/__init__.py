"""Deployment: the whole model exported to ONNX and OpenVINO, and exported models run by
ONNX Runtime or OpenVINO behind the eager model's `predict` (see docs/deploy.md).

`modeling/` never imports this package. The exporter needs the `onnx` extra (onnx,
onnxscript) and is imported only when used.
"""

from __future__ import annotations

import os
from pathlib import Path

from .runtime import BACKENDS, ExportedModel, MissingExtraError, backend_for, load_exported

__all__ = ["BACKENDS", "ExportedModel", "MissingExtraError", "backend_for", "export",
           "load_exported"]


def export(model, path: str | os.PathLike, format: str = "onnx", *, opset: int | None = None,
           mask_output: str | None = None) -> list[Path]:
    """Export `model` (a MaskRCNN) as `format` ("onnx" or "openvino") to `path`; returns the
    files written. See maskrcnn.deploy.exporter."""
    try:
        from . import exporter
    except ImportError as err:
        raise MissingExtraError(f"exporting needs an extra ({err.name} is not installed): "
                                "pip install 'maskrcnn[onnx]'") from None
    return exporter.export(model, path, format, opset=opset or exporter.DEFAULT_OPSET,
                           mask_output=mask_output)
