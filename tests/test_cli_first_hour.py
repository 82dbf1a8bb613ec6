"""What a new user hits first (issue 11): training sets with nothing to learn from and
evaluations whose categories do not meet stop with a message that says why."""

from __future__ import annotations

import json

import pytest

from maskrcnn.cli import main
from maskrcnn.data.shapes import write_shapes_dataset
from maskrcnn.io.weights import save_model
from maskrcnn.modeling import build_model
from tests.conftest import tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=3, num_val=2,
                                image_size=64, seed=1)


def _rewrite(shapes, tmp_path, change):
    data = json.loads(open(shapes["train_json"]).read())
    change(data)
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    return str(path)


def _train(json_path, shapes, tmp_path):
    return main(["train", "--train-json", json_path, "--train-images", shapes["images_dir"],
                 "--out", str(tmp_path / "run"), "--iters", "1"])


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("maskrcnn: error")]
    assert len(lines) == 1, lines
    return lines[0]


def test_misspelled_annotations_key(shapes, tmp_path, capsys, caplog):
    def misspell(data):
        data["annotation"] = data.pop("annotations")

    status = _train(_rewrite(shapes, tmp_path, misspell), shapes, tmp_path)
    assert status == 1
    assert "no usable annotation" in _error(capsys)
    assert "'annotation'" in caplog.text and "no 'annotations' key" in caplog.text
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_every_annotation_skipped(shapes, tmp_path, capsys):
    def drop_masks(data):
        for ann in data["annotations"]:
            del ann["segmentation"]

    status = _train(_rewrite(shapes, tmp_path, drop_masks), shapes, tmp_path)
    assert status == 1
    line = _error(capsys)
    assert "no usable annotation" in line and "skipped" in line


def test_eval_stops_when_categories_do_not_meet(shapes, tmp_path, capsys):
    cfg = tiny_config(num_classes=3)
    cfg.class_names = ("background", "cat", "dog")
    cfg.category_ids = (0, 17, 18)
    weights = tmp_path / "model.pt"
    save_model(build_model(cfg), weights)
    status = main(["eval", "--weights", str(weights), "--json", shapes["val_json"],
                   "--images", shapes["images_dir"], "--out", str(tmp_path / "eval")])
    assert status == 1
    line = _error(capsys)
    assert "17 cat" in line and "18 dog" in line and "1 circle" in line


def test_pretrained_whole_model_is_one_line_and_leaves_nothing(shapes, tmp_path, capsys):
    weights = tmp_path / "whole.pt"
    save_model(build_model(tiny_config()), weights)
    out = tmp_path / "run"
    status = main(["train", "--train-json", shapes["train_json"], "--train-images",
                   shapes["images_dir"], "--out", str(out), "--iters", "1",
                   "--set", f"backbone.pretrained={weights}"])
    assert status == 1
    line = _error(capsys)
    assert "whole.pt" in line and "whole Mask R-CNN" in line
    assert not out.exists()
