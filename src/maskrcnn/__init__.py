"""maskrcnn: a faithful, fast, CPU-first Mask R-CNN on PyTorch.

    import maskrcnn
    model = maskrcnn.load_model("maskrcnn_resnet50_fpn_coco.pth")  # or our checkpoint
    detections = maskrcnn.predict(model, ["street.jpg"])
    maskrcnn.export(model, "model.onnx")          # or format="openvino" -> model.xml
    onnx_model = maskrcnn.load_model("model.onnx")  # same predict() on ONNX Runtime
"""

from .api import create_model, export, image_to_tensor, load_model, predict
from .config import ModelConfig, preset
from .deploy import ExportedModel
from .io.weights import WeightsError, save_model
from .modeling import MaskRCNN, build_model
from .structures import Detections, ImageList, Targets

__version__ = "0.1.0"

__all__ = [
    "Detections",
    "ExportedModel",
    "ImageList",
    "MaskRCNN",
    "ModelConfig",
    "Targets",
    "WeightsError",
    "build_model",
    "create_model",
    "export",
    "image_to_tensor",
    "load_model",
    "predict",
    "preset",
    "save_model",
]
