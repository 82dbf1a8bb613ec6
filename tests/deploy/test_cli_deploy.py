"""`maskrcnn export`, and `predict` / `eval` on exported files; bad files and missing extras
give one line naming the file."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from maskrcnn.cli import main
from maskrcnn.data.shapes import CATEGORIES, write_shapes_dataset
from maskrcnn.io.weights import WeightsError, save_model

from .conftest import deploy_model

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=1, num_val=4,
                                image_size=96, seed=2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A shapes-class checkpoint exported by the command line in both formats."""
    folder = tmp_path_factory.mktemp("cli_export")
    model = deploy_model("small", ("background", *CATEGORIES), range(len(CATEGORIES) + 1))
    weights = folder / "model.pt"
    save_model(model, weights)
    for fmt, name in (("onnx", "model.onnx"), ("openvino", "model.xml")):
        assert main(["export", "--weights", str(weights), "--format", fmt,
                     "--out", str(folder / name)]) == 0
    return folder


def _one_line_error(capsys, status):
    err = capsys.readouterr().err.strip().splitlines()
    assert status != 0
    assert len(err) == 1 and err[0].startswith("maskrcnn: error: "), err
    return err[0]


def test_export_writes_the_files(exported, capsys):
    assert (exported / "model.onnx").stat().st_size > 1e6
    assert (exported / "model.xml").is_file() and (exported / "model.bin").is_file()
    proto = onnx.load(str(exported / "model.onnx"))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["maskrcnn.class_names"] == ["background", *CATEGORIES]
    assert meta["maskrcnn.score_threshold"] == 0.05


def _predictions(out):
    """COCO results per file: (boxes xyxy [N, 4], scores [N], category ids [N])."""
    per_file = {}
    for r in json.loads((out / "predictions.json").read_text()):
        x, y, w, h = r["bbox"]
        row = (x, y, x + w, y + h, r["score"], r["category_id"])
        per_file.setdefault(r.get("file_name", r["image_id"]), []).append(row)
    return {name: torch.tensor(rows, dtype=torch.float64) for name, rows in per_file.items()}


def _assert_same_results(want, got):
    from maskrcnn.ops.boxes import box_iou

    assert want.keys() == got.keys()
    for name in want:
        a, b = want[name], got[name]
        assert len(a) == len(b) > 0
        iou = box_iou(a[:, :4], b[:, :4]) * (a[:, None, 5] == b[None, :, 5])
        best, match = iou.max(dim=1)
        assert (best > 0.99).all() and len(set(match.tolist())) == len(a)
        torch.testing.assert_close(b[match, 4], a[:, 4], atol=1e-3, rtol=0)
        torch.testing.assert_close(b[match, :4], a[:, :4], atol=0.01, rtol=0)


@pytest.mark.parametrize("weights,backend", [("model.onnx", None), ("model.xml", None),
                                             ("model.onnx", "openvino")])
def test_predict_on_exported_models(exported, shapes, tmp_path, capsys, weights, backend):
    images = shapes["images_dir"]
    reference = tmp_path / "torch"
    assert main(["predict", images, "--weights", str(exported / "model.pt"),
                 "--out", str(reference), "--batch-size", "3"]) == 0
    out = tmp_path / "exported"
    args = ["predict", images, "--weights", str(exported / weights), "--out", str(out),
            "--batch-size", "3"]
    assert main(args + (["--backend", backend] if backend else [])) == 0
    _assert_same_results(_predictions(reference), _predictions(out))
    assert len(list((out / "overlays").iterdir())) == 5  # train and val images


