"""Loader stream stages shared by pretraining and fine-tuning: source, read, decode, crop, batch.

Each stage is a small function over a stream of samples (webdataset style) or over one sample,
taking its random generator explicitly, so tests can call it directly. ``BatchStream`` chains

    shard order -> read shards -> shuffle -> decode -> task stages -> batch -> skip counts

where the task stages (crop, pairing, masking for pretraining; crop and remix for fine-tuning)
come from the caller. Shards that cannot be read and samples that fail to decode are skipped,
counted and warned about (no sleep, no crash); the counts travel with every batch. When nothing
can be read any more (``MAX_EMPTY_SHARDS`` shards or ``MAX_BAD_SAMPLES`` samples in a row fail),
the stream raises a RuntimeError naming the last shard and its error instead of retrying forever.

Batches are written into reused shared memory (``pipeline.batch_ring``); a worker process keeps the
memory it frees (``pipeline.worker``).
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
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from specbert.pipeline.batch_ring import BatchRing
from specbert.pipeline.schema import ZARR
from specbert.pipeline.shards import decode_sample, iter_zarr_shard
from specbert.pipeline.worker import setup_worker, worker_info

SKIP_KINDS = ("bad_shards", "bad_samples", "padded_segments")  # counted per worker; padded ones are used
MAX_EMPTY_SHARDS = 100  # consecutive shards without one readable sample: give up (all shards broken)
MAX_BAD_SAMPLES = 200  # consecutive samples that fail to decode: give up (all samples broken)


class Skips:
    """What one worker skipped or padded, by kind (``SKIP_KINDS``); every skip also issues a RuntimeWarning
    (a padded segment only the first time: short tracks are normal, and the manifest lists them)."""

    def __init__(self):
        self.counts = Counter({kind: 0 for kind in SKIP_KINDS})

    def add(self, kind: str, why: str):
        self.counts[kind] += 1
        if kind != "padded_segments" or self.counts[kind] == 1:
            warnings.warn(f"loader {'padded' if kind == 'padded_segments' else 'skipped'} ({kind}): {why}",
                          RuntimeWarning, stacklevel=2)


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


def each(f: Callable[[dict], dict], times: int = 1) -> Callable[[Iterable[dict]], Iterator[dict]]:
    """A per-sample function as a stream stage, called ``times`` times on every sample."""

    def stage(samples: Iterable[dict]) -> Iterator[dict]:
        for sample in samples:
            for _ in range(times):
                yield f(sample)

    return stage


def interleaved(samples: Iterable[dict], f: Callable[[dict], dict], times: int, pool: int,
                rng: np.random.Generator) -> Iterator[dict]:
    """``times`` results of ``f`` per sample, each from a random one of (up to) the last ``pool``
    samples, so several crops per decoded segment still give mixed batches (``times`` = 1 and
    ``pool`` = 1 is ``each(f)``). Holds up to ``pool`` decoded samples."""
    live: list[list] = []  # [sample, results left]

    def draw() -> dict:
        i = int(rng.integers(len(live)))
        entry = live[i]
        entry[1] -= 1
        if entry[1] == 0:
            live[i] = live[-1]
            live.pop()
        return f(entry[0])

    for sample in samples:
        live.append([sample, times])
        while len(live) >= pool:
            yield draw()
    while live:
        yield draw()


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
    if shard["format"] == ZARR:
        return iter_zarr_shard(shard["path"])
    return tar_samples(shard["path"])


def read_shards(shards: Iterable[dict], skips: Skips) -> Iterator[dict]:
    """Raw samples of each shard. A shard that fails to open or read, or ends before the manifest's
    sample count (a truncated tar can end silently), counts as ``bad_shards``; the samples read
    before the failure are kept. RuntimeError after ``MAX_EMPTY_SHARDS`` shards in a row without a
    sample."""
    empty = 0
    for shard in shards:
        count, why = 0, None
        try:
            for raw in open_shard(shard):
                count += 1
                yield raw
        except Exception as err:  # noqa: BLE001 - any failure of a shard is a skip, never a crash
            why = f"{shard['path']}: {type(err).__name__}: {err}"
        else:
            if count < shard["samples"]:
                why = f"{shard['path']}: {count} of {shard['samples']} samples"
        if why:
            skips.add("bad_shards", why)
        empty = 0 if count else empty + 1
        if empty >= MAX_EMPTY_SHARDS:
            raise RuntimeError(f"{empty} shards in a row had no readable sample; "
                               f"the last: {why or shard['path']}")


def decode_samples(raws: Iterable[dict], skips: Skips) -> Iterator[dict]:
    """``decode_sample`` over the stream; a sample that fails to decode counts as ``bad_samples``.
    RuntimeError (naming the shard and the error) after ``MAX_BAD_SAMPLES`` failures in a row."""
    failed = 0
    for raw in raws:
        try:
            sample = decode_sample(raw)
        except Exception as err:  # noqa: BLE001 - corrupt bytes raise anything
            why = f"{raw.get('__url__')}: {raw.get('__key__')}: {type(err).__name__}: {err}"
            skips.add("bad_samples", why)
            failed += 1
            if failed >= MAX_BAD_SAMPLES:
                raise RuntimeError(f"{failed} samples in a row failed to decode; the last: {why}") from err
            continue
        failed = 0
        yield sample


def count_short(samples: Iterable[dict], frames: int, skips: Skips) -> Iterator[dict]:
    """Pass every sample; count those shorter than ``frames`` (a short track: its crops are padded with
    silence after its end) as ``padded_segments``."""
    for sample in samples:
        if sample["record"]["frames"] < frames:
            skips.add("padded_segments", f"{sample['key']}: {sample['record']['frames']} < {frames} frames, "
                      "padded with silence")
        yield sample


def crop_start(length: int, frames: int, rng: np.random.Generator) -> int:
    """A uniform random start of a ``frames`` window in ``length`` frames (0 when the window is longer)."""
    return int(rng.integers(max(length - frames, 0) + 1))


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
                 world_size: int, resampled: bool, shuffle_buffer: int, workers: int = 0):
        super().__init__()
        self.shards, self.task, self.batch_size, self.seed = shards, task, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.resampled, self.shuffle_buffer = resampled, shuffle_buffer
        self.epoch = 0
        self.skips = Skips()
        self.ring = BatchRing(workers)

    def __iter__(self) -> Iterator[dict]:
        worker, workers = worker_info()
        if get_worker_info() is not None:
            setup_worker()
            self.ring.new_pass(worker)
        seeds = Seeds(self.seed, self.rank, worker, self.epoch)
        self.epoch += int(self.resampled)
        shards = self.shards[self.rank :: self.world_size][worker::workers]
        pipeline = wds.DataPipeline(
            partial(shard_order, shards, seeds.python("shards"), self.resampled),
            partial(read_shards, skips=self.skips),
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=seeds.python("shuffle")),
            partial(decode_samples, skips=self.skips),
            *self.task(seeds, self.skips),
            wds.batched(self.batch_size, collation_fn=self.ring.collate, partial=not self.resampled),
            partial(with_skips, skips=self.skips, worker=worker),
        )
        return iter(pipeline)
