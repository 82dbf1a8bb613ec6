"""Settings fitted to the training set: anchors and detections per image."""

from __future__ import annotations

import numpy as np
import yaml

from maskrcnn.cli import main
from maskrcnn.config import preset
from maskrcnn.data.shapes import write_shapes_dataset
from maskrcnn.engine.data_fit import anchor_coverage, fit_to_data


def _boxes(rng, count, low, high, image=256):
    size = rng.uniform(low, high, (count, 2))
    xy = rng.uniform(0, image - high, (count, 2))
    return np.concatenate([xy, xy + size], 1).astype(np.float32)


def test_anchor_coverage_follows_object_size():
    small, large = np.array([[10.0, 10.0]]), np.array([[40.0, 40.0]])
    assert anchor_coverage(small, 32, (0.5, 1.0, 2.0)) == 0.0
    assert anchor_coverage(small, 8, (0.5, 1.0, 2.0)) == 1.0
    assert anchor_coverage(large, 32, (0.5, 1.0, 2.0)) == 1.0


def test_small_dense_objects_get_small_anchors_and_more_detections():
    rng = np.random.default_rng(0)
    cfg = preset("small")
    cfg.input.min_size_train, cfg.input.max_size = (256,), 256  # scale 1
    boxes = [_boxes(rng, 150, 6, 12) for _ in range(4)]
    fit = fit_to_data(cfg, boxes, [(256, 256)] * 4)
    assert cfg.anchors.sizes[0] in (8, 12) and len(cfg.anchors.sizes) == 5
    assert cfg.roi_heads.detections_per_image == 200  # 150 * 1.25 rounded up to 50
    assert cfg.rpn.post_nms_top_n_test >= 600 and cfg.rpn.pre_nms_top_n_test >= 600
    assert "anchors.sizes" in fit.changes and fit.max_per_image == 150
    assert "anchors from" in "\n".join(fit.lines())


def test_fitting_objects_change_nothing_and_user_settings_are_kept():
    rng = np.random.default_rng(1)
    cfg = preset("small")
    fit = fit_to_data(cfg, [_boxes(rng, 5, 40, 120)], [(256, 256)])
    assert fit.changes == {} and cfg == preset("small")
    assert "nothing changed" in fit.lines()[0]
    small = [_boxes(rng, 150, 6, 12)]
    fit = fit_to_data(cfg, small, [(256, 256)], user_keys=["anchors.sizes"])
    assert cfg.anchors.sizes == preset("small").anchors.sizes and fit.kept == ["anchors.sizes"]
    cfg = preset("small")
    fit_to_data(cfg, small, [(256, 256)], anchors=False)  # fine-tuning keeps its anchors
    assert cfg.anchors.sizes == preset("small").anchors.sizes
    assert cfg.roi_heads.detections_per_image == 200


def test_train_writes_the_fitted_config_and_respects_set(tmp_path, capsys):
    data = write_shapes_dataset(tmp_path / "dense", num_train=2, num_val=1, image_size=128,
                                seed=3, objects=(30, 40), shape_size=(0.06, 0.09))
    common = ["train", "--train-json", data["train_json"], "--train-images",
              data["images_dir"], "--iters", "1", "--workers", "0", "--set",
              "input.min_size_train=[128]", "input.max_size=128"]
    assert main([*common, "--out", str(tmp_path / "fit")]) == 0
    out = capsys.readouterr().out
    assert "data fit:" in out and "anchors.sizes [32,64,128,256,512] -> [8," in out
    saved = yaml.safe_load((tmp_path / "fit" / "config.yaml").read_text())["model"]
    assert saved["anchors"]["sizes"][:2] == [8, 16]

    assert main([*common, "anchors.sizes=[32,64,128,256,512]", "--out",
                 str(tmp_path / "mine")]) == 0
    out = capsys.readouterr().out
    assert "kept as you set them: anchors.sizes" in out
    saved = yaml.safe_load((tmp_path / "mine" / "config.yaml").read_text())["model"]
    assert saved["anchors"]["sizes"] == [32, 64, 128, 256, 512]
