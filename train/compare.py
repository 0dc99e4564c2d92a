"""Does pretraining help?  Fine-tunes with the same budget and data, one from a pretrained model and one from
scratch, for one or several seeds, and a report of both arms (the experiment the reference design set out
to answer).

    report, paths = compare(cfg, "stems/manifest.jsonl", "runs/pre", "runs/compare", seeds=3,
                            test="data/stems")

``run_dir/seed_<s>/pretrained`` and ``run_dir/seed_<s>/scratch`` are ordinary fine-tuning runs
(``train.finetune``) with ``train.seed = s`` (``s`` from ``train.seed`` up), resumed when they hold
checkpoints, so running the comparison again continues it.  With ``test``, each finished arm is exported
(``model.safetensors`` in its run folder) and scored on the ``test_split`` tracks of that MUSDB18-HQ-layout
folder as ``specbert evaluate`` does (uSDR; ``evaluation.json`` in the run folder).

The report: per arm and seed, the validation uSDR over the steps and its final figures, and the test
uSDR; per arm, the mean and standard deviation over seeds; the gain (pretrained minus scratch, paired by
seed) in mean and spread.  ``run_dir/compare.json``, ``compare.md`` and ``compare.png``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from specbert.configs import Config
from specbert.inference.evaluate import evaluate, write_report
from specbert.inference.separate import STEMS, Separator
from specbert.train.checkpoint import export_checkpoint
from specbert.train.finetune import VAL_METRICS, finetune, validation_history

ARMS = ("pretrained", "scratch")


def compare(cfg: Config, manifest: str | Path, init: str | Path, run_dir: str | Path, seeds: int = 1,
            test: str | Path | None = None, test_split: str = "test", device: str | None = None,
            log: Callable[[str], None] = print) -> tuple[dict, list[Path]]:
    """Run (or continue) both arms for ``seeds`` seeds, score them on ``test``, then write and return the
    report."""
    run_dir = Path(run_dir)
    runs = {}
    for seed in range(cfg.train.seed, cfg.train.seed + seeds):
        seeded = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
        for arm, source in zip(ARMS, (init, None), strict=True):
            arm_dir = run_dir / f"seed_{seed}" / arm
            log(f"--- seed {seed}: fine-tune from {source or 'scratch'} in {arm_dir}")
            code = finetune(seeded, manifest, arm_dir, source, resume=True, device=device, log=log)
            if code:
                raise RuntimeError(f"{arm_dir}: the fine-tune stopped early (exit code {code}); run again to "
                                   "continue")
            runs[seed, arm] = {"history": history(arm_dir)}
            if test is not None:
                runs[seed, arm]["test"] = score_on_test(arm_dir, test, test_split, device)
    report = build_report(runs, str(init), cfg, None if test is None else f"{test} ({test_split})")
    return report, write_report_files(report, run_dir)


def history(arm_dir: Path) -> list[dict]:
    """The validation records of a fine-tuning run, by step (its ``VAL_METRICS``)."""
    records = [{"step": r["step"], **{k: r[k] for k in VAL_METRICS if k in r}}
               for r in validation_history(arm_dir)]
    if not records:
        raise RuntimeError(f"{arm_dir}: no validation records (train.val_every is 0?)")
    return records


def score_on_test(arm_dir: Path, dataset: str | Path, split: str, device: str | None) -> dict[str, float]:
    """Export the arm's latest checkpoint and score it on ``dataset``'s ``split`` as ``specbert evaluate``
    does (uSDR only): ``usdr_<stem>`` of the model, ``floor_usdr_<stem>`` of the mixture and
    ``ceiling_usdr_<stem>`` of the ideal ratio mask, means over the tracks."""
    model = export_checkpoint(arm_dir, arm_dir / "model.safetensors")
    report = evaluate(Separator(model, device=device or "auto"), dataset, split, use_museval=False)
    write_report(report, arm_dir)
    methods = {"": "model", "floor_": "mixture", "ceiling_": "irm"}
    return {f"{prefix}usdr_{stem}": report["overall"][method][stem]["usdr"]
            for prefix, method in methods.items() for stem in STEMS}


def spread(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def build_report(runs: dict[tuple[int, str], dict], init: str, cfg: Config, test: str | None) -> dict:
    """``runs[(seed, arm)]`` = ``{"history": [...], "test": {...}}`` -> the report: every run with its final
    validation record, per arm the mean and spread over seeds of each figure, and the gain of the
    pretrained arm (paired by seed)."""
    seeds = sorted({seed for seed, _ in runs})
    for run in runs.values():
        run["final"] = run["history"][-1]
    figures = {f"val_usdr_{stem}": lambda run, stem=stem: run["final"][f"usdr_{stem}"] for stem in STEMS}
    if test is not None:
        figures.update({f"test_usdr_{stem}": lambda run, stem=stem: run["test"][f"usdr_{stem}"]
                        for stem in STEMS})
    arms = {arm: {name: spread([get(runs[seed, arm]) for seed in seeds]) for name, get in figures.items()}
            for arm in ARMS}
    gain = {name: spread([get(runs[seed, "pretrained"]) - get(runs[seed, "scratch"]) for seed in seeds])
            for name, get in figures.items()}
    return {"init": init, "steps": cfg.finetune.steps, "minutes": cfg.train.minutes, "seeds": seeds,
            "test": test, "runs": [{"seed": seed, "arm": arm, **runs[seed, arm]} for seed in seeds
                                   for arm in ARMS],
            "arms": arms, "gain_db": gain}


def markdown(report: dict) -> str:
    """The mean and spread over seeds of both arms and of the gain, the floor, and each run's figures."""
    names = list(report["gain_db"])

    def cell(s: dict) -> str:
        return f"{s['mean']:+.2f} ± {s['std']:.2f}" if len(report["seeds"]) > 1 else f"{s['mean']:+.2f}"

    labels = {f"{part}_usdr_{stem}": f"{'validation' if part == 'val' else 'test'} {stem}"
              for part in ("val", "test") for stem in STEMS}
    header = ["| | " + " | ".join(labels[n] for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    rows = [f"| {arm} | " + " | ".join(cell(report["arms"][arm][n]) for n in names) + " |" for arm in ARMS]
    rows.append("| **gain** (pretrained - scratch) | " + " | ".join(cell(report["gain_db"][n]) for n in names)
                + " |")
    first = report["runs"][0]
    floor = [f"{first['final'][f'floor_usdr_{stem}']:+.2f}" for stem in STEMS]
    if report["test"] is not None:
        floor += [f"{first['test'][f'floor_usdr_{stem}']:+.2f}" for stem in STEMS]
    rows.append("| mixture (floor) | " + " | ".join(floor) + " |")
    per_run = ["| seed | arm | step | " + " | ".join(labels[n] for n in names) + " |",
               "|---" * (len(names) + 3) + "|"]
    for run in report["runs"]:
        values = [run["final"][f"usdr_{stem}"] for stem in STEMS]
        values += [run["test"][f"usdr_{stem}"] for stem in STEMS] if report["test"] is not None else []
        per_run.append(f"| {run['seed']} | {run['arm']} | {run['final']['step']} | "
                       + " | ".join(f"{v:+.2f}" for v in values) + " |")
    spread_note = ("mean ± standard deviation over seeds " + ", ".join(map(str, report["seeds"]))
                   if len(report["seeds"]) > 1 else f"seed {report['seeds'][0]}")
    test = f"; test: the exported models on {report['test']}" if report["test"] else ""
    return "\n".join([
        f"# Pretrained vs scratch: {budget(report)} per arm, {spread_note}", "",
        *header, *rows, "",
        f"uSDR in dB (whole-track SDR, mean over tracks): validation: the last validation of each run{test}. "
        f"Pretrained arm: from {report['init']}. The gain is paired by seed.", "",
        "## Runs", "", *per_run, ""])


def budget(report: dict) -> str:
    """Each arm's fine-tuning budget in words: minutes of wall-clock time, or steps."""
    if report["minutes"]:
        return f"{report['minutes']:g} minutes of fine-tuning"
    return f"{report['steps']} fine-tuning steps"


def plot(report: dict, path: Path) -> Path:
    """Validation uSDR over the steps, one line per run (colour: arm), the floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(ARMS, ("tab:blue", "tab:orange"), strict=True))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, stem in zip(axes, STEMS, strict=True):
        for run in report["runs"]:
            steps = [r["step"] for r in run["history"]]
            label = run["arm"] if run["seed"] == report["seeds"][0] else None
            ax.plot(steps, [r[f"usdr_{stem}"] for r in run["history"]], marker="o", color=colours[run["arm"]],
                    alpha=0.8, label=label)
        ax.axhline(report["runs"][0]["final"][f"floor_usdr_{stem}"], linestyle="--", color="gray",
                   label="mixture (floor)")
        ax.set_title(stem)
        ax.set_xlabel("step")
        ax.set_ylabel("validation uSDR (dB)")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report_files(report: dict, run_dir: Path) -> list[Path]:
    """``compare.json``, ``compare.md`` and ``compare.png`` in ``run_dir``."""
    paths = [run_dir / "compare.json", run_dir / "compare.md"]
    paths[0].write_text(json.dumps(report, indent=1))
    paths[1].write_text(markdown(report))
    return [*paths, plot(report, run_dir / "compare.png")]
