"""Fine-tuning: start a training run from a trained model's weights (`--init-weights FILE`).

Every tensor whose name and shape fit the new model is loaded. The class-dependent layers
(class scores, class-specific box deltas, mask predictor) keep their fresh initialisation
when the class count differs; one report says what was loaded, re-initialised, left out.
The model's settings come from the file (`run_config_from_weights`), its classes from the
training set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..io.weights import ModelWeights, read_model_weights
from .train_config import RunConfig

# Layers whose shape follows the class count (our key names).
CLASS_DEPENDENT = (
    "roi_heads.box_head.cls_score.",
    "roi_heads.box_head.bbox_pred.",
    "roi_heads.mask_head.predictor.",
)
# Below this share of the model's tensors loaded, the file is not this model's.
MIN_LOADED_FRACTION = 0.5


class InitWeightsError(ValueError):
    """An --init-weights file that does not fit the model; the message names the file."""


@dataclass
class InitReport:
    path: str
    origin: str
    file_classes: int
    model_classes: int
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)  # class-dependent, other shape
    left_out: list[str] = field(default_factory=list)  # in the file, not used
    not_in_file: list[str] = field(default_factory=list)  # model tensors the file lacks
    model_tensors: int = 0

    def lines(self) -> list[str]:
        """The report as printed at the start of training."""
        head = (f"init weights: {self.path} ({self.origin}, {self.file_classes} classes): "
                f"loaded {len(self.loaded)} of the model's {self.model_tensors} tensors")
        lines = [head]
        if self.reinitialised:
            lines.append(f"  re-initialised for {self.model_classes} classes: "
                         + _layers(self.reinitialised))
        if self.not_in_file:
            lines.append("  not in the file (fresh init): " + _layers(self.not_in_file))
        lines.append("  left out of the file: " + (_layers(self.left_out) or "nothing"))
        return lines


def _layers(keys: list[str]) -> str:
    """'a.weight, a.bias, b.weight' -> 'a, b' (layer names; short lists in full)."""
    names = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys))
    shown = ", ".join(names[:6])
    return shown + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def run_config_from_weights(path: str | os.PathLike, base: RunConfig | None = None
                            ) -> RunConfig:
    """A run whose model is the file's (architecture, input, thresholds), trained from it.

    base: the training settings to keep (default: TrainConfig()). The classes are replaced
    by the training set's when the run starts.
    """
    weights = read_model_weights(path)
    run = base if base is not None else RunConfig()
    run.model = weights.cfg
    run.model.backbone.pretrained = None  # the file holds the body
    run.train.init_weights = str(path)
    return run


def load_fitting(model: nn.Module, weights: ModelWeights, path: str) -> InitReport:
    """Copy every tensor of `weights` whose name and shape fit `model`; report the rest."""
    own = model.state_dict()
    report = InitReport(path=str(path), origin=weights.origin,
                        file_classes=weights.cfg.roi_heads.num_classes,
                        model_classes=model.cfg.roi_heads.num_classes, model_tensors=len(own))
    fitting = {}
    for key, value in weights.state_dict.items():
        if key in own and tuple(own[key].shape) == tuple(value.shape):
            fitting[key] = value
        elif key in own and key.startswith(CLASS_DEPENDENT):
            report.reinitialised.append(key)
        else:
            report.left_out.append(key)
    report.loaded = list(fitting)
    report.not_in_file = [k for k in own if k not in weights.state_dict]
    if len(fitting) < MIN_LOADED_FRACTION * len(own):
        raise InitWeightsError(
            f"{path}: only {len(fitting)} of the model's {len(own)} tensors fit "
            f"(e.g. {(report.left_out or report.not_in_file or ['?'])[0]}): the file holds "
            "another architecture; train with the file's own settings (the command line does)"
        )
    with torch.no_grad():
        for key, value in fitting.items():
            own[key].copy_(value.to(own[key].dtype))
    return report


def init_from_file(model: nn.Module, path: str) -> InitReport:
    """Read `path` (any whole-model file we know) and load what fits into `model`."""
    return load_fitting(model, read_model_weights(path), path)
