"""The model: tensors in, tensors (or the dataclasses of maskrcnn.structures) out."""

from .mask_rcnn import MaskRCNN, build_model

__all__ = ["MaskRCNN", "build_model"]
