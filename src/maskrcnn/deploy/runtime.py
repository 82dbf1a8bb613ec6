"""Exported models run by ONNX Runtime or OpenVINO behind the eager model's interface:
`predict(images, score_thresh=..., soft_masks=...)` returns the same `Detections`."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..io.weights import WeightsError
from ..ops.mask_paste_grid import paste_masks_as
from ..structures import Detections
from .metadata import MAX_SIDE, ExportInfo, from_strings

BACKENDS = ("torch", "onnxruntime", "openvino")
EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino"}


class MissingExtraError(WeightsError):
    """A runtime that is not installed; the message names the extra to install."""


def _import_runtime(backend: str):
    try:
        if backend == "onnxruntime":
            import onnxruntime

            return onnxruntime
        import openvino

        return openvino
    except ImportError:
        raise MissingExtraError(
            f"the {backend} backend needs an extra: pip install 'maskrcnn[{EXTRAS[backend]}]'"
        ) from None


class ExportedModel:
    """An exported model (see maskrcnn.deploy.export for its inputs and outputs).

    Subclasses implement `_run(feeds) -> outputs` for their runtime. Thresholds are call
    arguments; the file's own (from its metadata) apply when none is given.
    """

    backend = ""

    def __init__(self, path: str | os.PathLike, info: ExportInfo) -> None:
        self.path = Path(path)
        self.info = info
        self.cfg = info.cfg
        self.device = torch.device("cpu")
        self.training = False
        self.precision = "fp32"  # what the runtime computes in (set by the subclass)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.cfg.class_names

    def eval(self) -> ExportedModel:
        return self

    def train(self, mode: bool = True) -> ExportedModel:
        if mode:
            raise RuntimeError(f"{self.path}: an exported model cannot be trained")
        return self

    def optimize_for_inference(self) -> ExportedModel:
        return self

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def predict(self, images: Sequence[Tensor], soft_masks: bool = False,
                score_thresh: float | None = None) -> list[Detections]:
        """Detections per image, as MaskRCNN.predict: images float RGB [3, H, W] in [0, 1]."""
        if soft_masks and self.info.mask_output == "pasted":
            raise ValueError(f"{self.path} was exported with thresholded masks; export with "
                             "mask_output='probs' (--mask-output probs) for soft masks")
        if len(images) == 0:
            return []
        batch, sizes = _pad_batch(images)
        heads = self.cfg.roi_heads
        feeds = {
            "images": batch,
            "image_sizes": sizes,
            "score_threshold": np.array(
                heads.score_thresh if score_thresh is None else score_thresh, np.float32),
        }
        if self.info.mask_output == "pasted":
            feeds["mask_threshold"] = np.array(heads.mask_threshold, np.float32)
        outputs = self._run(feeds)
        return [self._detections(outputs, i, tuple(sizes[i]), soft_masks)
                for i in range(len(images))]

    def _detections(self, outputs: dict[str, np.ndarray], index: int,
                    size: tuple[int, int], soft_masks: bool) -> Detections:
        rows = np.nonzero(outputs["batch_index"] == index)[0]
        boxes = torch.from_numpy(outputs["boxes"][rows])
        det = Detections(boxes, torch.from_numpy(outputs["scores"][rows]),
                         torch.from_numpy(outputs["labels"][rows].astype(np.int64)))
        masks = torch.from_numpy(outputs["masks"][rows])
        height, width = int(size[0]), int(size[1])
        if self.info.mask_output == "pasted":
            det.masks = masks[:, :height, :width].contiguous()
        else:  # probabilities: pasted here, as the model's roi_heads.mask_paste says
            heads = self.cfg.roi_heads
            det.masks = paste_masks_as(heads.mask_paste, masks, boxes, (height, width),
                                       None if soft_masks else heads.mask_threshold)
        return det

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, preset={self.info.preset!r})"


def _pad_batch(images: Sequence[Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Images [3, H_i, W_i] -> zero-padded float32 [B, 3, H, W] and sizes int64 [B, 2]."""
    for image in images:
        if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(f"expected float images [3, H, W], got {image.dtype} "
                             f"{list(image.shape)}")
        if max(image.shape[1:]) > MAX_SIDE or min(image.shape[1:]) < 1:
            raise ValueError(f"image of {image.shape[1]}x{image.shape[2]} pixels: exported "
                             f"models take sides from 1 to {MAX_SIDE}")
    sizes = np.array([image.shape[1:] for image in images], np.int64)
    batch = np.zeros((len(images), 3, sizes[:, 0].max(), sizes[:, 1].max()), np.float32)
    for i, image in enumerate(images):
        batch[i, :, : sizes[i, 0], : sizes[i, 1]] = image.detach().float().cpu().numpy()
    return batch, sizes


