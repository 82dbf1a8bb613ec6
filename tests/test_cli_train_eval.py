"""The `maskrcnn` command: shapes, train, eval, demo wiring; --help; one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn.cli import main
from maskrcnn.data.images import load_image
from maskrcnn.data.shapes import write_shapes_dataset
from maskrcnn.engine.train_config import RunConfig, TrainConfig
from maskrcnn.io.weights import load_model, save_model
from maskrcnn.modeling import build_model
from tests.conftest import tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# The small preset shrunk to 64 px images: an iteration takes a fraction of a second.
TINY = [
    "input.min_size_train=[64]", "input.min_size_test=64", "input.max_size=96",
    "anchors.sizes=[16,32,64,128,256]", "rpn.pre_nms_top_n_train=200",
    "rpn.post_nms_top_n_train=100", "rpn.pre_nms_top_n_test=100", "rpn.post_nms_top_n_test=50",
    "roi_heads.batch_size_per_image=64", "roi_heads.detections_per_image=20",
    "backbone.fpn_channels=64", "roi_heads.representation_size=256",
    "roi_heads.mask_head_channels=64", "num_workers=0", "warmup_iters=2", "log_period=1",
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=6, num_val=3,
                                image_size=64, seed=5)


def _data_args(shapes, val=True):
    args = ["--train-json", shapes["train_json"], "--train-images", shapes["images_dir"]]
    if val:
        args += ["--val-json", shapes["val_json"], "--val-images", shapes["images_dir"]]
    return args


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """A 4-iteration run with validation, through the command line."""
    out = tmp_path_factory.mktemp("run") / "run"
    status = main(["train", *_data_args(shapes), "--out", str(out), "--iters", "4",
                   "--set", *TINY, "checkpoint_period=2"])
    assert status == 0
    return out


def _one_line_error(capsys, status):
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 1 and err[0].startswith("maskrcnn: error: "), err
    return err[0]


def test_shapes_command(tmp_path, capsys):
    status = main(["shapes", "--out", str(tmp_path), "--train", "3", "--val", "2",
                   "--size", "48", "--seed", "2"])
    assert status == 0
    for split, count in (("train", 3), ("val", 2)):
        data = json.loads((tmp_path / f"{split}.json").read_text())
        assert len(data["images"]) == count
        for image in data["images"]:
            assert (tmp_path / "images" / image["file_name"]).is_file()
            assert image["width"] == image["height"] == 48
    assert "train.json: 3 images" in capsys.readouterr().out


def test_train_writes_the_run(trained, shapes):
    assert (trained / "config.yaml").is_file()
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["iter"] for r in train_records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train_records)
    val = [r for r in records if r["kind"] == "val"]
    assert [r["iter"] for r in val] == [4] and "segm/AP" in val[0] and "val_loss" in val[0]
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == [
        "ckpt_0000002.pt", "ckpt_0000004.pt"]
    for name in ("metrics.json", "predictions.json", "pr_bbox.png", "pr_segm.png"):
        assert (trained / "eval" / name).is_file()
    model = load_model(trained / "model_final.pt")  # the dataset's classes are in the model
    categories = json.loads(open(shapes["train_json"]).read())["categories"]
    assert model.cfg.roi_heads.num_classes == len(categories) + 1
    assert list(model.cfg.class_names) == ["background", *(c["name"] for c in categories)]
    assert list(model.cfg.category_ids) == [0, *(c["id"] for c in categories)]
    assert model.cfg.input.min_size_test == 64 and model.cfg.backbone.pretrained is None


def test_predict_uses_the_trained_weights(trained, shapes, tmp_path):
    out = tmp_path / "pred"
    status = main(["predict", shapes["images_dir"] + "/val_00000.png", "--weights",
                   str(trained / "model_final.pt"), "--out", str(out), "--score-thresh", "0"])
    assert status == 0
    results = json.loads((out / "predictions.json").read_text())
    assert {r["category_id"] for r in results} <= {1, 2, 3, 4}


def test_eval_command_matches_pycocotools(trained, shapes, tmp_path, capsys):
    out = tmp_path / "eval"
    status = main(["eval", "--weights", str(trained / "model_final.pt"), "--json",
                   shapes["val_json"], "--images", shapes["images_dir"], "--out", str(out),
                   "--score-thresh", "0.0"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "| segm " in printed and "per-class AP" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    results = json.loads((out / "predictions.json").read_text())
    assert results and {r["image_id"] for r in results} <= {1, 2, 3}
    assert (out / "pr_bbox.png").is_file() and (out / "pr_segm.png").is_file()
    model = load_model(trained / "model_final.pt")  # the results are this model's, per image
    model.cfg.roi_heads.score_thresh = 0.0
    image_ids = {im["file_name"]: im["id"] for im in json.loads(open(shapes["val_json"]).read())
                 ["images"]}
    for name, image_id in image_ids.items():
        dets = model.predict([load_image(f"{shapes['images_dir']}/{name}")])[0]
        mine = [r for r in results if r["image_id"] == image_id]
        assert len(mine) == len(dets)
        expected = [model.cfg.category_ids[label] for label in dets.labels.tolist()]
        assert sorted(r["category_id"] for r in mine) == sorted(expected)
        np.testing.assert_allclose(sorted(r["score"] for r in mine), sorted(dets.scores.tolist()),
                                   rtol=1e-5)
    for iou_type in ("bbox", "segm"):
        stats = _pycocotools_stats(shapes["val_json"], results, iou_type, max_dets=20)
        ours = metrics[iou_type]
        np.testing.assert_allclose([ours["AP"], ours["AP50"], ours["AP75"]], stats[:3])


def _pycocotools_stats(gt_json, results, iou_type, max_dets):
    """COCOeval run directly (maxDets [1, 10, max_dets]); stats at max_dets."""
    gt = COCO(gt_json)
    dt = gt.loadRes([dict(r) for r in results])
    coco_eval = COCOeval(gt, dt, iouType=iou_type)
    coco_eval.params.maxDets = [1, 10, max_dets]
    coco_eval.evaluate()
    coco_eval.accumulate()
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]  # [T, R, K], area all
    mean = lambda p: float(np.mean(p[p > -1]))  # noqa: E731
    return [mean(precision), mean(precision[0]), mean(precision[5])]


def test_eval_precomputed_predictions(shapes, tmp_path):
    gt = json.loads(open(shapes["val_json"]).read())
    rng = np.random.default_rng(0)
    results = []
    for ann in gt["annotations"]:  # ground truth, jittered, with random scores
        x, y, w, h = ann["bbox"]
        box = [x + rng.uniform(-3, 3), y + rng.uniform(-3, 3), w, h]
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": box, "score": float(rng.uniform(0.1, 1))})
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    out = tmp_path / "eval"
    assert main(["eval", "--predictions", str(path), "--json", shapes["val_json"],
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    stats = _pycocotools_stats(shapes["val_json"], results, "bbox", max_dets=100)
    np.testing.assert_allclose([metrics["bbox"][k] for k in ("AP", "AP50", "AP75")], stats)
    assert 0.2 < metrics["bbox"]["AP"] < 1.0 and "segm" not in metrics


@pytest.mark.parametrize("command", ["shapes", "train", "eval", "predict", "demo"])
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"maskrcnn {command}" in out


def test_train_bad_inputs_are_one_line(shapes, tmp_path, capsys):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    not_coco = tmp_path / "list.json"
    not_coco.write_text(json.dumps({"images": []}))
    base = ["train", "--out", str(tmp_path / "run"), "--iters", "1"]
    images = ["--train-images", shapes["images_dir"]]
    cases = [
        (["--train-json", str(tmp_path / "missing.json"), *images], "missing.json"),
        (["--train-json", str(bad_json), *images], "not valid JSON"),
        (["--train-json", str(not_coco), *images], "categories"),
        ([*_data_args(shapes, val=False), "--set", "nonsense.key=1"], "nonsense.key"),
        ([*_data_args(shapes, val=False), "--set", "backbone.depth=abc"], "backbone.depth"),
        ([*_data_args(shapes, val=False), "--set", "lr"], "key=value"),
        ([*_data_args(shapes, val=False), "--preset", "huge"], "huge"),
        ([*_data_args(shapes, val=False), "--config", str(tmp_path / "no.yaml")], "no.yaml"),
        ([*_data_args(shapes, val=False), "--val-json", shapes["val_json"]], "--val-images"),
        (["--train-json", shapes["train_json"], "--train-images", str(tmp_path / "nope")],
         "nope"),
    ]
    for extra, expected in cases:
        line = _one_line_error(capsys, main(base + extra))
        assert expected in line, (extra, line)
    no_length = ["train", "--out", str(tmp_path / "run"), *_data_args(shapes, val=False)]
    assert "--iters" in _one_line_error(capsys, main(no_length))


def test_train_refuses_to_overwrite_a_run(trained, shapes, capsys):
    status = main(["train", *_data_args(shapes), "--out", str(trained), "--iters", "1"])
    assert "--resume" in _one_line_error(capsys, status)


def test_eval_bad_inputs_are_one_line(shapes, tmp_path, capsys):
    weights = tmp_path / "w.pt"
    torch.manual_seed(0)
    save_model(build_model(tiny_config(5)), weights)
    bad_results = tmp_path / "r.json"
    bad_results.write_text(json.dumps({"oops": 1}))
    json_arg = ["--json", shapes["val_json"]]
    cases = [
        (["--weights", str(tmp_path / "none.pt"), "--images", shapes["images_dir"], *json_arg],
         "none.pt"),
        (["--weights", str(weights), "--images", shapes["images_dir"], "--json",
          str(tmp_path / "gt.json")], "gt.json"),
        (["--predictions", str(bad_results), *json_arg], "r.json"),
        (["--predictions", str(tmp_path / "absent.json"), *json_arg], "absent.json"),
        ([*json_arg], "--weights"),
    ]
    for extra, expected in cases:
        line = _one_line_error(capsys, main(["eval", "--out", str(tmp_path / "o"), *extra]))
        assert expected in line, (extra, line)


def test_config_file_and_overrides(tmp_path):
    from maskrcnn.engine.train_config import (
        apply_overrides,
        load_run_config,
        save_run_config,
    )

    path = tmp_path / "run.yaml"
    path.write_text("preset: small\nmodel:\n  rpn: {nms_thresh: 0.6}\ntrain:\n  lr: 0.005\n")
    run = load_run_config(path)
    assert run.model.rpn.nms_thresh == 0.6 and run.model.backbone.depth == 18
    assert run.train.lr == 0.005 and run.train.momentum == TrainConfig().momentum
    apply_overrides(run, ["lr=0.1", "train.batch_size=3", "backbone.depth=34",
                          "model.input.min_size_train=[200, 224]", "steps=[0.5]",
                          "backbone.pretrained=https://example.com/r34.pth"])
    assert (run.train.lr, run.train.batch_size, run.train.steps) == (0.1, 3, (0.5,))
    assert run.model.backbone.depth == 34 and run.model.input.min_size_train == (200, 224)
    assert run.model.backbone.pretrained == "https://example.com/r34.pth"
    save_run_config(run, tmp_path / "saved.yaml")
    again = load_run_config(tmp_path / "saved.yaml", base=RunConfig())
    assert again == run
    bare = tmp_path / "model.yaml"  # a ModelConfig file (config.save_yaml) is the model part
    bare.write_text("roi_heads: {num_classes: 7}\n")
    assert load_run_config(bare).model.roi_heads.num_classes == 7
    with pytest.raises(ValueError, match="optimizer"):
        apply_overrides(run, ["optimizer=adam"])


def test_demo_wiring(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes", "0.005", "--train", "4", "--val", "2",
                 "--size", "64", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "mask AP" in printed and str(out / "overlays") in printed
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(metrics) >= {"bbox", "segm"}
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == ["val_00000.png", "val_00001.png"]
    from PIL import Image

    assert Image.open(out / "overlays" / "val_00000.png").size == (384, 384)  # enlarged x6
    assert (out / "train" / "model_final.pt").is_file()
    assert len(list((out / "train" / "checkpoints").iterdir())) == 1  # only the final one


def test_demo_uses_bfloat16_only_where_native(monkeypatch, capsys):
    from maskrcnn.engine import demo

    assert demo.demo_run_config(64, 1.0, amp=False).train.amp is False
    assert demo.demo_run_config(64, 1.0, amp=True).train.amp is True
    for native in (False, True):
        monkeypatch.setattr(demo, "native_bfloat16", lambda device="auto", n=native: n)
        assert demo.demo_run_config(64, 1.0, device="cpu").train.amp is native
    assert isinstance(demo.native_bfloat16("cpu"), bool)


def test_train_flags_amp_and_the_settings_the_user_gave(tmp_path, monkeypatch):
    from maskrcnn import cli

    path = tmp_path / "run.yaml"
    path.write_text("model:\n  anchors: {sizes: [16, 32, 64, 128, 256]}\n")
    base = ["train", "--train-json", "t.json", "--train-images", "imgs", "--out",
            str(tmp_path / "run"), "--config", str(path), "--iters", "5"]
    args = cli.build_parser().parse_args([*base, "--amp", "on", "--set", "rpn.nms_thresh=0.6",
                                          "lr=0.1"])
    run = cli._run_config(args)
    assert run.train.amp is True and run.train.lr == 0.1
    assert set(run.train.user_model_keys) == {"rpn.nms_thresh", "anchors.sizes"}
    monkeypatch.setattr("maskrcnn.engine.demo.native_bfloat16", lambda device: False)
    assert cli._run_config(cli.build_parser().parse_args([*base, "--amp", "auto"])).train.amp \
        is False
    assert cli._run_config(cli.build_parser().parse_args(base)).train.amp is False
