"""Training settings (`TrainConfig`) and the run config that pairs them with a ModelConfig.

A run's YAML file (RUN/config.yaml, or a user's `--config FILE`) looks like::

    preset: small          # optional base model preset (only read from user files)
    model:                 # ModelConfig fields; missing ones keep the preset's values
      roi_heads: {detections_per_image: 200}
    train:                 # TrainConfig fields
      lr: 0.02
      max_iters: 2000

A file holding only ModelConfig fields at the top level (as `config.save_yaml` writes) is
read as the `model:` part. `--set key=value` overrides take dotted keys: `train.lr`,
`model.rpn.nms_thresh`, or the short forms `lr` and `rpn.nms_thresh`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ..config import ModelConfig, config_from_dict, config_to_dict, preset

__all__ = ["RunConfig", "TrainConfig", "apply_overrides", "load_run_config", "save_run_config"]


@dataclass
class TrainConfig:
    """Solver and run settings. Iteration = one optimizer step (of `accumulate` batches)."""

    # data
    batch_size: int = 2  # images per batch and process
    num_workers: int = 2  # data loading processes per training process (0: in process)
    hflip: float = 0.5  # horizontal flip probability
    keep_empty: bool = True  # keep images without annotations as negatives
    seed: int = 0  # model init, data order, augmentation
    init_weights: str = ""  # fine-tuning: start from this whole-model file (what fits loads)
    fit_to_data: bool = True  # anchors and detections per image from the training set
    user_model_keys: tuple[str, ...] = ()  # model settings given by the user: never fitted
    # solver: SGD with momentum
    lr: float = 0.02  # peak learning rate (after warmup)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0  # for GroupNorm / BatchNorm weights and biases
    warmup_iters: int = 100  # linear warmup from warmup_factor * lr to lr
    warmup_factor: float = 0.001
    warmup_max_fraction: float = 0.1  # the warmup ends by this share of the run (0: off)
    schedule: str = "step"  # "step", "cosine" or "constant"
    steps: tuple[float, ...] = (0.667, 0.889)  # step: fractions of the run where lr *= gamma
    gamma: float = 0.1
    min_lr_factor: float = 0.0  # cosine: final lr = min_lr_factor * lr
    clip_grad_norm: float = 0.0  # max global gradient norm; 0 = no clipping
    accumulate: int = 1  # batches per optimizer step (gradient accumulation)
    amp: bool = False  # autocast: bfloat16 on CPU, amp_dtype on CUDA
    amp_dtype: str = "bfloat16"  # "bfloat16" or "float16" (CUDA only; uses a GradScaler)
    channels_last: bool = True  # weights and feature maps channels_last (faster convolutions)
    # run length: the first limit reached ends the run (at least one must be set)
    max_iters: int = 0
    epochs: float = 0.0
    minutes: float = 0.0
    # logging, validation, checkpoints
    log_period: int = 20  # iterations between progress lines and metrics.jsonl records
    eval_period: int = 0  # iterations between validations; 0 = only at the end
    eval_minutes: float = 0.0  # or: validate every this many minutes of training
    checkpoint_period: int = 500  # iterations between checkpoints; 0 = only at the end
    checkpoint_minutes: float = 10.0  # also checkpoint after this many minutes without one
    keep_checkpoints: int = 3  # the last few are kept
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    find_unused_parameters: bool = False  # DistributedDataParallel option
    debug_nan_at: int = -1  # testing hook: make the loss NaN at this iteration


@dataclass
class RunConfig:
    """Everything a training run needs: the model and the training settings."""

    model: ModelConfig = field(default_factory=lambda: preset("small"))
    train: TrainConfig = field(default_factory=TrainConfig)


_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def run_config_to_dict(run: RunConfig) -> dict[str, Any]:
    return {"model": config_to_dict(run.model), "train": config_to_dict(run.train)}


def run_config_from_dict(data: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Fill a RunConfig from a YAML mapping (see the module docstring); ValueError if bad."""
    if not isinstance(data, dict):
        raise ValueError("a config file must hold a mapping")
    data = dict(data)
    run = base if base is not None else RunConfig()
    name = data.pop("preset", None)
    if name is not None:
        run.model = preset(str(name))
    if data and set(data) <= _MODEL_FIELDS:  # a bare ModelConfig file
        data = {"model": data}
    unknown = set(data) - {"model", "train"}
    if unknown:
        raise ValueError(
            f"unknown config section(s) {sorted(unknown)}; expected 'preset', 'model', 'train'"
        )
    for section in ("model", "train"):
        value = data.get(section) or {}
        if not isinstance(value, dict):
            raise ValueError(f"config section {section!r} must be a mapping")
        config_from_dict(value, getattr(run, section), where=f"{section}.")
    return run


def model_section_of(data: Any) -> dict[str, Any]:
    """The `model:` mapping of a run config file's data (all of a bare ModelConfig file)."""
    if not isinstance(data, dict):
        return {}
    if data and set(data) <= _MODEL_FIELDS:
        return data
    section = data.get("model")
    return section if isinstance(section, dict) else {}


def load_run_config(path: str | os.PathLike, base: RunConfig | None = None) -> RunConfig:
    """Read a run (or model) YAML file; ValueError naming the file if it is unusable."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ValueError(f"{path}: config file not found") from None
    except (OSError, yaml.YAMLError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: cannot read config file ({reason})") from None
    try:
        return run_config_from_dict(data, base)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def save_run_config(run: RunConfig, path: str | os.PathLike) -> None:
    """Write the full run config as YAML (atomically: temporary file, then rename)."""
    import yaml

    from ..io.atomic import atomic_write

    atomic_write(path, lambda f: yaml.safe_dump(run_config_to_dict(run), f, sort_keys=False))


def _resolve_key(key: str) -> tuple[str, list[str]]:
    """`--set` key -> (section, field path): `train.lr`, `lr`, `model.rpn.x`, `rpn.x`."""
    parts = key.split(".")
    if parts[0] in ("model", "train") and len(parts) > 1:
        return parts[0], parts[1:]
    if parts[0] in _TRAIN_FIELDS and len(parts) == 1:
        return "train", parts
    if parts[0] in _MODEL_FIELDS:
        return "model", parts
    raise ValueError(
        f"--set {key}: unknown config key; use train.<field> (e.g. lr, batch_size, "
        f"max_iters) or model.<path> (e.g. backbone.depth, roi_heads.score_thresh)"
    )


def model_keys(overrides: list[str], model_section: dict[str, Any] | None = None
               ) -> tuple[str, ...]:
    """Dotted model paths set by `--set` items and by a config file's `model:` mapping."""
    keys = []
    for item in overrides:
        section, parts = _resolve_key(item.partition("=")[0].strip())
        if section == "model":
            keys.append(".".join(parts))

    def walk(mapping: dict[str, Any], prefix: str) -> None:
        for name, value in mapping.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{name}.")
            else:
                keys.append(f"{prefix}{name}")

    walk(model_section or {}, "")
    return tuple(dict.fromkeys(keys))


def apply_overrides(run: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `key=value` strings; values are parsed as YAML scalars or lists.

    Keys: `train.<field>`, `model.<path>`, or short forms `<train field>` and
    `<model path>` (e.g. `lr=0.01`, `backbone.pretrained=r18.pth`, `input.min_size_train=[256]`).
    """
    import yaml

    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        section, parts = _resolve_key(key)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        try:
            config_from_dict(nested, getattr(run, section), where=f"{section}.")
        except ValueError as err:
            raise ValueError(f"--set {item}: {err}") from None
    return run