class OnnxRuntimeModel(ExportedModel):
    """An exported .onnx file run by ONNX Runtime (CPU, or CUDA where installed)."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: str = "cpu",
                 threads: int | None = None, precision: str | None = None) -> None:
        if precision == "bf16":
            raise WeightsError(
                f"{path}: ONNX Runtime has no bfloat16 convolutions (ONNX's Conv takes "
                "float16/32/64 only): run it with --precision fp32, or on OpenVINO "
                "(--backend openvino --precision bf16)")
        ort = _import_runtime("onnxruntime")
        path = _existing(path)
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise WeightsError(f"{path}: this onnxruntime has no CUDA support; "
                                   "install onnxruntime-gpu or use --device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no warnings on every load
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise WeightsError(f"{path}: not a readable ONNX model ({_first_line(err)})") \
                from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        super().__init__(path, from_strings(metadata, path))
        self.precision = _file_precision(metadata, path, precision)  # fp32 or int8
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self.session.run(self._outputs, feeds)))


class OpenVINOModel(ExportedModel):
    """An exported model run by OpenVINO (CPU; float32, bfloat16 or int8): the IR pair
    (.xml + .bin) or the .onnx file itself."""

    backend = "openvino"

    def __init__(self, path: str | os.PathLike, device: str = "cpu",
                 threads: int | None = None, precision: str | None = None) -> None:
        ov = _import_runtime("openvino")
        path = _existing(path)
        if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
            raise WeightsError(f"{path}: the weights file {path.with_suffix('.bin').name} "
                               "is missing beside it")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as err:  # openvino raises RuntimeError and its own types
            raise WeightsError(f"{path}: not a readable OpenVINO or ONNX model "
                               f"({_first_line(err)})") from None
        metadata = _openvino_metadata(model)
        info = from_strings(metadata, path)
        super().__init__(path, info)
        if str(device) != "cpu":
            raise WeightsError(f"{path}: the openvino backend runs on the CPU (--device cpu)")
        from ..engine.precision import resolve_precision

        self.precision = _file_precision(metadata, path, precision)
        if self.precision != "int8":
            self.precision = resolve_precision(self.precision)
        # always explicit: the CPU plugin would pick bfloat16 on CPUs that have it; an int8
        # file computes its quantized layers in int8 and the rest in float32
        hint = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}[self.precision]
        config = {"INFERENCE_PRECISION_HINT": hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self._outputs = [(_output_name(port), port) for port in self.compiled.outputs]

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.compiled(feeds)
        return {name: results[port] for name, port in self._outputs}


OUTPUT_NAMES = ("boxes", "scores", "labels", "batch_index", "masks")


def _output_name(port) -> str:
    """Our name of an OpenVINO output (a port of an .onnx file may carry several names)."""
    names = port.get_names()
    return next((name for name in OUTPUT_NAMES if name in names), port.get_any_name())


def _openvino_metadata(model) -> dict[str, str]:
    """ONNX metadata_props as OpenVINO keeps them: rt_info["framework"]."""
    try:
        framework = model.get_rt_info()["framework"]
    except (KeyError, RuntimeError, TypeError):
        return {}
    return {key: str(value.astype(str)) if hasattr(value, "astype") else str(value)
            for key, value in dict(framework).items()}


PRECISION_KEY = "maskrcnn.precision"


FILE_PRECISIONS = ("fp32", "bf16", "int8")  # int8: written by `maskrcnn quantize`


def _file_precision(metadata: dict[str, str], path: object,
                    requested: str | None = None) -> str:
    """The precision an exported file runs in: `requested` if given, else the file's own
    (`export --precision`, `quantize`), fp32 if it names none. An int8 file runs as int8."""
    try:
        precision = json.loads(metadata.get(PRECISION_KEY, '"fp32"'))
    except ValueError:
        precision = None
    if precision not in FILE_PRECISIONS:
        raise WeightsError(f"{path}: unknown precision {metadata[PRECISION_KEY]} in the "
                           f"metadata (this maskrcnn knows {', '.join(FILE_PRECISIONS)})")
    if precision == "int8" and requested not in (None, "int8"):
        raise WeightsError(f"{path}: an int8 model (maskrcnn quantize) runs in int8; "
                           f"--precision {requested} needs the float weights it came from")
    return requested or precision


def set_file_precision(xml: str | os.PathLike, precision: str) -> None:
    """Record in an exported OpenVINO IR the precision it runs in by default (metadata
    `maskrcnn.precision`; the weights stay float32)."""
    ov = _import_runtime("openvino")
    xml = Path(xml)
    model = ov.Core().read_model(str(xml))
    model.set_rt_info(json.dumps(precision), ["framework", PRECISION_KEY])
    tmp = xml.with_name(f".{xml.stem}.precision.xml")
    try:
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such model file")
    return path


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def backend_for(path: str | os.PathLike, backend: str | None = None) -> str:
    """The backend for a file: `backend` if given, else from the suffix."""
    suffix = Path(path).suffix.lower()
    default = {".onnx": "onnxruntime", ".xml": "openvino"}.get(suffix, "torch")
    if backend is None:
        return default
    if backend not in BACKENDS:
        raise WeightsError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "torch" and default != "torch":
        raise WeightsError(f"{path}: an exported model runs on onnxruntime or openvino, not "
                           "on the torch backend; give the original weights for torch")
    if backend == "onnxruntime" and default != "onnxruntime":
        raise WeightsError(f"{path}: onnxruntime runs .onnx files; export one with "
                           "`maskrcnn export --format onnx`")
    if backend == "openvino" and default == "torch":
        raise WeightsError(f"{path}: openvino runs .xml or .onnx files; export one with "
                           "`maskrcnn export --format openvino`")
    return backend


def load_exported(path: str | os.PathLike, backend: str | None = None,
                  device: str = "cpu", threads: int | None = None,
                  precision: str | None = None) -> ExportedModel:
    """An exported model on its backend (from the suffix unless `backend` says); threads:
    the runtime's thread count (default: the runtime's own choice); precision: "fp32" or
    "bf16" (OpenVINO only; default: the file's `maskrcnn.precision`, else fp32)."""
    if precision is not None:
        from ..engine.precision import check_precision

        check_precision(precision)
    chosen = backend_for(path, backend)
    if chosen == "onnxruntime":
        return OnnxRuntimeModel(path, device, threads, precision)
    if chosen == "openvino":
        return OpenVINOModel(path, device, threads, precision)
    raise WeightsError(f"{path}: not an exported model (.onnx or .xml)")
