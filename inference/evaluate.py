"""Separation quality on a stems dataset: the model between a floor and a ceiling.

Tracks: any layout ``specbert ingest-stems`` reads (``pipeline.stems``: MUSDB18-HQ folders, MUSDB18's
``.stem.mp4`` files, ``mixtures/`` + ``instruments/``). Stems: ``instrumental`` (the accompaniment file
where present, else drums + bass + other, or mixture - vocals) and ``vocals``.

Metrics (dB), per stem and track, then over the tracks:

- ``usdr``: whole-track SDR, ``10 log10(sum s^2 / sum (s - s_hat)^2)`` over all samples and channels;
  the overall figure is the **mean** over tracks (the MDX-challenge convention).
- ``museval_sdr``: BSSEval v4 SDR from ``museval`` (1 s windows and hops), the **median** over the
  windows of a track (windows where a reference is silent are skipped), then the **median** over tracks
  (the SiSEC 2018 convention).  Slow (``benchmarks/README.md``): ``use_museval=False`` skips it.

Methods, on the same tracks:

- ``model``: the separator's estimates;
- ``mixture`` (floor): the mixture itself as the estimate of each stem;
- ``irm`` (ceiling): the ideal ratio mask ``|S_inst| / (|S_inst| + |S_voc|)`` on the magnitudes (the
  vocals get ``1 -`` it), applied to the mixture with the mixture's phase: the best this model's output
  form (one mask in [0, 1], mixture phase) can do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from specbert.configs.audio import AudioConfig
from specbert.inference.separate import STEMS, Separator
from specbert.pipeline.plots import show_spectrogram
from specbert.pipeline.spectral import istft, stft
from specbert.pipeline.stems import scan_stems, stem_waves

METHODS = {
    "model": "model",
    "mixture": "mixture (floor)",
    "irm": "ideal ratio mask, mixture phase (ceiling)",
}


class Metric(NamedTuple):
    label: str
    over_tracks: str  # how the overall figure reduces the tracks' ...
    reduce: Callable  # ... with this function
    definition: str


METRICS = {
    "usdr": Metric("uSDR", "mean", np.mean, "whole-track SDR in dB; overall: mean over tracks"),
    "museval_sdr": Metric("museval SDR", "median", np.nanmedian,
                          "BSSEval v4 SDR in dB, median over 1 s windows; overall: median over tracks"),
}
_EPS = 1e-10
PICTURE_SECONDS = 20.0  # of the first track, drawn by --png (a whole song's mesh would take minutes)


def usdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Whole-track SDR in dB of ``estimate`` against ``reference`` (``[C, N]`` each)."""
    signal = float(np.sum(np.square(reference, dtype=np.float64)))
    error = float(np.sum(np.square(reference.astype(np.float64) - estimate)))
    return 10.0 * np.log10((signal + _EPS) / (error + _EPS))


def museval_sdr(references: dict[str, np.ndarray], estimates: dict[str, np.ndarray],
                rate: int) -> dict[str, float]:
    """BSSEval v4 SDR per stem, median over 1 s windows; stems ``[C, N]``, evaluated jointly.

    NaN for every stem when a whole stem is silent (museval refuses such input).
    """
    import museval

    names = list(references)
    if not all(np.any(x) for x in (*references.values(), *estimates.values())):
        return {name: float("nan") for name in names}
    refs = np.stack([references[name].T for name in names])  # [stems, N, C]
    ests = np.stack([estimates[name].T for name in names])
    sdr, _isr, _sir, _sar = museval.evaluate(refs, ests, win=rate, hop=rate)
    return {name: float(np.nanmedian(sdr[i])) if np.isfinite(sdr[i]).any() else float("nan")
            for i, name in enumerate(names)}


def ideal_ratio_mask(stems: dict[str, np.ndarray], mixture: np.ndarray, audio: AudioConfig) -> dict:
    """The ceiling's estimates: the magnitude-ratio mask of the true stems on the mixture, mixture phase."""
    instrumental = np.abs(stft(stems["instrumental"], audio))
    vocals = np.abs(stft(stems["vocals"], audio))
    spec = stft(mixture, audio)
    estimate = spec * (instrumental / np.maximum(instrumental + vocals, _EPS))
    length = mixture.shape[1]
    return {"instrumental": istft(estimate, length, audio), "vocals": istft(spec - estimate, length, audio)}


