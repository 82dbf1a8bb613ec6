"""`maskrcnn export`: weights -> one ONNX file or an OpenVINO IR pair, the whole model."""

from __future__ import annotations

import argparse

from . import CliError

EXAMPLES = """examples:
  maskrcnn export --weights runs/demo/model_final.pt --format onnx --out model.onnx
  maskrcnn export --weights runs/demo/model_final.pt --format openvino --out model.xml
  maskrcnn export --weights maskrcnn_resnet50_fpn_coco.pth --out coco.onnx --opset 17
  maskrcnn predict photos/ --weights model.onnx          # then run it
The file holds pre-processing, backbone, RPN, box and mask heads with NMS and the pasted
masks, and the metadata (classes, category ids, thresholds, preset); see docs/deploy.md."""


def cmd_export(args: argparse.Namespace) -> int:
    from ..api import export
    from ..io.weights import load_model

    out = args.out
    if args.format == "openvino" and not out.endswith(".xml"):
        raise CliError(f"--out {out}: an OpenVINO model is written as NAME.xml (+ NAME.bin)")
    if args.format == "onnx" and not out.endswith(".onnx"):
        raise CliError(f"--out {out}: an ONNX model is written as NAME.onnx")
    model = load_model(args.weights, device="cpu")
    written = export(model, out, args.format, opset=args.opset, mask_output=args.mask_output)
    print(f"wrote {', '.join(str(p) for p in written)} ({args.format}, "
          f"{model.cfg.roi_heads.num_classes - 1} classes)")
    return 0


def add_parser(commands) -> None:
    p = commands.add_parser(
        "export", help="export the whole model to ONNX or OpenVINO", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights", required=True, help="our checkpoint or a torchvision state_dict")
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx",
                   help="onnx (default): one .onnx file; openvino: .xml + .bin")
    p.add_argument("--out", required=True, help="NAME.onnx or NAME.xml")
    p.add_argument("--opset", type=int, help="ONNX opset, 16-21 (default 18)")
    p.add_argument("--mask-output", choices=["pasted", "probs"], default="pasted",
                   help="pasted (default): bool masks at the input size; probs: the "
                        "28x28 probabilities, pasted by the predictor")
    p.set_defaults(func=cmd_export)
