"""The `maskrcnn` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .commands import PRECISION_HELP, CliError, check_categories, load_for_inference

SHAPES_EXAMPLES = """examples:
  maskrcnn shapes --out data/shapes
  maskrcnn shapes --out data/shapes_small --train 64 --val 16 --size 128 --seed 1
writes DIR/train.json, DIR/val.json (COCO instance segmentation) and DIR/images/*.png."""

TRAIN_EXAMPLES = """examples:
  maskrcnn train --train-json data/shapes/train.json --train-images data/shapes/images \\
      --val-json data/shapes/val.json --val-images data/shapes/images --out runs/shapes \\
      --preset small --minutes 10
  maskrcnn train ... --out runs/shapes --resume            # continue after an interruption
  maskrcnn train ... --config my_run.yaml --epochs 12 --set lr=0.01 batch_size=4
  maskrcnn train ... --set backbone.pretrained=resnet18-f37072fd.pth   # ImageNet body
  maskrcnn train ... --init-weights maskrcnn_resnet50_fpn_coco.pth --freeze 2 \\
      --set input.min_size_train=[512] input.min_size_test=512  # fine-tune a COCO model
  torchrun --nproc_per_node 4 -m maskrcnn train ...          # DistributedDataParallel
--set keys: TrainConfig fields (lr, batch_size, schedule, warmup_iters, clip_grad_norm,
amp, accumulate, eval_period, checkpoint_period, ...; also as train.<key>) and model
paths (backbone.depth, input.min_size_train, roi_heads.detections_per_image, ...; also
as model.<path>). Writes RUN/config.yaml, RUN/metrics.jsonl, RUN/checkpoints/,
RUN/eval/ (final validation) and RUN/model_final.pt. See docs/training.md."""

EVAL_EXAMPLES = """examples:
  maskrcnn eval --weights runs/shapes/model_final.pt --json data/shapes/val.json \\
      --images data/shapes/images --out runs/shapes/eval
  maskrcnn eval --predictions results.json --json instances_val2017.json --out eval/
  maskrcnn eval --weights model.onnx --json data/shapes/val.json --images data/shapes/images
writes DIR/metrics.json ({"bbox": {"AP", "AP50", ...}, "segm": {...}, "per_class": ...} on
the 0-1 scale), DIR/predictions.json (COCO results; not with --predictions) and precision-
recall plots DIR/pr_bbox.png, DIR/pr_segm.png."""

DEMO_EXAMPLES = """examples:
  maskrcnn demo --out runs/demo                 # 1200 iterations; says how long they take here
  maskrcnn demo --out runs/quick --iters 300    # a shorter (less accurate) run
writes RUN/data/ (the shapes dataset), RUN/train/ (the training run), RUN/eval/ and
RUN/overlays/*.png (validation images with the predicted masks)."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's input, reported as one line."""
    from .data.coco_records import DatasetError
    from .data.images import ImageError
    from .deploy.metadata import ExportError
    from .engine.trainer import TrainingError
    from .io.weights import WeightsError

    return CliError, WeightsError, DatasetError, ImageError, TrainingError, ExportError


def cmd_shapes(args: argparse.Namespace) -> int:
    from .data.shapes import write_shapes_dataset

    for name in ("train", "val", "size"):
        if getattr(args, name) < (8 if name == "size" else 0):
            raise CliError(f"--{name} is too small: {getattr(args, name)}")
    info = write_shapes_dataset(args.out, num_train=args.train, num_val=args.val,
                                image_size=args.size, seed=args.seed)
    for split in ("train", "val"):
        print(f"{info[f'{split}_json']}: {info['num_images'][split]} images, "
              f"{info['num_annotations'][split]} objects")
    print(f"images in {info['images_dir']}; classes: {', '.join(info['class_names'][1:])}")
    return 0


def _run_config(args: argparse.Namespace):
    """The run config: RUN/config.yaml when resuming, else preset / --config; then the
    command-line limits and flags, then --set."""
    from .engine.train_config import RunConfig, apply_overrides, load_run_config, model_keys

    saved = Path(args.out) / "config.yaml"
    try:
        if args.resume and saved.is_file():
            if args.preset or args.config:
                print(f"maskrcnn: note: resuming with {saved}; --preset/--config ignored",
                      file=sys.stderr)
            run = load_run_config(saved)
        elif args.config:
            run = load_run_config(args.config)
        else:
            from .config import preset

            run = RunConfig(model=preset(args.preset or "small"))
        if args.init_weights and not (args.resume and saved.is_file()):
            _model_from_weights(run, args)
        if args.freeze is not None:
            if not 0 <= args.freeze <= 5:
                raise CliError(f"--freeze takes 0..5 body stages, not {args.freeze}")
            run.model.backbone.trainable_layers = 5 - args.freeze
        train = run.train
        if args.iters is not None or args.epochs is not None or args.minutes is not None:
            train.max_iters = args.iters or 0
            train.epochs = args.epochs or 0.0
            train.minutes = args.minutes or 0.0
        for flag, key in (("batch_size", "batch_size"), ("lr", "lr"), ("workers", "num_workers"),
                          ("device", "device"), ("eval_period", "eval_period"),
                          ("seed", "seed")):
            if getattr(args, flag) is not None:
                setattr(train, key, getattr(args, flag))
        if args.amp is not None:
            from .engine.demo import native_bfloat16

            train.amp = native_bfloat16(train.device) if args.amp == "auto" else args.amp == "on"
        apply_overrides(run, args.set or [])
        if not (args.resume and saved.is_file()):
            user_section = _model_section(args.config) if args.config else {}
            run.train.user_model_keys = tuple(dict.fromkeys(
                (*run.train.user_model_keys, *model_keys(args.set or [], user_section))))
    except ValueError as err:
        raise CliError(str(err)) from None
    _check_train_config(run.train)
    return run


def _model_from_weights(run, args: argparse.Namespace) -> None:
    """--init-weights: the model is the file's (its classes come from the training set)."""
    from .engine.init_weights import run_config_from_weights

    if args.preset:
        raise CliError("--init-weights: the model's settings come from the file; change them "
                       "with --set (e.g. input.min_size_train=[512]), not --preset")
    if args.config and _model_section(args.config):
        print(f"maskrcnn: note: the model comes from {args.init_weights}; the model settings "
              f"of {args.config} are not used (--set model.KEY=VALUE changes them)",
              file=sys.stderr)
    run_config_from_weights(args.init_weights, base=run)


def _model_section(path: str) -> dict:
    """The model settings a run config file gives (a bare ModelConfig file is all model)."""
    import yaml

    from .engine.train_config import model_section_of

    with open(path) as f:
        return model_section_of(yaml.safe_load(f) or {})


def _check_train_config(train) -> None:
    from .engine.train_state import resolve_limits

    try:
        resolve_limits(train, 1)
    except ValueError as err:
        raise CliError(str(err)) from None
    checks = [
        (train.batch_size >= 1, "batch_size must be >= 1"),
        (train.accumulate >= 1, "accumulate must be >= 1"),
        (train.lr > 0, "lr must be > 0"),
        (train.num_workers >= 0, "num_workers must be >= 0"),
        (train.schedule in ("step", "cosine", "constant"),
         f"schedule must be step, cosine or constant, not {train.schedule!r}"),
        (train.amp_dtype in ("bfloat16", "float16"), "amp_dtype must be bfloat16 or float16"),
        (train.log_period >= 1, "log_period must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise CliError(message)


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.trainer import DataPaths, train

    if bool(args.val_json) != bool(args.val_images):
        raise CliError("give --val-json and --val-images together")
    run = _run_config(args)
    out = Path(args.out)
    ckpt_dir = out / "checkpoints"
    if not args.resume and ckpt_dir.is_dir() and any(ckpt_dir.glob("ckpt_*.pt")):
        raise CliError(f"{out} already holds a run: add --resume to continue it, or choose "
                       "another --out")
    data = DataPaths(args.train_json, args.train_images, args.val_json, args.val_images)
    train(run, data, str(out), resume=args.resume)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .engine.evaluator import coco_evaluate, format_metrics_table

    out = Path(args.out)
    if args.predictions:
        if args.weights or args.images:
            raise CliError("--predictions takes precomputed results: no --weights/--images")
        if args.precision:
            raise CliError("--precision applies to --weights, not to --predictions")
        if not Path(args.predictions).is_file():
            raise CliError(f"{args.predictions}: results file not found")
        metrics = _evaluate_json(coco_evaluate, args.json, args.predictions, out)
    else:
        if not args.weights or not args.images:
            raise CliError("give --weights and --images (or --predictions FILE)")
        metrics = _evaluate_weights(args, out)
        if metrics is None:  # not rank 0 of a distributed evaluation
            return 0
    print(format_metrics_table(metrics))
    written = [out / "metrics.json"]
    if not args.predictions:
        written.append(out / "predictions.json")
    written += [out / f"pr_{t}.png" for t in ("bbox", "segm") if t in metrics]
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _evaluate_json(coco_evaluate, gt_json: str, results: str, out: Path):
    if not Path(gt_json).is_file():
        raise CliError(f"{gt_json}: annotation file not found")
    from .io.coco_results import load_results_json

    try:
        loaded = load_results_json(results)
        iou_types = ("bbox", "segm") if any("segmentation" in r for r in loaded) else ("bbox",)
        return coco_evaluate(gt_json, loaded, iou_types=iou_types, out_dir=out)
    except (ValueError, KeyError, TypeError) as err:
        raise CliError(f"cannot evaluate {results} against {gt_json}: "
                       f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                       ) from None


def _evaluate_weights(args: argparse.Namespace, out: Path):
    from .deploy import backend_for
    from .engine import distributed as dist
    from .engine.inference import evaluate_model
    from .engine.train_data import load_eval_dataset
    from .io.coco_results import write_results_json
    from .progress import Progress

    exported = backend_for(args.weights, args.backend) != "torch"
    device = dist.init_distributed("cpu" if exported and args.device == "auto" else args.device)
    try:
        main_rank = dist.is_main_process()
        model = load_for_inference(args.weights, args.backend, str(device), args.precision)
        coco, dataset = load_eval_dataset(args.json, args.images, masks=False,
                                          verbose=main_rank, name="eval")
        check_categories(model.cfg, coco, args.json)
        progress = Progress(len(dataset), "eval: images") if main_rank else None
        metrics, results = evaluate_model(
            model, dataset, args.json, label_to_category_id=model.cfg.category_ids or None,
            batch_size=args.batch_size, num_workers=args.workers, out_dir=out,
            max_dets=model.cfg.roi_heads.detections_per_image, score_thresh=args.score_thresh,
            progress=None if progress is None else progress.per_batch(args.batch_size),
        )
        if progress is not None:
            progress.close()
        if not main_rank:
            return None
        write_results_json(results, out / "predictions.json")
        print(f"{len(results)} detections in {metrics['seconds']:.1f} s ({model.precision})")
        return metrics
    finally:
        dist.cleanup()


def cmd_demo(args: argparse.Namespace) -> int:
    from .engine.demo import run_demo

    run_demo(args.out, minutes=args.minutes, iters=args.iters, num_train=args.train,
             num_val=args.val, image_size=args.size, device=args.device,
             amp={"auto": None, "on": True, "off": False}[args.amp])
    return 0


def _add_train_parser(commands) -> None:
    p = commands.add_parser(
        "train", help="train on a COCO-format dataset", epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train Mask R-CNN: SGD, warmup, step or cosine schedule, checkpoints,\n"
                    "validation, resume; DistributedDataParallel under torchrun.",
    )
    p.add_argument("--train-json", required=True, help="COCO instances JSON of the training set")
    p.add_argument("--train-images", required=True, help="folder of the training images")
    p.add_argument("--val-json", help="COCO JSON of the validation set (optional)")
    p.add_argument("--val-images", help="folder of the validation images")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder")
    base = p.add_mutually_exclusive_group()
    from .config import PRESETS  # no torch: help stays fast

    base.add_argument("--preset", help="model preset (default small): "
                                       + ", ".join(PRESETS))
    base.add_argument("--config", help="run config YAML (model: and train: sections)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iters", type=int, help="optimizer steps")
    length.add_argument("--epochs", type=float, help="passes over the training set")
    length.add_argument("--minutes", type=float, help="training time budget")
    p.add_argument("--resume", action="store_true",
                   help="continue RUN from its newest usable checkpoint")
    p.add_argument("--init-weights", metavar="FILE",
                   help="fine-tune: start from a trained model (ours, torchvision's, ...); "
                        "its settings, the training set's classes")
    p.add_argument("--freeze", type=int, metavar="N",
                   help="freeze the first N of the body's 5 stages (conv1, layer1-4); "
                        "torchvision's trainable_backbone_layers = 5 - N")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", action="extend",
                   help="override config values, e.g. lr=0.01 backbone.depth=50")
    p.add_argument("--batch-size", type=int, help="images per batch and process")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--workers", type=int, help="data loading processes (0: none)")
    p.add_argument("--eval-period", type=int, help="iterations between validations")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", choices=["auto", "on", "off"],
                   help="bfloat16 autocast (default off, or the config's amp); auto: where "
                        "the hardware has bfloat16 arithmetic, as `make demo` does")
    p.set_defaults(func=cmd_train)


def _add_eval_parser(commands) -> None:
    p = commands.add_parser(
        "eval", help="COCO AP (box and mask) of weights or of precomputed results",
        epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", required=True, help="ground truth: COCO instances JSON")
    p.add_argument("--weights", help="model weights (our checkpoint, torchvision's, or an "
                                     "exported .onnx/.xml)")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "openvino"],
                   help="runtime (default: from the file's suffix)")
    p.add_argument("--images", help="folder of the images of --json")
    p.add_argument("--predictions", help="COCO results JSON to evaluate instead of a model")
    p.add_argument("--out", default="eval", help="output folder (default: eval)")
    p.add_argument("--score-thresh", type=float, help="model score threshold (default: the "
                                                      "model's, 0.05)")
    p.add_argument("--batch-size", type=int, default=2, help="images per batch (default 2)")
    p.add_argument("--workers", type=int, default=0, help="data loading processes")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    p.add_argument("--precision", choices=["fp32", "bf16"], help=PRECISION_HELP)
    p.set_defaults(func=cmd_eval)


def _add_small_parsers(commands) -> None:
    from .engine.demo_settings import DEMO_ITERS

    p = commands.add_parser(
        "shapes", help="write the synthetic shapes dataset (COCO JSON + PNG)",
        epilog=SHAPES_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--train", type=int, default=200, help="training images (default 200)")
    p.add_argument("--val", type=int, default=50, help="validation images (default 50)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=cmd_shapes)

    p = commands.add_parser(
        "demo", help="shapes dataset -> train the small preset -> evaluate -> overlays",
        epilog=DEMO_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", metavar="RUN", help="folder (runs/demo)")
    p.add_argument("--iters", type=int, default=DEMO_ITERS,
                   help=f"training iterations (default {DEMO_ITERS})")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="training time limit (default 0: none, the iterations decide)")
    p.add_argument("--train", type=int, default=300, help="training images (default 300)")
    p.add_argument("--val", type=int, default=50, help="validation images (default 50)")
    p.add_argument("--size", type=int, default=192, help="image side (default 192)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="bfloat16 autocast in training; auto (default): where the hardware "
                        "has bfloat16 arithmetic")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    from .commands import export as export_command
    from .commands import predict as predict_command
    from .commands import quantize as quantize_command

    parser = argparse.ArgumentParser(
        prog="maskrcnn", description="Mask R-CNN: train, evaluate and predict.",
        epilog="run `maskrcnn COMMAND --help` for the options and examples of each command",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_small_parsers(commands)
    _add_train_parser(commands)
    _add_eval_parser(commands)

    predict_command.add_parser(commands)
    export_command.add_parser(commands)
    quantize_command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        exit_code = getattr(err, "exit_code", None)  # a training run stopped by a signal
        print(f"maskrcnn: {'error: ' if exit_code is None else ''}{message}", file=sys.stderr)
        return exit_code or 1
    except KeyboardInterrupt:
        for stream in (sys.stdout, sys.stderr):  # end a live progress line first
            if stream.isatty():
                print(file=stream, flush=True)
                break
        print("maskrcnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
