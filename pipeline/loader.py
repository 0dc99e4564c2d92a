"""The pretraining loader: manifest shards -> batches of masked, paired spectrogram crops.

    loader = build_pretrain_loader("shards/manifest.jsonl", split="train", batch_size=8, num_workers=4)
    for batch in loader:
        batch = to_device(batch, "cuda")   # float16 crosses processes; float32 on the device
        ...
    log(loader.stats())                    # {"bad_shards": 0, "bad_samples": 0, "padded_segments": 0}

A batch is a dict of

    input      float16 [B, C, bins, T]  the masked crop (C = 2 channels, bins = 1024, T = crop_frames)
    target     float16 [B, C, bins, T]  the clean crop, clip(|X| / track max, 0, 1), separator at the seam
    masked     bool    [B, T]           frames of selected tokens (the loss covers these)
    is_next    bool    [B]              the second half is the true continuation
    kinds      int8    [B, tokens]      token kinds (``pipeline.masking``: 0, WHITE, NOISE, KEEP)
    noise_seed int64   [B]              seed of each crop's NOISE values (``mask_batch``)
    key        list[str]                sample key of the crop
    track      list[str]                track id of the crop (its first half)
    pair_track list[str]                track id of the second half (== track when is_next)

``input`` and ``target`` are frames-major in memory (stride 1 along bins, as the shards store them:
no transpose on the CPU); ``.contiguous()`` on the device if a kernel needs it. The mask policy
and pairing are ``pipeline.masking``'s. Training takes ``crops_per_segment`` crops from each
decoded segment (decoding is most of a crop's cost), drawn at random from the last
``segment_pool`` decoded segments so that a batch still mixes segments; other splits take one.

Training (``split="train"``) resamples each worker's shards endlessly and ends every epoch after
``epoch_batches`` batches on every rank. Other splits read each shard once per pass, in an order
and with crops and masks fixed by ``seed``: every pass gives the same batches.

Stages, in one direction: source -> decode (``pipeline.stages``, shared with fine-tuning) -> crop
(``crop_halves``: two ``Window``s into a decoded segment) -> pair -> mask (``pipeline.masking``: the
pair's choice and the mask's draws, on opaque halves) -> batch.  Until the batch is written a crop is
only that plan; ``collate`` then writes each crop's target (``write_crop``: the windows, then the
seam's separator) and input once, straight into the batch's shared memory (``defer_crop``,
``pipeline.batch_ring.Deferred``): nothing is cropped, copied and stacked again.

With ``device="cuda"`` (GPU training) batches arrive on the GPU, and the workers write only the
target: the masked input is built there from the target and the mask's draws (``finish_batch``,
``pipeline.masking.mask_batch``: a small operation per selected token), so the workers write, and the
batches carry between processes and to the GPU, half the bytes (4 MB per crop instead of 8).

A fine-tuning loader calls ``build_loader`` with the stems shards and its own task (crops at
``crop_start`` taken with ``interleaved``, remix, magnitudes with ``normalise``), getting the same
source, shuffling, decoding, batching, workers and ``stats()``.

Speed: the CPU time of a crop is mostly decoding its segment and writing target and input into the
batch (figures: ``benchmarks/README.md``). Workers write batches into reused shared memory
(``pipeline.batch_ring.BatchRing``): a batch the caller keeps is never overwritten.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import webdataset as wds

from specbert.configs import Config, ConfigError, from_dict
from specbert.configs.audio import AudioConfig
from specbert.configs.loader import LoaderConfig
from specbert.pipeline.batch_ring import Deferred
from specbert.pipeline.manifest import Manifest, read_manifest
from specbert.pipeline.masking import (
    mask_batch,
    mask_sample,
    next_segment_pairs,
    seam_frames,
    write_separator,
)
from specbert.pipeline.schema import OK, SPECTROGRAM, TRAIN
from specbert.pipeline.spectral import clip_magnitudes, model_view, peak_scale
from specbert.pipeline.stages import (
    SKIP_KINDS,
    BatchStream,
    Seeds,
    Skips,
    count_short,
    crop_start,
    each,
    interleaved,
)

log = logging.getLogger(__name__)


class EmptySplit(ConfigError):
    """A manifest has no shards of the split asked for."""


class Loader:
    """An iterable of batch dicts over a ``BatchStream`` run by DataLoader workers.

    Every batch arrives with its worker's cumulative skip counts, which are removed from the batch
    and kept here: ``stats()`` sums them over the workers. Its tensors are reused by the worker
    once the caller has dropped them (see ``pipeline.batch_ring.BatchRing``). With a ``device`` the
    tensors are moved there (non-blocking, from pinned memory on CUDA); ``finish(batch, device)``,
    if given, does that and completes the batch there.
    """

    def __init__(self, stream: BatchStream, num_workers: int, epoch_batches: int | None,
                 device: torch.device | str | None = None, finish=None):
        self.epoch_batches, self.ring = epoch_batches, stream.ring
        self.device, self.finish = None if device is None else torch.device(device), finish
        pin = torch.cuda.is_available() and (self.device is None or self.device.type == "cuda")
        self.loader = wds.WebLoader(
            stream, batch_size=None, num_workers=num_workers, pin_memory=pin,
            persistent_workers=num_workers > 0, worker_init_fn=ignore_stop_signals,
        )
        if epoch_batches is not None:
            self.loader = self.loader.with_epoch(epoch_batches)
        self.skipped: dict[int, dict[str, int]] = {}

    def __iter__(self):
        for batch in self.loader:
            self.skipped[batch.pop("worker")] = batch.pop("skipped")
            self.ring.release_on_drop(batch, batch.pop("ring"))
            if self.finish is not None:
                batch = self.finish(batch, self.device)
            elif self.device is not None:
                batch = to_device(batch, self.device, dtype=None)
            yield batch

    def __len__(self) -> int:
        if self.epoch_batches is None:
            raise TypeError("a finite (validation) pass has no fixed length")
        return self.epoch_batches

    def stats(self) -> dict[str, int]:
        """What the workers have skipped so far (unreadable shards, undecodable samples) and the segments
        shorter than a crop that they padded."""
        return {kind: sum(counts.get(kind, 0) for counts in self.skipped.values()) for kind in SKIP_KINDS}


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores SIGINT, and SIGTERM from anyone but its main
    process, so a signal to the whole process group (Ctrl-C; the SIGTERM of Slurm, Kubernetes or
    ``timeout``) stops only the main process, which saves a checkpoint and then shuts its workers down.
    (PyTorch's own handler exits on any SIGTERM, and the main process then fails with "DataLoader worker
    ... is killed by signal" before it can save.) The main process's own SIGTERM (``terminate()``, as
    PyTorch and multiprocessing stop workers at exit) still ends the worker: SIGTERM is blocked and a
    thread takes it with its sender's pid (``sigwaitinfo``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # before any other thread: they inherit it
    threading.Thread(target=_exit_on_sigterm_from, args=(os.getppid(),), daemon=True,
                     name="sigterm-from-main").start()


def _exit_on_sigterm_from(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)


def build_loader(shards: list[dict], task, *, batch_size: int, num_workers: int, seed: int, resampled: bool,
                 shuffle_buffer: int, epoch_batches: int | None, what: str = "shards",
                 device: torch.device | str | None = None, finish=None) -> Loader:
    """Any task's loader over manifest ``shards``, split over DDP ranks (from ``torch.distributed``
    or RANK/WORLD_SIZE) and then over workers; fewer workers are used when a rank has fewer shards.
    Batches arrive on ``device`` (default: the CPU), completed by ``finish`` (see ``Loader``)."""
    rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    mine = len(shards[rank::world_size])
    if mine == 0:
        raise ValueError(f"{what}: {len(shards)} shards for {world_size} ranks; every rank needs at least "
                         "one (ingest with a smaller ingest.shard_bytes)")
    if mine < num_workers:
        warnings.warn(f"{what}: {mine} shards on rank {rank}, so {mine} workers instead of {num_workers}",
                      stacklevel=2)
        num_workers = mine
    stream = BatchStream(shards, task, batch_size, seed, rank, world_size, resampled, shuffle_buffer,
                         workers=num_workers)
    return Loader(stream, num_workers, epoch_batches, device, finish)


def note_short_tracks(contents: Manifest, split: str, crop_frames: int, what: str) -> None:
    """Log how many tracks of ``split`` are shorter than a crop (their crops are padded with silence)."""
    short = [t for t in contents.tracks()
             if t["status"] == OK and t.get("split") == split and t["frames"] < crop_frames]
    if short:
        log.warning("%s: %d tracks are shorter than the %d-frame crop (the shortest: %s, %d frames); their "
                    "crops are padded with silence", what, len(short), crop_frames,
                    min(short, key=lambda t: t["frames"])["path"], min(t["frames"] for t in short))


def loader_config(config: Config | LoaderConfig | None, options: dict) -> LoaderConfig:
    """The run's loader settings with ``options`` (LoaderConfig field names) applied and checked."""
    base = config.loader if isinstance(config, Config) else config or LoaderConfig()
    return from_dict(LoaderConfig, {**dataclasses.asdict(base), **options}, where="loader")


