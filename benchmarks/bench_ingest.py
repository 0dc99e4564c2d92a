"""Ingest throughput and storage, printed as figures (not a timed test).

    .venv/bin/python -m benchmarks.bench_ingest [--minutes 20] [--library DIR] [--work DIR] [--runs 3]

On a generated library of FLAC files (songs rendered by pipeline/example_library.py, each file a
different cut, gain and rotation of them):
1. decoding alone (soundfile, one core) vs the whole ingest of the same files on one core, in-process
   (hash + tags + decode + STFT + codec + tar), as x realtime and their ratio (target >= 0.5);
2. the hardware ceiling: the two halves of the library ingested in-process one after the other vs in
   two processes at once (what 2 cores give without Dask);
3. the same through Dask: LocalClusters of 1 worker and of 2 (warmed up), runs alternating between
   them, and the scaling (target >= 1.8x on a quiet 2-core machine), against the ceiling;
   figures come from CPU time (robust when other processes share the machine) and wall time, medians
   of ``--runs`` runs;
4. bytes per hour of audio per codec against the source FLAC (target for the default <= 1.0x), with the
   max and RMS error in dB, on the music and on a noise-rich version of it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

from specbert.configs import load_config
from specbert.configs.audio import AudioConfig
from specbert.pipeline.audio import read_audio
from specbert.pipeline.codecs import get_codec
from specbert.pipeline.example_library import render_song
from specbert.pipeline.ingest import LOCAL_CLUSTER_CONFIG, ingest_library
from specbert.pipeline.scan import identify, scan_library
from specbert.pipeline.spectral import stft
from specbert.pipeline.tasks import ShardJob, write_shard
from specbert.pipeline.tracks import stored_array

CODECS = ("f16", "f16r6", "f16r5", "f16r4")
AUDIO = AudioConfig()
SONG_SECONDS = 30.0


def make_library(root: Path, minutes: float, songs: int = 6) -> list[Path]:
    """FLAC files of SONG_SECONDS each, ``minutes`` in all, cut from ``songs`` rendered songs."""
    rendered = [render_song(seed, 2 * SONG_SECONDS, artist=seed % 3)["mixture"] for seed in range(songs)]
    n, paths = int(SONG_SECONDS * 44100), []
    for i in range(int(np.ceil(minutes * 60 / SONG_SECONDS))):
        song = rendered[i % songs]
        start = (i * 7919) % (song.shape[1] - n)
        wave = np.roll(song, 4410 * i, axis=1)[:, start : start + n] * (0.6 + 0.4 * ((i * 37) % 11) / 10)
        path = root / f"Artist {i % 4}" / f"Album {i % 9}" / f"{i:03d} - Song {i}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave.T, 44100, subtype="PCM_16")
        paths.append(path)
    return paths


def quiet(_line: str) -> None:
    pass


def settings(*overrides: str):
    """Default settings, no free-space reserve (benchmarks may run on small disks)."""
    return load_config(None, ["ingest.reserve_bytes=0", *overrides])


def seconds_of(paths) -> float:
    return sum(sf.info(p).duration for p in paths)


@dataclass
class Timing:
    """Wall seconds and CPU seconds (all processes involved) of one run."""

    wall: float
    cpu: float


def timed(run) -> Timing:
    """Time ``run()`` in this process (it must not start other processes)."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def alternating(runs: int, *jobs, setup=lambda: None) -> list[Timing]:
    """Each job ``runs`` times, alternating (so all see the same machine), median CPU time of each;
    ``setup()`` (untimed) before every run."""
    timings = [[] for _ in jobs]
    for _ in range(runs):
        for job, times in zip(jobs, timings, strict=True):
            setup()
            times.append(timed(job))
    return [sorted(times, key=lambda t: t.cpu)[runs // 2] for times in timings]


def decode_all(paths) -> None:
    for path in paths:
        sf.read(path, dtype="float32")


def emptied(*folders: Path) -> None:
    """Delete and recreate ``folders``, untimed: deleting the last run's shards is not ingest work (the
    113 MB shard of the 20-minute library takes ~100 ms to delete, 3 % of the in-process wall time)."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)


def ingest_in_process(paths: list[Path], out: Path, cfg) -> None:
    """One core, no Dask: identify every file, then write them all as one shard in ``out`` (empty)."""
    items = [{**identify(item), "split": "train"} for item in scan_library(paths)[0]]
    result = write_shard(ShardJob("train-000000-00000000.tar", "train", tuple(items), (str(out),), 0), cfg)
    assert all(t["status"] == "ok" for t in result["tracks"])


def in_processes(jobs: list[tuple[list[Path], Path]], cfg) -> Timing:
    """``ingest_in_process`` of each (paths, out) job in its own process, all at once: wall time and
    the processes' CPU time."""
    context = multiprocessing.get_context("fork")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    processes = [context.Process(target=ingest_in_process, args=(paths, out, cfg)) for paths, out in jobs]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
        assert process.exitcode == 0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Timing(time.perf_counter() - start, cpu)


def hardware_ceiling(paths: list[Path], work: Path, cfg, runs: int) -> tuple[Timing, Timing]:
    """What 2 cores give without Dask: the two halves of the library ingested one after the other
    (one process at a time) vs at once (two processes); median wall of ``runs`` alternating runs."""
    jobs = [(paths[0::2], work / "half0"), (paths[1::2], work / "half1")]
    alone, together = [], []
    outs = [out for _, out in jobs]
    for _ in range(runs):
        emptied(*outs)
        one = [in_processes([job], cfg) for job in jobs]
        alone.append(Timing(sum(t.wall for t in one), sum(t.cpu for t in one)))
        emptied(*outs)
        together.append(in_processes(jobs, cfg))
    return (sorted(alone, key=lambda t: t.wall)[runs // 2], sorted(together, key=lambda t: t.wall)[runs // 2])


def warm_up() -> None:
    array, peak = stored_array(np.random.default_rng(0).standard_normal((2, 44100), np.float32), AUDIO, False)
    get_codec("f16r6").encode(array, peak)


def worker_cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


@contextlib.contextmanager
def dask_cluster(library: Path, work: Path, workers: int):
    """``(client, settings)`` of a warmed-up LocalCluster of ``workers`` workers set up as ``specbert ingest``
    sets up its own (shards of ~5 MB: enough tasks)."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(LOCAL_CLUSTER_CONFIG), \
            LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0",
                         silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        cfg = settings(f"ingest.scheduler={cluster.scheduler_address}", "ingest.shard_bytes=5000000")
        emptied(work)
        ingest_library([next(library.rglob("*.flac"))], [work], cfg, progress=False, log=quiet)
        client.run(warm_up)  # every worker: imports and first calls are not throughput
        yield client, cfg


def time_ingest_dask(client, cfg, library: Path, out: Path) -> Timing:
    """An ingest of ``library`` on ``client``'s cluster; CPU seconds are the workers' and this driver's
    (which runs the scheduler)."""
    emptied(out)
    before = sum(client.run(worker_cpu_seconds).values())
    summary = None

    def run():
        nonlocal summary
        summary = ingest_library([library], [out], cfg, progress=False, log=quiet)

    timing = timed(run)
    timing.cpu += sum(client.run(worker_cpu_seconds).values()) - before
    assert summary.exit_code == 0
    return timing


def dask_scaling(library: Path, work: Path, runs: int) -> tuple[Timing, Timing, float]:
    """Ingests on 1 worker and on 2, alternating ``runs`` times (both clusters up, so pairs see the same
    machine; the idle one's scheduler adds ~1 % to the driver's CPU time): the median run of each (by CPU
    time) and the median wall-clock speedup of the pairs."""
    with dask_cluster(library, work / "warmup1", 1) as one, dask_cluster(library, work / "warmup2", 2) as two:
        pairs = [[time_ingest_dask(*cluster, library, work / "dask") for cluster in (one, two)]
                 for _ in range(runs)]
    medians = [sorted(times, key=lambda t: t.cpu)[runs // 2] for times in zip(*pairs, strict=True)]
    return medians[0], medians[1], float(np.median([a.wall / b.wall for a, b in pairs]))


def codec_figures(paths, seconds: float, noisy: bool) -> dict:
    """codec -> (bytes, max dB error, RMS dB error) over ``paths`` (plus white noise at -26 dB if noisy)."""
    totals = {name: [0, 0.0, 0.0, 0] for name in CODECS}
    rng = np.random.default_rng(0)
    for path in paths:
        wave = read_audio(path)
        if noisy:
            wave = wave + 0.05 * rng.standard_normal(wave.shape).astype(np.float32)
        array, peak = stored_array(wave, AUDIO, keep_complex=False)
        reference = np.abs(stft(wave)).transpose(0, 2, 1)
        kept = reference >= peak * 1e-5
        for name in CODECS:
            codec = get_codec(name)
            data = codec.encode(array, peak)
            error = np.abs(20 * np.log10(codec.decode(data, array.shape)[kept] / reference[kept]))
            t = totals[name]
            t[0] += len(data)
            t[1] = max(t[1], float(error.max()))
            t[2] += float(np.sum(error.astype(np.float64) ** 2))
            t[3] += error.size
    return {name: (b, mx, np.sqrt(sq / n)) for name, (b, mx, sq, n) in totals.items()}


def flac_bytes(paths, noisy: bool, work: Path) -> int:
    if not noisy:
        return sum(os.path.getsize(p) for p in paths)
    rng, total = np.random.default_rng(0), 0
    for path in paths:
        wave = read_audio(path)
        wave = np.clip(wave + 0.05 * rng.standard_normal(wave.shape).astype(np.float32), -1, 1)
        target = work / "noisy.flac"
        sf.write(target, wave.T, 44100, subtype="PCM_16")
        total += os.path.getsize(target)
    return total


def report(name: str, seconds: float, timing: Timing, decode: Timing) -> None:
    print(f"{name:34s}  {seconds / timing.cpu:7.0f}  {seconds / timing.wall:7.0f}     "
          f"{decode.cpu / timing.cpu:5.2f}     {decode.wall / timing.wall:5.2f}")


def shard_bytes_per_hour(folder: Path, seconds: float) -> float:
    files = [Path(d) / f for d, _, fs in os.walk(folder) for f in fs if not f.startswith("manifest")]
    return sum(os.path.getsize(f) for f in files) / seconds * 3600 / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--library", type=Path, default=None, help="Reuse (or create) this FLAC library.")
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temp folder).")
    parser.add_argument("--codec-files", type=int, default=8, help="Files used for the codec table.")
    parser.add_argument("--runs", type=int, default=3,
                        help="Runs of each measurement, alternating (medians; more on a busy machine).")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="specbert-bench-"))
    library = args.library or work / "library"
    paths = sorted(library.rglob("*.flac")) if library.exists() else []
    if not paths:
        print(f"rendering a {args.minutes:.0f}-minute FLAC library in {library} ...", flush=True)
        paths = make_library(library, args.minutes)
    seconds = seconds_of(paths)
    flac_gb_h = sum(os.path.getsize(p) for p in paths) / seconds * 3600 / 1e9
    print(f"library: {len(paths)} FLAC files, {seconds / 60:.1f} min, FLAC {flac_gb_h:.3f} GB/h, "
          f"{os.cpu_count()} cores")

    print(f"load average {os.getloadavg()[0]:.1f} at the start (other processes slow wall-clock figures; "
          "CPU-time figures hold)")
    cfg = settings()
    warm_up()
    decode, ingest = alternating(args.runs, lambda: decode_all(paths),
                                 lambda: ingest_in_process(paths, work / "one", cfg),
                                 setup=lambda: emptied(work / "one"))
    print("\n                                    x realtime per core   ratio to decode (target >= 0.5)")
    print("                                    CPU time   wall       CPU time   wall")
    report("1 core, decode only (soundfile)", seconds, decode, decode)
    report("1 core, whole ingest in-process", seconds, ingest, decode)
    stored = shard_bytes_per_hour(work / "one", seconds)
    print(f"shards ({cfg.ingest.codec}, tar): {stored:.3f} GB/h = {stored / flac_gb_h:.2f}x FLAC")

    alone, together = hardware_ceiling(paths, work, cfg, args.runs)
    print(f"hardware ceiling: 2 processes at once vs one at a time: {alone.wall / together.wall:.2f}x "
          f"wall-clock, CPU time {together.cpu / alone.cpu:.2f}x; load average now {os.getloadavg()[0]:.1f}")
    one, two, speedup = dask_scaling(library, work, args.runs)
    report("Dask, 1 worker", seconds, one, decode)
    report("Dask, 2 workers (per core)", seconds, Timing(2 * two.wall, two.cpu), decode)
    print(f"2 workers vs 1: {speedup:.2f}x faster wall-clock (target >= 1.8; ceiling "
          f"{alone.wall / together.wall:.2f}x), CPU time {two.cpu / one.cpu:.2f}x; load average now "
          f"{os.getloadavg()[0]:.1f}")

    zarr_out = work / "zarr"
    emptied(zarr_out)
    ingest_in_process(paths, zarr_out, settings("ingest.format=zarr"))
    print(f"\nzarr shards ({cfg.ingest.codec}): {shard_bytes_per_hour(zarr_out, seconds):.3f} GB/h")
    sample = paths[:: max(1, len(paths) // args.codec_files)][: args.codec_files]
    sample_seconds = seconds_of(sample)
    for noisy in (False, True):
        flac = flac_bytes(sample, noisy, work) / sample_seconds * 3600 / 1e9
        print(f"\n{'noise-rich (music + white noise at -26 dB)' if noisy else 'music'}: "
              f"{len(sample)} files, FLAC {flac:.3f} GB/h")
        print("  codec   GB/h    x FLAC   max dB err  RMS dB err")
        for name, (nbytes, worst, rms) in codec_figures(sample, sample_seconds, noisy).items():
            gb_h = nbytes / sample_seconds * 3600 / 1e9
            print(f"  {name:6s}  {gb_h:.3f}   {gb_h / flac:5.2f}    {worst:.4f}      {rms:.4f}")
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
