"""Checkpoints: atomic files, keep-last, fallback past corrupted files, resume after SIGKILL
that reproduces the uninterrupted run's losses exactly."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from maskrcnn.data.shapes import write_shapes_dataset
from maskrcnn.engine.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from maskrcnn.io.weights import WeightsError, load_model
from maskrcnn.modeling import build_model
from tests.conftest import tiny_config
from tests.test_cli_train_eval import TINY

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ITERS = 10


def _state(iteration):
    return {"iteration": iteration, "optimizer": {"state": {}, "param_groups": []}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config())


def test_keeps_the_last_few(model, tmp_path):
    manager = CheckpointManager(tmp_path / "ckpts", keep=3)
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / ".ckpt_0000001.pt.abc").write_bytes(b"half a file")  # killed writer
    for iteration in (2, 4, 6, 8, 10):
        manager.save(model, _state(iteration))
    assert [i for i, _ in manager.list()] == [6, 8, 10]
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == [
        "ckpt_0000006.pt", "ckpt_0000008.pt", "ckpt_0000010.pt"]
    path, data = manager.load_latest()
    assert path.name == "ckpt_0000010.pt" and data["trainer"]["iteration"] == 10
    loaded = load_model(path)  # a checkpoint is also a model file
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_corrupted_newest_falls_back(model, tmp_path, capsys):
    manager = CheckpointManager(tmp_path, keep=5)
    for iteration in (1, 2, 3):
        manager.save(model, _state(iteration))
    newest = manager.path_for(3)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # torn write
    manager.path_for(2).write_bytes(b"\x00" * 64)  # garbage
    path, data = manager.load_latest()
    assert path.name == "ckpt_0000001.pt" and data["trainer"]["iteration"] == 1
    err = capsys.readouterr().err
    assert "ckpt_0000003.pt" in err and "ckpt_0000002.pt" in err and "resuming from" in err


def test_check_rejects_and_none_usable(model, tmp_path):
    manager = CheckpointManager(tmp_path, keep=5)
    assert manager.load_latest() is None
    manager.save(model, _state(1))
    manager.save(model, _state(2))

    def reject_two(data):
        if data["trainer"]["iteration"] == 2:
            raise ValueError("does not fit")

    assert manager.load_latest(check=reject_two)[0].name == "ckpt_0000001.pt"
    for _, path in manager.list():
        path.write_bytes(b"junk")
    with pytest.raises(WeightsError, match="none of the 2 checkpoints"):
        manager.load_latest()


def test_rng_state_round_trip():
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    state = capture_rng_state()
    first = (torch.rand(3), random.random(), np.random.rand(3))
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    restore_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand(3))
    torch.testing.assert_close(first[0], again[0])
    assert first[1] == again[1]
    np.testing.assert_array_equal(first[2], again[2])


# ------------------------------------------------------------------ real runs (subprocess)

@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=6, num_val=2,
                                image_size=64, seed=7)


def _train_cmd(shapes, out, *extra):
    return [sys.executable, "-m", "maskrcnn", "train", "--train-json", shapes["train_json"],
            "--train-images", shapes["images_dir"], "--out", str(out), "--iters", str(ITERS),
            "--set", *TINY, "checkpoint_period=2", "num_workers=1",
            "input.min_size_train=[56,64]", *extra]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r["loss"], r["lr"]) for r in records if r["kind"] == "train"]


@pytest.fixture(scope="module")
def reference(shapes, tmp_path_factory):
    """An uninterrupted run of ITERS iterations."""
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(_train_cmd(shapes, out), check=True, env=_env(), capture_output=True,
                   timeout=300)
    return out


def test_sigkill_then_resume_reproduces_the_losses(shapes, reference, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(shapes, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    target = out / "checkpoints" / "ckpt_0000004.pt"
    deadline = time.monotonic() + 240
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL  # killed mid-way, not finished
    assert not (out / "model_final.pt").exists()
    done = subprocess.run([*_train_cmd(shapes, out), "--resume"], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout
    assert _losses(out) == _losses(reference)  # bit for bit, every iteration once
    assert [i for i, _, _ in _losses(out)] == list(range(1, ITERS + 1))
    load_model(out / "model_final.pt")


def test_corrupted_last_checkpoint_resumes_from_the_previous(shapes, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "model_final.pt").unlink()
    last = out / "checkpoints" / f"ckpt_{ITERS:07d}.pt"
    last.write_bytes(last.read_bytes()[:1000])
    done = subprocess.run([*_train_cmd(shapes, out), "--resume"], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"cannot resume from ckpt_{ITERS:07d}.pt" in done.stderr
    assert f"resumed from {out / 'checkpoints' / f'ckpt_{ITERS - 2:07d}.pt'}" in done.stdout
    assert _losses(out) == _losses(reference)  # the last two iterations redone identically
    assert (out / "model_final.pt").is_file()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_then_resume_reproduces_the_losses(shapes, reference, tmp_path,
                                                            signum):
    """Ctrl-C / SIGTERM before the first periodic checkpoint (period 100 here) loses
    nothing: the last finished iteration is saved, and resuming gives the same losses.
    The signal goes to the whole process group, data workers included, as a terminal's
    Ctrl-C, `docker stop` or a batch scheduler send it."""
    out = tmp_path / "run"
    cmd = [*_train_cmd(shapes, out), "checkpoint_period=100"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and not (
            metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.02)
    os.killpg(proc.pid, signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr
    saved = sorted((out / "checkpoints").glob("ckpt_*.pt"))
    assert len(saved) == 1 and not (out / "model_final.pt").exists()
    assert f"saved {saved[0]}" in stderr and "--resume" in stderr
    assert 3 <= int(saved[0].stem.split("_")[1]) < ITERS
    done = subprocess.run([*cmd, "--resume"], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {saved[0]}" in done.stdout
    assert _losses(out) == _losses(reference)
