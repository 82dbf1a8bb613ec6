"""Drawing: detection overlays on images (PIL), and precision-recall plots (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from maskrcnn.structures import Detections, binarize_masks

__all__ = ["PALETTE", "PR_PLOT_SIZE", "draw_detections", "draw_pr_plot", "new_figure",
           "save_overlay"]

# Fixed, well separated colours (RGB); detection i gets PALETTE[i % len(PALETTE)].
PALETTE = np.array(
    [
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
        (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
        (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
        (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
    ],
    dtype=np.uint8,
)  # [P, 3]
MASK_ALPHA = 0.5
PR_PLOT_SIZE = (640, 480)  # (width, height) of the precision-recall PNG


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _to_rgb_array(image: torch.Tensor | Image.Image | np.ndarray) -> np.ndarray:
    """Any supported image -> [H, W, 3] uint8 RGB (copy)."""
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
            raise ValueError(f"image tensor must be [3, H, W], got {tuple(image.shape)}")
        image = image.detach().cpu()[:3].permute(1, 2, 0).numpy()  # [C, H, W] -> [H, W, C]
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"image array must be [H, W] or [H, W, C], got {arr.shape}")
    arr = arr[:, :, :3]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255.0)
    return np.ascontiguousarray(arr.astype(np.uint8))


def _erode(masks: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion of [N, H, W] bool masks (outside counts as background)."""
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))  # [N, H+2, W+2]
    return (
        masks
        & padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1]
        & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    )


def _blend_masks(
    rgb: np.ndarray, masks: np.ndarray, colors: np.ndarray, alpha: float, outline: int
) -> np.ndarray:
    """Blend masks [N, H, W] bool into rgb [H, W, 3] uint8, colours [N, 3], all at once.

    Where masks overlap, the first mask (highest score) wins; outlines (`outline` px wide,
    inside the mask) are drawn opaque on top.
    """
    if masks.shape[0] == 0:
        return rgb
    covered = masks.any(axis=0)  # [H, W]
    owner = masks.argmax(axis=0)  # [H, W] index of the first mask covering the pixel
    color_map = colors[owner].astype(np.float32)  # [H, W, 3]
    out = rgb.astype(np.float32)
    out = np.where(covered[..., None], (1 - alpha) * out + alpha * color_map, out)
    inner = masks
    for _ in range(outline):
        inner = _erode(inner)
    edges = masks & ~inner  # [N, H, W]
    edge_any = edges.any(axis=0)
    edge_owner = edges.argmax(axis=0)
    out = np.where(edge_any[..., None], colors[edge_owner].astype(np.float32), out)
    return np.round(out).astype(np.uint8)


