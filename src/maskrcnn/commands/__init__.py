"""Sub-commands of `maskrcnn` that have grown into modules of their own (cli.py holds the
parser and the smaller ones)."""

from __future__ import annotations


class CliError(Exception):
    """A failure reported as one line on stderr with a non-zero exit status."""


def resolve_device(device: str) -> str:
    """"auto" -> cuda where available, else cpu; anything else as given."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_for_inference(weights: str, backend: str | None, device: str,
                       precision: str | None = None):
    """The model of a weight or exported file, ready to predict: torch models with
    BatchNorm folded and channels_last (optimize_for_inference), exported ones as they are
    ("auto" is the CPU for those). precision: fp32 / bf16 (None: fp32, or an exported
    file's own); the one in effect is the model's `precision`."""
    from ..api import load_model
    from ..deploy import backend_for

    chosen = backend_for(weights, backend)
    device = resolve_device(device) if chosen == "torch" or device != "auto" else "cpu"
    return load_model(weights, device=device, backend=backend,
                      precision=precision).optimize_for_inference()


PRECISION_HELP = ("fp32 (default; an exported file: the precision it was exported with) or "
                  "bf16: convolutions and heads in bfloat16 where the hardware has it (box "
                  "geometry, NMS and masks stay float32); not on onnxruntime")


def check_categories(cfg, dataset, json_path: str) -> None:
    """Stop (CliError) when the model's categories and the dataset's do not overlap, warn
    when they overlap in part: AP would be 0 (or low) without a word otherwise."""
    import sys

    labels = range(1, cfg.roi_heads.num_classes)
    model_ids = [cfg.category_ids[i] if cfg.category_ids else i for i in labels]
    model_names = {cid: (cfg.class_names[i] if len(cfg.class_names) > i else str(cid))
                   for i, cid in zip(labels, model_ids)}
    data_names = dict(zip(dataset.category_ids, dataset.class_names[1:]))

    def listing(names: dict) -> str:
        items = [f"{cid} {name}" for cid, name in sorted(names.items())]
        return ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")

    shared = set(model_names) & set(data_names)
    if not shared:
        raise CliError(f"the model's categories and those of {json_path} do not overlap: "
                       f"model [{listing(model_names)}]; dataset [{listing(data_names)}]")
    missing = sorted(set(data_names) - shared)
    if missing:
        print(f"maskrcnn: warning: {len(missing)} of the {len(data_names)} categories of "
              f"{json_path} are not among the model's and will get AP 0: "
              f"[{listing({c: data_names[c] for c in missing})}]", file=sys.stderr)