@pytest.mark.parametrize("weights", ["model.onnx", "model.xml"])
def test_eval_on_exported_models(exported, shapes, tmp_path, weights):
    common = ["--json", shapes["val_json"], "--images", shapes["images_dir"], "--batch-size",
              "2"]
    assert main(["eval", "--weights", str(exported / "model.pt"), "--out",
                 str(tmp_path / "torch"), *common]) == 0
    assert main(["eval", "--weights", str(exported / weights), "--out",
                 str(tmp_path / "exported"), *common]) == 0
    want = json.loads((tmp_path / "torch" / "metrics.json").read_text())
    got = json.loads((tmp_path / "exported" / "metrics.json").read_text())
    for kind in ("bbox", "segm"):
        for key, value in want[kind].items():
            if isinstance(value, float) and value == value:  # not NaN
                assert abs(value - got[kind][key]) <= 0.003, (kind, key)
    # an untrained model's AP says little: the detections themselves agree
    _assert_same_results(_predictions(tmp_path / "torch"), _predictions(tmp_path / "exported"))


def test_unreadable_images_do_not_stop_a_batch(exported, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(rng.integers(0, 255, (50, 40), dtype=np.uint8)).save(folder / "c.png")
    out = tmp_path / "out"
    status = main(["predict", str(folder), "--weights", str(exported / "model.onnx"),
                   "--out", str(out), "--batch-size", "3"])
    assert status == 1
    assert "b.png" in capsys.readouterr().err
    names = {r["file_name"] for r in json.loads((out / "predictions.json").read_text())}
    assert names == {str(folder / "a.png"), str(folder / "c.png")}


def _image(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (48, 40)).save(path)
    return str(path)


def test_bad_exported_files_are_one_line(exported, tmp_path, capsys):
    data = (exported / "model.onnx").read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 3])
    foreign = tmp_path / "foreign.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    newer = tmp_path / "newer.onnx"
    proto = onnx.load(str(exported / "model.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "maskrcnn.format_version":
            prop.value = "99"
    onnx.save(proto, str(newer))
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes((exported / "model.xml").read_bytes())  # no .bin beside it
    broken_xml = tmp_path / "broken.xml"
    broken_xml.write_bytes((exported / "model.xml").read_bytes()[:2000])
    (tmp_path / "broken.bin").write_bytes((exported / "model.bin").read_bytes())
    cases = [(truncated, "not a readable ONNX model"), (foreign, "not a model exported"),
             (newer, "format version 99"), (lonely, "lonely.bin is missing"),
             (broken_xml, "not a readable OpenVINO")]
    for path, reason in cases:
        line = _one_line_error(capsys, main(["predict", _image(tmp_path), "--weights",
                                             str(path), "--out", str(tmp_path / "o")]))
        assert path.name in line and reason in line, line


def test_backend_mismatch_is_one_line(exported, tmp_path, capsys):
    image = _image(tmp_path)
    for weights, backend in (("model.onnx", "torch"), ("model.xml", "onnxruntime"),
                             ("model.pt", "openvino")):
        line = _one_line_error(capsys, main(["predict", image, "--weights",
                                             str(exported / weights), "--backend", backend]))
        assert weights in line


def test_wrong_channel_counts_are_refused(exported):
    from maskrcnn import load_model, predict

    model = load_model(exported / "model.onnx")
    with pytest.raises(ValueError, match="image array"):
        predict(model, [np.zeros((20, 20, 2), np.uint8)])
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        model.predict([torch.zeros(1, 20, 20)])


def test_missing_extra_says_which(exported, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    line = _one_line_error(capsys, main(["predict", _image(tmp_path), "--weights",
                                         str(exported / "model.onnx")]))
    assert "pip install 'maskrcnn[onnx]'" in line
    with pytest.raises(WeightsError, match=r"maskrcnn\[onnx\]"):
        from maskrcnn.deploy import load_exported

        load_exported(exported / "model.onnx")


def test_export_refuses_wrong_suffixes(exported, tmp_path, capsys):
    line = _one_line_error(capsys, main(["export", "--weights", str(exported / "model.pt"),
                                         "--format", "openvino",
                                         "--out", str(tmp_path / "m.onnx")]))
    assert "NAME.xml" in line
    line = _one_line_error(capsys, main(["export", "--weights", str(exported / "model.pt"),
                                         "--opset", "12", "--out", str(tmp_path / "m.onnx")]))
    assert "opset 12" in line
