"""SGD with momentum and weight decay, linear warmup, step or cosine learning-rate schedule.

The schedule is a pure function of (iteration, progress): `progress` in [0, 1] is how far
the run is (iterations over max_iters, or time used over the time budget), so nothing but
the iteration and the elapsed time needs saving to resume it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .train_config import TrainConfig

__all__ = ["build_optimizer", "describe_schedule", "lr_factor", "set_lr"]

_NORM_TYPES = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD over trainable parameters; norm-layer parameters get `weight_decay_norm`."""
    norm_params: list[nn.Parameter] = []
    other_params: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (norm_params if isinstance(module, _NORM_TYPES) else other_params).append(param)
    groups = [{"params": other_params, "weight_decay": cfg.weight_decay}]
    if norm_params:
        groups.append({"params": norm_params, "weight_decay": cfg.weight_decay_norm})
    for group in groups:
        group["initial_lr"] = cfg.lr
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def lr_factor(cfg: TrainConfig, iteration: int, progress: float) -> float:
    """Multiplier of cfg.lr at `iteration` (0-based) when the run is `progress` done.

    warmup: linear from warmup_factor to 1 over warmup_iters iterations, or over the first
    warmup_max_fraction of the run where that comes first (a 4-minute run of 120
    iterations would otherwise meet its first step before the end of a 100-iteration
    warmup and never train at the peak rate);
    step: gamma ** (number of cfg.steps fractions passed);
    cosine: from 1 down to min_lr_factor over the run; constant: 1.
    """
    progress = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "step":
        factor = cfg.gamma ** sum(progress >= s for s in cfg.steps)
    elif cfg.schedule == "cosine":
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        factor = cfg.min_lr_factor + (1.0 - cfg.min_lr_factor) * cosine
    elif cfg.schedule == "constant":
        factor = 1.0
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; use step, cosine or constant")
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        if cfg.warmup_max_fraction > 0:  # short or time-budgeted runs: warm up in time
            alpha = max(alpha, progress / cfg.warmup_max_fraction)
        alpha = min(alpha, 1.0)
        factor *= cfg.warmup_factor * (1.0 - alpha) + alpha
    return factor


def describe_schedule(cfg: TrainConfig, by_time: bool) -> str:
    """One line on what the learning rate does over this run (printed at the start)."""
    run = "the time budget" if by_time else "the run"
    parts = [f"lr {cfg.lr:g}"]
    if cfg.warmup_iters > 0:
        warmup = f"warmup over {cfg.warmup_iters} iterations"
        if cfg.warmup_max_fraction > 0:
            warmup += f" or {cfg.warmup_max_fraction:.0%} of {run}, whichever ends first"
        parts.append(warmup)
    if cfg.schedule == "step" and cfg.steps:
        at = " and ".join(f"{s:.1%}" for s in cfg.steps)
        parts.append(f"x{cfg.gamma:g} at {at} of {run}")
    elif cfg.schedule == "cosine":
        parts.append(f"cosine down to x{cfg.min_lr_factor:g} at the end of {run}")
    return "schedule: " + "; ".join(parts)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
