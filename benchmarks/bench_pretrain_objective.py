"""Which pretraining objective learns from context?  Short pretraining runs of named variants on the same
shards, compared by validation ``context_gain`` (``train.context``) at the same steps.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_pretrain_objective MANIFEST --config tiny --steps 400 \\
        --val-every 100 --out runs/objective --variants seed head ...

Each variant is ``--set`` overrides over ``--config`` (after the common ``--set``s); its run is an ordinary
``specbert pretrain`` run directory ``OUT/<variant>``, continued when it is there, so a sweep stopped
half-way resumes.  The table (also ``OUT/objective.md``) shows, per variant and validation step,
``context_gain``, the model's ``db_error`` and the best trivial rule's, and the seconds per step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from specbert.configs import load_config
from specbert.train.context import TRIVIAL
from specbert.train.pretrain import ManifestData, PretrainTask
from specbert.train.trainer import launch

# The reference design is the defaults of ``seed``; each other variant changes what its name says.
SEED = ["train.reconstruct=mask", "train.loss_power=1.0", "model.input_power=1.0", "loader.mask_rate=0.15",
        "loader.mask_white=0.8", "loader.mask_noise=0.1", "loader.mask_keep=0.1", "train.next_weight=1.0",
        "loader.next_segment=true", "train.mix_prob=0", "train.unmasked_weight=0"]
HEAD = ["train.reconstruct=head", "train.loss_power=0.3"]
VARIANTS = {
    "seed": SEED,  # 15% spans, 80/10/10, separator + next segment, L1 of input x mask on linear magnitudes
    "seed_no_next": SEED + ["train.next_weight=0"],
    "power": SEED + ["train.loss_power=0.3"],  # the loss on magnitudes ** 0.3, still input x mask
    "head": SEED + HEAD,  # the head predicts magnitudes ** 0.3 itself
    "head_input": SEED + HEAD + ["model.input_power=0.3"],  # ... from compressed input
    "head_input_no_next": SEED + HEAD + ["model.input_power=0.3", "train.next_weight=0"],
    "input_only": SEED + ["model.input_power=0.3"],
    "head_no_next": SEED + HEAD + ["train.next_weight=0"],  # the defaults until Dec 6 2026
    "silent_mask": SEED + HEAD + ["train.next_weight=0", "loader.mask_value=0.0"],  # masked bins 0, not 1
}
BEST = VARIANTS["head_input_no_next"]
VARIANTS.update({
    "rate40": BEST + ["loader.mask_rate=0.4"],  # 40% of the tokens masked
    "rate60": BEST + ["loader.mask_rate=0.6"],
    "lr3e-3": BEST + ["train.lr=3e-3"],
    "white_only": BEST + ["loader.mask_white=1.0", "loader.mask_noise=0.0", "loader.mask_keep=0.0"],
    # the interpolation across each gap corrected in dB by the head, L1 in dB: the default Dec 6-7 2026
    "residual": SEED + ["train.reconstruct=residual", "train.next_weight=0"],
})
RESIDUAL = VARIANTS["residual"]
VARIANTS.update({
    "residual_rate40": RESIDUAL + ["loader.mask_rate=0.4"],
    "residual_rate60": RESIDUAL + ["loader.mask_rate=0.6"],
    "residual_token4": RESIDUAL + ["loader.token_frames=4"],
    "residual_token16": RESIDUAL + ["loader.token_frames=16"],
    "residual_lr3e-3": RESIDUAL + ["train.lr=3e-3"],
    # the defaults since Dec 7 2026: synthetic voices mixed in and taken out by input x mask, the copied
    # stretch shown in each gap
    "voices": [],
})


def run(name: str, overrides: list[str], manifest: Path, out: Path, args) -> tuple[list[dict], float]:
    """Pretrain (or continue) one variant; its validation records and its mean seconds per step."""
    every = args.val_every
    schedule = [f"train.steps={args.steps}", f"train.val_every={every}", f"train.preview_every={every}",
                f"train.checkpoint_every={every}", "train.keep_last=1"]
    cfg = load_config(args.config, [*overrides, *args.set, *schedule])
    run_dir = out / name
    start = time.perf_counter()
    code = launch(lambda c, dev: PretrainTask(c, ManifestData(c, manifest, dev)), cfg, run_dir, resume=True,
                  device="cpu")
    if code:
        raise SystemExit(code)
    print(f"{name}: {time.perf_counter() - start:.0f} s")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    samples = cfg.train.batch_size * cfg.train.accumulation(1)
    rates = [r["samples_per_s"] for r in records if r["split"] == "train"]
    return [r for r in records if r["split"] == "val"], samples * sum(1 / r for r in rates) / len(rates)


def table(results: dict[str, tuple[list[dict], float]]) -> str:
    rows = ["| variant | step | context_gain | db_error | best trivial (dB) | rule | train s/step |",
            "|---|---|---|---|---|---|---|"]
    for name, (records, per_step) in results.items():
        for r in records:
            rule = min(TRIVIAL, key=lambda n: r[f"db_error_{n}"])
            rows.append(f"| {name} | {r['step']} | {r['context_gain']:+.3f} | {r['db_error']:.2f} | "
                        f"{r[f'db_error_{rule}']:.2f} | {rule} | {per_step:.2f} |")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/objective"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", action="append", default=[], help="override for every variant")
    args = parser.parse_args()
    results = {name: run(name, VARIANTS[name], args.manifest, args.out, args) for name in args.variants}
    text = table(results)
    print(text)
    (args.out / "objective.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
