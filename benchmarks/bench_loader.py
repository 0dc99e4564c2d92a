"""Pretraining loader speed: crops per second per loader core, from tar and from zarr shards, against
reading the raw samples of the same tar shards.

    python -m benchmarks.bench_loader                    # example library -> ingest (tar, zarr) under --data
    python -m benchmarks.bench_loader --batches 60 --workers 2

Crops are the defaults: 1024 frames x 1024 bins, stereo, masked and paired, batches of 8, from
segments of 2048 frames (codec f16r6), ``crops_per_segment`` crops per decoded segment. Rows (the
stage rows in CPU time per crop, a segment's reading and decoding shared by its crops):

    read tar (webdataset)   webdataset.WebDataset over the tar shards: raw bytes, nothing decoded
    read tar (loader)       the loader's reader (pipeline.stages.tar_samples), raw bytes
    decode                  pipeline.shards.decode_sample (checksum + blosc + codec)
    read + decode zarr      the same samples from the zarr shards (pipeline.shards.iter_zarr_shard)
    clip / crop / pairs / mask    the loader's stages, each alone (crops are windows, masks draws)
    write ...               collate: the crops written into a reused shared-memory batch, as a worker
                            does: target and masked input (CPU training), or the target alone (GPU
                            training: ``build_pretrain_loader(device="cuda")``)
    mask_batch              GPU training: the masked input built from the target where the batch is
                            used (``finish_batch``), not by a worker (timed here, on this CPU)
    processing ...          clip .. write, against reading (+ decoding), and with decoding against
                            reading alone, for CPU and for GPU training
    loader tar|zarr, W=n    the whole pipeline: W=0 runs in this process (one core does everything),
                            W=n runs n DataLoader workers ("input built by main": as in GPU training,
                            this process builds the input, on this CPU here); per core (wall) =
                            crops/s / max(n, 1), and
                            crops per CPU second of the workers (W=0: of this process), which holds
                            on a busy machine; the main process's own CPU is shown apart

This process is set up as a DataLoader worker is (one torch and blosc thread, freed memory kept).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import psutil
import torch
import webdataset as wds

from specbert.configs import load_config
from specbert.configs.audio import AudioConfig
from specbert.configs.loader import LoaderConfig
from specbert.pipeline.batch_ring import RING_SLOTS, BatchRing
from specbert.pipeline.loader import (
    build_pretrain_loader,
    clip_to_peak,
    crop_halves,
    defer_crop,
    finish_batch,
)
from specbert.pipeline.manifest import read_manifest
from specbert.pipeline.masking import mask_sample, next_segment_pairs
from specbert.pipeline.shards import decode_sample, iter_zarr_shard
from specbert.pipeline.stages import tar_samples
from specbert.pipeline.worker import setup_worker


def ingest(data: Path) -> dict[str, Path]:
    """Example library (6 tracks of 50 s: one segment of 2048 frames each, one track per shard)
    ingested as tar and as zarr."""
    from specbert.pipeline.example_library import write_example_library
    from specbert.pipeline.ingest import ingest_library

    manifests = {fmt: data / fmt / "manifest.jsonl" for fmt in ("tar", "zarr")}
    if all(m.exists() for m in manifests.values()):
        return manifests
    library = data / "library"
    if not library.exists():
        write_example_library(library, seed=0, artists=2, albums_per_artist=1, songs_per_album=3, seconds=50)
    for fmt, manifest in manifests.items():
        cfg = load_config(None, ["ingest.val_fraction=0", "ingest.shard_bytes=1", f"ingest.format={fmt}"])
        ingest_library([library], [manifest.parent], cfg, progress=False, log=lambda line: None)
    return manifests


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:8.1f}/s  {1e3 * seconds / count:7.2f} ms each"


def timed(name: str, f, items: list, rows: list[str], crops_per_item: float = 1) -> float:
    """CPU seconds per crop of ``f`` over ``items`` (results dropped: memory is recycled as in the
    pipeline); CPU time, so other processes on the machine do not count."""
    start = time.process_time()
    for item in items:
        f(item)
    seconds = time.process_time() - start
    rows.append(f"{name:24s} {rate(round(crops_per_item * len(items)), seconds)}")
    return seconds / (crops_per_item * len(items))


def stage_rows(tar_manifest: Path, zarr_manifest: Path, crops_per_segment: int) -> list[str]:
    """Each stage alone, on one core, over the same samples (the page cache holds the shards), per
    crop: a segment's reading and decoding are shared by its ``crops_per_segment`` crops."""
    urls = [s["path"] for s in read_manifest(tar_manifest).shards("train")] * 4
    raws = [raw for url in urls for raw in tar_samples(url)]
    per_url = len(raws) / len(urls) * crops_per_segment
    rows: list[str] = [f"per crop, CPU time ({crops_per_segment} crops per decoded segment):"]
    wds_read = timed("read tar (webdataset)", lambda url: list(wds.WebDataset(url, shardshuffle=False)), urls,
                     rows, per_url)
    read = timed("read tar (loader)", lambda url: list(tar_samples(url)), urls, rows, per_url)
    decode = timed("decode", decode_sample, raws, rows, crops_per_segment)
    zarr_urls = [s["path"] for s in read_manifest(zarr_manifest).shards("train")] * 4
    timed("read + decode zarr", lambda url: list(map(decode_sample, iter_zarr_shard(url))), zarr_urls, rows,
          per_url)
    cfg, rng = LoaderConfig(), np.random.default_rng(0)
    decoded = [decode_sample(raw) for raw in raws]
    cost = timed("clip (per segment)", clip_to_peak, decoded, rows, crops_per_segment)
    decoded *= crops_per_segment
    crop = partial(crop_halves, frames=cfg.crop_frames, swap=cfg.channel_swap, rng=rng)
    cost += timed("crop (windows)", crop, decoded, rows)
    crops = [crop(sample) for sample in decoded]
    start = time.process_time()
    paired = list(next_segment_pairs(crops, cfg, rng))
    cost += (time.process_time() - start) / len(paired)
    rows.append(f"{'pairs':24s} {rate(len(paired), time.process_time() - start)}")
    cost += timed("mask (draw)", lambda sample: mask_sample(sample, cfg, rng), paired, rows)
    masked = [mask_sample(sample, cfg, rng) for sample in paired]
    writes = {}
    for with_input, label in ((True, "target + input"), (False, "target only")):
        deferred = [defer_crop(sample, cfg, AudioConfig().model_bins, with_input) for sample in masked]
        groups = [deferred[i : i + 8] for i in range(0, len(deferred) - 7, 8)]
        ring = BatchRing(workers=1)

        def collate(group: list[dict], ring=ring):
            ring.collate(group)
            ring.board.zero_()  # the main process has dropped the batch

        with as_worker():
            for group in groups[:RING_SLOTS]:  # first use of each slot: page faults, once per worker
                collate(group)
            writes[with_input] = timed(f"write {label}", collate, groups, rows, 8)
    batches = [BatchRing(workers=1).collate(group) for group in groups[:4]]  # target only: the last groups
    timed("mask_batch (GPU training)", partial(finish_batch, device=None, token_frames=cfg.token_frames),
          batches * 4, rows, 8)
    for with_input, label in ((True, "CPU training, input written by the workers"),
                              (False, "GPU training, input built on the GPU")):
        work = cost + writes[with_input]
        rows.append(f"{label}:")
        rows.append(f"  processing after decoding (clip .. write) {1e3 * work:6.2f} ms per crop = "
                    f"{work / (read + decode):5.2f}x reading and decoding (loader), "
                    f"{work / (wds_read + decode):5.2f}x (webdataset)")
        total = work + decode
        rows.append(f"  processing with decoding {1e3 * total:6.2f} ms per crop = {total / read:5.1f}x "
                    f"reading (loader) = {total / wds_read:5.2f}x reading (webdataset)")
    return rows


