"""backbone.kind c4 / c5, the paper's Table 2 variants without FPN: the layout (one level,
15 anchors, res5 per RoI for C4), training and prediction, the poolers and mask switches,
BN folding, the export refusal, ImageNet bodies (layer4 -> res5), the weight file."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.testing import assert_close

from maskrcnn.config import BackboneConfig, ModelConfig
from maskrcnn.modeling import build_model
from maskrcnn.modeling.anchors import AnchorGenerator, cell_anchors
from maskrcnn.modeling.backbone import FrozenBatchNorm2d, SingleLevelBackbone, build_backbone
from maskrcnn.modeling.mask_head import MaskHead
from maskrcnn.modeling.poolers import POOLERS
from maskrcnn.modeling.res5_heads import Res5RoIHeads
from maskrcnn.modeling.roi_heads import RoIHeads
from tests.conftest import tiny_config
from tests.modeling.test_pooler_choice import _scene

LOSSES = {"loss_rpn_objectness", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"}


def kind_config(kind: str, **roi_settings) -> ModelConfig:
    cfg = tiny_config()  # ResNet-18, GroupNorm, 96 px, 3 classes
    cfg.backbone.kind = kind
    for key, value in roi_settings.items():
        setattr(cfg.roi_heads, key, value)
    # few RoIs: res5 runs per RoI
    cfg.rpn.post_nms_top_n_train, cfg.rpn.post_nms_top_n_test = 40, 20
    cfg.roi_heads.batch_size_per_image, cfg.roi_heads.detections_per_image = 16, 5
    return cfg


def scenes():
    gen = torch.Generator().manual_seed(1)
    pairs = [_scene(gen, 80, 96), _scene(gen, 72, 100)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def train_step(model, images, targets) -> dict[str, torch.Tensor]:
    losses = model(images, targets)
    assert set(losses) == LOSSES
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    return losses


def assert_masks_of_image_size(detections, images):
    for det, image in zip(detections, images):
        assert det.masks.shape == (len(det), *image.shape[1:]) and det.masks.dtype == torch.bool


# ------------------------------------------------------------------ layout


def test_c4_layout():
    torch.manual_seed(0)
    model = build_model(kind_config("c4"))
    assert isinstance(model.backbone, SingleLevelBackbone) and model.backbone.strides == (16,)
    assert not hasattr(model.backbone.body, "layer4") and model.backbone.out_channels == 256
    heads = model.roi_heads
    assert isinstance(heads, Res5RoIHeads) and isinstance(heads, RoIHeads)
    assert heads.sample.__func__ is RoIHeads.sample  # the sampling is RoIHeads'
    # 15 anchors per location: 5 sizes x 3 ratios on the one level
    assert model.rpn.anchor_generator.num_anchors_per_location == 15
    assert model.rpn.head.objectness_logits.out_channels == 15
    assert model.rpn.head.anchor_deltas.out_channels == 60
    keys = model.state_dict()
    assert "roi_heads.res5.0.conv1.weight" in keys and "roi_heads.res5.1.bn2.weight" in keys
    assert "roi_heads.res5.0.downsample.0.weight" in keys
    assert not any(k.startswith("backbone.body.layer4") or "fpn" in k for k in keys)
    # pooled 14 x 14 at 1/16, res5 -> [R, 512, 7, 7], linear predictors, 14 x 14 masks
    assert heads.box_pooler is heads.mask_pooler
    assert heads.box_pooler.output_size == 14 and heads.box_pooler.scales == (1 / 16,)
    assert heads.res5[0].conv1.stride == (2, 2) and len(heads.res5) == 2
    assert heads.box_head.num_fcs == 0 and len(heads.box_head.convs) == 0
    assert (heads.box_head.cls_score.in_features, heads.box_head.cls_score.out_features) == (
        512, 3)
    assert heads.box_head.bbox_pred.out_features == 12
    assert isinstance(heads.mask_head, MaskHead) and len(heads.mask_head.convs) == 0
    assert (heads.mask_head.deconv.in_channels, heads.mask_head.deconv.out_channels) == (512,
                                                                                          128)
    c4 = torch.randn(1, 256, 8, 8)
    boxes = [torch.tensor([[0.0, 0.0, 64.0, 64.0], [10.0, 20.0, 50.0, 60.0]])]
    res5_features = heads.roi_features([c4], boxes)
    assert res5_features.shape == (2, 512, 7, 7)
    logits, deltas = heads.box_outputs(res5_features)
    assert logits.shape == (2, 3) and deltas.shape == (2, 12)
    assert heads.mask_head(res5_features).shape == (2, 3, 14, 14)
    # RPN on C4: one level of H * W * 15 anchors
    features = model.backbone(torch.zeros(1, 3, 96, 128))
    assert len(features) == 1 and features[0].shape == (1, 256, 6, 8)
    _, _, anchors = model.rpn(features, (96, 128))
    assert len(anchors) == 1 and anchors[0].shape == (6 * 8 * 15, 4)


def test_c4_of_resnet50_has_detectron2s_channels():
    cfg = ModelConfig()
    cfg.backbone.kind = "c4"
    with torch.device("meta"):
        model = build_model(cfg)
    assert model.backbone.out_channels == 1024 and model.rpn.head.conv.in_channels == 1024
    assert model.roi_heads.box_head.cls_score.in_features == 2048
    assert model.roi_heads.mask_head.deconv.in_channels == 2048
    assert model.roi_heads.mask_head.deconv.out_channels == 256
    assert len(model.roi_heads.res5) == 3


def test_c5_layout():
    torch.manual_seed(0)
    model = build_model(kind_config("c5"))
    assert model.backbone.strides == (32,) and model.backbone.out_channels == 512
    heads = model.roi_heads
    assert type(heads) is RoIHeads
    assert model.rpn.head.objectness_logits.out_channels == 15
    assert heads.box_pooler.scales == heads.mask_pooler.scales == (1 / 32,)
    assert (heads.box_pooler.output_size, heads.mask_pooler.output_size) == (7, 14)
    assert heads.box_head.fc1.in_features == 512 * 7 * 7  # the 2-fc head on C5
    assert len(heads.mask_head.convs) == 4  # the FCN mask head on 14 x 14 C5 features
    features = model.backbone(torch.zeros(1, 3, 96, 128))
    assert len(features) == 1 and features[0].shape == (1, 512, 3, 4)


def test_unknown_kind_names_the_key():
    cfg = tiny_config()
    cfg.backbone.kind = "c3"
    with pytest.raises(ValueError, match=r"backbone\.kind 'c3'.*fpn.*c4.*c5"):
        build_model(cfg)
    cfg = kind_config("c4", mask_head="mlp")
    with pytest.raises(ValueError, match=r"roi_heads\.mask_head"):
        build_model(cfg)


def test_several_anchor_sizes_on_one_level_are_size_major():
    """detectron2's DefaultAnchorGenerator order: for each size, for each aspect ratio."""
    sizes, ratios = (32, 64, 128), (0.5, 1.0, 2.0)
    generator = AnchorGenerator([sizes], ratios, [16], round_cell_anchors=False,
                                strides_from_grid=False)
    assert generator.num_anchors_per_location == 9
    expected = torch.cat([cell_anchors(s, ratios, False) for s in sizes])  # [9, 4]
    anchors = generator([torch.zeros(1, 1, 2, 3)], (32, 48))[0]
    assert anchors.shape == (2 * 3 * 9, 4)
    assert_close(anchors[:9], expected)
    assert_close(anchors[9:18], expected + torch.tensor([16.0, 0.0, 16.0, 0.0]))
    widths = (expected[:, 2] - expected[:, 0]).reshape(3, 3)
    heights = (expected[:, 3] - expected[:, 1]).reshape(3, 3)
    assert_close(widths * heights, torch.tensor(sizes, dtype=torch.float32)[:, None].expand(
        3, 3).square(), rtol=1e-5, atol=1e-2)
    assert bool(((heights / widths)[:, 0] < 1).all() & ((heights / widths)[:, 2] > 1).all())
    with pytest.raises(ValueError, match="same number of anchors"):
        AnchorGenerator([(32, 64), 128], ratios, [8, 16])


