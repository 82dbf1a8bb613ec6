"""Inference precision (fp32 / bf16) in the API and the commands: bf16 detections close to
fp32's, unknown precisions and missing hardware handled, the precision recorded."""

from __future__ import annotations

import json

import pytest
import torch

import maskrcnn
from maskrcnn.cli import main
from maskrcnn.data.shapes import CATEGORIES, write_shapes_dataset
from maskrcnn.engine import precision as precision_module
from maskrcnn.engine.precision import check_precision, predict_in, set_precision
from maskrcnn.io.weights import save_model
from maskrcnn.modeling import build_model
from maskrcnn.ops import box_iou
from maskrcnn.testing import smooth_random_images, spread_scores
from tests.conftest import tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _model(num_classes: int = 3):
    torch.manual_seed(0)
    cfg = tiny_config(num_classes)
    cfg.roi_heads.score_thresh = 0.05
    return spread_scores(build_model(cfg).eval())


@pytest.fixture
def bf16_hardware(monkeypatch):
    """bf16 counts as available, so that the tests run the same on every CPU (autocast
    emulates bfloat16 where the hardware lacks it: slower, same numbers)."""
    monkeypatch.setattr(precision_module, "bf16_supported", lambda device="cpu": True)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("precision") / "model.pt"
    model = _model(len(CATEGORIES) + 1)
    model.cfg.class_names = ("background", *CATEGORIES)
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=1, num_val=3,
                                image_size=96, seed=3)


def _assert_close_detections(want, got):
    """bf16 vs fp32 on a tiny random model (measured: the top detections' boxes within
    0.1 px, scores within 0.006, 93-97 % of all 100 with the same label at IoU > 0.99):
    all but one of the ten best fp32 detections have a bf16 twin of the same label at IoU >
    0.9, boxes within 1 px, scores within 0.02; and most of all detections match."""
    assert len(want) > 10 and len(got) > 0
    iou = box_iou(want.boxes, got.boxes)
    same_label = want.labels[:, None] == got.labels[None, :]
    best, index = (iou * same_label).max(1)
    matched = best > 0.9
    assert matched.float().mean() >= 0.8, matched.float().mean()
    top = want.scores >= want.scores[min(9, len(want) - 1)]  # the ten best
    # near-ties of overlapping boxes may resolve the other way in NMS (seen: one of the
    # ten best at IoU 0.76 with its twin); the rest must agree closely
    assert (best[top] > 0.5).all() and matched[top].sum() >= top.sum() - 1, best[top]
    close = top & matched
    assert (want.boxes[close] - got.boxes[index[close]]).abs().max() <= 1.0
    assert (want.scores[close] - got.scores[index[close]]).abs().max() <= 0.02


@pytest.mark.parametrize("optimized", [False, True])
def test_bf16_is_close_to_fp32(optimized):
    model = _model()
    if optimized:
        model.optimize_for_inference()
    images = smooth_random_images([(120, 150), (96, 130)])
    fp32 = predict_in(model, "fp32", images)
    bf16 = predict_in(model, "bf16", images)
    for want, got in zip(fp32, bf16):
        assert got.boxes.dtype == got.scores.dtype == torch.float32
        assert got.masks.dtype == torch.bool and got.masks.shape[1:] == want.masks.shape[1:]
        _assert_close_detections(want, got)
    # bfloat16 did run: the scores are not float32's
    assert not torch.equal(fp32[0].scores, bf16[0].scores)


def test_api_precision(weights, bf16_hardware):
    images = smooth_random_images([(100, 120)])
    plain = maskrcnn.load_model(weights)
    assert plain.precision == "fp32"
    want = maskrcnn.predict(plain, images)
    exact = build_model(plain.cfg).eval()
    exact.load_state_dict(plain.state_dict())
    assert torch.equal(want[0].boxes, exact.predict(images)[0].boxes)  # fp32 unchanged

    model = maskrcnn.load_model(weights, precision="bf16")
    assert model.precision == "bf16" and isinstance(model, maskrcnn.MaskRCNN)
    got = maskrcnn.predict(model, images)
    _assert_close_detections(want[0], got[0])
    assert torch.equal(got[0].scores, model.predict(images)[0].scores)  # predict is bf16
    assert torch.equal(got[0].scores, model(images)[0].scores)
    assert not torch.equal(got[0].scores, want[0].scores)
    # a call's precision: this call only
    again = maskrcnn.predict(model, images, precision="fp32")
    assert torch.equal(again[0].scores, want[0].scores)
    assert model.precision == "bf16"
    assert torch.equal(maskrcnn.predict(plain, images, precision="bf16")[0].scores,
                       got[0].scores)
    # set back to fp32: the class's predict again
    set_precision(model, "fp32")
    assert "predict" not in vars(model)
    assert torch.equal(model.predict(images)[0].scores, want[0].scores)