@contextlib.contextmanager
def as_worker():
    """Run ``BatchRing.collate`` as in a DataLoader worker (shared memory, ring slots) whose batches
    are dropped at once by the main process."""
    from torch.utils.data import _utils

    info = _utils.worker.WorkerInfo(id=0, num_workers=1, seed=0, dataset=None)
    _utils.worker._worker_info, previous = info, _utils.worker._worker_info
    try:
        yield
    finally:
        _utils.worker._worker_info = previous


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def loader_row(name: str, manifest: Path, workers: int, batches: int, crops_per_segment: int,
               input_on_device: bool = False) -> str:
    """Crops/s of the whole loader; per core by wall time (crops/s / workers) and by CPU time of the
    processes doing the work (crops per CPU second: robust when other jobs share the machine).
    ``input_on_device``: the workers leave the masked input out and this process builds it (on this
    CPU here; on the GPU in training)."""
    loader = build_pretrain_loader(manifest, batch_size=8, num_workers=workers, seed=0, epoch_batches=batches,
                                   crops_per_segment=crops_per_segment, device="cpu",
                                   input_on_device=input_on_device)
    it = iter(loader)
    for _ in range(min(2 * RING_SLOTS * max(workers, 1), batches // 2)):  # start-up: workers, buffers
        next(it)
    main = psutil.Process()
    procs = main.children() if workers else [main]
    cpu, start, count = sum(map(cpu_seconds, procs)), time.perf_counter(), 0
    main_cpu = cpu_seconds(main)
    for batch in it:
        count += len(batch["key"])
    wall = time.perf_counter() - start
    cpu = sum(map(cpu_seconds, procs)) - cpu
    main_cpu = cpu_seconds(main) - main_cpu
    extra = f" (+ main process {count / main_cpu:6.0f}/CPU s)" if workers else ""
    per_core = count / wall / max(workers, 1)
    where = ", input built by main" if input_on_device else ""
    return (f"loader {name:4s} W={workers}{where}  {count / wall:7.1f} crops/s  {per_core:7.1f} per core "
            f"(wall)  {count / cpu:7.1f} per CPU s of the loader cores{extra}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("bench-loader"), help="kept between runs")
    parser.add_argument("--batches", type=int, default=30, help="batches per loader run")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the multi-process runs")
    parser.add_argument("--crops-per-segment", type=int, default=LoaderConfig.crops_per_segment,
                        help="loader option crops_per_segment")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each loader row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    setup_worker()
    manifests = ingest(args.data)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; crops_per_segment "
          f"{args.crops_per_segment}; shards: {', '.join(str(m.parent) for m in manifests.values())}")
    for row in stage_rows(manifests["tar"], manifests["zarr"], args.crops_per_segment):
        print(row, flush=True)
    for _ in range(args.repeat):
        for name, manifest in manifests.items():
            for workers, on_device in ((0, False), (args.workers, False), (args.workers, True)):
                print(loader_row(name, manifest, workers, args.batches, args.crops_per_segment, on_device),
                      flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