# ------------------------------------------------------------------ training, prediction


@pytest.mark.parametrize("kind", ["c4", "c5"])
def test_trains_a_few_steps_and_predicts(kind):
    torch.manual_seed(0)
    model = build_model(kind_config(kind)).train()
    images, targets = scenes()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                lr=0.005, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad()
        train_step(model, images, targets)
        if kind == "c4":
            res5_grad = model.roi_heads.res5[0].conv1.weight.grad
            assert res5_grad is not None and res5_grad.abs().sum() > 0
        optimizer.step()
    model.eval()
    detections = model.predict(images, score_thresh=0.0)  # 3 steps: scores still low
    assert sum(len(d) for d in detections) > 0
    assert_masks_of_image_size(detections, images)
    soft = model.predict(images, soft_masks=True, score_thresh=0.0)
    assert all(bool(((d.masks >= 0) & (d.masks <= 1)).all()) for d in soft)
    # validation loss in eval mode; no detections is well formed
    assert set(model.compute_losses(images, targets)) == LOSSES
    empty = model.predict(images, score_thresh=1.0)
    assert all(len(d) == 0 and d.masks.shape == (0, *im.shape[1:])
               for d, im in zip(empty, images))


@pytest.mark.parametrize("pooler", POOLERS)
def test_every_pooler_works_with_c4(pooler):
    torch.manual_seed(0)
    model = build_model(kind_config("c4", pooler=pooler)).train()
    assert model.roi_heads.box_pooler.pooler == pooler
    images, targets = scenes()
    losses = train_step(model, images, targets)
    assert losses["loss_mask"] > 0
    model.eval()
    assert_masks_of_image_size(model(images), images)


