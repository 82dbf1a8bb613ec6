"""`maskrcnn export`: weights -> one ONNX file or an OpenVINO IR pair (the whole model), or
the weights as safetensors."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import CliError

EXAMPLES = """examples:
  maskrcnn export --weights runs/demo/model_final.pt --format onnx --out model.onnx
  maskrcnn export --weights runs/demo/model_final.pt --format openvino --out model.xml
  maskrcnn export --weights maskrcnn_resnet50_fpn_coco.pth --out coco.onnx --opset 17
  maskrcnn predict photos/ --weights model.onnx          # then run it
  maskrcnn export --weights model_int8.onnx --format openvino --out model_int8.xml
  maskrcnn export --weights runs/demo/model_final.pt --format safetensors \\
      --out model.safetensors                            # weights only, read by every command
The file holds pre-processing, backbone, RPN, box and mask heads with NMS and the pasted
masks, and the metadata (classes, category ids, thresholds, preset); see docs/deploy.md."""


def cmd_export(args: argparse.Namespace) -> int:
    from ..api import export
    from ..deploy import backend_for
    from ..io.weights import load_model

    out = args.out
    if args.format == "openvino" and not out.endswith(".xml"):
        raise CliError(f"--out {out}: an OpenVINO model is written as NAME.xml (+ NAME.bin)")
    if args.format == "onnx" and not out.endswith(".onnx"):
        raise CliError(f"--out {out}: an ONNX model is written as NAME.onnx")
    if args.format == "safetensors":
        if args.precision == "bf16":
            raise CliError("--precision bf16: safetensors holds the float32 weights; choose "
                           "the precision when running them (predict/eval --precision bf16)")
        return _export_safetensors(args.weights, out)
    if args.precision == "bf16" and args.format == "onnx":
        raise CliError("--precision bf16 is for --format openvino: ONNX's Conv has no "
                       "bfloat16 and ONNX Runtime runs float32; or export onnx in fp32 and "
                       "run it with --backend openvino --precision bf16")
    start = time.perf_counter()
    if backend_for(args.weights) != "torch":
        return _convert_exported(args, start)
    _stage(f"loading {args.weights}")
    model = load_model(args.weights, device="cpu")
    _stage("building and checking the ONNX graph, then "
           + ("converting it to OpenVINO IR" if args.format == "openvino" else f"writing {out}"))
    written = export(model, out, args.format, opset=args.opset, mask_output=args.mask_output,
                     precision=args.precision)
    print(f"wrote {', '.join(str(p) for p in written)} ({args.format}, {args.precision}, "
          f"{model.cfg.roi_heads.num_classes - 1} classes) in "
          f"{time.perf_counter() - start:.0f} s")
    return 0


def _convert_exported(args: argparse.Namespace, start: float) -> int:
    """An exported .onnx file (e.g. an int8 one from `maskrcnn quantize`) to OpenVINO IR,
    as it is: the graph, its metadata and its precision."""
    from ..deploy.exporter import save_openvino
    from ..deploy.runtime import load_exported

    if args.format != "openvino" or not args.weights.endswith(".onnx"):
        raise CliError(f"--weights {args.weights}: an exported model converts only from "
                       ".onnx to --format openvino; other exports start from the weights")
    if args.precision != "fp32" or args.opset or args.mask_output:
        raise CliError("--precision, --opset and --mask-output apply to exports from the "
                       "weights; a converted .onnx keeps its own")
    import onnx

    model = load_exported(args.weights, "onnxruntime")  # checks that it is ours
    written = save_openvino(onnx.load(args.weights), Path(args.out))
    print(f"wrote {', '.join(str(p) for p in written)} (openvino, {model.precision}, "
          f"converted from {args.weights}) in {time.perf_counter() - start:.0f} s")
    return 0


def _export_safetensors(weights: str, out: str) -> int:
    """The weights as safetensors, our config in the metadata (every command reads it)."""
    from ..io.weights import load_model, save_model

    if not out.endswith(".safetensors"):
        raise CliError(f"--out {out}: a safetensors file is written as NAME.safetensors")
    model = load_model(weights, device="cpu")
    save_model(model, out, safetensors=True)
    print(f"wrote {out} (safetensors, {model.cfg.roi_heads.num_classes - 1} classes)")
    return 0


def _stage(text: str) -> None:
    """A stage of the export, on stdout (stderr keeps errors to one line); the steps are
    few and long, so a line each rather than a progress bar."""
    print(f"export: {text} ...", flush=True)


def add_parser(commands) -> None:
    p = commands.add_parser(
        "export", help="export the whole model to ONNX or OpenVINO", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights", required=True,
                   help="our checkpoint or a torchvision state_dict (any weight file we "
                        "read); or an exported .onnx to convert to --format openvino")
    p.add_argument("--format", choices=["onnx", "openvino", "safetensors"], default="onnx",
                   help="onnx (default): one .onnx file; openvino: .xml + .bin; "
                        "safetensors: the weights with their config (for torch)")
    p.add_argument("--out", required=True, help="NAME.onnx, NAME.xml or NAME.safetensors")
    p.add_argument("--opset", type=int, help="ONNX opset, 16-21 (default 18)")
    p.add_argument("--mask-output", choices=["pasted", "probs"],
                   help="pasted (default): bool masks at the input size; probs: the "
                        "28x28 probabilities, pasted by the predictor (the default for "
                        "detectron2 models, whose pasting the graph does not do)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fp32 (default) or bf16 (openvino only): the precision the file runs "
                        "in by default (weights stay float32; predict/eval --precision "
                        "overrides it)")
    p.set_defaults(func=cmd_export)