def clip_to_peak(sample: dict) -> dict:
    """Decoded segment -> the same, its magnitudes clipped in place to [0, the track's peak]
    (``pipeline.spectral.clip_magnitudes``): once per segment, so that a crop of it is normalised by
    one multiplication (``Window.write``)."""
    clip_magnitudes(sample["spec"], sample["record"]["max_magnitude"])
    return sample


@dataclass(frozen=True, eq=False)
class Window:
    """Frames ``start:`` of a decoded segment ``spec`` (float16 ``[C, F, T]``, ``clip_to_peak``ed),
    its channels reversed if ``swap``: a crop not yet cut, written normalised by ``write``."""

    spec: torch.Tensor
    peak: float
    start: int
    swap: bool

    def write(self, out: torch.Tensor):
        """``out`` ``[C, model_bins, frames]`` = the model's bins of frames ``start : start + frames``,
        divided by the peak: in [0, 1]; silence (0) after the segment's end when it is shorter."""
        crop = model_view(self.spec)[:, :, self.start : self.start + out.shape[-1]]
        n = crop.shape[-1]
        sources = range(len(crop) - 1, -1, -1) if self.swap else range(len(crop))
        for channel, source in enumerate(sources):  # no flipped copy
            torch.mul(crop[source], peak_scale(self.peak), out=out[channel, :, :n])
        out[..., n:] = 0.0