def find_tracks(dataset: str | Path, split: str = "test") -> list[dict]:
    """The tracks (``pipeline.stems`` items) under ``dataset/split``, or under ``dataset`` itself."""
    dataset = Path(dataset)
    root = dataset / split if (dataset / split).is_dir() else dataset
    tracks = [item for item in scan_stems([root])[0] if item.get("status") != "failed"]
    if not tracks:
        raise FileNotFoundError(f"{root}: no tracks (folders with a mixture file, .stem.mp4 files, or "
                                "mixtures/ + instruments/)")
    return tracks


def load_track(track: dict, audio: AudioConfig) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The mixture and the two reference stems of a track, ``[2, N]`` at the model's rate."""
    waves = dict(stem_waves(track, ("mixture", "accompaniment", "vocals"), audio))
    return waves["mixture"], {"instrumental": waves["accompaniment"], "vocals": waves["vocals"]}


def score(references: dict, estimates: dict, rate: int, use_museval: bool) -> dict[str, dict[str, float]]:
    """``{stem: {metric: dB}}`` of one method on one track."""
    out = {name: {"usdr": usdr(references[name], estimates[name])} for name in STEMS}
    if use_museval:
        for name, value in museval_sdr(references, estimates, rate).items():
            out[name]["museval_sdr"] = value
    return out


def evaluate_track(separator: Separator, track: dict, use_museval: bool = True,
                   picture: Path | None = None) -> dict:
    """Scores of the three methods on one track; with ``picture``, its spectrograms drawn there."""
    audio = separator.audio
    mixture, references = load_track(track, audio)
    estimates = {
        "model": separator.separate(mixture, audio.sample_rate),
        "mixture": {name: mixture for name in STEMS},
        "irm": ideal_ratio_mask(references, mixture, audio),
    }
    if picture is not None:
        draw_spectrograms(mixture, references, estimates["model"], audio, picture, track["name"])
    return {
        "name": track["name"],
        "seconds": mixture.shape[1] / audio.sample_rate,
        **{method: score(references, estimate, audio.sample_rate, use_museval)
           for method, estimate in estimates.items()},
    }


def summarise(tracks: list[dict]) -> dict:
    """Over the tracks: the mean of uSDR and the median of museval SDR, per method and stem."""
    return {
        method: {
            name: {metric: float(METRICS[metric].reduce([t[method][name][metric] for t in tracks]))
                   for metric in tracks[0][method][name]}
            for name in STEMS
        }
        for method in METHODS
    }


def evaluate(separator: Separator, dataset: str | Path, split: str = "test", use_museval: bool = True,
             progress: bool = False, picture: Path | None = None) -> dict:
    """The report: per track and overall scores of the model, the floor and the ceiling; with ``picture``,
    the first track's spectrograms drawn there (``draw_spectrograms``)."""
    from tqdm.auto import tqdm

    found = find_tracks(dataset, split)
    tracks = [evaluate_track(separator, track, use_museval, picture if i == 0 else None)
              for i, track in enumerate(tqdm(found, desc="tracks", unit="track", disable=not progress))]
    return {
        "model": str(separator.model_path),
        "dataset": str(dataset),
        "split": split,
        "tracks_count": len(tracks),
        "metrics": {metric: METRICS[metric].definition for metric in tracks[0]["model"]["vocals"]},
        "methods": METHODS,
        "overall": summarise(tracks),
        "tracks": tracks,
    }


