"""How much is there to learn in a masked gap, and at what frequency resolution?  Rules and corrections
that need no training, scored in ``train.context``'s fixed measure on a library's validation crops.

    OMP_NUM_THREADS=2 python -m benchmarks.bench_context_rules MANIFEST --config small --batches 8

Printed, in dB of mean absolute error over the hidden frames (lower is better), for the crops that
pretraining validates on (``--config``'s crop, token length and mask rate, ``--set`` to change them):

- the trivial rules of ``train.context`` (``context_gain``'s denominator is the best of them);
- ``toward_mean a / pool p``: the interpolation across each gap moved in dB by ``a`` times its distance to
  each bin's mean over the crop, that correction averaged over ``p`` adjacent bins.  ``p`` = 1 is a
  correction at the full resolution, 4 and 16 at the resolutions of the U-Net's transformer levels
  (256 and 64 bins): what a model whose frames meet only at those levels could learn of this cue;
- ``repetition c`` (``train.context.repetition``): each gap copied, in dB, from the stretch of the crop
  whose ``c`` frames each side best match the ``c`` known frames each side of the gap (music repeats: a
  beat, a bar, a held chord), what attention over frames could learn to do; ``repetition oracle``: the
  stretch that best matches the hidden frames themselves, the most that copying from the crop gives;
- ``repetition 4, best mask``: that copy times the best mask in [0, 1] (``min(copy, target)`` in each bin),
  the most that ``train.reconstruct=unmix`` (a mask on the copy shown in each gap) can score;
- ``oracle_smooth t x f``: the target itself averaged over ``t`` frames and ``f`` bins, how far a
  smooth estimate of the true gap can get (the noise floor of the measure).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from specbert.configs import load_config
from specbert.train.context import TRIVIAL, db_error, interpolation, repetition, to_db
from specbert.train.pretrain import ManifestData, PretrainTask


def pooled(x, bins: int):
    """``x [B, C, F, T]`` averaged over groups of ``bins`` adjacent bins, at the full resolution."""
    if bins == 1:
        return x
    return F.avg_pool2d(x.flatten(0, 1), (bins, 1)).repeat_interleave(bins, dim=1).view_as(x)


def smoothed(x, frames: int, bins: int):
    """``x [B, C, F, T]`` averaged over ``frames`` x ``bins`` around each point (edges: fewer points)."""
    out = F.avg_pool2d(x.flatten(0, 1), (bins, frames), 1, (bins // 2, frames // 2), count_include_pad=False)
    return out.view_as(x)


def scores(task: PretrainTask, batches: int) -> dict[str, float]:
    sums: Counter = Counter()
    seen = 0
    for batch in task.val_batches():
        x, target = batch["input"].float(), batch["target"].float()
        hidden, known = task.hidden_frames(batch), task.known_frames(batch["masked"])
        for name, rule in TRIVIAL.items():
            sums[name] += db_error(rule(x, known), target, hidden).item()
        line, mean = to_db(interpolation(x, known)), to_db(TRIVIAL["bin_mean"](x, known))
        for a in (0.5, 0.7):
            for p in (1, 4, 16):
                guess = 10 ** ((line + pooled(a * (mean - line), p)) / 20)
                sums[f"toward_mean {a} / pool {p}"] += db_error(guess, target, hidden).item()
        copies = {c: repetition(x, known, c) for c in (4, 16)}
        for c, copy in copies.items():
            sums[f"repetition {c}"] += db_error(copy, target, hidden).item()
        sums["repetition 4, best mask"] += db_error(torch.minimum(copies[4], target), target, hidden).item()
        sums["repetition oracle"] += db_error(repetition(x, known, reference=target), target, hidden).item()
        for t, f in ((1, 3), (5, 3), (9, 3)):
            sums[f"oracle_smooth {t} x {f}"] += db_error(smoothed(target, t, f), target, hidden).item()
        seen += 1
        if seen == batches:
            break
    return {name: total / max(seen, 1) for name, total in sums.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--config", default="small")
    parser.add_argument("--batches", type=int, default=8, help="validation batches scored")
    parser.add_argument("--set", action="append", default=[],
                        help="config override, e.g. loader.token_frames=8")
    args = parser.parse_args()
    cfg = load_config(args.config, [*args.set, "train.num_workers=0"])
    results = scores(PretrainTask(cfg, ManifestData(cfg, args.manifest, "cpu")), args.batches)
    best = min(results[name] for name in TRIVIAL)
    tokens = f"{cfg.loader.token_frames}-frame tokens"
    print(f"| rule ({args.config}, {tokens}) | dB error | gain over the best rule |")
    print("|---|---|---|")
    for name, error in results.items():
        print(f"| {name} | {error:.2f} | {1 - error / best:+.3f} |")


if __name__ == "__main__":
    main()