def crop_halves(sample: dict, frames: int, swap: float, rng: np.random.Generator) -> dict:
    """Decoded segment (``clip_to_peak``ed) -> a random crop of ``frames`` frames as its two ``halves``
    (``Window``s, nothing copied yet), its channels swapped with probability ``swap``."""
    record = sample["record"]
    spec = torch.from_numpy(sample["spec"])
    start, swapped = crop_start(spec.shape[-1], frames, rng), bool(rng.random() < swap)
    halves = tuple(Window(spec, float(record["max_magnitude"]), start + offset, swapped)
                   for offset in (0, frames // 2))
    return {"key": sample["key"], "track": str(record["track_id"]), "halves": halves}


def write_crop(sample: dict, cfg: LoaderConfig, target: torch.Tensor):
    """Write a paired crop (``next_segment_pairs``) into ``target`` ``[C, bins, T]``: the two halves
    normalised, then the separator over the seam (with ``cfg.next_segment``). Its masked input is
    ``mask_batch`` of it (in the worker, or where the batch is used)."""
    half = target.shape[-1] // 2
    for window, frames in zip(sample["halves"], (target[..., :half], target[..., half:]), strict=True):
        window.write(frames)
    if cfg.next_segment:
        seam = seam_frames(target.shape[-1], cfg.token_frames)
        write_separator(target, seam.start, seam.stop)


def defer_crop(sample: dict, cfg: LoaderConfig, bins: int, with_input: bool = True) -> dict:
    """A paired, masked crop -> its batch entries, ``target`` (and ``input`` if ``with_input``)
    ``Deferred``: written by ``write_crop`` and ``mask_batch`` straight into the batch (frames-major,
    as the segments). Without the input, ``finish_batch`` builds it where the batch is used."""
    layout = ((len(sample["halves"][0].spec), bins, cfg.crop_frames), torch.float16, (0, 2, 1))

    def write(rows: dict[str, torch.Tensor]):
        write_crop(sample, cfg, rows["target"])
        if with_input:
            mask_batch(rows["target"][None], sample["kinds"][None], torch.tensor([sample["noise_seed"]]),
                       cfg.token_frames, out=rows["input"][None], value=cfg.mask_value)

    names = ("target", "input") if with_input else ("target",)
    return {
        "key": sample["key"], "track": sample["track"], "pair_track": sample["pair_track"],
        "is_next": sample["is_next"], "masked": sample["masked"], "kinds": sample["kinds"],
        "noise_seed": sample["noise_seed"], "deferred": Deferred(dict.fromkeys(names, layout), write),
    }


def finish_batch(batch: dict, device: torch.device | None, token_frames: int, value: float) -> dict:
    """A batch whose workers left out the masked input -> the documented batch on ``device`` (None:
    where it is), ``input`` built there by ``mask_batch`` (its draws read on the CPU: no device sync)."""
    kinds, seeds = batch["kinds"], batch["noise_seed"]
    batch = batch if device is None else to_device(batch, device, dtype=None)
    return {**batch, "input": mask_batch(batch["target"], kinds, seeds, token_frames, value=value)}


@dataclass(frozen=True)
class PretrainTask:
    """The pretraining stages between decoding and batching: clip -> crops (as windows) -> next-segment
    pairs -> span masking -> written into the batch at collate time (the masked input too, unless
    ``input_in_worker`` is off: then ``finish_batch`` builds it where the batch is used)."""

    cfg: LoaderConfig
    bins: int
    input_in_worker: bool = True

    def __call__(self, seeds: Seeds, skips: Skips) -> list:
        cfg = self.cfg
        crop = partial(crop_halves, frames=cfg.crop_frames, swap=cfg.channel_swap, rng=seeds.numpy("crop"))
        return [
            partial(count_short, frames=cfg.crop_frames, skips=skips),
            each(clip_to_peak),
            partial(interleaved, f=crop, times=cfg.crops_per_segment, pool=cfg.segment_pool,
                    rng=seeds.numpy("interleave")),
            partial(next_segment_pairs, cfg=cfg, rng=seeds.numpy("pair")),
            each(partial(mask_sample, cfg=cfg, rng=seeds.numpy("mask"))),
            each(partial(defer_crop, cfg=cfg, bins=self.bins, with_input=self.input_in_worker)),
        ]


def build_pretrain_loader(manifest, split: str = TRAIN, batch_size: int = 8, num_workers: int = 2,
                          seed: int = 0, config: Config | LoaderConfig | None = None,
                          device: torch.device | str | None = None, input_on_device: bool | None = None,
                          **options) -> Loader:
    """Batches for pretraining from the spectrogram shards of ``split`` in the ingest's ``manifest``.

    ``device``: where the batches are used; they arrive there (float16 kept; non-blocking copies from
    pinned memory on CUDA; default: the CPU, as the workers made them). ``input_on_device`` (default:
    when ``device`` is not the CPU) builds the masked input there instead of in the workers, which
    then write and ship half the bytes. On the CPU the workers' copy is the cheaper one.

    ``config`` is the run's ``Config`` (or its ``LoaderConfig``); ``options`` override its loader
    fields by name (``crop_frames=128``, ``mask_rate=0.4``, ``next_segment=False``, ...). An
    unknown name or a bad value raises ``ConfigError``. The STFT settings (hence ``bins``) are the
    manifest's.
    """
    cfg = loader_config(config, options)
    contents = read_manifest(manifest)
    if contents.config.get("kind") != SPECTROGRAM:
        raise ConfigError(f"{manifest}: a {contents.config.get('kind')} manifest; pretraining reads the "
                          "spectrogram shards of a library (write them with `specbert ingest`)")
    audio = from_dict(AudioConfig, contents.config.get("audio", {}), where="manifest audio")
    segment = contents.config.get("ingest", {}).get("segment_frames", cfg.crop_frames)
    if segment < cfg.crop_frames:
        raise ConfigError(f"{manifest}: segments of {segment} frames are shorter than crop_frames "
                          f"({cfg.crop_frames})")
    shards = [s for s in contents.shards(split) if s["kind"] == SPECTROGRAM]
    if not shards:
        splits = sorted({s["split"] for s in contents.shards() if s["kind"] == SPECTROGRAM})
        raise EmptySplit(f"{manifest}: no spectrogram shards in split {split!r} "
                         f"(splits: {', '.join(splits) or 'none'})")
    note_short_tracks(contents, split, cfg.crop_frames, f"{manifest} ({split})")
    train = split == TRAIN
    if not train:  # every segment once per pass
        cfg = dataclasses.replace(cfg, crops_per_segment=1, segment_pool=1)
    if input_on_device is None:
        input_on_device = device is not None and torch.device(device).type != "cpu"
    return build_loader(
        shards, PretrainTask(cfg, audio.model_bins, input_in_worker=not input_on_device),
        batch_size=batch_size, num_workers=num_workers, seed=seed, resampled=train,
        shuffle_buffer=cfg.shuffle_buffer, epoch_batches=cfg.epoch_batches if train else None,
        what=f"{manifest} ({split})", device=device,
        finish=partial(finish_batch, token_frames=cfg.token_frames, value=cfg.mask_value) if input_on_device
        else None,
    )


def to_device(batch: dict, device: torch.device | str, dtype: torch.dtype | None = torch.float32) -> dict:
    """Move a batch's tensors to ``device``, widening float16 to ``dtype`` there (None: kept);
    other entries pass."""
    moved = {}
    for name, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            value = value.to(dtype) if value.is_floating_point() and dtype is not None else value
        moved[name] = value
    return moved
