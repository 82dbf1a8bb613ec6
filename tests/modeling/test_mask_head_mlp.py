"""roi_heads.mask_head: mlp / mlp3, the paper's Table 2e ablation (fc layers instead of the
FCN): shapes, the paper's layer sizes, the shared loss and inference, a tiny model that
trains and predicts, the weight file, optimize_for_inference and the ONNX export."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from maskrcnn.config import RoIHeadsConfig
from maskrcnn.modeling import build_model
from maskrcnn.modeling.mask_head import (
    MASK_HEADS,
    MaskHead,
    MaskHeadBase,
    MLPMaskHead,
    build_mask_head,
)
from tests.conftest import tiny_config
from tests.modeling.test_pooler_choice import _scene


def small_model_config(mask_head: str = "mlp", **settings):
    cfg = tiny_config()
    cfg.roi_heads.mask_head = mask_head
    for key, value in settings.items():
        setattr(cfg.roi_heads, key, value)
    cfg.rpn.post_nms_top_n_train = cfg.rpn.post_nms_top_n_test = 100  # small and quick
    cfg.roi_heads.batch_size_per_image, cfg.roi_heads.detections_per_image = 64, 10
    return cfg


def scenes():
    gen = torch.Generator().manual_seed(1)
    pairs = [_scene(gen, 80, 96), _scene(gen, 72, 100)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_default_is_the_fcn():
    assert RoIHeadsConfig().mask_head == "fcn" and MASK_HEADS == ("fcn", "mlp", "mlp3")
    head = build_model(tiny_config()).roi_heads.mask_head
    assert type(head) is MaskHead and isinstance(head, MaskHeadBase)


@pytest.mark.parametrize("kind,hidden", [("mlp", 2), ("mlp3", 3)])
@pytest.mark.parametrize("num_classes,class_agnostic", [(3, False), (5, False), (4, True)])
def test_output_shapes(kind, hidden, num_classes, class_agnostic):
    torch.manual_seed(0)
    cfg = RoIHeadsConfig(num_classes=num_classes, mask_head=kind, mask_head_fc_dim=32,
                         class_agnostic_mask=class_agnostic, mask_pooler_resolution=7)
    head = build_mask_head(cfg, in_channels=8)
    assert type(head) is MLPMaskHead and len(head.fcs) == hidden
    masks = 1 if class_agnostic else num_classes
    for rois in (5, 1, 0):
        logits = head(torch.randn(rois, 8, 7, 7))
        assert logits.shape == (rois, masks, 14, 14)  # 2 x mask_pooler_resolution
    labels = torch.tensor([1, 2, 1, 2, 1]) % num_classes
    logits = head(torch.randn(5, 8, 7, 7))
    probs = head.inference(logits, labels)
    assert probs.shape == (5, 14, 14) and bool(((probs >= 0) & (probs <= 1)).all())
    loss = head.losses(logits, torch.rand(5, 14, 14), labels.clamp(min=1))["loss_mask"]
    assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("kind,hidden", [("mlp", 2), ("mlp3", 3)])
def test_paper_layer_sizes(kind, hidden):
    """R-50-FPN, COCO: 256 x 14 x 14 RoI features -> 1024 -> 1024 (-> 1024) -> 80 x 28^2
    (81 here: background slot 0 included, as the FCN's predictor)."""
    cfg = RoIHeadsConfig(num_classes=81, mask_head=kind)
    with torch.device("meta"):  # the paper's sizes without their 0.5 GB of memory
        head = build_mask_head(cfg, in_channels=256)
    dims = [256 * 14 * 14] + [1024] * hidden + [81 * 28 * 28]
    layers = [*head.fcs, head.predictor]
    assert [(fc.in_features, fc.out_features) for fc in layers] == list(zip(dims, dims[1:]))
    expected = sum(a * b + b for a, b in zip(dims, dims[1:]))
    assert sum(p.numel() for p in head.parameters()) == expected
    cfg.class_agnostic_mask, cfg.mask_head_fc_dim = True, 512
    with torch.device("meta"):
        head = build_mask_head(cfg, in_channels=256)
    assert head.fcs[0].out_features == 512 and head.predictor.out_features == 28 * 28


def test_init_and_the_shared_loss_code():
    torch.manual_seed(0)
    head = build_mask_head(RoIHeadsConfig(num_classes=3, mask_head="mlp"), in_channels=4)
    head.requires_grad_(False)
    assert all(float(fc.bias.abs().max()) == 0 for fc in [*head.fcs, head.predictor])
    assert float(head.predictor.weight.std()) == pytest.approx(0.001, rel=0.05)
    bound = (3 / head.fcs[1].in_features) ** 0.5  # kaiming_uniform_(a=1): sqrt(3 / fan_in)
    assert float(head.fcs[1].weight.abs().max()) <= bound
    assert float(head.fcs[1].weight.abs().max()) > 0.95 * bound
    # the loss and inference are MaskHead's, not copies
    for name in ("losses", "inference"):
        assert getattr(MLPMaskHead, name) is getattr(MaskHead, name)
        assert getattr(MLPMaskHead, name) is getattr(MaskHeadBase, name)


def test_bad_settings():
    cfg = tiny_config()
    cfg.roi_heads.mask_head = "mlp2"
    with pytest.raises(ValueError, match=r"roi_heads\.mask_head.*fcn.*mlp.*mlp3"):
        build_model(cfg)
    with pytest.raises(ValueError, match="class-agnostic"):
        build_model(small_model_config("mlp3", mask_loss="softmax", class_agnostic_mask=True))
    with pytest.raises(ValueError, match="mask_loss"):
        build_model(small_model_config("mlp", mask_loss="l2"))


@pytest.mark.parametrize("kind,settings", [("mlp", {}), ("mlp3", {}),
                                           ("mlp", {"mask_loss": "softmax"})])
def test_tiny_model_trains_and_predicts(kind, settings):
    torch.manual_seed(0)
    model = build_model(small_model_config(kind, mask_head_fc_dim=256, **settings)).train()
    images, targets = scenes()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mask_losses = []
    for _ in range(4):
        losses = model(images, targets)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        mask_losses.append(float(losses["loss_mask"]))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        for param in (model.roi_heads.mask_head.predictor.weight,
                      model.roi_heads.mask_head.fcs[0].weight):
            assert param.grad is not None and param.grad.abs().sum() > 0
        optimizer.step()
    assert mask_losses[0] > 0 and mask_losses[-1] < mask_losses[0], mask_losses
    model.eval()
    detections = model(images)
    soft = model.predict(images, soft_masks=True)
    assert sum(len(d) for d in detections) > 0
    for det, probs, image in zip(detections, soft, images):
        assert det.masks.shape == (len(det), *image.shape[1:]) and det.masks.dtype == torch.bool
        assert probs.masks.shape == det.masks.shape
        assert bool(((probs.masks >= 0) & (probs.masks <= 1)).all())


def test_optimize_for_inference_keeps_the_predictions():
    torch.manual_seed(0)
    model = build_model(small_model_config("mlp3", mask_head_fc_dim=128)).eval()
    images, _ = scenes()
    expected = model.predict(images, soft_masks=True)
    model.optimize_for_inference()
    got = model.predict(images, soft_masks=True)
    for want, have in zip(expected, got):
        assert len(want) == len(have) > 0
        assert_close(have.boxes, want.boxes, atol=1e-3, rtol=0)
        assert_close(have.masks, want.masks, atol=1e-4, rtol=0)


def test_whole_model_file_round_trips(tmp_path):
    from maskrcnn.io.weights import load_model, read_model_weights, save_model

    torch.manual_seed(0)
    model = build_model(small_model_config("mlp", mask_head_fc_dim=64)).eval()
    path = tmp_path / "mlp.pth"
    save_model(model, path)
    weights = read_model_weights(path)
    assert weights.cfg == model.cfg
    assert (weights.cfg.roi_heads.mask_head, weights.cfg.roi_heads.mask_head_fc_dim) == ("mlp",
                                                                                          64)
    assert any(k.startswith("roi_heads.mask_head.fcs.1.") for k in weights.state_dict)
    loaded = load_model(path)
    assert type(loaded.roi_heads.mask_head) is MLPMaskHead
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images, _ = scenes()
    for want, have in zip(model.predict(images, soft_masks=True),
                          loaded.predict(images, soft_masks=True)):
        assert torch.equal(want.masks, have.masks)


def test_onnx_export_matches_the_eager_model(tmp_path):
    pytest.importorskip("onnxruntime")
    from maskrcnn.deploy import load_exported
    from maskrcnn.deploy.exporter import check_exportable, export
    from maskrcnn.testing import smooth_random_images, spread_scores
    from tests.deploy.conftest import assert_same_detections, deploy_config

    torch.manual_seed(0)
    cfg = deploy_config("small")
    cfg.roi_heads.mask_head, cfg.roi_heads.mask_head_fc_dim = "mlp", 128
    model = spread_scores(build_model(cfg).eval())
    check_exportable(model, 18)
    images = smooth_random_images([(150, 200), (97, 131)], seed=3)
    expected = model.predict(images)
    soft = model.predict(images, soft_masks=True)
    assert all(len(d) > 10 for d in expected)  # the test means something
    exported = load_exported(export(model, tmp_path / "mlp.onnx", "onnx")[0])
    assert exported.cfg.roi_heads.mask_head == "mlp"
    for want, have, probs in zip(expected, exported.predict(images), soft):
        assert_same_detections(want, have, soft=probs)
