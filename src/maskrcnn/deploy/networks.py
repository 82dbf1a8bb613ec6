"""The model's networks (backbone + FPN, RPN head, box head, mask head) as one ONNX graph
from torch's exporter, with tensor inputs the export glue feeds:

  canvas [B, 3, Hc, Wc]        the normalised, resized, padded batch
  box_pooled [K, C, 7, 7]      RoIAlign of the proposals
  mask_pooled [D, C, 14, 14]   RoIAlign of the detections

and outputs `feature_{l}` (P2..P6), `rpn_logits_{l}` [B, H_l W_l A],
`rpn_deltas_{l}` [B, H_l W_l A, 4] for every RPN level, `box_logits` [K, num_classes],
`box_deltas` [K, num_classes * 4] and `mask_logits` [D, K', 28, 28].
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator

import onnx
import torch
from torch import Tensor, nn

from ..modeling import MaskRCNN
from ..modeling.backbone import fold_frozen_batchnorm

NETWORK_INPUTS = ("canvas", "box_pooled", "mask_pooled")


class ExportedNetworks(nn.Module):
    """Every learned layer of the model behind plain tensor inputs (see the module doc)."""

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.rpn_head = model.rpn.head
        self.box_head = model.roi_heads.box_head
        self.mask_head = model.roi_heads.mask_head

    def forward(self, canvas: Tensor, box_pooled: Tensor, mask_pooled: Tensor) -> tuple:
        features = self.backbone(canvas)
        rpn = [self.rpn_head.forward_level(feature) for feature in features]
        box_logits, box_deltas = self.box_head(box_pooled)
        mask_logits = self.mask_head(mask_pooled)
        return (*features, *(r[0] for r in rpn),
                *(r[1] for r in rpn), box_logits, box_deltas, mask_logits)

    def output_names(self) -> list[str]:
        levels = range(len(self.backbone.strides))
        return ([f"feature_{l}" for l in levels] + [f"rpn_logits_{l}" for l in levels]
                + [f"rpn_deltas_{l}" for l in levels]
                + ["box_logits", "box_deltas", "mask_logits"])


def export_networks(model: MaskRCNN, opset: int) -> onnx.ModelProto:
    """torch.onnx (dynamo) export of a copy of the model's networks, BatchNorm folded,
    with dynamic batch, canvas size and RoI counts."""
    copied = copy.deepcopy(model).cpu().float().eval()
    networks = ExportedNetworks(fold_frozen_batchnorm(copied))
    cfg = model.cfg.roi_heads
    channels = model.backbone.out_channels
    example = (
        torch.zeros(2, 3, 128, 160),
        torch.zeros(3, channels, cfg.box_pooler_resolution, cfg.box_pooler_resolution),
        torch.zeros(2, channels, cfg.mask_pooler_resolution, cfg.mask_pooler_resolution),
    )
    dim = torch.export.Dim
    dynamic = (
        {0: dim("batch", min=1, max=1024), 2: dim("canvas_height", min=32, max=16384),
         3: dim("canvas_width", min=32, max=16384)},
        {0: dim("num_proposals", min=0, max=1 << 24)},
        {0: dim("num_detections", min=0, max=1 << 24)},
    )
    with warnings.catch_warnings(), torch.no_grad(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            networks, example, None, dynamo=True, input_names=list(NETWORK_INPUTS),
            output_names=networks.output_names(), dynamic_shapes=dynamic,
            opset_version=opset, verbose=False, optimize=True,
        )
    return program.model_proto


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's exporter logs its steps and version-conversion notes; keep them for errors."""
    loggers = [logging.getLogger(name) for name in ("torch", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
