"""The generic training loop: a ``Task`` says what to compute, the ``Trainer`` does everything else.

Everything else is: devices and DDP, bf16 autocast, gradient accumulation and clipping, AdamW and the
learning-rate schedule of every model, skipping non-finite steps, an average of the exported model's
weights (``train.ema_decay``), validation, previews, logging, checkpoints every N steps and on
SIGTERM/SIGINT, and exact resumption (model, optimizers, schedulers, RNG states and the position in
the batch stream are all saved).

    trainer = Trainer(task, cfg, run_dir, init_distributed())
    signum = trainer.fit(resume=True)     # None when the step budget was reached
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import signal
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from specbert.configs import Config
from specbert.provenance import write_meta
from specbert.train.checkpoint import latest_checkpoint, load_checkpoint, remove_unfinished, save_checkpoint
from specbert.train.distributed import (
    Dist,
    all_true,
    any_true,
    barrier,
    close_distributed,
    gather_objects,
    init_distributed,
    mean_over_ranks,
    sum_over_ranks,
    unwrap,
    wrap_ddp,
)
from specbert.train.ema import WeightAverage
from specbert.train.logging import RunLogger, Throughput
from specbert.train.optim import build_optimizer, build_scheduler
from specbert.train.rng import derive_seed, rng_state, seed_all, seeded, set_rng_state

Batch = dict[str, Tensor]


class Task(Protocol):
    """What one kind of training (pretraining, fine-tuning) computes.

    ``models`` passed to the methods map names to modules on the run's device; in ``losses`` they
    may be DDP wrappers (``train.distributed.unwrap`` gives the module), elsewhere they are plain.
    """

    def build_models(self) -> dict[str, nn.Module]:
        """Freshly initialised models by name; ``"model"`` is the one exported.  Every trainable
        parameter must get a gradient from ``losses()["loss"]`` (DDP needs it)."""

    def optimizer_settings(self, name: str) -> dict:
        """``train.optim.build_optimizer`` keywords for model ``name``: lr, betas, weight_decay."""

    def train_batches(self, epoch: int) -> Iterable[Batch]:
        """This rank's training batches of one epoch: finite, a deterministic function of ``epoch``."""

    def val_batches(self) -> Iterable[Batch]:
        """This rank's validation batches, the same on every call; NoValidationData when there are none
        (the trainer asks once before step 1, and then trains without validation and previews)."""

    def stats(self) -> dict[str, float]:
        """Counters of this rank to log, summed over ranks (e.g. the loader's skipped samples)."""

    def count(self, batch: Batch) -> tuple[int, int]:
        """``(samples, frames)`` in a batch, for throughput."""

    def losses(self, models: dict[str, nn.Module], batch: Batch) -> dict[str, Tensor]:
        """Scalar tensors; ``"loss"`` is back-propagated once and must carry each model's objective
        (keep the graphs of several models apart: detach, ``train.losses.frozen_call``).  The others
        are logged."""

    def validate(self, models: dict[str, nn.Module], batches: Iterable[Batch]) -> dict[str, float]:
        """Metrics over ``batches`` (models in eval mode, no gradients)."""

    def preview(self, models: dict[str, nn.Module], batch: Batch) -> dict[str, np.ndarray]:
        """Named ``[F, T]`` images with values in [0, 1] showing what the model does to ``batch``."""


class NoValidationData(Exception):
    """A task has no validation data (e.g. no validation split in its manifest); the message says why."""


@dataclasses.dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # position of the next micro-batch: epoch ...
    index: int = 0  # ... and micro-batches of that epoch already used
    skipped: int = 0  # steps skipped for a non-finite loss or gradient
    seconds: float = 0.0  # wall-clock time spent in the training loop (for ``train.minutes``)


class BatchStream:
    """Training micro-batches, epoch after epoch, that can restart at any ``(epoch, index)``."""

    def __init__(self, make_epoch: Callable[[int], Iterable[Batch]], seed: int, progress: Progress):
        self.make_epoch, self.seed, self.progress = make_epoch, seed, progress
        self._it = self._open(progress.epoch)
        for _ in range(progress.index):
            next(self._it)

    def _open(self, epoch: int) -> Iterator[Batch]:
        """The epoch's iterator, started (first batch drawn) under a seed of its own: loader workers
        seeded from the global RNG get the same seeds after a resume, and training RNG is untouched."""
        with seeded(derive_seed(self.seed, epoch)):
            it = iter(self.make_epoch(epoch))
            first = next(it, None)
        return iter(()) if first is None else itertools.chain([first], it)

    def __next__(self) -> Batch:
        batch = next(self._it, None)
        if batch is None:
            self.progress.epoch += 1
            self.progress.index = 0
            self._it = self._open(self.progress.epoch)
            batch = next(self._it, None)
            if batch is None:
                raise RuntimeError(f"epoch {self.progress.epoch} of the training data has no batches")
        self.progress.index += 1
        return batch


