"""Pretraining loader speed: crops per second per loader core, from tar and from zarr shards, against
reading the raw samples of the same tar shards.

    python benchmarks/loader.py                    # example library -> ingest (tar, zarr) under --data
    python benchmarks/loader.py --batches 60 --workers 2

Crops are the defaults: 1024 frames x 1024 bins, stereo, masked and paired, batches of 8, from
segments of 2048 frames (codec f16r6). Rows:

    read tar (webdataset)   webdataset.WebDataset over the tar shards: raw bytes, nothing decoded
    read tar (loader)       the loader's reader (pipeline.stages.tar_samples), raw bytes
    decode                  pipeline.shards.decode_sample (zstd + codec)
    crop / pairs / mask     the loader's stages, each alone (ms per crop)
    collate                 stacking input and target into shared memory, as a worker does
    loader tar|zarr, W=n    the whole pipeline: W=0 runs in this process (one core does everything),
                            W=n runs n DataLoader workers; "per core" = crops/s / max(n, 1)

Every in-process figure uses one torch thread, as a DataLoader worker does.
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from configs import load_config
from configs.loader import LoaderConfig
from pipeline.loader import build_pretrain_loader, crop_magnitude
from pipeline.manifest import read_manifest
from pipeline.masking import mask_sample, next_segment_pairs
from pipeline.shards import decode_sample
from pipeline.stages import stack, tar_samples


def ingest(data: Path) -> dict[str, Path]:
    """Example library (6 tracks of 50 s: one segment of 2048 frames each, one track per shard)
    ingested as tar and as zarr."""
    from pipeline.example_library import write_example_library
    from pipeline.ingest import ingest_library

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


def timed(name: str, f, items: list, rows: list[str], crops_per_item: int = 1):
    """Time ``f`` over ``items``, dropping each result (memory is recycled as in the pipeline)."""
    start = time.perf_counter()
    for item in items:
        f(item)
    rows.append(f"{name:22s} {rate(crops_per_item * len(items), time.perf_counter() - start)}")


def stage_rows(tar_manifest: Path) -> list[str]:
    """Each stage alone, on one core, over the same samples (the page cache holds the shards)."""
    urls = [s["path"] for s in read_manifest(tar_manifest).shards("train")] * 4
    raws = [raw for url in urls for raw in tar_samples(url)]
    rows: list[str] = []
    timed("read tar (webdataset)", lambda url: list(wds.WebDataset(url, shardshuffle=False)), urls, rows,
          len(raws) // len(urls))
    timed("read tar (loader)", lambda url: list(tar_samples(url)), urls, rows, len(raws) // len(urls))
    timed("decode", decode_sample, raws, rows)
    cfg, rng = LoaderConfig(), np.random.default_rng(0)
    decoded = [decode_sample(raw) for raw in raws]
    crop = partial(crop_magnitude, frames=cfg.crop_frames, bins=1024, swap=cfg.channel_swap, rng=rng)
    timed("crop", crop, decoded, rows)
    crops = [crop(sample) for sample in decoded]
    start = time.perf_counter()
    paired = list(next_segment_pairs(crops, cfg, rng))  # in place: no new tensors
    rows.append(f"{'pairs':22s} {rate(len(paired), time.perf_counter() - start)}")
    timed("mask", lambda sample: mask_sample(sample, cfg, rng), paired, rows)
    masked = [mask_sample(sample, cfg, rng) for sample in paired]
    groups = [masked[i : i + 8] for i in range(0, len(masked) - 7, 8)]
    collate = lambda group: [stack([s[k] for s in group], shared=True) for k in ("input", "target")]  # noqa: E731
    timed("collate (shared)", collate, groups, rows, 8)
    return rows


def loader_row(name: str, manifest: Path, workers: int, batches: int, crops_per_segment: int) -> str:
    loader = build_pretrain_loader(manifest, batch_size=8, num_workers=workers, seed=0, epoch_batches=batches,
                                   crops_per_segment=crops_per_segment)
    it = iter(loader)
    for _ in range(min(4, batches - 1)):  # start-up: workers, shuffle buffer
        next(it)
    start, count = time.perf_counter(), 0
    for batch in it:
        count += len(batch["key"])
    per_second = count / (time.perf_counter() - start)
    per_core = per_second / max(workers, 1)
    return f"loader {name:4s} W={workers}      {per_second:8.1f} crops/s  {per_core:7.1f} per core"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("bench-loader"), help="kept between runs")
    parser.add_argument("--batches", type=int, default=30, help="batches per loader run")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the multi-process runs")
    parser.add_argument("--crops-per-segment", type=int, default=1, help="loader option crops_per_segment")
    args = parser.parse_args()
    torch.set_num_threads(1)
    manifests = ingest(args.data)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; crops_per_segment "
          f"{args.crops_per_segment}; shards: {', '.join(str(m.parent) for m in manifests.values())}")
    for row in stage_rows(manifests["tar"]):
        print(row)
    for name, manifest in manifests.items():
        for workers in (0, args.workers):
            print(loader_row(name, manifest, workers, args.batches, args.crops_per_segment))


if __name__ == "__main__":
    main()
