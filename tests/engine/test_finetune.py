"""Fine-tuning (--init-weights): a torchvision-format COCO file trained on a 3-class set."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from maskrcnn.cli import main
from maskrcnn.config import preset
from maskrcnn.data.shapes import write_shapes_dataset
from maskrcnn.engine.init_weights import (
    CLASS_DEPENDENT,
    InitWeightsError,
    init_from_file,
    run_config_from_weights,
)
from maskrcnn.io.torchvision_weights import convert_torchvision_state_dict
from maskrcnn.io.weights import load_model
from maskrcnn.modeling import build_model

SMALL_INPUT = ["input.min_size_train=[64]", "input.min_size_test=64", "input.max_size=64",
               "rpn.post_nms_top_n_train=300", "roi_heads.batch_size_per_image=64"]


@pytest.fixture(scope="module")
def coco_file(tmp_path_factory):
    """torchvision's maskrcnn_resnet50_fpn state_dict with random weights, 91 classes."""
    torch.manual_seed(0)
    tv_model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path_factory.mktemp("weights") / "maskrcnn_coco_random.pth"
    torch.save(tv_model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """The shapes set without its stars: 3 classes."""
    info = write_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=6, num_val=2,
                                image_size=64, seed=5)
    for split in ("train", "val"):
        data = json.loads(open(info[f"{split}_json"]).read())
        star = next(c["id"] for c in data["categories"] if c["name"] == "star")
        data["categories"] = [c for c in data["categories"] if c["id"] != star]
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] != star]
        with open(info[f"{split}_json"], "w") as f:
            json.dump(data, f)
    return info


def test_load_fitting_resets_exactly_the_class_layers(coco_file):
    file_state = convert_torchvision_state_dict(torch.load(coco_file, weights_only=True))
    cfg = preset("torchvision_r50_fpn")
    cfg.roi_heads.num_classes = 4
    torch.manual_seed(3)
    fresh = build_model(cfg).state_dict()
    torch.manual_seed(3)
    model = build_model(cfg)
    report = init_from_file(model, str(coco_file))
    own = model.state_dict()
    assert report.origin == "torchvision" and report.file_classes == 91
    assert sorted({k.rsplit(".", 1)[0] for k in report.reinitialised}) == [
        "roi_heads.box_head.bbox_pred", "roi_heads.box_head.cls_score",
        "roi_heads.mask_head.predictor"]
    assert report.left_out == [] and report.not_in_file == []
    for key, value in own.items():
        if key.startswith(CLASS_DEPENDENT):
            assert torch.equal(value, fresh[key]), key  # the new model's own init
        else:
            assert torch.equal(value, file_state[key]), key
    assert "re-initialised for 4 classes" in "\n".join(report.lines())


def test_a_file_of_another_architecture_is_refused(coco_file):
    model = build_model(preset("small"))
    with pytest.raises(InitWeightsError, match="maskrcnn_coco_random.pth: only"):
        init_from_file(model, str(coco_file))


def test_run_config_takes_the_files_settings(coco_file):
    run = run_config_from_weights(coco_file)
    assert run.model.backbone.depth == 50 and run.model.roi_heads.num_classes == 91
    assert run.train.init_weights == str(coco_file)


def test_finetune_a_coco_file_on_three_classes(coco_file, three_classes, tmp_path, capsys):
    out = tmp_path / "run"
    data = ["--train-json", three_classes["train_json"], "--train-images",
            three_classes["images_dir"]]
    status = main(["train", *data, "--out", str(out), "--init-weights", str(coco_file),
                   "--freeze", "2", "--iters", "8", "--batch-size", "2", "--lr", "0.002",
                   "--workers", "0", "--set", *SMALL_INPUT, "schedule=constant",
                   "log_period=1", "warmup_iters=0", "clip_grad_norm=5"])
    assert status == 0
    err = capsys.readouterr()
    text = err.out + err.err
    assert f"init weights: {coco_file} (torchvision, 91 classes)" in text
    assert "re-initialised for 4 classes: roi_heads.box_head.cls_score, " in text
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 8 and sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses

    model = load_model(out / "model_final.pt")
    assert model.class_names == ("background", "circle", "square", "triangle")
    assert model.cfg.backbone.depth == 50 and model.cfg.backbone.trainable_layers == 3
    file_state = convert_torchvision_state_dict(torch.load(coco_file, weights_only=True))
    frozen = model.state_dict()["backbone.body.layer1.0.conv1.weight"]
    assert torch.equal(frozen, file_state["backbone.body.layer1.0.conv1.weight"])
    trained = model.state_dict()["backbone.body.layer2.0.conv1.weight"]
    assert not torch.equal(trained, file_state["backbone.body.layer2.0.conv1.weight"])

    assert main(["eval", "--weights", str(out / "model_final.pt"), "--json",
                 three_classes["val_json"], "--images", three_classes["images_dir"],
                 "--out", str(tmp_path / "eval"), "--workers", "0"]) == 0
    assert main(["predict", "--weights", str(out / "model_final.pt"), "--out",
                 str(tmp_path / "pred"), "--score-thresh", "0.0",
                 three_classes["images_dir"]]) == 0
    predictions = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    dataset_ids = {c["id"] for c in json.loads(open(three_classes["val_json"]).read())[
        "categories"]}
    assert predictions and {p["category_id"] for p in predictions} <= dataset_ids


def test_init_weights_errors_are_one_line(three_classes, tmp_path, capsys):
    data = ["--train-json", three_classes["train_json"], "--train-images",
            three_classes["images_dir"]]
    status = main(["train", *data, "--out", str(tmp_path / "run"), "--init-weights",
                   str(tmp_path / "missing.pth"), "--iters", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and "missing.pth: no such weight file" in err[0], err
    assert not (tmp_path / "run").exists()
