"""Speed (x realtime) and peak memory of ``specbert separate``, with random-weight models of the presets.

    python -m benchmarks.bench_separate                 # CPU: tiny and base; memory at 5 and 60 min (tiny)
    python -m benchmarks.bench_separate --configs tiny --seconds 30 --minutes 1 5
    python -m benchmarks.bench_separate --device cuda --batch-size 8 --minutes   # GPU: speed only

Speed: one file of ``--seconds`` of music (a generated song, repeated) separated to 16-bit WAV stems,
end to end (decode, both passes, model, writing), after a short warm-up run.  Memory: the peak resident
set (``VmHWM``, Linux) of a fresh process separating a file of each of ``--minutes`` with the first config.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

from specbert.configs import load_config
from specbert.inference.export import save_model_file
from specbert.inference.separate import Separator
from specbert.model import build_model
from specbert.pipeline.example_library import render_song

RATE = 44100
# VmHWM, the peak resident set of this process's memory map: ru_maxrss would also count the parent's
# resident set at the fork (Linux keeps the larger across exec), e.g. the base model of the speed test.
PROBE = """
import sys, torch
from specbert.inference.separate import Separator
torch.set_num_threads(int(sys.argv[5]))
Separator(sys.argv[1], device=sys.argv[4]).separate_file(sys.argv[2], sys.argv[3])
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def write_music(path: Path, seconds: float) -> Path:
    """A 16-bit WAV of a 30 s generated song repeated to ``seconds``, written block by block."""
    song = render_song(0, seconds=30.0, sample_rate=RATE)["mixture"].T
    remaining = round(seconds * RATE)
    with sf.SoundFile(path, "w", RATE, 2, subtype="PCM_16") as f:
        while remaining > 0:
            f.write(song[:remaining])
            remaining -= len(song)
    return path


def export_preset(name: str, folder: Path) -> Path:
    torch.manual_seed(0)
    cfg = load_config(name)
    return save_model_file(build_model(cfg), cfg, folder / f"{name}.safetensors")


def speed(model: Path, music: Path, warmup: Path, out: Path, **options) -> float:
    """x realtime of ``Separator.separate_file`` on ``music`` (after one run on ``warmup``)."""
    separator = Separator(model, **options)
    separator.separate_file(warmup, out)
    start = time.perf_counter()
    separator.separate_file(music, out)
    if separator.device.type == "cuda":
        torch.cuda.synchronize()
    return sf.info(music).duration / (time.perf_counter() - start)


def peak_memory_mb(model: Path, music: Path, out: Path, device: str, threads: int) -> float:
    """Peak resident memory of a fresh process that separates ``music``."""
    command = [sys.executable, "-c", PROBE, str(model), str(music), str(out), device, str(threads)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"separating {music} failed:\n{result.stderr}")
    return int(result.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "base"])
    parser.add_argument("--seconds", type=float, default=60.0, help="Length of the speed test file.")
    parser.add_argument("--minutes", type=float, nargs="*", default=[5, 60], help="Files of the memory test.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of torch.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warmup, music = write_music(tmp / "warmup.wav", 5.0), write_music(tmp / "music.wav", args.seconds)
        models = {name: export_preset(name, tmp) for name in args.configs}
        print(f"| config | parameters | chunk frames | x realtime ({device_name}, {args.seconds:g} s file) |")
        print("|---|---|---|---|")
        for name, model in models.items():
            cfg = load_config(name)
            params = sum(p.numel() for p in build_model(cfg).parameters()) / 1e6
            rate = speed(model, music, warmup, tmp / "out", device=args.device, batch_size=args.batch_size)
            print(f"| {name} | {params:.1f}M | {cfg.loader.crop_frames} | {rate:.2f} |", flush=True)
        if args.minutes:
            name = args.configs[0]
            print(f"\n| file | peak memory ({name}, {device_name}) |\n|---|---|")
            for minutes in args.minutes:
                long = write_music(tmp / f"{minutes}min.wav", minutes * 60)
                peak = peak_memory_mb(models[name], long, tmp / "out", args.device, args.threads)
                print(f"| {minutes:g} min | {peak:.0f} MB |", flush=True)
                long.unlink()


if __name__ == "__main__":
    main()
