import json

import numpy as np
import torch
from PIL import Image

from maskrcnn.cli import main
from maskrcnn.io.weights import save_model
from maskrcnn.modeling import build_model
from tests.conftest import tiny_config


def _write_checkpoint(path):
    torch.manual_seed(0)
    cfg = tiny_config(num_classes=3)
    cfg.class_names = ("background", "disc", "square")
    cfg.category_ids = (0, 7, 9)
    save_model(build_model(cfg), path)


def test_predict_writes_results_and_overlays(tmp_path, capsys):
    weights = tmp_path / "model.pt"
    _write_checkpoint(weights)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (70, 60), dtype=np.uint8)).save(folder / "b.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"

    status = main(["predict", str(folder), "--weights", str(weights), "--out", str(out)])

    assert status == 1  # one image failed ...
    err = capsys.readouterr().err
    assert "broken.png" in err
    results = json.loads((out / "predictions.json").read_text())  # ... the others did not
    assert {r["file_name"] for r in results} == {str(folder / "a.png"), str(folder / "b.jpg")}
    for r in results:
        assert r["category_id"] in (7, 9)
        assert len(r["bbox"]) == 4 and 0.05 < r["score"] <= 1
        assert set(r["segmentation"]) == {"size", "counts"}
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == ["00001_a.png", "00002_b.png"]
    assert Image.open(out / "overlays" / "00001_a.png").size == (120, 90)


def test_predict_unknown_weights_is_one_line(tmp_path, capsys):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\x00" * 100)
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    status = main(["predict", str(image), "--weights", str(weights)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 1 and "weights.bin" in err[0]
