"""Loader stages shared by pretraining and fine-tuning: source, read, decode, crop, batch.

Each stage is a small function over a stream of samples (webdataset style) or over one sample,
taking its random generator explicitly, so tests can call it directly. ``BatchStream`` chains

    shard order -> read shards -> shuffle -> decode -> task stages -> batch -> skip counts

where the task stages (crop, pairing, masking for pretraining; crop and remix for fine-tuning)
come from the caller. Shards that cannot be read and samples that fail to decode are skipped,
counted and warned about (no sleep, no crash); the counts travel with every batch.
"""

from __future__ import annotations

import random
import tarfile
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.shards import decode_sample, iter_zarr_shard

SKIP_KINDS = ("bad_shards", "bad_samples", "short_segments")
MAX_EMPTY_SHARDS = 100  # consecutive shards without one readable sample: give up (all shards broken)


class Skips:
    """What one worker skipped, by kind (``SKIP_KINDS``); every skip also issues a RuntimeWarning."""

    def __init__(self):
        self.counts = Counter({kind: 0 for kind in SKIP_KINDS})

    def add(self, kind: str, why: str):
        self.counts[kind] += 1
        warnings.warn(f"loader skipped ({kind}): {why}", RuntimeWarning, stacklevel=2)


@dataclass(frozen=True)
class Seeds:
    """The random streams of one worker's pass, reproducible from (seed, rank, worker, epoch).

    Each stage draws from its own stream (named by the stage), so changing one stage's draws
    leaves the others' unchanged.
    """

    seed: int
    rank: int
    worker: int
    epoch: int

    def numpy(self, stage: str) -> np.random.Generator:
        stream = zlib.crc32(stage.encode())
        return np.random.default_rng([self.seed, self.rank, self.worker, self.epoch, stream])

    def python(self, stage: str) -> random.Random:
        return random.Random(f"{self.seed}/{self.rank}/{self.worker}/{self.epoch}/{stage}")


