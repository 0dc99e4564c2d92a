"""Does pretraining help?  Two fine-tunes with the same budget, seed and data, one from a pretrained model
and one from scratch, and a report of both (the experiment the reference design set out to answer).

    report, paths = compare(cfg, "stems/manifest.jsonl", "runs/pre", "runs/compare")

``run_dir/pretrained`` and ``run_dir/scratch`` are ordinary fine-tuning runs (``train.finetune``), resumed
when they hold checkpoints, so running the comparison again continues it.  The report is validation uSDR
over the steps of both arms and the final figures, with the mixture floor:
``run_dir/compare.json``, ``compare.md`` and ``compare.png``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from specbert.configs import Config
from specbert.train.finetune import VAL_METRICS, finetune, validation_history

ARMS = ("pretrained", "scratch")


def compare(cfg: Config, manifest: str | Path, init: str | Path, run_dir: str | Path,
            device: str | None = None, log: Callable[[str], None] = print) -> tuple[dict, list[Path]]:
    """Run (or continue) both arms, then write and return the report."""
    run_dir = Path(run_dir)
    for arm, source in zip(ARMS, (init, None), strict=True):
        log(f"--- fine-tune from {source or 'scratch'} in {run_dir / arm}")
        code = finetune(cfg, manifest, run_dir / arm, source, resume=True, device=device, log=log)
        if code:
            raise RuntimeError(f"the {arm} fine-tune stopped early (exit code {code}); run again to continue")
    report = build_report(run_dir, str(init), cfg)
    return report, write_report(report, run_dir)


def build_report(run_dir: Path, init: str, cfg: Config) -> dict:
    """Validation records of both arms: ``{"arms": {arm: {"history": [...], "final": {...}}}, ...}``."""
    arms = {}
    for arm in ARMS:
        history = [{"step": r["step"], **{k: r[k] for k in VAL_METRICS if k in r}}
                   for r in validation_history(run_dir / arm)]
        if not history:
            raise RuntimeError(f"{run_dir / arm}: no validation records (train.val_every is 0?)")
        arms[arm] = {"history": history, "final": history[-1]}
    final = {arm: arms[arm]["final"] for arm in ARMS}
    gain = {stem: final["pretrained"][f"usdr_{stem}"] - final["scratch"][f"usdr_{stem}"]
            for stem in ("instrumental", "vocals")}
    return {"init": init, "steps": cfg.finetune.steps, "seed": cfg.train.seed, "arms": arms, "gain_db": gain}


def markdown(report: dict) -> str:
    """The final figures of both arms and the floor as a Markdown table."""
    rows = ["| arm | step | instrumental uSDR | vocals uSDR |", "|---|---|---|---|"]
    for arm, data in report["arms"].items():
        f = data["final"]
        rows.append(f"| {arm} | {f['step']} | {f['usdr_instrumental']:.2f} | {f['usdr_vocals']:.2f} |")
    f = report["arms"]["scratch"]["final"]
    rows.append(f"| mixture (floor) | | {f['floor_usdr_instrumental']:.2f} | {f['floor_usdr_vocals']:.2f} |")
    gain = report["gain_db"]
    return "\n".join([
        f"# Pretrained vs scratch: {report['steps']} fine-tuning steps, seed {report['seed']}", "",
        *rows, "",
        f"Pretraining ({report['init']}) changes the final validation uSDR by {gain['instrumental']:+.2f} dB "
        f"(instrumental) and {gain['vocals']:+.2f} dB (vocals). uSDR: whole-track SDR in dB on the "
        "validation tracks, mean over tracks.", ""])


def plot(report: dict, path: Path) -> Path:
    """Validation uSDR over the steps, one line per arm and stem, the floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, stem in zip(axes, ("instrumental", "vocals"), strict=True):
        for arm, data in report["arms"].items():
            steps = [r["step"] for r in data["history"]]
            ax.plot(steps, [r[f"usdr_{stem}"] for r in data["history"]], marker="o", label=arm)
        ax.axhline(report["arms"]["scratch"]["final"][f"floor_usdr_{stem}"], linestyle="--", color="gray",
                   label="mixture (floor)")
        ax.set_title(f"{stem}")
        ax.set_xlabel("step")
        ax.set_ylabel("validation uSDR (dB)")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(report: dict, run_dir: Path) -> list[Path]:
    """``compare.json``, ``compare.md`` and ``compare.png`` in ``run_dir``."""
    paths = [run_dir / "compare.json", run_dir / "compare.md"]
    paths[0].write_text(json.dumps(report, indent=1))
    paths[1].write_text(markdown(report))
    return [*paths, plot(report, run_dir / "compare.png")]
