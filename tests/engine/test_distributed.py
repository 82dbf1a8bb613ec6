"""Scale-out: a 2-process CPU run under torchrun (gloo), and the helpers on one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskrcnn.cli import main
from maskrcnn.data.shapes import write_shapes_dataset
from maskrcnn.engine import distributed as dist
from tests.test_cli_train_eval import TINY

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_helpers_without_a_process_group():
    assert not dist.is_distributed() and not dist.launched_by_torchrun()
    assert (dist.get_rank(), dist.get_world_size(), dist.is_main_process()) == (0, 1, True)
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist.broadcast_object([3]) == [3]
    x = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(dist.all_reduce_mean(x), x)
    assert dist.init_distributed("cpu") == torch.device("cpu")
    dist.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes(tmp_path, capsys):
    shapes = write_shapes_dataset(tmp_path / "shapes", num_train=6, num_val=3, image_size=64,
                                  seed=13)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "maskrcnn", "train", "--train-json", shapes["train_json"],
        "--train-images", shapes["images_dir"], "--val-json", shapes["val_json"],
        "--val-images", shapes["images_dir"], "--out", str(out), "--iters", "3",
        "--batch-size", "1", "--set", *TINY, "checkpoint_period=2",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x2:" in done.stdout  # "training on cpu x2: ..."
    assert done.stdout.count("validation at iter 3") == 1  # rank 0 alone prints
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "train"] == [1, 2, 3]  # rank 0 writes
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "ckpt_0000002.pt", "ckpt_0000003.pt"]
    trainer = torch.load(out / "checkpoints" / "ckpt_0000003.pt", weights_only=True)["trainer"]
    assert trainer["world_size"] == 2 and len(trainer["rng"]) == 2
    assert (trainer["epoch"], trainer["batch_in_epoch"]) == (0, 3)  # 6 images = 2 ranks x 3
    assert not torch.equal(trainer["rng"][0]["torch"], trainer["rng"][1]["torch"])
    val = [r for r in records if r["kind"] == "val"][0]
    # evaluation gathered from both ranks = evaluation of the same weights on one process
    assert main(["eval", "--weights", str(out / "model_final.pt"), "--json", shapes["val_json"],
                 "--images", shapes["images_dir"], "--out", str(tmp_path / "eval")]) == 0
    single = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    gathered = json.loads((out / "eval" / "metrics.json").read_text())
    for iou_type in ("bbox", "segm"):  # (thread counts differ: allow last-bit differences)
        for name, value in single[iou_type].items():
            assert gathered[iou_type][name] == pytest.approx(value, abs=1e-3)
        assert val[f"{iou_type}/AP"] == pytest.approx(single[iou_type]["AP"], abs=1e-3)
    ours = json.loads((out / "eval" / "predictions.json").read_text())
    theirs = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    assert len(ours) == len(theirs)  # every image's detections, from both ranks
    assert {r["image_id"] for r in ours} == {r["image_id"] for r in theirs}