def test_unknown_precision_is_a_clear_error(weights, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown precision 'fp16'; choose one of fp32, bf16"):
        check_precision("fp16")
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        maskrcnn.load_model(weights, precision="int8")
    model = maskrcnn.load_model(weights)
    with pytest.raises(ValueError, match="unknown precision 'bfloat16'"):
        maskrcnn.predict(model, smooth_random_images([(64, 64)]), precision="bfloat16")
    with pytest.raises(ValueError, match="unknown precision"):
        maskrcnn.export(model, tmp_path / "m.xml", "openvino", precision="half")
    for command in (["predict", "x.png", "--weights", str(weights)],
                    ["eval", "--weights", str(weights), "--json", "j", "--images", "i"],
                    ["export", "--weights", str(weights), "--out", "m.xml"]):
        with pytest.raises(SystemExit) as stop:
            main([*command, "--precision", "fp16"])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "invalid choice: 'fp16'" in err and "Traceback" not in err


def test_bf16_unavailable_warns_and_runs_fp32(weights, monkeypatch, capsys):
    monkeypatch.setattr(precision_module, "bf16_supported", lambda device="cpu": False)
    images = smooth_random_images([(100, 120)])
    want = maskrcnn.predict(maskrcnn.load_model(weights), images)
    capsys.readouterr()
    model = maskrcnn.load_model(weights, precision="bf16")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskrcnn: warning: ")
    assert "no bfloat16" in err[0] and err[0].endswith("running in fp32")
    assert model.precision == "fp32"
    assert torch.equal(maskrcnn.predict(model, images)[0].scores, want[0].scores)


def test_predict_command_precision(weights, shapes, tmp_path, capsys, bf16_hardware):
    image = f"{shapes['images_dir']}/" + json.loads(
        open(shapes["val_json"]).read())["images"][0]["file_name"]
    results = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert main(["predict", image, "--weights", str(weights), "--out", str(out),
                     "--precision", precision]) == 0
        assert f"({precision})" in capsys.readouterr().out
        results[precision] = json.loads((out / "predictions.json").read_text())
    assert main(["predict", image, "--weights", str(weights), "--out",
                 str(tmp_path / "default")]) == 0
    assert "(fp32)" in capsys.readouterr().out
    assert json.loads((tmp_path / "default" / "predictions.json").read_text()) \
        == results["fp32"]
    want, got = results["fp32"], results["bf16"]
    assert len(want) > 10 and want != got
    best = [max(got, key=lambda g, w=w: _iou_xywh(w["bbox"], g["bbox"])) for w in want[:5]]
    assert all(_iou_xywh(w["bbox"], g["bbox"]) > 0.9 and w["category_id"] == g["category_id"]
               for w, g in zip(want[:5], best))


def _iou_xywh(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter = max(0.0, min(ax2, bx2) - max(a[0], b[0])) * max(0.0, min(ay2, by2) - max(a[1], b[1]))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_eval_records_the_precision(weights, shapes, tmp_path, capsys, monkeypatch,
                                    bf16_hardware):
    common = ["--json", shapes["val_json"], "--images", shapes["images_dir"]]
    metrics = {}
    for precision in ("bf16", None):
        out = tmp_path / str(precision)
        flags = ["--precision", precision] if precision else []
        assert main(["eval", "--weights", str(weights), "--out", str(out), *common,
                     *flags]) == 0
        metrics[precision] = json.loads((out / "metrics.json").read_text())
        assert "bbox" in metrics[precision] and "segm" in metrics[precision]
    assert metrics["bf16"]["precision"] == "bf16"
    assert metrics[None]["precision"] == "fp32"
    assert "s (bf16)" in capsys.readouterr().out
    # where the hardware lacks it, the file says what ran
    monkeypatch.setattr(precision_module, "bf16_supported", lambda device="cpu": False)
    assert main(["eval", "--weights", str(weights), "--out", str(tmp_path / "fallback"),
                 *common, "--precision", "bf16"]) == 0
    fallback = json.loads((tmp_path / "fallback" / "metrics.json").read_text())
    assert fallback["precision"] == "fp32" and fallback["bbox"] == metrics[None]["bbox"]
    capsys.readouterr()
    # precomputed results: no model, no precision
    assert main(["eval", "--predictions", str(tmp_path / "None" / "predictions.json"),
                 "--json", shapes["val_json"], "--out", str(tmp_path / "json"),
                 "--precision", "bf16"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["maskrcnn: error: --precision applies to --weights, not to --predictions"]


def test_export_refuses_bf16_where_it_means_nothing(weights, tmp_path, capsys):
    for fmt, name in (("onnx", "m.onnx"), ("safetensors", "m.safetensors")):
        status = main(["export", "--weights", str(weights), "--format", fmt,
                       "--out", str(tmp_path / name), "--precision", "bf16"])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 1 and len(err) == 1 and err[0].startswith("maskrcnn: error: "), err
        assert "bf16" in err[0] and not (tmp_path / name).exists()
    with pytest.raises(maskrcnn.deploy.metadata.ExportError, match="format='openvino'"):
        maskrcnn.export(maskrcnn.load_model(weights), tmp_path / "m.onnx", "onnx",
                        precision="bf16")
    assert not (tmp_path / "m.onnx").exists()
