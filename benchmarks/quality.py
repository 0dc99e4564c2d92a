"""Separation quality at a wall-clock budget, on real stems: the path a user takes, measured.

    python -m benchmarks.quality --stems DIR/stems --minutes 20            # DIR from ../shared/devset
    python -m benchmarks.quality --stems DIR/stems --minutes 20 --baseline /tmp/est_umx --label umx

``DIR/stems/{train,test}/<track>/{mixture,vocals,accompaniment}.wav`` (the development corpus's layout,
or MUSDB18-HQ's). The steps, each through the ``specbert`` command as a user runs it:

1. ``ingest-stems`` of ``train`` (every track trains: ``ingest.val_fraction=0``; not timed);
2. ``finetune --config CONFIG`` from scratch with ``train.minutes`` as the budget (the schedule's decay
   runs over the budget; validation off, so the budget is all training);
3. ``export``, then ``separate`` of every ``test`` mixture, written as ``EST/<track>/accompaniment.wav``
   and ``vocals.wav`` (the layout of the baselines' ``score.py``);
4. scores of those files, by ``specbert evaluate``'s definitions (uSDR: mean over tracks; museval v4 SDR:
   median over tracks), next to the mixture (the floor) and the ideal ratio mask (the ceiling); with
   ``--baseline EST_DIR`` another method's estimates in the same layout are scored by the same code.

Everything goes under ``--work`` (default ``/tmp/specbert-quality``); a step whose output is there is
not run again (``--fresh`` starts over). Run nothing else on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from specbert.configs.audio import AudioConfig
from specbert.configs.train import UNCAPPED_STEPS
from specbert.inference.evaluate import METRICS, find_tracks, ideal_ratio_mask, load_track, score
from specbert.pipeline.audio import read_audio

STEMS = {"instrumental": "accompaniment", "vocals": "vocals"}  # our stem -> the estimate file's name


def specbert(*args: str, threads: int | None) -> None:
    """Run one ``specbert`` command (the console script next to this Python), failing loudly."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [str(Path(sys.executable).with_name("specbert")), *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)


def train(stems: Path, work: Path, config: str, minutes: float, overrides: list[str],
          threads: int | None) -> dict:
    shards, run, model = work / "shards", work / "run", work / "model.safetensors"
    if not (shards / "manifest.jsonl").exists():
        specbert("ingest-stems", str(stems / "train"), "--out", str(shards), "--config", config,
                 "--workers", "2", "--no-progress", "--set", "ingest.val_fraction=0", threads=threads)
    if not model.exists():
        sets = [f"train.minutes={minutes}", f"finetune.steps={UNCAPPED_STEPS}", "train.val_every=0",
                "train.preview_every=0", *overrides]
        started = time.monotonic()
        specbert("finetune", "--config", config, "--manifest", str(shards / "manifest.jsonl"),
                 "--run-dir", str(run), *[a for s in sets for a in ("--set", s)], threads=threads)
        (work / "train.json").write_text(json.dumps({"wall_s": time.monotonic() - started}))
        specbert("export", str(run), str(model), threads=threads)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r.get("split") == "train"][-1]
    return {"steps": last["step"], "samples_per_s": last.get("samples_per_s"),
            **json.loads((work / "train.json").read_text())}


def separate(model: Path, tracks: list[dict], est: Path, threads: int | None, extra: list[str]) -> None:
    """``specbert separate`` of each test mixture into ``est/<track>/{accompaniment,vocals}.wav``."""
    for track in tracks:
        out = est / track["name"]
        if all((out / f"{name}.wav").exists() for name in STEMS.values()):
            continue
        scratch = est / ".separating"
        shutil.rmtree(scratch, ignore_errors=True)
        mixture = Path(track["files"]["mixture"])
        specbert("separate", str(model), str(mixture), "-o", str(scratch), *extra, threads=threads)
        out.mkdir(parents=True, exist_ok=True)
        for stem, name in STEMS.items():
            (scratch / f"{mixture.stem}_{stem}.wav").rename(out / f"{name}.wav")
        shutil.rmtree(scratch)