def markdown(report: dict) -> str:
    """The report as Markdown: the overall table, the definitions, then one table per track."""
    columns = [(name, metric) for metric in report["metrics"] for name in STEMS]
    rule = "|---" * (len(columns) + 1) + "|"

    def header(overall: bool) -> str:
        labels = [f"{name} {METRICS[metric].label}" + (f" ({METRICS[metric].over_tracks})" if overall else "")
                  for name, metric in columns]
        return "| | " + " | ".join(labels) + " |"

    def row(label: str, scores: dict) -> str:
        return "| " + " | ".join([label, *(f"{scores[name][metric]:.2f}" for name, metric in columns)]) + " |"

    def rows(scores: dict) -> list[str]:
        return [row(label, scores[method]) for method, label in METHODS.items()]

    lines = [f"# Separation quality of {report['model']}", "",
             f"{report['tracks_count']} tracks of {report['dataset']} ({report['split']}).", "",
             header(True), rule, *rows(report["overall"]), "",
             "SDR in dB. uSDR: whole-track SDR, mean over tracks. museval SDR: BSSEval v4, median over 1 s "
             "windows, then median over tracks. Floor: the mixture as the estimate. Ceiling: ideal ratio "
             "mask |S_inst| / (|S_inst| + |S_voc|) with the mixture's phase.", ""]
    for track in report["tracks"]:
        lines += [f"## {track['name']} ({track['seconds']:.1f} s)", "", header(False), rule, *rows(track), ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    """Bar chart of the overall scores: one group per stem and metric, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(name, metric) for metric in report["metrics"] for name in STEMS]
    width = 0.8 / len(METHODS)
    fig, ax = plt.subplots(figsize=(2.2 * len(groups) + 2, 4))
    for i, (method, label) in enumerate(METHODS.items()):
        values = [report["overall"][method][name][metric] for name, metric in groups]
        ax.bar(np.arange(len(groups)) + (i - (len(METHODS) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(np.arange(len(groups)), [f"{name}\n{METRICS[metric].label}" for name, metric in groups])
    ax.set_ylabel("SDR (dB)")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize="small")
    ax.set_title(f"{report['tracks_count']} tracks of {Path(report['dataset']).name} ({report['split']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw_spectrograms(mixture: np.ndarray, references: dict, estimates: dict, audio: AudioConfig, path: Path,
                      title: str, seconds: float = PICTURE_SECONDS) -> Path:
    """dB spectrograms (left channel, ``seconds`` from the middle of the track) of the mixture and of the
    true and the model's vocals and instrumental, one above the other with time and frequency axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n, length = mixture.shape[1], int(seconds * audio.sample_rate)
    start = max(0, (n - length) // 2)
    span = slice(start, min(n, start + length))
    panels = {"mixture": mixture, "vocals (true)": references["vocals"],
              "vocals (model)": estimates["vocals"], "instrumental (true)": references["instrumental"],
              "instrumental (model)": estimates["instrumental"]}
    specs = {name: np.abs(stft(wave[:1, span], audio))[0] for name, wave in panels.items()}
    peak = max(float(specs["mixture"].max()), _EPS)
    fig = Figure(figsize=(10, 2.2 * len(specs) + 0.5), dpi=80)
    axes = fig.subplots(len(specs), 1, squeeze=False)[:, 0]
    for ax, (name, spec) in zip(axes, specs.items(), strict=True):
        db = 20 * np.log10(np.maximum(spec, peak * 1e-5) / peak)
        mesh = show_spectrogram(ax, db, audio.sample_rate, audio.n_fft, audio.hop, cmap="magma", vmin=-100,
                                vmax=0)
        ax.set_title(name, fontsize="medium")
        ax.label_outer()
        fig.colorbar(mesh, ax=ax, format="%+.0f dB")
    fig.suptitle(f"{title} (left channel, from {span.start / audio.sample_rate:.1f} s)")
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def _nan_to_none(value):
    """NaN (a silent stem's museval score) as JSON null."""
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return None if isinstance(value, float) and np.isnan(value) else value


def write_report(report: dict, out_dir: str | Path, png: bool = False) -> list[Path]:
    """Write ``evaluation.json``, ``evaluation.md`` and (``png``) ``evaluation.png`` to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "evaluation.json", out_dir / "evaluation.md"]
    paths[0].write_text(json.dumps(_nan_to_none(report), indent=1))
    paths[1].write_text(markdown(report))
    if png:
        paths.append(plot(report, out_dir / "evaluation.png"))
    return paths
