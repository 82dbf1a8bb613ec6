"""Training curves: RUN/metrics.jsonl -> RUN/curves.png (matplotlib, Agg, no display).

Four panels against the iteration: the total loss (training running means, and the
validation loss when measured), the loss of each part, the learning rate, and the
validation box / mask AP (and AP50) when the run validates. The trainer rewrites the file
at every validation and at the end of the run; `maskrcnn.engine.curves.write_curves(RUN)`
redraws it for any run folder.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write
from ..visualize import new_figure
from .run_log import read_metrics

__all__ = ["CURVES_SIZE", "CurvesWriter", "plot_curves", "write_curves"]

CURVES_SIZE = (1200, 900)  # (width, height) in pixels of RUN/curves.png
_PARTS = {
    "loss_rpn_objectness": "RPN objectness",
    "loss_rpn_box": "RPN box",
    "loss_cls": "classifier",
    "loss_box": "box regression",
    "loss_mask": "mask",
}


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(iterations, values) of the records that hold a finite number under `key`;
    pycocotools' -1 ("undefined") is left out too."""
    xs, ys = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
            xs.append(int(r.get("iter", 0)))
            ys.append(float(value))
    return xs, ys


def plot_curves(records: Sequence[dict[str, Any]], size: tuple[int, int] = CURVES_SIZE):
    """A matplotlib Figure (on its own Agg canvas, pyplot untouched) of metrics.jsonl
    records: training records {"kind": "train", "iter", "lr", "loss", "loss_*"}, and
    validation records {"kind": "val", "iter", "bbox/AP", "segm/AP", "val_loss", ...}."""
    records = sorted(records, key=lambda r: int(r.get("iter", 0)))
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig = new_figure(size)
    (ax_loss, ax_parts), (ax_lr, ax_ap) = fig.subplots(2, 2, sharex=True)

    ax_loss.plot(*_series(train, "loss"), color="C0", linewidth=1.5, label="training")
    xs, ys = _series(val, "val_loss")
    if xs:
        ax_loss.plot(xs, ys, "o-", color="C3", linewidth=1.5, label="validation")
    ax_loss.set_title("total loss")

    parts = [k for k in _PARTS if any(k in r for r in train)]
    parts += sorted({k for r in train for k in r if k.startswith("loss_") and k not in _PARTS})
    for key in parts:
        ax_parts.plot(*_series(train, key), linewidth=1.2, label=_PARTS.get(key, key))
    ax_parts.set_title("loss parts (training)")

    ax_lr.plot(*_series(train, "lr"), color="C2", linewidth=1.5)
    ax_lr.set_title("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    drawn = False
    for prefix, name, color in (("bbox", "box", "C0"), ("segm", "mask", "C1")):
        for metric, style in (("AP", "o-"), ("AP50", "s--")):
            xs, ys = _series(val, f"{prefix}/{metric}")
            if xs:
                ax_ap.plot(xs, [100 * y for y in ys], style, color=color, linewidth=1.5,
                           markersize=4, label=f"{name} {metric}")
                drawn = True
    ax_ap.set_title("validation AP (%)")
    if not drawn:
        ax_ap.text(0.5, 0.5, "no validation yet" if train else "no records",
                   ha="center", va="center", transform=ax_ap.transAxes, color="0.4")
        ax_ap.set_yticks([])

    for ax in (ax_loss, ax_parts, ax_lr, ax_ap):
        ax.grid(True, color="0.88", linewidth=0.8)
        ax.set_axisbelow(True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9, framealpha=0.9)
    for ax in (ax_lr, ax_ap):
        ax.set_xlabel("iteration")
    fig.tight_layout()
    return fig


def write_curves(run_dir: str | os.PathLike, out: str | os.PathLike | None = None
                 ) -> Path | None:
    """Draw RUN/metrics.jsonl into `out` (default RUN/curves.png, written atomically);
    returns the path, or None when there are no records yet."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    records = read_metrics(metrics) if metrics.is_file() else []
    if not records:
        return None
    path = Path(out) if out is not None else run_dir / "curves.png"
    fig = plot_curves(records)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=fig.dpi), binary=True)
    return path


class CurvesWriter:
    """`write()` redraws RUN/curves.png; a failure is a warning (once), never an error,
    so plotting can never stop a training run. Disabled off the main process."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._warned = False

    def write(self) -> Path | None:
        if not self.enabled:
            return None
        try:
            return write_curves(self.run_dir)
        except Exception as err:  # matplotlib missing or broken, disk full, odd records
            if not self._warned:
                self._warned = True
                from .train_data import warn

                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                warn(f"cannot draw {self.run_dir / 'curves.png'} "
                     f"({type(err).__name__}{': ' + first if first else ''}); "
                     "training goes on without it")
            return None
