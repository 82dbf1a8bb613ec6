"""The training loop: SGD steps, logging, periodic validation, checkpoints and resuming.

`train(run, data, out_dir)` runs on one process, or on every process of a torchrun job
(DistributedDataParallel; rank 0 logs and writes files). It writes RUN/config.yaml,
RUN/metrics.jsonl, RUN/curves.png (redrawn at each validation and at the end),
RUN/checkpoints/ckpt_<iter>.pt, RUN/eval/ (final validation) and RUN/model_final.pt.
A resumed run (resume=True) restores model, optimizer, grad scaler, data position and
every rank's RNG state from the newest usable checkpoint, so it follows the same loss
curve as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import config_to_dict
from ..data.loader import build_loader
from ..io.pretrained import build_pretrained_model
from ..io.weights import WeightsError, holds_whole_model, load_state_dict_checked, save_model
from ..progress import Progress
from . import distributed as dist
from .checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from .curves import CurvesWriter
from .data_fit import DataFit, fit_to_data
from .inference import evaluate_model
from .init_weights import InitWeightsError, init_from_file
from .run_log import MetricsWriter, ProgressPrinter, format_seconds
from .solver import build_optimizer, describe_schedule, lr_factor, set_lr
from .train_config import RunConfig, save_run_config
from .train_data import load_eval_dataset, load_train_dataset, warn
from .train_state import TrainState, Window, batch_to_device, format_val, resolve_limits

__all__ = ["DataPaths", "TrainingError", "TrainingInterrupted", "train"]

ESTIMATE_AFTER = 6  # iterations of a session before the time estimate line


class TrainingError(RuntimeError):
    """A run that cannot go on (diverged loss, nothing to train on); one-line message."""


class TrainingInterrupted(TrainingError):
    """SIGINT or SIGTERM: the last finished iteration was saved; exit_code 130 or 143."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass
class DataPaths:
    train_json: str
    train_images: str
    val_json: str | None = None
    val_images: str | None = None


def train(run: RunConfig, data: DataPaths, out_dir: str, *, resume: bool = False
          ) -> dict[str, Any]:
    """Train (see the module docstring). Returns {"iteration", "weights", "metrics",
    "seconds"} (metrics of the final validation, or None without a validation set)."""
    device = dist.init_distributed(run.train.device)
    try:
        return Trainer(run, data, Path(out_dir), device, resume).run()
    finally:
        dist.cleanup()


def _pretrained_error(err: Exception, path: str) -> TrainingError:
    """One line for a backbone.pretrained file that does not fit the body."""
    hint = ""
    if holds_whole_model(path):
        hint = (" -- it holds a whole Mask R-CNN, not an ImageNet ResNet: use it as "
                "--weights of predict / eval / export")
    return TrainingError(f"backbone.pretrained: {str(err).strip().splitlines()[0]}{hint}")