@pytest.mark.parametrize("settings", [{"mask_loss": "softmax"}, {"class_agnostic_mask": True},
                                      {"pooler": "roi_warp", "mask_target_region": "pooler"}])
def test_mask_switches_work_with_c4(settings):
    torch.manual_seed(0)
    model = build_model(kind_config("c4", **settings)).train()
    head = model.roi_heads.mask_head
    assert head.predictor.out_channels == (1 if settings.get("class_agnostic_mask") else 3)
    assert head.mask_loss == settings.get("mask_loss", "sigmoid")
    images, targets = scenes()
    train_step(model, images, targets)
    model.eval()
    soft = model.predict(images, soft_masks=True)
    assert sum(len(d) for d in soft) > 0
    assert all(bool(((d.masks >= 0) & (d.masks <= 1)).all()) for d in soft)


def test_box_only_targets_train_c4():
    torch.manual_seed(0)
    model = build_model(kind_config("c4")).train()
    images, targets = scenes()
    for t in targets:
        t.masks = None
    losses = model(images, targets)
    assert "loss_mask" not in losses and all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("trainable_layers", [0, 1, 3])
def test_trainable_layers_keep_their_meaning_for_c4(trainable_layers):
    cfg = kind_config("c4")
    cfg.backbone.trainable_layers = trainable_layers
    model = build_model(cfg)
    res5 = [p.requires_grad for p in model.roi_heads.res5.parameters()]
    assert all(res5) == (trainable_layers >= 1) and any(res5) == all(res5)
    assert model.backbone.body.layer3[0].conv1.weight.requires_grad == (trainable_layers >= 2)
    assert model.backbone.body.layer2[0].conv1.weight.requires_grad == (trainable_layers >= 3)
    assert not model.backbone.body.layer1[0].conv1.weight.requires_grad


# ------------------------------------------------------------------ BN folding, export


