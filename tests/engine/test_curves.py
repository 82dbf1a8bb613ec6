"""RUN/curves.png: drawn from metrics.jsonl by the trainer; a failure never stops a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from maskrcnn.engine import curves
from maskrcnn.engine.curves import CURVES_SIZE, CurvesWriter, plot_curves, write_curves
from tests.engine.test_trainer import _train, shapes  # noqa: F401  (shapes is a fixture)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _records(iters=20, val_every=10):
    records = []
    for i in range(1, iters + 1):
        records.append({"kind": "train", "iter": i, "epoch": 0, "lr": 0.02 * min(1, i / 5),
                        "loss": 3.0 / i, "loss_rpn_objectness": 0.5 / i, "loss_rpn_box": 0.1,
                        "loss_cls": 1.0 / i, "loss_box": 0.4, "loss_mask": 0.7 / i})
        if i % val_every == 0:
            records.append({"kind": "val", "iter": i, "bbox/AP": 0.01 * i, "bbox/AP50": 0.02 * i,
                            "segm/AP": 0.008 * i, "segm/AP50": -1.0, "val_loss": 2.0 / i})
    return records


def _png(path):
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def test_write_curves_from_metrics(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in _records()) + '{"kind": "tr')  # a torn line
    path = write_curves(tmp_path)
    assert path == tmp_path / "curves.png"
    pixels = _png(path)
    assert pixels.shape == (CURVES_SIZE[1], CURVES_SIZE[0], 3)
    assert (pixels.std(axis=2) > 40).sum() > 2000  # coloured lines in the panels
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp


def test_panels_and_missing_values():
    fig = plot_curves(_records())
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["total loss", "loss parts (training)", "learning rate",
                      "validation AP (%)"]
    parts = fig.axes[1].get_legend_handles_labels()[1]
    assert parts == ["RPN objectness", "RPN box", "classifier", "box regression", "mask"]
    ap = fig.axes[3].get_legend_handles_labels()[1]
    assert ap == ["box AP", "box AP50", "mask AP"]  # segm AP50 is -1 (undefined): not drawn
    no_val = plot_curves([r for r in _records() if r["kind"] == "train"])
    assert no_val.axes[3].get_legend_handles_labels()[1] == []
    assert [t.get_text() for t in no_val.axes[3].texts] == ["no validation yet"]


def test_no_records_no_file(tmp_path):
    assert write_curves(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text("")
    assert write_curves(tmp_path) is None and not (tmp_path / "curves.png").exists()


def test_a_failure_is_one_warning(tmp_path, capsys, monkeypatch):
    def broken(run_dir):
        raise RuntimeError("no renderer\nsecond line")

    monkeypatch.setattr(curves, "write_curves", broken)
    writer = CurvesWriter(tmp_path)
    assert writer.write() is None and writer.write() is None
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("maskrcnn: warning: cannot draw ")
    assert "RuntimeError: no renderer" in err[0]
    assert CurvesWriter(tmp_path, enabled=False).write() is None


def test_training_writes_curves(shapes, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    assert _train(shapes, out, "--iters", "4", "--val-json", shapes["val_json"],
                  "--val-images", shapes["images_dir"],
                  sets=["eval_period=2", "checkpoint_period=100"]) == 0
    pixels = _png(out / "curves.png")
    assert pixels.shape == (CURVES_SIZE[1], CURVES_SIZE[0], 3)
    assert (pixels.std(axis=2) > 40).sum() > 1000
    fig = plot_curves([json.loads(line) for line in
                       (out / "metrics.jsonl").read_text().splitlines()])
    assert "box AP" in fig.axes[3].get_legend_handles_labels()[1]


def test_a_plotting_failure_does_not_stop_training(shapes, tmp_path, capsys,  # noqa: F811
                                                   monkeypatch):
    def broken(run_dir):
        raise OSError("disk full")

    monkeypatch.setattr(curves, "write_curves", broken)
    out = tmp_path / "run"
    assert _train(shapes, out, "--iters", "2", sets=["checkpoint_period=100"]) == 0
    assert (out / "model_final.pt").is_file() and not (out / "curves.png").exists()
    err = capsys.readouterr().err
    assert err.count("cannot draw") == 1 and "OSError: disk full" in err
