"""The pretraining loader: manifest shards -> batches of masked, paired spectrogram crops.

    loader = build_pretrain_loader("shards/manifest.jsonl", split="train", batch_size=8, num_workers=4)
    for batch in loader:
        batch = to_device(batch, "cuda")   # float16 crosses processes; float32 on the device
        ...
    log(loader.stats())                    # {"bad_shards": 0, "bad_samples": 0, "short_segments": 0}

A batch is a dict of

    input      float16 [B, C, bins, T]  the masked crop (C = 2 channels, bins = 1024, T = crop_frames)
    target     float16 [B, C, bins, T]  the clean crop, clip(|X| / track max, 0, 1), separator at the seam
    masked     bool    [B, T]           frames of selected tokens (the loss covers these)
    is_next    bool    [B]              the second half is the true continuation
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

Stages: see ``pipeline.stages`` (source, read, decode, crop, batch; shared with fine-tuning) and
``pipeline.masking`` (pairs and span masking). A fine-tuning loader calls ``build_loader`` with
the stems shards and its own task (crops at ``crop_start`` taken with ``interleaved``, remix,
magnitudes with ``normalise``), getting the same source, shuffling, decoding, batching, workers
and ``stats()``.

Speed (``benchmarks/loader.py``): about 120 crops per CPU second of a worker from tar shards, 100
from zarr, with the defaults on a shared 2-core VM. Workers write batches into reused shared memory
(``pipeline.stages.BatchRing``): a batch the caller keeps is never overwritten.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import webdataset as wds

from configs import Config, ConfigError, from_dict
from configs.audio import AudioConfig
from configs.loader import LoaderConfig
from pipeline.manifest import read_manifest
from pipeline.masking import mask_sample, next_segment_pairs
from pipeline.stages import (
    SKIP_KINDS,
    BatchStream,
    Seeds,
    Skips,
    crop_start,
    each,
    interleaved,
    long_enough,
    normalise,
)


class Loader:
    """An iterable of batch dicts over a ``BatchStream`` run by DataLoader workers.

    Every batch arrives with its worker's cumulative skip counts, which are removed from the batch
    and kept here: ``stats()`` sums them over the workers. Its tensors are reused by the worker
    once the caller has dropped them (see ``pipeline.stages.BatchRing``).
    """

    def __init__(self, stream: BatchStream, num_workers: int, epoch_batches: int | None):
        self.epoch_batches, self.ring = epoch_batches, stream.ring
        self.loader = wds.WebLoader(
            stream, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
            persistent_workers=num_workers > 0,
        )
        if epoch_batches is not None:
            self.loader = self.loader.with_epoch(epoch_batches)
        self.skipped: dict[int, dict[str, int]] = {}

    def __iter__(self):
        for batch in self.loader:
            self.skipped[batch.pop("worker")] = batch.pop("skipped")
            self.ring.release_on_drop(batch, batch.pop("ring"))
            yield batch

    def __len__(self) -> int:
        if self.epoch_batches is None:
            raise TypeError("a finite (validation) pass has no fixed length")
        return self.epoch_batches

    def stats(self) -> dict[str, int]:
        """What the workers have skipped so far: unreadable shards, undecodable samples, short segments."""
        return {kind: sum(counts.get(kind, 0) for counts in self.skipped.values()) for kind in SKIP_KINDS}


def build_loader(shards: list[dict], task, *, batch_size: int, num_workers: int, seed: int, resampled: bool,
                 shuffle_buffer: int, epoch_batches: int | None, what: str = "shards") -> Loader:
    """Any task's loader over manifest ``shards``, split over DDP ranks (from ``torch.distributed``
    or RANK/WORLD_SIZE) and then over workers; fewer workers are used when a rank has fewer shards."""
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
    return Loader(stream, num_workers, epoch_batches)


def loader_config(config: Config | LoaderConfig | None, options: dict) -> LoaderConfig:
    """The run's loader settings with ``options`` (LoaderConfig field names) applied and checked."""
    base = config.loader if isinstance(config, Config) else config or LoaderConfig()
    return from_dict(LoaderConfig, {**dataclasses.asdict(base), **options}, where="loader")