def worker_info() -> tuple[int, int]:
    """(this DataLoader worker's id, number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def each(f: Callable[[dict], dict], times: int = 1) -> Callable[[Iterable[dict]], Iterator[dict]]:
    """A per-sample function as a stream stage, called ``times`` times on every sample."""

    def stage(samples: Iterable[dict]) -> Iterator[dict]:
        for sample in samples:
            for _ in range(times):
                yield f(sample)

    return stage


def shard_order(shards: list[dict], rng: random.Random, resampled: bool) -> Iterator[dict]:
    """Resampled: endless draws with replacement (training); else every shard once, shuffled."""
    if not resampled:
        yield from rng.sample(shards, len(shards))
        return
    while True:
        yield rng.choice(shards)


def tar_samples(path: str) -> Iterator[dict]:
    """Raw samples of a local tar shard, as ``webdataset.WebDataset`` yields them: members grouped by
    key with webdataset's ``group_by_keys``, but each member read in one call from a seekable file
    (webdataset's streaming reader copies in 10 KB blocks: 3x slower for 8 MB members)."""
    with tarfile.open(path, mode="r:") as archive:
        members = ({"fname": m.name, "data": archive.extractfile(m).read(), "__url__": path}
                   for m in archive if m.isreg())
        yield from wds.tariterators.group_by_keys(members)


def open_shard(shard: dict) -> Iterator[dict]:
    """Raw samples of one manifest shard, tar or zarr, in the form ``decode_sample`` takes."""
    if shard["format"] == "zarr":
        return iter_zarr_shard(shard["path"])
    return tar_samples(shard["path"])


def read_shards(shards: Iterable[dict], skips: Skips) -> Iterator[dict]:
    """Raw samples of each shard. A shard that fails to open or read, or ends before the manifest's
    sample count (a truncated tar can end silently), counts as ``bad_shards``; the samples read
    before the failure are kept."""
    empty = 0
    for shard in shards:
        count = 0
        try:
            for raw in open_shard(shard):
                count += 1
                yield raw
        except Exception as err:  # noqa: BLE001 - any failure of a shard is a skip, never a crash
            skips.add("bad_shards", f"{shard['path']}: {type(err).__name__}: {err}")
        else:
            if count < shard["samples"]:
                skips.add("bad_shards", f"{shard['path']}: {count} of {shard['samples']} samples")
        empty = 0 if count else empty + 1
        if empty >= MAX_EMPTY_SHARDS:
            raise RuntimeError(f"{empty} shards in a row had no readable sample (see the warnings)")


def decode_samples(raws: Iterable[dict], skips: Skips) -> Iterator[dict]:
    """``decode_sample`` over the stream; a sample that fails to decode counts as ``bad_samples``."""
    for raw in raws:
        try:
            yield decode_sample(raw)
        except Exception as err:  # noqa: BLE001 - corrupt bytes raise anything
            skips.add("bad_samples", f"{raw.get('__key__')}: {type(err).__name__}: {err}")


def long_enough(samples: Iterable[dict], frames: int, skips: Skips) -> Iterator[dict]:
    """Pass samples of at least ``frames`` frames; count the others as ``short_segments``."""
    for sample in samples:
        if sample["record"]["frames"] >= frames:
            yield sample
        else:
            skips.add("short_segments", f"{sample['key']}: {sample['record']['frames']} < {frames} frames")


def crop_start(length: int, frames: int, rng: np.random.Generator) -> int:
    """A uniform random start of a ``frames`` window in ``length`` frames."""
    return int(rng.integers(length - frames + 1))


def random_crop(
    spec: np.ndarray, frames: int, rng: np.random.Generator, bins: int, swap: float, channel_axis: int = -3
) -> torch.Tensor:
    """A random window ``[..., C, :bins, start:start + frames]`` of ``spec`` ``[..., C, F, T]``
    (a view when not swapped), its channels reversed with probability ``swap``."""
    start = crop_start(spec.shape[-1], frames, rng)
    crop = torch.from_numpy(spec[..., :bins, start : start + frames])
    return crop.flip(channel_axis) if rng.random() < swap else crop


def normalise(magnitude: torch.Tensor, peak: float, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """``clip(magnitude / peak, 0, 1)`` as a new ``dtype`` tensor of the same shape and memory order:
    the model's input in training (float16 batches) and in separation (float32)."""
    out = torch.empty_like(magnitude, dtype=dtype)
    torch.mul(magnitude, 1.0 / max(float(peak), 1e-12), out=out)
    return out.clamp_(0.0, 1.0)


def stack(values: list[torch.Tensor], shared: bool) -> torch.Tensor:
    """``torch.stack`` that keeps the samples' memory order (a frames-major ``[C, bins, T]`` view
    stays frames-major: a plain copy instead of a transpose), into shared memory if ``shared``."""
    first = values[0]
    order = sorted(range(first.dim()), key=lambda d: -first.stride(d))  # outermost dimension first
    out = torch.empty((len(values), *(first.shape[d] for d in order)), dtype=first.dtype)
    out = out.share_memory_() if shared else out
    torch.stack([value.permute(order) for value in values], out=out)
    return out.permute(0, *(1 + order.index(d) for d in range(first.dim())))


def collate(samples: list[dict]) -> dict:
    """Samples -> a batch: tensors stacked ``[B, ...]`` (in a worker straight into shared memory, so
    they cross to the main process without another copy), bools and numbers as tensors, the rest
    (strings) as lists."""
    batch = {}
    for name, first in samples[0].items():
        values = [sample[name] for sample in samples]
        if isinstance(first, torch.Tensor):
            batch[name] = stack(values, shared=get_worker_info() is not None)
        elif isinstance(first, (bool, int, float)):
            batch[name] = torch.tensor(values)
        else:
            batch[name] = values
    return batch


def with_skips(batches: Iterable[dict], skips: Skips, worker: int) -> Iterator[dict]:
    """Attach the worker's cumulative skip counts (``skipped``) and its id (``worker``) to every batch."""
    for batch in batches:
        yield {**batch, "skipped": dict(skips.counts), "worker": worker}


class BatchStream(IterableDataset):
    """One rank's stream of batches from manifest shards (the dataset a DataLoader's workers run).

    Each worker takes a disjoint share of the shards (split by rank, then by worker, like
    webdataset's ``split_by_node`` and ``split_by_worker``; the rank is fixed when the stream is
    built). Each pass (``__iter__``) builds the stages afresh from ``Seeds(seed, rank, worker,
    epoch)``; the epoch advances per pass when ``resampled`` (training) and stays 0 otherwise, so
    validation passes repeat exactly. ``task(seeds, skips)`` returns the stages between decoding and
    batching. Batches are whole when resampled; the last batch of a finite pass may be short.
    """

    def __init__(self, shards: list[dict], task: Callable, batch_size: int, seed: int, rank: int,
                 world_size: int, resampled: bool, shuffle_buffer: int):
        super().__init__()
        self.shards, self.task, self.batch_size, self.seed = shards, task, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.resampled, self.shuffle_buffer = resampled, shuffle_buffer
        self.epoch = 0
        self.skips = Skips()

    def __iter__(self) -> Iterator[dict]:
        worker, workers = worker_info()
        seeds = Seeds(self.seed, self.rank, worker, self.epoch)
        self.epoch += int(self.resampled)
        shards = self.shards[self.rank :: self.world_size][worker::workers]
        pipeline = wds.DataPipeline(
            partial(shard_order, shards, seeds.python("shards"), self.resampled),
            partial(read_shards, skips=self.skips),
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=seeds.python("shuffle")),
            partial(decode_samples, skips=self.skips),
            *self.task(seeds, self.skips),
            wds.batched(self.batch_size, collation_fn=collate, partial=not self.resampled),
            partial(with_skips, skips=self.skips, worker=worker),
        )
        return iter(pipeline)