def score_methods(tracks: list[dict], estimates: dict[str, Path], use_museval: bool) -> tuple[dict, dict]:
    """``{method: {stem: {metric: overall dB}}}`` for the estimate folders, the floor and the ceiling, and
    the same per track: ``{method: {track: {stem: {metric: dB}}}}``."""
    audio = AudioConfig()
    per_track: dict[str, list[dict]] = {name: [] for name in (*estimates, "mixture", "irm")}
    for track in tracks:
        mixture, references = load_track(track, audio)
        methods = {"mixture": {stem: mixture for stem in STEMS},
                   "irm": ideal_ratio_mask(references, mixture, audio)}
        for name, est in estimates.items():
            files = {stem: est / track["name"] / f"{file}.wav" for stem, file in STEMS.items()}
            methods[name] = {stem: fit(read_audio(path, audio), mixture.shape[1])
                             for stem, path in files.items()}
        for name, estimate in methods.items():
            per_track[name].append(score(references, estimate, audio.sample_rate, use_museval))
    overall = {name: {stem: {metric: float(METRICS[metric].reduce([t[stem][metric] for t in scores]))
                             for metric in scores[0][stem]} for stem in STEMS}
               for name, scores in per_track.items()}
    names = [track["name"] for track in tracks]
    return overall, {name: dict(zip(names, scores, strict=True)) for name, scores in per_track.items()}


def paired(ours: dict, theirs: dict) -> str:
    """Instrumental uSDR of ``ours`` minus ``theirs`` track by track: how many tracks each wins, and the
    range. With 8 test tracks a lead carried by one or two tracks is not a lead."""
    diffs = [ours[t]["instrumental"]["usdr"] - theirs[t]["instrumental"]["usdr"] for t in ours]
    ahead = sum(d > 0 for d in diffs)
    return f"ahead on {ahead} of {len(diffs)} tracks, per track {min(diffs):+.2f} to {max(diffs):+.2f} dB"


def fit(wave: np.ndarray, length: int) -> np.ndarray:
    """``wave [C, n]`` cut or zero-padded to ``length`` samples (score.py's rule)."""
    return np.pad(wave[:, :length], ((0, 0), (0, max(0, length - wave.shape[1]))))


def table(overall: dict) -> str:
    metrics = list(next(iter(overall.values()))["vocals"])
    head = [f"{stem} {METRICS[m].label}" for stem in STEMS for m in metrics]
    lines = [f"{'method':<22}" + "".join(f"{h:>26}" for h in head)]
    for name, stems in overall.items():
        lines.append(f"{name:<22}" + "".join(f"{stems[s][m]:>26.2f}" for s in STEMS for m in metrics))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stems", type=Path, required=True, help="folder of train/ and test/ track folders")
    parser.add_argument("--minutes", type=float, default=20.0, help="fine-tuning budget (wall clock)")
    parser.add_argument("--config", default="small", help="preset or YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the fine-tune (repeatable)")
    parser.add_argument("--separate-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `specbert separate` (repeatable), e.g. --separate-arg=--tta")
    parser.add_argument("--work", type=Path, default=Path("/tmp/specbert-quality"))
    parser.add_argument("--fresh", action="store_true", help="remove --work first")
    parser.add_argument("--threads", type=int, default=None, help="OMP threads of each step")
    parser.add_argument("--baseline", type=Path, action="append", default=[],
                        help="another method's estimates (EST/<track>/accompaniment.wav, vocals.wav)")
    parser.add_argument("--label", action="append", default=[], help="names of the --baseline methods")
    parser.add_argument("--no-museval", action="store_true", help="uSDR only (museval takes minutes)")
    args = parser.parse_args(argv)

    if args.fresh:
        shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)
    trained = train(args.stems, args.work, args.config, args.minutes, args.overrides, args.threads)
    tracks = find_tracks(args.stems, "test")
    est = args.work / "estimates"
    separate(args.work / "model.safetensors", tracks, est, args.threads, args.separate_arg)
    labels = args.label + [f"baseline{i}" for i in range(len(args.label), len(args.baseline))]
    methods = {f"specbert {args.config}": est, **dict(zip(labels, args.baseline, strict=False))}
    overall, per_track = score_methods(tracks, methods, not args.no_museval)
    report = {"config": args.config, "minutes": args.minutes, "overrides": args.overrides,
              "separate_args": args.separate_arg, "test_tracks": len(tracks), **trained, "overall": overall,
              "tracks": per_track}
    (args.work / "quality.json").write_text(json.dumps(report, indent=1))
    print(f"\n{args.config}: {trained['steps']} steps in {trained['wall_s'] / 60:.1f} min of fine-tuning "
          f"({trained['samples_per_s']} samples/s at the end), {len(tracks)} test tracks")
    print(table(overall))
    ours = f"specbert {args.config}"
    for name in labels[: len(args.baseline)]:
        lead = overall[ours]["instrumental"]["usdr"] - overall[name]["instrumental"]["usdr"]
        print(f"instrumental uSDR, specbert - {name}: {lead:+.2f} dB "
              f"({paired(per_track[ours], per_track[name])})")


if __name__ == "__main__":
    main()
