"""Under bfloat16 autocast the network runs in bfloat16, but anchors, box coding and the
losses stay in float32 (bfloat16 rounds coordinates of a few hundred pixels to 2-4 px)."""

import torch

from maskrcnn.modeling.anchors import AnchorGenerator
from maskrcnn.ops.box_coder import BoxCoder
from maskrcnn.structures import Targets
from tests.conftest import tiny_config


def test_anchors_and_box_coding_in_float32():
    generator = AnchorGenerator((32, 64, 128, 256, 512), (0.5, 1.0, 2.0), (4, 8, 16, 32, 64))
    features = [torch.zeros(1, 8, 40 >> i, 40 >> i, dtype=torch.bfloat16) for i in range(5)]
    assert all(a.dtype == torch.float32 for a in generator(features, (160, 160)))
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    boxes = torch.tensor([[301.0, 402.0, 304.0, 405.5]])
    deltas = torch.tensor([[0.5, -0.25, 0.1, 0.2]], dtype=torch.bfloat16)
    decoded = coder.decode(deltas, boxes)
    assert decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, coder.decode(deltas.float(), boxes))
    encoded = coder.encode(boxes.bfloat16().float() + 0.5, boxes)
    assert encoded.dtype == torch.float32 and torch.isfinite(encoded).all()


def test_proposals_and_losses_in_float32_under_autocast(monkeypatch):
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.input.min_size_train, cfg.input.max_size = (480,), 640
    from maskrcnn.modeling import build_model

    model = build_model(cfg).train()
    seen = []
    sample = model.roi_heads.sample
    monkeypatch.setattr(model.roi_heads, "sample",
                        lambda proposals, targets: seen.append(proposals) or sample(proposals,
                                                                                    targets))
    gen = torch.Generator().manual_seed(1)
    xy = 300 + torch.rand(12, 2, generator=gen) * 150  # 2-4 px objects far from the origin
    boxes = torch.cat([xy, xy + 2 + 2 * torch.rand(12, 2, generator=gen)], 1)
    masks = torch.zeros(12, 480, 480, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        masks[i, int(y1):int(y2) + 1, int(x1):int(x2) + 1] = 1
    targets = [Targets(boxes, torch.randint(1, 3, (12,), generator=gen), masks)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model([torch.rand(3, 480, 480, generator=gen)], targets)
    assert [p.dtype for p in seen[0]] == [torch.float32]
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
    assert losses["loss_box"] > 0 and losses["loss_rpn_box"] > 0
    sum(losses.values()).backward()
