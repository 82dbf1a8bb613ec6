"""The training loop: schedule, optimizer groups, learning, NaN stop, bad images, limits."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn

from maskrcnn.cli import main
from maskrcnn.data.shapes import write_shapes_dataset
from maskrcnn.engine.solver import build_optimizer, lr_factor
from maskrcnn.engine.train_config import TrainConfig
from maskrcnn.engine.trainer import ESTIMATE_AFTER
from maskrcnn.io.weights import read_weight_file
from tests.test_cli_train_eval import TINY

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_warmup_and_step_schedule():
    cfg = TrainConfig(warmup_iters=10, warmup_factor=0.1, schedule="step", steps=(0.5, 0.75),
                      gamma=0.1)
    assert lr_factor(cfg, 0, 0.0) == pytest.approx(0.1)
    assert lr_factor(cfg, 5, 0.05) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(cfg, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(cfg, 49, 0.49) == pytest.approx(1.0)
    assert lr_factor(cfg, 50, 0.5) == pytest.approx(0.1)
    assert lr_factor(cfg, 80, 0.8) == pytest.approx(0.01)


def test_warmup_ends_by_a_tenth_of_a_short_run():
    cfg = TrainConfig(warmup_iters=100, warmup_factor=0.001, schedule="step")
    # a time budget that allows ~120 iterations: 10 % of the time is gone at iteration 12
    assert lr_factor(cfg, 12, 0.1) == pytest.approx(1.0)
    assert lr_factor(cfg, 6, 0.05) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(cfg, 50, 0.5) == pytest.approx(1.0)  # the peak before the first step
    off = TrainConfig(warmup_iters=100, warmup_factor=0.001, warmup_max_fraction=0.0)
    assert lr_factor(off, 50, 0.5) == pytest.approx(0.001 * 0.5 + 0.5)


def test_cosine_schedule():
    cfg = TrainConfig(warmup_iters=0, schedule="cosine", min_lr_factor=0.2)
    assert lr_factor(cfg, 0, 0.0) == pytest.approx(1.0)
    assert lr_factor(cfg, 50, 0.5) == pytest.approx(0.2 + 0.8 * 0.5)
    assert lr_factor(cfg, 90, 0.9) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(0.9 * math.pi)))
    assert lr_factor(cfg, 100, 1.0) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(TrainConfig(schedule="linear"), 0, 0.0)


def test_optimizer_groups_norm_parameters():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 1))
    model[2].weight.requires_grad_(False)
    cfg = TrainConfig(lr=0.1, momentum=0.8, weight_decay=1e-3, weight_decay_norm=0.0)
    optimizer = build_optimizer(model, cfg)
    groups = {g["weight_decay"]: g["params"] for g in optimizer.param_groups}
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(groups[0.0]) == ids(model[1].parameters())
    assert ids(groups[1e-3]) == ids([model[0].weight, model[0].bias, model[2].bias])
    assert all(g["momentum"] == 0.8 and g["lr"] == 0.1 for g in optimizer.param_groups)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=6, num_val=2,
                                image_size=64, seed=11)


def _train(shapes, out, *options, sets=(), images=None):
    return main(["train", "--train-json", shapes["train_json"], "--train-images",
                 images or shapes["images_dir"], "--out", str(out), *options,
                 "--set", *TINY, *sets])


def _records(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if json.loads(line)["kind"] == "train"]


def test_a_few_iterations_lower_the_loss(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(shapes, out, "--iters", "12", "--batch-size", "2", "--lr", "0.02",
                  sets=["schedule=constant", "checkpoint_period=100"]) == 0
    losses = [r["loss"] for r in _records(out)]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.75 * sum(losses[:3]) / 3, losses
    # early in the run, one line says how long the rest will take at the speed so far
    estimates = [line for line in capsys.readouterr().out.splitlines()
                 if line.startswith("estimated training time: ")]
    assert len(estimates) == 1, estimates
    match = re.fullmatch(r"estimated training time: 0:(\d\d):(\d\d) more \(([\d.]+) s/it so "
                         r"far on this machine\)", estimates[0])
    assert match, estimates[0]
    minutes, seconds, per_iter = int(match[1]), int(match[2]), float(match[3])
    # rounding: the seconds to 1, the s/it to 0.01
    assert abs(60 * minutes + seconds - (12 - ESTIMATE_AFTER) * per_iter) <= 0.5 + 0.06


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    status = _train(shapes, out, "--iters", "6", sets=["checkpoint_period=2", "debug_nan_at=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1, err
    assert "not finite at iteration 4" in err[0] and "ckpt_0000002.pt" in err[0]
    assert not (out / "model_final.pt").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt_0000002.pt"]
    data = read_weight_file(out / "checkpoints" / "ckpt_0000002.pt")
    assert all(torch.isfinite(v).all() for v in data["model"].values() if v.is_floating_point())


def test_unreadable_training_images_are_skipped(shapes, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    data = json.loads(open(shapes["train_json"]).read())
    source = shapes["images_dir"]
    for image in data["images"]:
        (images / image["file_name"]).write_bytes(open(f"{source}/{image['file_name']}",
                                                       "rb").read())
    missing, truncated = data["images"][0]["file_name"], data["images"][1]["file_name"]
    (images / missing).unlink()
    content = (images / truncated).read_bytes()
    (images / truncated).write_bytes(content[: len(content) // 2])  # header fine, data cut
    out = tmp_path / "run"
    assert _train(shapes, out, "--epochs", "1", "--batch-size", "1", images=str(images)) == 0
    err = capsys.readouterr().err
    assert "skipping 1 training image(s)" in err and missing in err
    assert "skipping unreadable training image" in err and truncated in err
    assert [r["iter"] for r in _records(out)] == [1, 2, 3, 4, 5]  # 1 epoch: 5 usable images
    assert (out / "model_final.pt").is_file()


def test_amp_and_gradient_accumulation(shapes, tmp_path):
    out = tmp_path / "run"
    assert _train(shapes, out, "--iters", "1", "--batch-size", "1",
                  sets=["accumulate=3", "amp=true", "clip_grad_norm=5"]) == 0
    records = _records(out)
    assert [r["iter"] for r in records] == [1]
    assert all(math.isfinite(r["loss"]) for r in records)
    trainer = read_weight_file(out / "checkpoints" / "ckpt_0000001.pt")["trainer"]
    assert (trainer["epoch"], trainer["batch_in_epoch"]) == (0, 3)  # 1 step of 3 batches


def test_time_budget_stops_the_run(shapes, tmp_path):
    out = tmp_path / "run"
    assert _train(shapes, out, "--minutes", "0.002") == 0  # 0.12 s: one iteration
    assert len(_records(out)) >= 1 and (out / "model_final.pt").is_file()


@pytest.mark.parametrize("amp, rel", [("false", 1e-3), ("true", 2e-2)])
def test_channels_last_training_follows_the_nchw_curve(shapes, tmp_path, amp, rel):
    """The memory layout changes the speed, not the arithmetic: the same losses, float32 to
    rounding, bfloat16 (our channels_last GroupNorm backward) within its precision."""
    curves = {}
    for layout in ("true", "false"):
        out = tmp_path / layout
        assert _train(shapes, out, "--iters", "4", "--batch-size", "2",
                      sets=[f"channels_last={layout}", f"amp={amp}",
                            "checkpoint_period=100"]) == 0
        curves[layout] = [r["loss"] for r in _records(out)]
    assert curves["true"] == pytest.approx(curves["false"], rel=rel), curves
