import pickle

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from maskrcnn.io.weights import WeightsError, load_model, save_model
from maskrcnn.modeling import build_model
from tests.conftest import tiny_config


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.class_names = ("background", "a", "b")
    model = build_model(cfg)
    path = tmp_path / "model.pt"
    save_model(model, path)
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.cfg == cfg
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_torchvision_state_dict_is_recognised(tmp_path):
    torch.manual_seed(0)
    tv_model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5)
    path = tmp_path / "tv.pth"
    torch.save(tv_model.state_dict(), path)
    model = load_model(path)  # strict: every key must map
    assert model.cfg.roi_heads.num_classes == 5
    assert torch.equal(
        model.roi_heads.mask_head.predictor.weight,
        tv_model.roi_heads.mask_predictor.mask_fcn_logits.weight,
    )


@pytest.mark.parametrize(
    "content",
    [b"not a checkpoint", None, {"some": torch.zeros(1)}],
    ids=["garbage", "pickled-code", "unknown-dict"],
)
def test_bad_weight_files_name_the_file(tmp_path, content):
    path = tmp_path / "weights.pt"
    if content is None:  # a pickle that would run code: weights_only refuses it
        path.write_bytes(pickle.dumps(print))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(WeightsError, match="weights.pt"):
        load_model(path)


def test_missing_weight_file(tmp_path):
    with pytest.raises(WeightsError, match="nope.pt"):
        load_model(tmp_path / "nope.pt")


def test_shape_mismatch_is_reported(tmp_path):
    model = build_model(tiny_config(num_classes=3))
    path = tmp_path / "model.pt"
    save_model(model, path)
    data = torch.load(path, weights_only=True)
    data["model"]["roi_heads.box_head.cls_score.weight"] = torch.zeros(7, 512)
    torch.save(data, path)
    with pytest.raises(WeightsError, match="other shapes"):
        load_model(path)
