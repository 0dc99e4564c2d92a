"""Training throughput with the real shard loader vs in-memory batches, in the same run.

    python -m benchmarks.bench_train                            # tiny and base on CPU (+ GPU when present)
    python -m benchmarks.bench_train --manifest M --configs tiny --steps 20 --batch 4 --frames 128 \
        --threads 1

Each config runs the trainer's whole step (forward, backward, clipping, AdamW; bf16 autocast on CUDA)
on (a) in-memory synthetic batches and (b) batches of ``pipeline.loader`` over the shards of
``--manifest`` (default: the example library, ingested into a temporary folder), and (c) drains the
loader alone.  If (b) is well below (a) and (c) is close to (b), the loader starves the trainer.
On a GPU (c) runs twice: with the masked input built on the GPU (what training does) and by the
workers (as on a CPU), both pinned and copied to the GPU.
On a GPU the MFU uses the model's analytic FLOPs (``benchmarks/bench_model.py``; backward = 2 x forward).
Run it as a module from the repository root (it imports ``benchmarks.bench_model``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_model import PEAK_BF16
from specbert.configs import load_config
from specbert.model.flops import forward_flops
from specbert.pipeline.loader import build_pretrain_loader
from specbert.train.distributed import Dist
from specbert.train.pretrain import ManifestData, PretrainTask, SyntheticData
from specbert.train.trainer import BatchStream, Progress, Trainer


def example_manifest(root: Path, frames: int) -> Path:
    """Ingest a small example library (songs long enough for ``frames``-frame crops) under ``root``."""
    from specbert.pipeline.example_library import write_example_library
    from specbert.pipeline.ingest import ingest_library

    cfg = load_config("tiny", ["ingest.workers=2", "ingest.shard_bytes=1000000", "ingest.val_fraction=0.25"])
    seconds = max(12.0, 1.5 * frames * cfg.audio.hop / cfg.audio.sample_rate)
    write_example_library(root / "library", seed=0, artists=4, albums_per_artist=1, songs_per_album=2,
                          seconds=seconds)
    summary = ingest_library([root / "library"], [root / "shards"], cfg, progress=False, log=lambda _: None)
    return summary.manifest


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_step(trainer: Trainer, batches, steps: int, warmup: int) -> float:
    stream = BatchStream(batches, 0, Progress())
    for _ in range(warmup):
        trainer.train_step(stream)
    sync(trainer.dist.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(stream)
    sync(trainer.dist.device)
    return (time.perf_counter() - start) / steps


def loader_alone(loader, batches: int, workers: int, device: torch.device) -> float:
    """Seconds per batch of the loader with nothing else running, once the batches its workers
    prefetched (2 each) have been taken: the rate it sustains, not its queue."""
    it = iter(loader)
    for _ in range(2 * workers + 1):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    sync(device)
    return (time.perf_counter() - start) / batches


def bench(name: str, device: torch.device, manifest: Path, sets: list[str], steps: int, warmup: int) -> None:
    """Print samples/s and frames/s of config ``name`` (with ``--set``-style ``sets``) on ``device``."""
    cfg = load_config(name, ["train.grad_accum=1", "train.precision=auto", *sets])
    b, t = cfg.train.batch_size, cfg.loader.crop_frames
    synthetic = SyntheticData(cfg, 4)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(PretrainTask(cfg, synthetic), cfg, Path(run_dir), Dist(device=device))
        workers, drained = cfg.train.num_workers, max(steps, 20)
        rows = {"loader alone": loader_alone(ManifestData(cfg, manifest, device).train(0), drained, workers,
                                             device)}
        if device.type == "cuda":  # the input built by the workers, as on a CPU (pinned, copied alike)
            loader = build_pretrain_loader(manifest, batch_size=b, num_workers=workers, config=cfg,
                                           device=device, input_on_device=False)
            rows["loader alone, input by workers"] = loader_alone(loader, drained, workers, device)
        rows["synthetic"] = seconds_per_step(trainer, synthetic.train, steps, warmup)
        rows["loader"] = seconds_per_step(trainer, ManifestData(cfg, manifest, device).train, steps, warmup)
        gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
        peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None) if gpu else None
        if peak:
            flops = 3 * forward_flops(trainer.raw["model"], synthetic.batches[0]["input"].float().to(device))
    where = gpu or f"CPU x{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}"
    print(f"{name} on {where}: batch {b} x {t} frames, {cfg.train.num_workers} loader workers, "
          f"{'bf16' if trainer.autocast_dtype else 'fp32'}")
    for source, seconds in rows.items():
        mfu = f"  MFU {flops / seconds / peak:5.1%}" if peak and not source.startswith("loader alone") else ""
        print(f"  {source:<30} {b / seconds:9.2f} samples/s {b * t / seconds:11.0f} frames/s "
              f"{seconds * 1e3:9.1f} ms/step{mfu}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, help="default: ingest the example library")
    parser.add_argument("--configs", nargs="+", default=["tiny", "base"])
    parser.add_argument("--batch", type=int, default=2, help="CPU batch (GPU: the config's)")
    parser.add_argument("--frames", type=int, default=128, help="CPU crop frames (GPU: the config's)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="intra-op CPU threads (default: torch's)")
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=["cpu", "cuda"],
                        help="where to run (cuda only when present)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        gpu = torch.cuda.is_available() and "cuda" in args.devices
        crops = [load_config(name).loader.crop_frames for name in args.configs] if gpu else [args.frames]
        manifest = args.manifest or example_manifest(Path(tmp), max(crops))
        workers = [f"train.num_workers={args.workers}"]
        cpu = [f"train.batch_size={args.batch}", f"loader.crop_frames={args.frames}", *workers]
        for name in args.configs if "cpu" in args.devices else []:
            bench(name, torch.device("cpu"), manifest, cpu, args.steps, args.warmup)
        if not gpu:
            print("no GPU: MFU not measured")
        for name in args.configs if gpu else []:
            bench(name, torch.device("cuda"), manifest, workers, args.steps, args.warmup)


if __name__ == "__main__":
    main()
