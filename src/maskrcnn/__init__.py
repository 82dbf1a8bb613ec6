"""maskrcnn: a faithful, fast, CPU-first Mask R-CNN on PyTorch.

    import maskrcnn
    model = maskrcnn.load_model("maskrcnn_resnet50_fpn_coco.pth")  # or our checkpoint
    detections = maskrcnn.predict(model, ["street.jpg"])
    maskrcnn.export(model, "model.onnx")          # or format="openvino" -> model.xml
    onnx_model = maskrcnn.load_model("model.onnx")  # same predict() on ONNX Runtime
"""

import importlib

__version__ = "0.1.0"

# Imported on first use, so that `maskrcnn --help` (and anything that needs no model) does
# not pay for importing torch.
_WHERE = {
    "create_model": ".api", "export": ".api", "image_to_tensor": ".api",
    "load_model": ".api", "predict": ".api",
    "ModelConfig": ".config", "preset": ".config",
    "ExportedModel": ".deploy",
    "WeightsError": ".io.weights", "save_model": ".io.weights",
    "MaskRCNN": ".modeling", "build_model": ".modeling",
    "Detections": ".structures", "ImageList": ".structures", "Targets": ".structures",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'maskrcnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])

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
