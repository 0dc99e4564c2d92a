"""``specbert inspect``: what a manifest or a set of shards holds, and a picture of one sample."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from specbert.pipeline.manifest import read_manifest
from specbert.pipeline.plots import show_spectrogram
from specbert.pipeline.schema import COMPLEX, OK
from specbert.pipeline.shards import iter_shard, read_json_records, shard_bytes


def _is_shard(path: Path) -> bool:
    return path.suffix in (".tar", ".zarr")


def _shard_paths(paths) -> list[Path]:
    """Shards named directly, listed by manifests, or found in folders."""
    out = []
    for path in map(Path, paths):
        if _is_shard(path):
            out.append(path)
        elif path.is_dir():
            out += sorted(p for p in path.iterdir() if _is_shard(p) and not p.name.startswith("."))
        else:
            out += [Path(s["path"]) for s in read_manifest(path).shards()]
    return out


def describe(paths) -> list[str]:
    """Report lines for each manifest, and one report for all shards given directly."""
    lines, shards = [], []
    for path in map(Path, paths):
        if path.is_file() and not _is_shard(path):
            lines += describe_manifest(path)
        else:
            shards += _shard_paths([path])
    if shards:
        lines += describe_shards(shards)
    return lines


def describe_manifest(path: Path) -> list[str]:
    m = read_manifest(path)
    cfg, tracks = m.config, m.tracks()
    status = Counter(t["status"] for t in tracks)
    ok_seconds = sum(t["duration"] for t in tracks if t["status"] == OK)
    codec = cfg.get("ingest", {}).get("codec")
    lines = [f"{path}: dataset {cfg.get('dataset')} ({cfg.get('kind')}, codec {codec})",
             f"tracks: {status['ok']} ok ({ok_seconds / 3600:.2f} h), {status['skipped']} skipped, "
             f"{status['failed']} failed"]
    for split in sorted({s["split"] for s in m.shards()}):
        shards = m.shards(split)
        hours = sum(s["frames"] for s in shards) * cfg["audio"]["hop"] / cfg["audio"]["sample_rate"] / 3600
        size = sum(s["bytes"] for s in shards)
        held, samples = sum(s["tracks"] for s in shards), sum(s["samples"] for s in shards)
        lines.append(f"  {split}: {held} tracks, {hours:.2f} h, {len(shards)} shards, {samples} samples, "
                     f"{_size(size, hours)}")
    lines += [f"  {t['status']}: {t['path']}: {t['reason']}" for t in tracks
              if t["status"] != OK and not str(t["reason"]).startswith("duplicate of")]
    return lines


def describe_shards(paths: list[Path]) -> list[str]:
    """Count samples, tracks and hours per split by reading the shards' records."""
    per_split: dict[str, Counter] = defaultdict(Counter)
    tracks: dict[str, set] = defaultdict(set)
    for path in paths:
        records = read_json_records(path)
        split = records[0]["split"] if records else "(empty)"
        c = per_split[split]
        c.update(shards=1, bytes=shard_bytes(path), samples=len(records),
                 seconds=sum(r["frames"] * r["hop"] / r["sample_rate"] for r in records))
        tracks[split].update(r["track_id"] for r in records)
    lines = [f"{len(paths)} shards"]
    for split, c in sorted(per_split.items()):
        hours = c["seconds"] / 3600
        lines.append(f"  {split}: {len(tracks[split])} tracks, {hours:.2f} h, {c['shards']} shards, "
                     f"{c['samples']} samples, {_size(c['bytes'], hours)}")
    return lines


def _size(nbytes: int, hours: float) -> str:
    per_hour = f" ({nbytes / 1e9 / hours:.3f} GB/h)" if hours else ""
    return f"{nbytes / 1e9:.3f} GB{per_hour}"


def render_png(paths, png: Path, index: int = 0) -> str:
    """Draw sample number ``index`` (in shard order) as dB spectrograms, one panel per channel/stem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = itertools.chain.from_iterable(iter_shard(p) for p in _shard_paths(paths))
    sample = next(itertools.islice(samples, index, None), None)
    if sample is None:
        raise ValueError(f"no sample number {index} in {', '.join(map(str, paths))}")
    record = sample["record"]
    panels = _panels(sample)
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.6 * len(panels)), squeeze=False)
    rate, n_fft, hop = record["sample_rate"], record["n_fft"], record["hop"]
    for ax, (title, magnitude) in zip(axes[:, 0], panels, strict=True):
        db = 20 * np.log10(np.maximum(magnitude.astype(np.float32), 1e-5 * record["max_magnitude"]))
        mesh = show_spectrogram(ax, db, rate, n_fft, hop, cmap="magma", vmin=db.max() - 100, vmax=db.max())
        ax.set(title=title)
        fig.colorbar(mesh, ax=ax, format="%+.0f dB")
    fig.suptitle(f"{record['artist']} - {record['title']} (segment {record['segment']}, {record['split']})")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return f"wrote {png}: sample {sample['key']} of {record['source']}"


def _panels(sample: dict) -> list[tuple[str, np.ndarray]]:
    """(title, magnitude [bins, frames]) for each channel, or the left channel of each stem."""
    if "stems" in sample:
        return [(f"{name} (left)", _magnitude(spec)[0]) for name, spec in sample["stems"].items()]
    spec = _magnitude(sample["spec"]) if sample["record"]["layout"] == COMPLEX else sample["spec"]
    return [(f"channel {c}", spec[c]) for c in range(spec.shape[0])]


def _magnitude(spec: np.ndarray) -> np.ndarray:
    """float16 ``[2 (re, im), C, bins, T]`` -> float32 magnitude ``[C, bins, T]``."""
    return np.hypot(spec[0].astype(np.float32), spec[1].astype(np.float32))
