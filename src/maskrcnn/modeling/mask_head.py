"""Mask branch: a small FCN giving one m x m mask per class, decoupled from classification."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RoIHeadsConfig
from ..ops.roi_align_masks import roi_align_masks
from .fpn import CONV_NORMS, conv_norm
from .losses import full_precision

# roi_heads.mask_head: "fcn" (the paper's FCN: MaskHead) or the Table 2e ablation's
# "mlp" / "mlp3" (MLPMaskHead with 2 / 3 hidden fc layers).
MASK_HEADS = ("fcn", "mlp", "mlp3")


class MaskHeadBase(nn.Module):
    """What every mask head shares: the mask_loss and class_agnostic switches (see
    MaskHead), the loss and the inference. A subclass's forward maps pooled RoI features
    [R, C, S, S] to mask logits [R, K (or 1), 2S, 2S]."""

    def __init__(self, class_agnostic: bool = False, mask_loss: str = "sigmoid") -> None:
        super().__init__()
        if mask_loss not in ("sigmoid", "softmax"):
            raise ValueError(f"mask_loss must be 'sigmoid' or 'softmax', got {mask_loss!r}")
        if class_agnostic and mask_loss == "softmax":
            raise ValueError("a class-agnostic mask cannot use a softmax across classes")
        self.class_agnostic = class_agnostic
        self.mask_loss = mask_loss

    def losses(
        self,
        mask_logits: Tensor,
        mask_targets: Tensor,
        labels: Tensor,
    ) -> dict[str, Tensor]:
        """Mean per-pixel loss over the positive RoIs.

        mask_logits: [P, K, M, M]; mask_targets: [P, M, M] in [0, 1]; labels: [P] int64 >= 1.
        """
        if mask_targets.numel() == 0:
            return {"loss_mask": mask_logits.sum() * 0}
        if self.mask_loss == "softmax":
            pixel_labels = torch.where(mask_targets >= 0.5, labels[:, None, None], 0)
            return {"loss_mask": F.cross_entropy(full_precision(mask_logits), pixel_labels)}
        channel = torch.zeros_like(labels) if self.class_agnostic else labels
        selected = mask_logits[torch.arange(labels.shape[0], device=labels.device), channel]
        return {"loss_mask": F.binary_cross_entropy_with_logits(full_precision(selected),
                                                                mask_targets)}

    def inference(self, mask_logits: Tensor, labels: Tensor) -> Tensor:
        """Probabilities of each detection's predicted class: [D, K, M, M] -> [D, M, M]."""
        rows = torch.arange(labels.shape[0], device=labels.device)
        if self.mask_loss == "softmax":  # over all K channels, then the predicted class's
            return mask_logits.softmax(dim=1)[rows, labels]
        channel = torch.zeros_like(labels) if self.class_agnostic else labels
        return mask_logits[rows, channel].sigmoid()  # only the channel used: [D, M, M]


