"""roi_heads.pooler: every pooler per FPN level against the float64 loop references, the
RoI heads wiring (box branch, mask branch, mask targets), the exporter's refusal, and a
tiny model that trains a step and predicts with each."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.testing import assert_close

from maskrcnn.modeling import build_model
from maskrcnn.modeling.poolers import POOLERS, MultiLevelRoIAlign, MultiLevelRoIPooler
from maskrcnn.modeling.roi_heads import SampledRoIs
from maskrcnn.structures import Targets
from tests.conftest import tiny_config
from tests.ops.loop_poolers import pool_rois

roi_heads_module = importlib.import_module("maskrcnn.modeling.roi_heads")

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
IMAGE_HW = (64, 80)


def features(gen: torch.Generator, batch: int = 2, channels: int = 3):
    """float64 P2..P5 of a 64x80 image: 16x20, 8x10, 4x5, 2x2."""
    return [torch.randn(batch, channels, IMAGE_HW[0] >> k, IMAGE_HW[1] >> k, generator=gen,
                        dtype=torch.float64, requires_grad=True) for k in range(2, 6)]


def boxes(gen: torch.Generator, k: int) -> torch.Tensor:
    """[k, 4] float64 boxes, sqrt(area) 6..600 px (the first four on P2, P3, P4, P5)."""
    side = torch.exp(torch.empty(k, dtype=torch.float64).uniform_(1.8, 6.4, generator=gen))
    side[:4] = torch.tensor([60.0, 150.0, 300.0, 600.0])
    aspect = torch.exp(torch.empty(k, dtype=torch.float64).uniform_(-0.7, 0.7, generator=gen))
    wh = torch.stack([side * aspect.sqrt(), side / aspect.sqrt()], dim=1)
    centre = torch.rand(k, 2, generator=gen, dtype=torch.float64) * torch.tensor([80.0, 64.0])
    return torch.cat([centre - wh / 2, centre + wh / 2], dim=1)


@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("pooler", POOLERS)
def test_each_pooler_per_level_matches_loop_reference(pooler, sampling_ratio):
    gen = torch.Generator().manual_seed(len(pooler) + sampling_ratio)
    feats = features(gen)
    box_list = [boxes(gen, 9), boxes(gen, 7)]
    module = MultiLevelRoIPooler(3, SCALES, sampling_ratio, pooler=pooler)
    ours = module(feats, box_list)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i), dtype=torch.float64), b], 1)
                      for i, b in enumerate(box_list)])
    levels = module.assign_levels(rois[:, 1:])
    assert levels.unique().tolist() == [0, 1, 2, 3]
    ref = pool_rois(pooler, feats, rois, levels, (3, 3), SCALES, sampling_ratio)
    assert_close(ours, ref, rtol=0, atol=1e-12)
    grad_out = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    g_ours = torch.autograd.grad(ours, feats, grad_out, allow_unused=True)
    g_ref = torch.autograd.grad(ref, feats, grad_out)
    for g, r in zip(g_ours, g_ref):
        assert_close(g if g is not None else torch.zeros_like(r), r, rtol=0, atol=1e-12)
    assert all(r.any() for r in g_ref)  # every level took a gradient


def test_poolers_differ_and_default_is_roi_align():
    gen = torch.Generator().manual_seed(1)
    feats = [f.detach().float() for f in features(gen)]
    box_list = [boxes(gen, 6).float(), boxes(gen, 5).float()]
    outs = {p: MultiLevelRoIPooler(4, SCALES, 2, pooler=p)(feats, box_list) for p in POOLERS}
    for i, a in enumerate(POOLERS):
        for b in POOLERS[i + 1:]:
            assert not torch.allclose(outs[a], outs[b]), (a, b)
    assert torch.equal(outs["roi_align"], MultiLevelRoIAlign(4, SCALES, 2)(feats, box_list))
    assert torch.equal(outs["roi_align_max"],
                       MultiLevelRoIAlign(4, SCALES, 2, reduction="max")(feats, box_list))
    heads = build_model(tiny_config()).roi_heads
    for pooler in (heads.box_pooler, heads.mask_pooler):
        assert (pooler.pooler, pooler.method, pooler.reduction) == ("roi_align", "roi_align",
                                                                    "avg")


@pytest.mark.parametrize("pooler", POOLERS)
def test_roi_heads_use_the_configured_pooler(pooler):
    cfg = tiny_config()
    cfg.roi_heads.pooler = pooler
    heads = build_model(cfg).roi_heads
    assert heads.box_pooler.pooler == heads.mask_pooler.pooler == pooler
    assert pooler in repr(heads.box_pooler)


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown pooler"):
        MultiLevelRoIPooler(7, SCALES, 2, pooler="roi_sum")
    for pooler in ("roi_pool", "roi_warp", "roi_warp_max"):
        with pytest.raises(ValueError, match="aligned"):
            MultiLevelRoIPooler(7, SCALES, 2, aligned=True, pooler=pooler)
    MultiLevelRoIPooler(7, SCALES, 2, aligned=True, pooler="roi_align_max")
    with pytest.raises(ValueError, match="reduction"):
        MultiLevelRoIAlign(7, SCALES, 2, reduction="sum")
    cfg = tiny_config()
    cfg.roi_heads.mask_target_region = "roi"
    with pytest.raises(ValueError, match="mask_target_region"):
        build_model(cfg)


def test_sampled_regions_by_hand():
    """A P2 box (sqrt(area) 30 px, scale 1/4): x1 3.25 -> 3, y1 1.525 -> 2, x2 12.55 -> 13,
    y2 7.5 -> 8 (half away from zero); width 13 - 3 + 1 = 11, height 7 -> [3, 2, 14, 9] * 4.
    A P5 box (512 px) on 1/32: 3.1 -> 3, 1.9 -> 2, 19.1 -> 19, 17.9 -> 18 -> [3, 2, 20, 19] * 32."""
    box = torch.tensor([[13.0, 6.1, 50.2, 30.0], [99.2, 60.8, 611.2, 572.8]])
    for pooler in POOLERS:
        module = MultiLevelRoIPooler(7, SCALES, 2, pooler=pooler)
        assert module.assign_levels(box).tolist() == [0, 3]
        (region,) = module.sampled_regions([box])
        if pooler.startswith("roi_align"):
            assert torch.equal(region, box)
        else:
            assert torch.equal(region, torch.tensor([[12.0, 8.0, 56.0, 36.0],
                                                     [96.0, 64.0, 640.0, 608.0]]))


@pytest.mark.parametrize("pooler,region", [("roi_pool", "pooler"), ("roi_pool", "box"),
                                           ("roi_warp", "pooler"), ("roi_align", "pooler")])
def test_mask_targets_are_cropped_over_the_configured_region(pooler, region, monkeypatch):
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.roi_heads.pooler, cfg.roi_heads.mask_target_region = pooler, region
    heads = build_model(cfg).roi_heads
    crops = []
    real = roi_heads_module.mask_targets
    monkeypatch.setattr(roi_heads_module, "mask_targets",
                        lambda masks, boxes, *a, **k: crops.append(boxes) or real(masks, boxes,
                                                                                  *a, **k))
    proposals = torch.tensor([[13.0, 6.1, 50.2, 30.0], [2.3, 3.3, 40.6, 41.7],
                              [20.0, 20.0, 30.0, 30.0]])
    masks = torch.zeros(1, 64, 80, dtype=torch.uint8)
    masks[0, 8:40, 10:50] = 1
    targets = [Targets(torch.tensor([[10.0, 8.0, 50.0, 40.0]]), torch.tensor([2]), masks)]
    sampled = SampledRoIs([proposals], [torch.tensor([2, 2, 0])],
                          [torch.zeros(3, dtype=torch.int64)], [torch.zeros(3, 4)])
    feats = [torch.randn(1, 128, 64 >> k, 80 >> k) for k in range(2, 6)]
    losses = heads.losses(feats, sampled, targets)
    assert torch.isfinite(losses["loss_mask"])
    (cropped,) = crops[0]
    expected = heads.mask_pooler.sampled_regions([proposals[:2]])[0]
    assert torch.equal(cropped, expected if region == "pooler" else proposals[:2])
    assert torch.equal(cropped, proposals[:2]) == (region == "box" or pooler == "roi_align")


@pytest.mark.parametrize("pooler", POOLERS)
def test_exporter_refuses_what_it_cannot_export(pooler):
    pytest.importorskip("onnx")
    from maskrcnn.deploy.exporter import ExportError, check_exportable

    cfg = tiny_config()
    cfg.roi_heads.pooler = pooler
    model = build_model(cfg)
    if pooler == "roi_align":
        check_exportable(model, 18)
        return
    with pytest.raises(ExportError) as err:
        check_exportable(model, 18)
    message = str(err.value)
    assert "\n" not in message
    assert (pooler in message) if pooler != "roi_align_max" else "max RoIAlign" in message


def _scene(gen: torch.Generator, height: int, width: int):
    image = torch.rand(3, height, width, generator=gen)
    boxes = torch.tensor([[8.0, 6.0, 50.0, 44.0], [40.0, 30.0, 90.0, 70.0]])
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        masks[i, y1 + 2 : y2 - 2, x1 + 3 : x2 - 3] = 1
        image[:, y1:y2, x1:x2] *= 0.3 + 0.3 * i
    return image, Targets(boxes, torch.tensor([1, 2]), masks)


@pytest.mark.parametrize("pooler,region", [(p, "box") for p in POOLERS]
                         + [("roi_warp", "pooler")])
def test_tiny_model_trains_a_step_and_predicts(pooler, region):
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.roi_heads.pooler, cfg.roi_heads.mask_target_region = pooler, region
    cfg.rpn.post_nms_top_n_train = cfg.rpn.post_nms_top_n_test = 100  # small and quick
    cfg.roi_heads.batch_size_per_image, cfg.roi_heads.detections_per_image = 64, 10
    model = build_model(cfg).train()
    gen = torch.Generator().manual_seed(1)
    scenes = [_scene(gen, 80, 96), _scene(gen, 72, 100)]
    images, targets = [s[0] for s in scenes], [s[1] for s in scenes]
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert losses["loss_mask"] > 0 and losses["loss_cls"] > 0
    sum(losses.values()).backward()
    heads = model.roi_heads
    for name, param in [("box", heads.box_head.cls_score.weight),
                        ("mask", heads.mask_head.predictor.weight),
                        ("mask conv", heads.mask_head.convs[0].weight)]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    optimizer.step()
    model.eval()
    detections = model(images)
    assert len(detections) == 2
    for det, image in zip(detections, images):
        assert det.masks.shape == (len(det), *image.shape[1:])
        assert torch.isfinite(det.boxes).all() and torch.isfinite(det.scores).all()
    assert sum(len(d) for d in detections) > 0