def _label_text(label: int, score: float, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= label < len(class_names) and class_names[label]:
        name = class_names[label]
    else:
        name = f"class {label}"
    return f"{name} {score:.2f}"


def _draw_box_and_label(
    draw: ImageDraw.ImageDraw, box: Sequence[float], color: tuple[int, int, int], text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int, image_width: int,
) -> None:
    """One box outline, and its label on a filled background above (or inside) the box."""
    x1, y1, x2, y2 = box
    draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=color, width=width)
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    tw, th = r - l + 4, b - t + 4
    ty = y1 - th if y1 - th >= 0 else max(y1, 0)  # above the box when there is room
    tx = max(0, min(x1, image_width - 1 - tw))  # keep the label inside the image
    draw.rectangle((tx, ty, tx + tw, ty + th), fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((tx + 2 - l, ty + 2 - t), text, fill=(0, 0, 0) if luminance > 140 else (255,) * 3,
              font=font)


def draw_detections(
    image: torch.Tensor | Image.Image | np.ndarray,
    dets: Detections,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.5,
) -> Image.Image:
    """Overlay detections with score >= score_thresh on an image.

    image: [3, H, W] float tensor in [0, 1] (uint8 tensors too), a PIL image, or an
    [H, W, 3] / [H, W] array (uint8, or float in [0, 1]).
    dets: boxes [D, 4] xyxy in this image's pixels; masks [D, H, W] bool / soft float
    (thresholded at 0.5) or None. class_names[label] names a label (index 0 = background);
    unknown labels read "class 3". Returns a new RGB PIL image of the input size.
    """
    rgb = _to_rgb_array(image)
    height, width = rgb.shape[:2]
    scores = dets.scores.detach().cpu().float()
    keep = torch.nonzero(scores >= score_thresh).flatten()
    keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]  # best on top
    colors = PALETTE[keep.numpy() % len(PALETTE)]  # [N, 3], by detection index
    if dets.masks is not None and keep.numel() > 0:
        masks = dets.masks.detach().cpu()[keep]
        if masks.shape[-2:] != (height, width):
            raise ValueError(
                f"masks are {tuple(masks.shape[-2:])}, image is {(height, width)}: paste "
                "masks at the image size first"
            )
        masks = binarize_masks(masks)
        rgb = _blend_masks(rgb, masks.numpy(), colors, MASK_ALPHA, outline=max(1, height // 400))
    out = Image.fromarray(rgb)
    draw = ImageDraw.Draw(out)
    font = _font(max(10, min(height, width) // 40))
    line = max(1, min(height, width) // 300)
    boxes = dets.boxes.detach().cpu().double()[keep].tolist()
    labels = dets.labels.detach().cpu()[keep].tolist()
    drawn = list(zip(boxes, labels, scores[keep].tolist(), colors.tolist()))
    for box, label, score, color in reversed(drawn):  # best score drawn last, on top
        _draw_box_and_label(
            draw, box, tuple(color), _label_text(label, score, class_names), font, line, width
        )
    return out


def save_overlay(
    image: torch.Tensor | Image.Image | np.ndarray,
    dets: Detections,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.5,
) -> None:
    """draw_detections(...) saved to `path` (format from the extension; folders created)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    draw_detections(image, dets, class_names, score_thresh).save(path)


def new_figure(size: tuple[int, int], dpi: int = 100):
    """A matplotlib Figure of `size` (width, height) pixels on its own Agg canvas (no pyplot:
    the user's global backend and figure list are left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _figure_image(fig) -> Image.Image:
    """Render a figure made by `new_figure` to an RGB PIL image of its pixel size."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return Image.fromarray(rgba[:, :, :3].copy())


def draw_pr_plot(
    recall: np.ndarray,
    curves: Mapping[str, np.ndarray],
    title: str = "",
    size: tuple[int, int] = PR_PLOT_SIZE,
) -> Image.Image:
    """Line plot of precision-recall curves: recall [R] in [0, 1], curves name -> [R].

    Points with a negative precision (pycocotools' -1, "no ground truth") are not drawn.
    Returns an RGB image of `size` (width, height) with axes, grid, labels and a legend
    (drawn with matplotlib's Agg renderer).
    """
    fig = new_figure(size)
    ax = fig.add_subplot()
    recall = np.asarray(recall, dtype=np.float64)
    for i, (name, prec) in enumerate(curves.items()):
        color = PALETTE[[3, 0, 1, 4, 5][i % 5]] / 255.0
        prec = np.asarray(prec, dtype=np.float64)
        # NaN breaks the line where pycocotools has no value, instead of joining across
        ax.plot(recall, np.where(prec >= 0, prec, np.nan), color=color, linewidth=2,
                label=name)
    ax.set_xlim(-0.01, 1.01)  # a margin keeps curves along 0 and 1 off the frame
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(np.linspace(0.0, 1.0, 6))
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.grid(True, color=(0.88, 0.88, 0.88), linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    if title:
        ax.set_title(title, fontsize=10)
    if curves:
        ax.legend(loc="best", fontsize=9, framealpha=0.9)  # where it hides the least
    fig.tight_layout()
    return _figure_image(fig)