class MaskHead(MaskHeadBase):
    """`num_convs` 3x3 convs (+ norm) + ReLU, a 2x deconv + ReLU, and a 1x1 conv to K mask
    logits.

    norm after each conv: "none" (convs with bias; the paper, torchvision v1), "bn"
    (BatchNorm2d, no bias; torchvision v2) or "gn" (GroupNorm(32), no bias); its parameters
    are under `convs.{i}.norm.`.

    mask_loss "sigmoid" is the paper's per-pixel sigmoid on the ground-truth class's mask
    only; "softmax" is the paper's Table 2b ablation, a multinomial loss that couples masks
    and classes: at every pixel a softmax over all K channels (background slot 0 included),
    cross-entropy against the RoI's class where the target is on (>= 0.5) and against
    background elsewhere; at inference the softmax probability of the predicted class.
    class_agnostic (Table 2a) predicts one mask channel, used for every class in the loss
    and at inference.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_convs: int,
        num_classes: int,
        class_agnostic: bool = False,
        mask_loss: str = "sigmoid",
        norm: str = "none",
    ) -> None:
        super().__init__(class_agnostic, mask_loss)
        if norm not in CONV_NORMS:  # also without convs: a config error, not silence
            raise ValueError(f"unknown mask head norm {norm!r}; choose one of {CONV_NORMS}")
        self.convs = nn.ModuleList(
            conv_norm(in_channels if i == 0 else channels, channels, 3, norm, what="mask head")
            for i in range(num_convs)
        )
        # num_convs 0 (the C4 head on res5 features): the deconv reads the input directly
        self.deconv = nn.ConvTranspose2d(channels if num_convs else in_channels, channels,
                                         kernel_size=2, stride=2)
        self.predictor = nn.Conv2d(channels, 1 if class_agnostic else num_classes, 1)
        for layer in [*self.convs, self.deconv, self.predictor]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.constant_(layer.bias, 0)

    def forward(self, pooled: Tensor) -> Tensor:
        """[R, C, S, S] pooled features -> mask logits [R, K (or 1), 2S, 2S]."""
        x = pooled
        for conv in self.convs:
            x = F.relu(conv(x), inplace=True)  # a fresh output: in place is safe, one map less
        return self.predictor(F.relu(self.deconv(x), inplace=True))


class MLPMaskHead(MaskHeadBase):
    """The paper's Table 2e ablation (He et al. 2017, R-50-FPN): the flattened pooled RoI
    features [R, C, S, S] through `num_fcs` fc layers of `fc_dim` (+ ReLU) and an fc to
    K x 2S x 2S mask logits, reshaped to [R, K (or 1), 2S, 2S] as the FCN's output: "MLP fc:
    1024->1024->80*28^2" (num_fcs 2, mask AP 31.5) and "1024->1024->1024->80*28^2"
    (num_fcs 3, 31.5) against the FCN's 33.6. The loss and the inference are MaskHead's.

    Init: hidden fcs as detectron2's fc heads (c2_xavier_fill: kaiming_uniform_(a=1), zero
    bias), the predictor normal(std 0.001) with zero bias (as its box deltas predictor).
    """

    def __init__(
        self,
        in_channels: int,
        resolution: int,
        fc_dim: int,
        num_fcs: int,
        num_classes: int,
        class_agnostic: bool = False,
        mask_loss: str = "sigmoid",
    ) -> None:
        super().__init__(class_agnostic, mask_loss)
        if num_fcs < 1 or fc_dim < 1:
            raise ValueError(f"an MLP mask head needs fc layers, got {num_fcs} of {fc_dim}")
        self.num_masks = 1 if class_agnostic else num_classes
        self.mask_size = 2 * resolution  # the FCN's: targets, loss and pasting unchanged
        dims = [in_channels * resolution * resolution] + [fc_dim] * num_fcs
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.predictor = nn.Linear(fc_dim, self.num_masks * self.mask_size**2)
        for fc in self.fcs:
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.constant_(fc.bias, 0)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0)

    def forward(self, pooled: Tensor) -> Tensor:
        """[R, C, S, S] pooled features -> mask logits [R, K (or 1), 2S, 2S]."""
        x = pooled.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x), inplace=True)
        return self.predictor(x).unflatten(1, (self.num_masks, self.mask_size, self.mask_size))


def build_mask_head(cfg: RoIHeadsConfig, in_channels: int) -> MaskHeadBase:
    """The mask head `roi_heads.mask_head` names (see MASK_HEADS). The MLPs take their
    input size from mask_pooler_resolution and do not use the FCN's mask_head_channels,
    mask_head_convs or mask_head_norm."""
    if cfg.mask_head == "fcn":
        return MaskHead(
            in_channels,
            cfg.mask_head_channels,
            cfg.mask_head_convs,
            cfg.num_classes,
            class_agnostic=cfg.class_agnostic_mask,
            mask_loss=cfg.mask_loss,
            norm=cfg.mask_head_norm,
        )
    if cfg.mask_head in ("mlp", "mlp3"):
        return MLPMaskHead(
            in_channels,
            cfg.mask_pooler_resolution,
            cfg.mask_head_fc_dim,
            2 if cfg.mask_head == "mlp" else 3,
            cfg.num_classes,
            class_agnostic=cfg.class_agnostic_mask,
            mask_loss=cfg.mask_loss,
        )
    raise ValueError(f"unknown roi_heads.mask_head {cfg.mask_head!r}; choose one of "
                     f"{MASK_HEADS}")


def mask_targets(
    gt_masks_per_image: Sequence[Tensor],
    proposals_per_image: Sequence[Tensor],
    matched_idxs_per_image: Sequence[Tensor],
    resolution: int,
    aligned: bool,
    binarize: bool,
) -> Tensor:
    """Crop each positive RoI's ground-truth mask with RoIAlign: [P, M, M] float.

    gt_masks_per_image: [G_i, H, W]; proposals: [P_i, 4]; matched_idxs: [P_i] into G_i.

    The crop is always an average RoIAlign of the full-resolution mask (adaptive sampling,
    spatial scale 1), whatever `roi_heads.pooler` is; the pooler changes the features the
    mask is predicted from, and, with `roi_heads.mask_target_region: pooler`, the boxes given
    here (RoIHeads.mask_target_boxes). Our reading of "RoIPool (or RoIWarp) mask targets":
    - "box" (default, the paper's Sec. 3 "the mask target is the intersection between an RoI
      and its ground-truth mask", as the paper's Detectron code crops them for any pooler):
      the RoI itself, so the quantising poolers' misalignment is between features and targets.
    - "pooler": the region the pooler actually reads, RoIPool's quantised RoI on the RoI's
      FPN level mapped back to input pixels, (x1q, y1q, x1q + w, y1q + h) / scale
      (ops/roi_warp.quantized_extent); features and targets then agree and the misalignment
      moves to pasting (masks are pasted into the unquantised box). RoIAlign reads the box.
    The targets are never max-reduced (roi_align_max, roi_warp_max, roi_pool): a max over a
    bin of a binary mask would dilate it.
    """
    targets = []
    for gt_masks, proposals, matched_idxs in zip(
        gt_masks_per_image, proposals_per_image, matched_idxs_per_image
    ):
        if proposals.shape[0] == 0:  # no positives (or no masks) in this image
            targets.append(proposals.new_zeros(0, resolution, resolution))
            continue
        rois = torch.cat([matched_idxs[:, None].to(proposals), proposals], dim=1)  # [P_i, 5]
        targets.append(roi_align_masks(gt_masks, rois, resolution, 0, aligned))  # [P_i, M, M]
    targets = torch.cat(targets)
    return (targets >= 0.5).to(targets.dtype) if binarize else targets