def test_optimize_for_inference_folds_res5():
    from maskrcnn.testing import spread_scores

    torch.manual_seed(0)
    cfg = kind_config("c4")
    cfg.backbone.norm = "frozen_bn"
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # statistics that are not an identity, so folding changes weights
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.running_mean.normal_(0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.normal_(0, 0.1, generator=gen)
    model = spread_scores(model).eval()
    images, _ = scenes()
    expected = model.predict(images, soft_masks=True)
    model.optimize_for_inference()
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert isinstance(model.roi_heads.res5[0].bn1, nn.Identity)
    assert model.roi_heads.res5[0].conv1.bias is not None
    got = model.predict(images, soft_masks=True)
    assert sum(len(d) for d in expected) > 0
    for want, have in zip(expected, got):
        assert len(want) == len(have)
        assert_close(have.scores, want.scores, atol=1e-4, rtol=0)
        assert_close(have.boxes, want.boxes, atol=1e-3, rtol=0)
        assert_close(have.masks, want.masks, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["c4", "c5"])
def test_export_refuses_c4_and_c5(kind):
    from maskrcnn.deploy.exporter import ExportError, check_exportable

    model = build_model(kind_config(kind)).eval()
    with pytest.raises(ExportError, match="only FPN models export") as info:
        check_exportable(model, 18)
    assert "\n" not in str(info.value) and kind in str(info.value)


# ------------------------------------------------------------------ weights


def test_imagenet_body_puts_layer4_into_res5(tmp_path):
    from maskrcnn.io.pretrained import build_pretrained_model, load_pretrained_body

    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for module in imagenet.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    cfg = kind_config("c4")
    cfg.backbone.norm, cfg.backbone.pretrained = "frozen_bn", str(path)
    model = build_pretrained_model(cfg)
    state = imagenet.state_dict()
    for key, value in model.roi_heads.res5.state_dict().items():
        assert torch.equal(value, state["layer4." + key]), key
    for key, value in model.backbone.body.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert model.roi_heads.res5[1].conv2.weight.requires_grad  # trainable_layers 5 (small)
    # without res5 the file's layer4 is refused by the C4 body, naming the key
    backbone = build_backbone(BackboneConfig(depth=18, kind="c4"))
    with pytest.raises(ValueError, match=r"unexpected key 'layer4\."):
        load_pretrained_body(backbone, str(path))
    # kind c5 loads the whole body as FPN does
    cfg = kind_config("c5")
    cfg.backbone.norm, cfg.backbone.pretrained = "frozen_bn", str(path)
    model = build_pretrained_model(cfg)
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_whole_model_file_round_trips_for_c4(tmp_path):
    from maskrcnn.io.weights import load_model, read_model_weights, save_model

    torch.manual_seed(0)
    model = build_model(kind_config("c4")).eval()
    path = tmp_path / "c4.pth"
    save_model(model, path)
    weights = read_model_weights(path)
    assert weights.cfg == model.cfg and weights.cfg.backbone.kind == "c4"
    assert "roi_heads.res5.0.conv1.weight" in weights.state_dict
    loaded = load_model(path)
    assert isinstance(loaded.roi_heads, Res5RoIHeads)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images, _ = scenes()
    for want, have in zip(model.predict(images, soft_masks=True),
                          loaded.predict(images, soft_masks=True)):
        assert torch.equal(want.masks, have.masks)


def test_data_fit_keeps_the_anchors_of_c4():
    import numpy as np

    from maskrcnn.engine.data_fit import fit_to_data

    cfg = kind_config("c4")
    cfg.input.min_size_train, cfg.input.max_size = (800,), 1333
    boxes = [np.array([[10.0, 10.0, 18.0, 18.0]] * 200)]  # small objects: FPN would refit
    fit = fit_to_data(cfg, boxes, [(800, 800)])
    assert cfg.anchors.sizes == (32, 64, 128, 256, 512)
    assert "anchors.sizes" not in fit.changes
    assert fit.changes["roi_heads.detections_per_image"][1] == 250
    fpn = kind_config("fpn")
    fpn.input.min_size_train, fpn.input.max_size = (800,), 1333
    assert "anchors.sizes" in fit_to_data(fpn, boxes, [(800, 800)]).changes
