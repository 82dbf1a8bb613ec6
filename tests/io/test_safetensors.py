"""safetensors: our weights with their config, written and read back; plain tensor files."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from maskrcnn.cli import main
from maskrcnn.io.weights import WeightsError, load_model, read_model_weights, save_model
from maskrcnn.modeling import build_model
from tests.conftest import tiny_config


def test_round_trip_keeps_weights_config_and_detections(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.class_names = ("background", "a", "b")
    model = build_model(cfg).eval()
    save_model(model, tmp_path / "m.safetensors")
    with open(tmp_path / "m.safetensors", "rb") as f:
        assert not f.read(16).startswith(b"PK")  # not a torch zip
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.cfg == model.cfg and loaded.class_names == ("background", "a", "b")
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    image = [torch.rand(3, 80, 96)]
    a, b = model.predict(image, score_thresh=0.0)[0], loaded.predict(image, score_thresh=0.0)[0]
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.masks, b.masks)


def test_a_plain_torchvision_state_dict_in_safetensors_is_recognised(tmp_path):
    torch.manual_seed(0)
    tv_model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=5)
    state = {k: v.contiguous() for k, v in tv_model.state_dict().items()}
    save_file(state, tmp_path / "tv.safetensors")
    weights = read_model_weights(tmp_path / "tv.safetensors")
    assert weights.origin == "torchvision" and weights.cfg.roi_heads.num_classes == 5


def test_a_damaged_file_is_one_clear_error(tmp_path):
    model = build_model(tiny_config())
    save_model(model, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.safetensors: not a readable safetensors file"):
        load_model(tmp_path / "cut.safetensors")


def test_export_command_writes_safetensors(tmp_path, capsys):
    model = build_model(tiny_config())
    save_model(model, tmp_path / "m.pt")
    out = tmp_path / "m.safetensors"
    assert main(["export", "--weights", str(tmp_path / "m.pt"), "--format", "safetensors",
                 "--out", str(out)]) == 0
    assert f"wrote {out} (safetensors, 2 classes)" in capsys.readouterr().out
    assert load_model(out).cfg == model.cfg
    assert main(["export", "--weights", str(tmp_path / "m.pt"), "--format", "safetensors",
                 "--out", str(tmp_path / "m.pt2")]) == 1