def normalise_segment(sample: dict) -> dict:
    """Decoded segment -> the same sample with ``spec`` (float16 ``[C, F, T]``, as a tensor)
    normalised in place by the track's max magnitude and clipped to [0, 1]: once per segment, not
    per crop (about 2 ms per 2048 frames)."""
    spec = torch.from_numpy(sample["spec"])
    normalise(spec, sample["record"]["max_magnitude"], out=spec)
    return {**sample, "spec": spec}


def crop_magnitude(sample: dict, frames: int, bins: int, swap: float, rng: np.random.Generator) -> dict:
    """Normalised segment (``normalise_segment``) -> ``target`` float16 ``[C, bins, frames]``: a copy
    of a random window, its channels swapped with probability ``swap``."""
    record, spec = sample["record"], sample["spec"]
    start = crop_start(spec.shape[-1], frames, rng)
    crop = spec[:, :bins, start : start + frames]
    target = torch.empty_like(crop)  # frames-major, as the segment
    order = range(len(crop) - 1, -1, -1) if rng.random() < swap else range(len(crop))
    for channel, source in enumerate(order):  # no flipped copy
        target[channel].copy_(crop[source])
    return {"key": sample["key"], "track": str(record["track_id"]), "target": target}


@dataclass(frozen=True)
class PretrainTask:
    """The pretraining stages between decoding and batching: normalise -> crops -> next-segment pairs
    -> span masking."""

    cfg: LoaderConfig
    bins: int

    def __call__(self, seeds: Seeds, skips: Skips) -> list:
        cfg = self.cfg
        crop = partial(crop_magnitude, frames=cfg.crop_frames, bins=self.bins, swap=cfg.channel_swap,
                       rng=seeds.numpy("crop"))
        return [
            partial(long_enough, frames=cfg.crop_frames, skips=skips),
            each(normalise_segment),
            partial(interleaved, f=crop, times=cfg.crops_per_segment, pool=cfg.segment_pool,
                    rng=seeds.numpy("interleave")),
            partial(next_segment_pairs, cfg=cfg, rng=seeds.numpy("pair")),
            each(partial(mask_sample, cfg=cfg, rng=seeds.numpy("mask"))),
        ]


def build_pretrain_loader(manifest, split: str = "train", batch_size: int = 8, num_workers: int = 2,
                          seed: int = 0, config: Config | LoaderConfig | None = None, **options) -> Loader:
    """Batches for pretraining from the spectrogram shards of ``split`` in the ingest's ``manifest``.

    ``config`` is the run's ``Config`` (or its ``LoaderConfig``); ``options`` override its loader
    fields by name (``crop_frames=128``, ``mask_rate=0.4``, ``next_segment=False``, ...). An
    unknown name or a bad value raises ``ConfigError``. The STFT settings (hence ``bins``) are the
    manifest's.
    """
    cfg = loader_config(config, options)
    contents = read_manifest(manifest)
    audio = from_dict(AudioConfig, contents.config.get("audio", {}), where="manifest audio")
    segment = contents.config.get("ingest", {}).get("segment_frames", cfg.crop_frames)
    if segment < cfg.crop_frames:
        raise ConfigError(f"{manifest}: segments of {segment} frames are shorter than crop_frames "
                          f"({cfg.crop_frames})")
    shards = [s for s in contents.shards(split) if s["kind"] == "spectrogram"]
    if not shards:
        splits = sorted({s["split"] for s in contents.shards() if s["kind"] == "spectrogram"})
        raise ConfigError(f"{manifest}: no spectrogram shards in split {split!r} "
                          f"(splits: {', '.join(splits) or 'none'})")
    train = split == "train"
    if not train:  # every segment once per pass
        cfg = dataclasses.replace(cfg, crops_per_segment=1, segment_pool=1)
    return build_loader(
        shards, PretrainTask(cfg, audio.model_bins), batch_size=batch_size, num_workers=num_workers,
        seed=seed, resampled=train, shuffle_buffer=cfg.shuffle_buffer,
        epoch_batches=cfg.epoch_batches if train else None, what=f"{manifest} ({split})",
    )


def to_device(batch: dict, device: torch.device | str, dtype: torch.dtype = torch.float32) -> dict:
    """Move a batch's tensors to ``device``, widening float16 to ``dtype`` there; other entries pass."""
    moved = {}
    for name, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            value = value.to(dtype) if value.is_floating_point() else value
        moved[name] = value
    return moved
