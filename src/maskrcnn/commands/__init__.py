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


def load_for_inference(weights: str, backend: str | None, device: str):
    """The model of a weight or exported file, ready to predict: torch models with
    BatchNorm folded and channels_last (optimize_for_inference), exported ones as they are
    ("auto" is the CPU for those)."""
    from ..api import load_model
    from ..deploy import backend_for

    chosen = backend_for(weights, backend)
    device = resolve_device(device) if chosen == "torch" or device != "auto" else "cpu"
    return load_model(weights, device=device, backend=backend).optimize_for_inference()