class Trainer:
    def __init__(self, run: RunConfig, data: DataPaths, out: Path, device: torch.device,
                 resume: bool) -> None:
        self.main = dist.is_main_process()
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.run_cfg = dist.broadcast_object(run)
        self.cfg = self.run_cfg.train
        self.out, self.device, self.data = out, device, data
        self._load_data()
        self.data_fit = None if resume else self._fit_to_data()  # a resumed run is fitted
        self.state = TrainState()
        if not resume:  # builds it (and reads backbone.pretrained) before writing any file
            self._build_model(resume=False)
        if self.main:
            out.mkdir(parents=True, exist_ok=True)
            save_run_config(self.run_cfg, out / "config.yaml")
        self.printer = ProgressPrinter(self.main, self.cfg.log_period)
        self.writer = MetricsWriter(out, enabled=self.main)
        self.curves = CurvesWriter(out, enabled=self.main)  # RUN/curves.png
        self.checkpoints = CheckpointManager(out / "checkpoints", self.cfg.keep_checkpoints)
        if self.data_fit is not None:
            for line in self.data_fit.lines():
                self.printer.message(line)
        if not resume:
            self._print_init_report()
        if resume:
            self._build_model(resume=True)
        self._build_loader()
        self.limit_iters, self.budget = resolve_limits(self.cfg, len(self.loader.batch_sampler)
                                                       + self.state.batch_in_epoch)
        self.window = Window()
        self.last_checkpoint: Path | None = None
        self.metrics: dict[str, Any] | None = None
        self.validation_seconds = 0.0

    # ---------------------------------------------------------------- setup
    def _load_data(self) -> None:
        cfg, data = self.cfg, self.data
        self.train_coco, self.train_set = load_train_dataset(
            data.train_json, data.train_images, hflip=cfg.hflip, keep_empty=cfg.keep_empty,
            check_images=True, verbose=self.main,
        )
        model_cfg = self.run_cfg.model
        model_cfg.roi_heads.num_classes = self.train_coco.num_classes
        model_cfg.class_names = tuple(self.train_coco.class_names)
        model_cfg.category_ids = (0, *self.train_coco.category_ids)
        self.val_set = None
        if data.val_json:
            _, self.val_set = load_eval_dataset(data.val_json, data.val_images or "",
                                                verbose=self.main)

    def _fit_to_data(self) -> DataFit | None:
        """Anchors and detections per image that fit the training set (engine/data_fit.py)."""
        if not self.cfg.fit_to_data:
            return None
        entries = [self.train_coco.entries[i] for i in self.train_set.indices]
        return fit_to_data(self.run_cfg.model, [e.boxes for e in entries],
                           [(e.height, e.width) for e in entries],
                           user_keys=self.cfg.user_model_keys,
                           anchors=not self.cfg.init_weights)

    def _build_model(self, resume: bool) -> None:
        model_cfg = copy.deepcopy(self.run_cfg.model)
        if resume:
            model_cfg.backbone.pretrained = None  # the checkpoint holds the weights
        torch.manual_seed(self.cfg.seed)
        try:
            self.model = build_pretrained_model(model_cfg).to(self.device)
        except (OSError, ValueError) as err:
            if not model_cfg.backbone.pretrained:
                raise
            raise _pretrained_error(err, model_cfg.backbone.pretrained) from None
        self.model.cfg.backbone.pretrained = None  # saved files must not need the file
        if self.cfg.channels_last:  # the convolutions' outputs follow their weights' layout
            self.model.to(memory_format=torch.channels_last)
        self.init_report = None
        if self.cfg.init_weights and not resume:
            self._init_weights()
        self.optimizer = build_optimizer(self.model, self.cfg)
        amp_dtype = torch.bfloat16
        if self.cfg.amp_dtype == "float16" and self.device.type == "cuda":
            amp_dtype = torch.float16
        self.amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.cfg.amp and amp_dtype == torch.float16
        )
        torch.manual_seed(self.cfg.seed * 1_000_003 + 7919 * (self.rank + 1))
        if resume:
            self._resume()
        self.ddp = self.model
        if self.world > 1:
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                else None, find_unused_parameters=self.cfg.find_unused_parameters,
            )

    def _init_weights(self) -> None:
        """Fine-tuning: load what fits of cfg.init_weights (the report prints at the start)."""
        try:
            self.init_report = init_from_file(self.model, self.cfg.init_weights)
        except (WeightsError, InitWeightsError) as err:
            raise TrainingError(f"init_weights: {err}") from None

    def _print_init_report(self) -> None:
        for line in self.init_report.lines() if self.init_report else []:
            self.printer.message(line)

    def _resume(self) -> None:
        found = None
        if self.main:
            found = self.checkpoints.load_latest(check=self._load_checkpoint)
        found = dist.broadcast_object(found)
        if found is None:
            start = f"starting from {self.cfg.init_weights}" if self.cfg.init_weights else (
                "starting from scratch")
            self.printer.message(f"no checkpoint in {self.checkpoints.directory}: {start}")
            if self.cfg.init_weights:
                self._init_weights()
                self._print_init_report()
            return
        path, data = found
        if not self.main:
            self._load_checkpoint(data)
        self.last_checkpoint = path
        self.writer.truncate_after(self.state.iteration)
        self.printer.message(f"resumed from {path} at iteration {self.state.iteration}")

    def _load_checkpoint(self, data: dict[str, Any]) -> None:
        """Model, optimizer, scaler, position and RNG from a checkpoint's contents."""
        trainer = data["trainer"]
        load_state_dict_checked(self.model, data["model"], "checkpoint")
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.scaler.load_state_dict(trainer["scaler"])
        self.state = TrainState.from_dict(trainer)
        rng = trainer.get("rng") or []
        if len(rng) == self.world:
            restore_rng_state(rng[self.rank])
        else:
            warn(f"checkpoint was written by {len(rng)} process(es), this run has "
                 f"{self.world}: random streams restart, the curve will differ")

    def _build_loader(self) -> None:
        self.loader = build_loader(
            self.train_set, batch_size=self.cfg.batch_size, shuffle=True,
            num_workers=self.cfg.num_workers, seed=self.cfg.seed, epoch=self.state.epoch,
            distributed=self.world > 1, rank=self.rank, world_size=self.world,
            start_iter=self.state.batch_in_epoch, persistent_workers=True,
        )
        self._iter = None

    # ---------------------------------------------------------------- data
    def _next_batch(self) -> tuple[list, list]:
        """The next batch of readable images (epochs roll over; unreadable files are
        dropped with a warning)."""
        while True:
            if self._iter is None:
                rng = torch.get_rng_state()  # iter() draws a worker seed: keep our stream
                self._iter = iter(self.loader)
                torch.set_rng_state(rng)
            try:
                images, targets, metas = next(self._iter)
            except StopIteration:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                self.loader.batch_sampler.set_epoch(self.state.epoch, 0)
                self._iter = None
                continue
            self.state.batch_in_epoch += 1
            for meta in metas:
                if "error" in meta:
                    self.state.skipped_images += 1
                    warn(f"skipping unreadable training image: {meta['error']}")
            keep = [i for i, image in enumerate(images) if image is not None]
            if keep:
                return [images[i] for i in keep], [targets[i] for i in keep]

    # ---------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        self._announce()
        with self._stop_signals():
            while not self._done():
                self._step()
                if self.stop_everywhere:
                    self._interrupted()
                self._after_step()
        self._finish()
        self.writer.close()
        return {"iteration": self.state.iteration, "weights": str(self.out / "model_final.pt"),
                "metrics": self.metrics, "seconds": time.perf_counter() - start}

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """SIGINT / SIGTERM ask the loop to stop after the current iteration (a second
        SIGINT interrupts at once)."""
        self.stop_signal: int | None = None
        self.stop_everywhere = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame) -> None:
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signum
            self.printer.message(f"{signal.Signals(signum).name}: stopping after this "
                                 "iteration to save a checkpoint (Ctrl-C again: at once)")

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _interrupted(self) -> None:
        """Save the last finished iteration and stop with TrainingInterrupted."""
        if self.state.iteration % self.cfg.log_period == 0:
            self._log()  # the record an uninterrupted run writes here
        self._save_checkpoint()
        signum = self.stop_signal or signal.SIGTERM  # another rank's signal
        self.writer.close()
        raise TrainingInterrupted(
            f"interrupted ({signal.Signals(signum).name}) after iteration "
            f"{self.state.iteration}: saved {self.last_checkpoint}; continue with --resume",
            signum)

    def _announce(self) -> None:
        per_epoch = len(self.loader.batch_sampler) + self.state.batch_in_epoch
        limits = []
        if self.limit_iters:
            limits.append(f"{self.limit_iters} iterations")
        if self.budget:
            limits.append(f"{format_seconds(self.budget)} of training time")
        self.printer.message(
            f"training on {self.device} x{self.world}: {len(self.train_set)} images, "
            f"{per_epoch} batches of {self.cfg.batch_size} per epoch and process; "
            f"stops after {' or '.join(limits)}; writing to {self.out}"
        )
        self.printer.message(describe_schedule(self.cfg, by_time=bool(self.budget)
                                               and not self.limit_iters))
        self.printer.message(self.writer.status)
        self.session_start = time.perf_counter()
        self.elapsed_before = self.state.elapsed
        # the time estimate: measured from the end of this session's first iteration
        self.first_step_iteration = self.state.iteration + 1
        self.first_step_elapsed = self.state.elapsed
        self.estimate_at = self.state.iteration + ESTIMATE_AFTER

    def _done(self) -> bool:
        if self.limit_iters and self.state.iteration >= self.limit_iters:
            return True
        return bool(self.budget) and self.state.elapsed >= self.budget

    def _progress(self) -> float:
        fractions = [0.0]
        if self.limit_iters:
            fractions.append(self.state.iteration / self.limit_iters)
        if self.budget:
            fractions.append(self.state.elapsed / self.budget)
        return max(fractions)

    def _step(self) -> None:
        cfg, state = self.cfg, self.state
        self.model.train()
        lr = cfg.lr * lr_factor(cfg, state.iteration, self._progress())
        set_lr(self.optimizer, lr)
        step_start = time.perf_counter()
        total, data_time = None, 0.0
        for micro in range(cfg.accumulate):
            data_start = time.perf_counter()
            images, targets = batch_to_device(*self._next_batch(), self.device)
            data_time += time.perf_counter() - data_start
            sync = (self.ddp.no_sync() if self.ddp is not self.model and micro < cfg.accumulate - 1
                    else contextlib.nullcontext())
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=cfg.amp):
                    losses = self.ddp(images, targets)
                loss = sum(losses.values())
                if state.iteration == cfg.debug_nan_at:
                    loss = loss * float("nan")
                self.scaler.scale(loss / cfg.accumulate).backward()
            values = torch.stack([loss.detach().float()]
                                 + [v.detach().float() for v in losses.values()]) / cfg.accumulate
            total = values if total is None else total + values
        elapsed = self.elapsed_before + time.perf_counter() - self.session_start
        stop = float(self.stop_signal is not None)  # every rank stops at the same iteration
        packed = dist.all_reduce_mean(torch.cat([total, total.new_tensor([elapsed, stop])]))
        self.stop_everywhere = bool(packed[-1] > 0)
        packed = packed[:-1]
        names = ["loss", *losses]
        reduced = dict(zip(names, packed[:-1].tolist()))
        if not all(math.isfinite(v) for v in reduced.values()):
            self._diverged(reduced)
        if cfg.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        state.iteration += 1
        state.elapsed = float(packed[-1])
        self.window.add(reduced, lr, time.perf_counter() - step_start, data_time)

    def _diverged(self, losses: dict[str, float]) -> None:
        bad = ", ".join(f"{k}={v:.4g}" for k, v in losses.items() if not math.isfinite(v))
        last = self.last_checkpoint or "none yet"
        raise TrainingError(
            f"loss is not finite at iteration {self.state.iteration + 1} ({bad}); stopped. "
            f"Last good checkpoint: {last}. Lower the learning rate (--set lr=...), lengthen "
            "the warmup (--set warmup_iters=...) or clip gradients (--set clip_grad_norm=1), "
            "then continue with --resume"
        )

    def _after_step(self) -> None:
        state, cfg = self.state, self.cfg
        done = self._done()
        if state.iteration == self.first_step_iteration:
            self.first_step_elapsed = state.elapsed
        if state.iteration == self.estimate_at and not done:
            self._announce_estimate()
        if state.iteration % cfg.log_period == 0 or done:
            self._log()
        else:
            self._progress_line(self.window.latest())
        since_ckpt = state.elapsed - state.checkpoint_elapsed
        if (done or (cfg.checkpoint_period > 0 and state.iteration % cfg.checkpoint_period == 0)
                or (cfg.checkpoint_minutes > 0 and since_ckpt >= 60 * cfg.checkpoint_minutes)):
            self._save_checkpoint()
        since_eval = state.elapsed - state.eval_elapsed
        if self.val_set is not None and not done and (
            (cfg.eval_period > 0 and state.iteration % cfg.eval_period == 0)
            or (cfg.eval_minutes > 0 and since_eval >= 60 * cfg.eval_minutes)
        ):
            self._validate(final=False)

    def _announce_estimate(self) -> None:
        """One line, early in the run: how long the rest will take at the speed so far
        (the first iteration of a session, with its one-off costs, left out)."""
        measured = self.state.elapsed - self.first_step_elapsed
        sec = measured / max(self.state.iteration - self.first_step_iteration, 1)
        self.printer.message(f"estimated training time: {format_seconds(self._eta(sec))} more "
                             f"({sec:.2f} s/it so far on this machine)")

    def _eta(self, sec_per_iter: float) -> float:
        remaining = [math.inf]
        if self.limit_iters:
            remaining.append((self.limit_iters - self.state.iteration) * sec_per_iter)
        if self.budget:
            remaining.append(self.budget - self.state.elapsed)
        return max(min(remaining), 0.0)

    def _progress_line(self, losses: dict[str, float]) -> None:
        sec = self.window.sec_per_iter()
        self.printer.update(self.state.iteration, self.limit_iters or None, losses,
                            self.window.lr, sec, self._eta(sec))

    def _log(self) -> None:
        means = self.window.means()
        sec = self.window.sec_per_iter()
        self._progress_line(means)
        self.writer.write({
            "kind": "train", "iter": self.state.iteration, "epoch": self.state.epoch,
            "lr": self.window.lr, **means, "sec_per_iter": sec,
            "data_sec": self.window.data_sec(), "elapsed_sec": self.state.elapsed,
            "eta_sec": self._eta(sec),
        })
        self.window = Window()

    def _save_checkpoint(self) -> None:
        if self.last_checkpoint is not None and \
                self.last_checkpoint == self.checkpoints.path_for(self.state.iteration):
            return
        self.state.checkpoint_elapsed = self.state.elapsed
        rng = dist.all_gather_object(capture_rng_state())
        if self.main:
            trainer_state = {
                **self.state.to_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng, "world_size": self.world,
                "train_config": config_to_dict(self.cfg),
            }
            self.checkpoints.save(self.model, trainer_state)
        self.last_checkpoint = self.checkpoints.path_for(self.state.iteration)

    def _validate(self, final: bool) -> None:
        self.state.eval_elapsed = self.state.elapsed
        out_dir = self.out / "eval" if final else None
        self.printer.message(f"validating on {len(self.val_set)} images ...")
        progress = Progress(len(self.val_set), "val: images") if self.main else None
        batch = self.cfg.batch_size
        metrics, results = evaluate_model(
            self.model, self.val_set, self.data.val_json,
            label_to_category_id=self.model.cfg.category_ids or None,
            batch_size=batch, with_loss=True, out_dir=out_dir,
            max_dets=self.model.cfg.roi_heads.detections_per_image,
            progress=None if progress is None else progress.per_batch(batch),
        )
        if progress is not None:
            progress.close()
        self.validation_seconds += metrics.get("seconds", 0.0)
        if self.main:
            from ..io.coco_results import write_results_json

            if final:
                write_results_json(results, self.out / "eval" / "predictions.json")
            record, line = format_val(self.state.iteration, metrics)
            self.writer.write(record)
            if not final:  # the final one is drawn by _finish
                self.curves.write()
            self.printer.message(line)
        self.metrics = metrics

    def _finish(self) -> None:
        self._save_checkpoint()
        if self.val_set is not None:
            self._validate(final=True)
        if self.main:
            extra: dict[str, Any] = {"iteration": self.state.iteration}
            if self.metrics is not None:
                extra["metrics"] = {k: self.metrics[k] for k in ("bbox", "segm")
                                    if k in self.metrics}
            save_model(self.model, self.out / "model_final.pt", **extra)
            self.curves.write()
            validation = (f" + {format_seconds(self.validation_seconds)} of validation"
                          if self.validation_seconds else "")
            self.printer.message(
                f"done: {self.state.iteration} iterations in "
                f"{format_seconds(self.state.elapsed)}{validation}; "
                f"weights: {self.out / 'model_final.pt'}"
            )
        dist.barrier()
