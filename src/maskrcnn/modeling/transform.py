"""Pre-processing (normalise, resize, pad) and post-processing (back to the original image)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import InputConfig
from ..ops.mask_paste_grid import paste_masks_as
from ..structures import Detections, ImageList, Targets


class InputTransform(nn.Module):
    """Images (float RGB in [0, 1], [3, H, W] each) -> normalised, resized, padded batch."""

    def __init__(self, cfg: InputConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std), persistent=False)

    def normalize(self, image: Tensor) -> Tensor:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image of shape [3, H, W], got {list(image.shape)}")
        if not image.is_floating_point():
            raise TypeError(f"expected a float image in [0, 1], got dtype {image.dtype}")
        if self.cfg.pixel_scale != 1.0:
            image = image * self.cfg.pixel_scale
        if self.cfg.channel_order == "BGR":
            image = image.flip(0)
        mean = self.pixel_mean.to(image)[:, None, None]
        std = self.pixel_std.to(image)[:, None, None]
        return (image - mean) / std

    def pick_min_size(self, training: bool) -> int:
        """The shorter-side target: random from min_size_train in training (torch RNG)."""
        if not training:
            return self.cfg.min_size_test
        choices = self.cfg.min_size_train
        index = int(torch.empty(1).uniform_(0.0, float(len(choices))).item())
        return choices[index]

    def resize(
        self, image: Tensor, min_size: int, targets: Targets | None = None
    ) -> tuple[Tensor, Targets | None]:
        """Scale so the short side is min_size and the long side at most max_size."""
        height, width = image.shape[-2:]
        scale = min(min_size / min(height, width), self.cfg.max_size / max(height, width))
        image = F.interpolate(
            image[None],
            scale_factor=scale,
            mode="bilinear",
            recompute_scale_factor=True,
            align_corners=False,
        )[0]
        if targets is None:
            return image, None
        new_size = tuple(image.shape[-2:])
        boxes = resize_boxes(targets.boxes, (height, width), new_size)
        masks = targets.masks
        if masks is not None:
            masks = F.interpolate(
                masks[:, None].float(), scale_factor=scale, recompute_scale_factor=True
            )[:, 0].to(torch.uint8)
        return image, Targets(boxes, targets.labels, masks)

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[Targets] | None, training: bool
    ) -> tuple[ImageList, list[Targets] | None]:
        resized, resized_targets = [], []
        for i, image in enumerate(images):
            min_size = self.pick_min_size(training)
            image, targets_i = self.resize(
                self.normalize(image), min_size, None if targets is None else targets[i]
            )
            resized.append(image)
            resized_targets.append(targets_i)
        image_sizes = [tuple(img.shape[-2:]) for img in resized]
        batch = pad_batch(resized, self.cfg.size_divisible)
        return ImageList(batch, image_sizes), (None if targets is None else resized_targets)

    def postprocess(
        self,
        detections: list[Detections],
        image_sizes: Sequence[tuple[int, int]],
        original_sizes: Sequence[tuple[int, int]],
        mask_threshold: float,
        soft_masks: bool = False,
        mask_paste: str = "torchvision",
    ) -> list[Detections]:
        """Boxes to original pixels; [D, M, M] mask probabilities pasted to [D, H, W] as
        mask_paste (roi_heads.mask_paste: "torchvision" or "detectron2") says."""
        for det, size, original in zip(detections, image_sizes, original_sizes):
            det.boxes = resize_boxes(det.boxes, size, original)
            if det.masks is not None:
                det.masks = paste_masks_as(mask_paste, det.masks, det.boxes, original,
                                           None if soft_masks else mask_threshold)
        return detections


def pad_batch(images: Sequence[Tensor], size_divisible: int) -> Tensor:
    """Zero-pad [C, H_i, W_i] images at the bottom/right to one [B, C, H, W], H and W
    multiples of size_divisible."""
    height = max(img.shape[-2] for img in images)
    width = max(img.shape[-1] for img in images)
    height = int(math.ceil(height / size_divisible) * size_divisible)
    width = int(math.ceil(width / size_divisible) * size_divisible)
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for i, img in enumerate(images):
        batch[i, :, : img.shape[-2], : img.shape[-1]].copy_(img)
    return batch


def resize_boxes(
    boxes: Tensor, original_size: Sequence[int], new_size: Sequence[int]
) -> Tensor:
    """Scale xyxy boxes from an image of original_size (h, w) to new_size (h, w)."""
    ratio_h = torch.tensor(new_size[0], dtype=torch.float32, device=boxes.device) / torch.tensor(
        original_size[0], dtype=torch.float32, device=boxes.device
    )
    ratio_w = torch.tensor(new_size[1], dtype=torch.float32, device=boxes.device) / torch.tensor(
        original_size[1], dtype=torch.float32, device=boxes.device
    )
    ratios = torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(boxes.dtype)
    return boxes * ratios