class StopSignals:
    """Remember the first SIGTERM/SIGINT instead of dying; a second one acts as usual."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        self.signum: int | None = None
        self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


class Trainer:
    """Trains ``task``'s models with the ``train`` section of ``cfg``, writing to ``run_dir``.

    ``raw`` holds the models, ``models`` the same behind DDP when there are several ranks; one AdamW
    and one schedule per model.  ``average`` is the running average of ``raw["model"]`` (None when
    ``train.ema_decay`` is 0); ``delivered()`` is what validation, previews and checkpoints' weights
    files see.  See ``train.logging`` and ``train.checkpoint`` for the run directory.
    """

    def __init__(self, task: Task, cfg: Config, run_dir: Path, dist: Dist):
        self.task, self.cfg, self.tc, self.run_dir, self.dist = task, cfg, cfg.train, Path(run_dir), dist
        self.accum = self.tc.accumulation(dist.world_size)
        seed_all(self.tc.seed)  # the same initial weights on every rank
        self.raw = {name: m.to(dist.device) for name, m in task.build_models().items()}
        self.models = {name: wrap_ddp(self._compiled(m), dist) for name, m in self.raw.items()}
        self.optimizers = {n: build_optimizer(m, **task.optimizer_settings(n)) for n, m in self.raw.items()}
        self.average = WeightAverage(self.raw["model"], self.tc.ema_decay) if self.tc.ema_decay else None
        self.progress = Progress()
        self.schedulers = {n: build_scheduler(o, self.tc, self.total_steps)
                           for n, o in self.optimizers.items()}
        seed_all(derive_seed(self.tc.seed, dist.rank))  # dropout etc. differ between ranks
        bf16 = self.tc.precision == "bf16" or (
            self.tc.precision == "auto" and dist.device.type == "cuda" and torch.cuda.is_bf16_supported())
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        if dist.device.type == "cuda":
            torch.set_float32_matmul_precision("high")
            torch.backends.cudnn.benchmark = True  # crops have one shape: time cuDNN's algorithms once

    def total_steps(self) -> int:
        """The run's length in steps: ``train.steps``, or on a time budget (``train.minutes``) the steps
        the budget will hold at the pace so far (never fewer than done)."""
        budget, p = self.tc.minutes * 60.0, self.progress
        if not budget or not p.seconds:
            return self.tc.steps
        return max(p.step + 1, min(self.tc.steps, round(p.step * budget / p.seconds)))

    def out_of_time(self) -> bool:
        """The ``train.minutes`` budget is spent (on any rank: they stop together)."""
        if not self.tc.minutes:
            return False
        return any_true(self.progress.seconds >= self.tc.minutes * 60.0, self.dist)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def fit(self, resume: bool = False) -> int | None:
        """Train until ``train.steps``; return None, or the signal number that stopped the run early
        (after a checkpoint was saved)."""
        if not resume and latest_checkpoint(self.checkpoint_dir) is not None:
            raise FileExistsError(f"{self.run_dir} already holds checkpoints: resume, or use another run dir")
        saved, restored = self.restore() if resume else (None, None)
        missing = self._missing_validation()  # before anything is written: bad data stops the run here
        removed = []
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
            write_meta(self.run_dir, self.dist.world_size)
            removed = remove_unfinished(self.checkpoint_dir)
        log = RunLogger(self.run_dir, self.total_steps(), self.progress.step, self.cfg.audio,
                        enabled=self.dist.is_main)
        try:
            if removed:
                log.message(f"removed {len(removed)} unfinished checkpoint folders of a killed run: "
                            f"{', '.join(p.name for p in removed)}")
            if restored:
                log.message(f"resuming from {restored}: {self.progress.step} of {self.tc.steps} steps done, "
                            f"continuing with step {self.progress.step + 1}")
            elif resume:
                log.message(f"--resume: no checkpoint in {self.checkpoint_dir} yet: starting at step 1")
            if missing:
                log.message(f"warning: {missing}: training without validation and previews")
            self.validating = bool(self.tc.val_every or self.tc.preview_every) and not missing
            # Loader workers ignore SIGINT/SIGTERM (pipeline.loader): a signal to the whole process
            # group (Ctrl-C, a cluster's SIGTERM) reaches this process only, which saves and stops.
            with StopSignals() as stop:
                stream = BatchStream(self.task.train_batches, derive_seed(self.tc.seed, self.dist.rank),
                                     self.progress)
                if saved is not None:
                    set_rng_state(saved)  # after re-opening the stream, as in the uninterrupted run
                return self._loop(stream, log, stop)
        finally:
            log.close()

    def _missing_validation(self) -> str | None:
        """Why there is no validation data (None when there is, or none is needed), asked before step 1:
        the run then trains without validation and previews instead of failing at its first validation
        step; any other error of the validation data stops the run before it starts."""
        if not (self.tc.val_every or self.tc.preview_every):
            return None
        try:
            self.task.val_batches()
        except NoValidationData as err:
            return str(err)
        return None

    def _loop(self, stream: BatchStream, log: RunLogger, stop: StopSignals) -> int | None:
        tc, window, meter, postfix = self.tc, [], Throughput(), {}
        if self.out_of_time():  # a time-budget run resumed after its budget: nothing left to do
            return None
        clock = time.monotonic()
        while self.progress.step < tc.steps:  # a step past the budget is the last (``last`` below)
            meter.start()
            metrics, samples, frames = self.train_step(stream)
            meter.stop(samples * self.dist.world_size, frames * self.dist.world_size)
            now = time.monotonic()
            self.progress.seconds, clock = self.progress.seconds + now - clock, now
            step, last = self.progress.step, self.progress.step == tc.steps or self.out_of_time()
            if metrics is None:
                log.message(f"step {step}: non-finite loss or gradient, update skipped "
                            f"({self.progress.skipped} so far)")
            else:
                window.append(metrics)
            if _due(step, tc.log_every) or last:
                values = self._train_metrics(window, meter)
                log.scalars(step, "train", values)
                postfix = {k: values[k] for k in ("loss", "samples_per_s", "frames_per_s") if k in values}
                window = []
            log.progress(step, step if last else self.total_steps(), postfix)
            stopping = any_true(stop.signum is not None, self.dist) and not last
            if _due(step, tc.checkpoint_every) or last or stopping:  # before validation, which may fail
                self.save()
            if self.validating and (_due(step, tc.val_every) or (tc.val_every and last)):
                log.scalars(step, "val", self.validate())
            if self.validating and _due(step, tc.preview_every) and self.dist.is_main:
                log.preview(step, self.preview())
            if stopping:
                log.message(f"stopped by a signal at step {step}; checkpoint saved, continue with --resume")
                return stop.signum or signal.SIGTERM
            if last:
                break
        return None

    def _train_metrics(self, window: list[dict[str, Tensor]], meter: Throughput) -> dict[str, float]:
        """Means of the logged steps' metrics over the window and the ranks, throughput and counters."""
        keys = window[0] if window else {}
        values = mean_over_ranks({k: float(np.mean([float(m[k]) for m in window])) for k in keys}, self.dist)
        values.update(meter.rates(), skipped=self.progress.skipped)
        values.update(sum_over_ranks(self.task.stats(), self.dist))
        return values

    def train_step(self, stream: BatchStream) -> tuple[dict[str, Tensor] | None, int, int]:
        """One optimizer step over ``accum`` micro-batches.  Returns the step's metrics (None when
        skipped for a non-finite loss or gradient), and the samples and frames it used."""
        begin_step = getattr(self.task, "begin_step", None)  # optional: a task that changes with the step
        if begin_step is not None:
            begin_step(self.progress.step)
        buffers = [b.detach().clone() for b in self._buffers()]
        sums: dict[str, Tensor] = {}
        samples = frames = 0
        for i in range(self.accum):
            batch = next(stream)
            n, f = self.task.count(batch)
            samples, frames = samples + n, frames + f
            batch = self._to_device(batch)
            with self._maybe_no_sync(i < self.accum - 1):
                with self._autocast():
                    losses = self.task.losses(self.models, batch)
                (losses["loss"] / self.accum).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() / self.accum
        for name, model in self.raw.items():
            clip = self.tc.grad_clip or float("inf")
            sums[f"grad_norm_{name}"] = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        finite = bool(torch.isfinite(torch.stack(list(sums.values()))).all())
        ok = all_true(finite, self.dist)
        if ok:
            for opt in self.optimizers.values():
                opt.step()
            if self.average is not None:
                self.average.update(self.raw["model"])
        else:
            self.progress.skipped += 1
            for saved, b in zip(buffers, self._buffers(), strict=True):
                b.copy_(saved)  # e.g. BatchNorm statistics that saw the NaN
        for name, opt in self.optimizers.items():
            opt.zero_grad(set_to_none=True)
            sums[f"lr_{name}"] = torch.tensor(self.schedulers[name].get_last_lr()[0])
            self.schedulers[name].step()
        self.progress.step += 1
        return (sums if ok else None), samples, frames

    def validate(self) -> dict[str, float]:
        """The task's validation metrics on ``val_batches`` batches per rank, averaged over ranks."""
        with self._evaluating(), seeded(derive_seed(self.tc.seed, self.dist.rank, 1)):
            batches = itertools.islice(self.task.val_batches(), self.tc.val_batches)
            metrics = self.task.validate(self.delivered(), map(self._to_device, batches))
        return mean_over_ranks(metrics, self.dist)

    def preview(self) -> dict[str, np.ndarray]:
        """The task's preview of the first validation batch."""
        with self._evaluating(), seeded(derive_seed(self.tc.seed, 2)):
            batch = self._to_device(next(iter(self.task.val_batches())))
            return self.task.preview(self.delivered(), batch)

    def save(self) -> Path | None:
        """Checkpoint the run (a collective: every rank calls it); rank 0 writes."""
        rng = gather_objects(rng_state(), self.dist)
        path = None
        if self.dist.is_main:
            state = {
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
                "progress": dataclasses.asdict(self.progress),
                "rng": rng,
            }
            if self.average is not None:  # the weights files hold the average; training resumes from these
                state["trained"] = self.raw["model"].state_dict()
                state["average_updates"] = self.average.updates
            meta = {"world_size": self.dist.world_size, "config": self.cfg.to_dict()}
            path = save_checkpoint(self.checkpoint_dir, self.progress.step, self.delivered(), state, meta,
                                   self.tc.keep_last)
        barrier(self.dist)
        return path

    def restore(self) -> tuple[dict | None, Path | None]:
        """Load the latest checkpoint if there is one; return this rank's saved RNG state (None when
        there is no checkpoint, or the number of ranks changed) and the checkpoint's path."""
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return None, None
        state, meta = load_checkpoint(path, self.delivered())
        if "trained" in state:  # saved with an average: the weights files hold it, the state the trained ones
            self.raw["model"].load_state_dict(state["trained"])
        elif self.average is not None:  # saved without one: the weights files hold the trained weights
            self.raw["model"].load_state_dict(self.average.module.state_dict())
        if self.average is not None:
            self.average.updates = state.get("average_updates", 0)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
            self.schedulers[name].load_state_dict(state["schedulers"][name])
        self.progress = Progress(**state["progress"])
        if meta.get("world_size") != self.dist.world_size:
            warnings.warn(f"{path} was saved by {meta.get('world_size')} ranks, not {self.dist.world_size}: "
                          "random states are not restored", stacklevel=2)
            return None, path
        return state["rng"][self.dist.rank], path

    def delivered(self) -> dict[str, nn.Module]:
        """The models as validated, previewed and checkpointed: ``raw``, with ``model`` replaced by its
        average when there is one."""
        if self.average is None:
            return self.raw
        return {**self.raw, "model": self.average.module}

    def _buffers(self) -> list[Tensor]:
        return [b for m in self.raw.values() for b in m.buffers()]

    def _to_device(self, batch: Batch) -> Batch:
        dev = self.dist.device
        return {k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _compiled(self, model: nn.Module) -> nn.Module:
        """``model`` under ``torch.compile`` with the ``train.compile`` backend (training steps only;
        validation and previews run the plain module), or itself."""
        return torch.compile(model, backend=self.tc.compile) if self.tc.compile else model

    def _autocast(self):
        return torch.autocast(self.dist.device.type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None)

    @contextlib.contextmanager
    def _maybe_no_sync(self, skip_sync: bool):
        """No gradient all-reduce on the micro-batches before the last of a step."""
        with contextlib.ExitStack() as stack:
            if skip_sync:
                for m in self.models.values():
                    if m is not unwrap(m):
                        stack.enter_context(m.no_sync())
            yield

    @contextlib.contextmanager
    def _evaluating(self):
        for m in self.raw.values():
            m.eval()
        try:
            with torch.no_grad(), self._autocast():
                yield
        finally:
            for m in self.raw.values():
                m.train()


def launch(make_task: Callable[[Config, torch.device], Task], cfg: Config, run_dir: Path,
           resume: bool = False, device: str | None = None) -> int:
    """A whole training job in this process (one rank under ``torchrun``): join the process group, build
    the task (``make_task(cfg, this rank's device)``), train.  Returns the exit code: 0 when the step
    budget was reached, 128 + the signal number when SIGTERM/SIGINT stopped it (after saving a
    checkpoint; ``resume=True`` continues)."""
    dist = init_distributed(device)
    try:
        signum = Trainer(make_task(cfg, dist.device), cfg, run_dir, dist).fit(resume)
    finally:
        close_distributed()
    return 0 if signum is None else 128 + signum


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0
