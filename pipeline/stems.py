"""Stems datasets: find tracks, identify them, and load their aligned stems as complex STFTs.

Layouts under each root:
- MUSDB18-HQ: every folder holding ``mixture.<ext>`` is a track, with any of ``vocals, drums, bass,
  other, accompaniment``; tracks under a ``test`` folder get the split "test", the others are split
  train/validation like a library (the artist and title come from ``Artist - Title`` folder names);
- paired folders: ``mixtures/`` and ``instruments/`` holding files with the same names (any audio
  extension); the instrumental is the accompaniment.

Stored stems are ``ingest.stems`` (default mixture, vocals, accompaniment); a missing one is derived
exactly in the waveform domain: accompaniment = drums + bass + other (or mixture - vocals), vocals =
mixture - accompaniment. All stems of a track are trimmed to the shortest (they must agree to 1 s).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import soundfile as sf

from specbert.configs import Config
from specbert.pipeline.audio import AUDIO_EXTS, AudioError, read_audio
from specbert.pipeline.scan import content_hash
from specbert.pipeline.tracks import Track, stored_array

STEM_NAMES = ("mixture", "vocals", "drums", "bass", "other", "accompaniment")
MAX_LENGTH_MISMATCH = 1.0  # seconds


def scan_stems(roots: Iterable[str | Path]) -> tuple[list[dict], int]:
    """Stems tracks under ``roots`` as items (``files``: stem -> path), and the files ignored."""
    items, ignored = [], 0
    for root in roots:
        root = Path(os.path.abspath(root))
        if (root / "mixtures").is_dir() and (root / "instruments").is_dir():
            found, skipped = _paired_items(root)
        else:
            found, skipped = _musdb_items(root)
        items += found
        ignored += skipped
    return sorted(items, key=lambda item: item["path"]), ignored


def _audio_files(folder: Path, recursive: bool) -> list[Path]:
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in paths
                  if p.is_file() and p.suffix.lower() in AUDIO_EXTS and not p.name.startswith("."))


def _musdb_items(root: Path) -> tuple[list[dict], int]:
    items, ignored = [], 0
    for folder in sorted({p.parent for p in _audio_files(root, recursive=True)}):
        files = {p.stem.lower(): p for p in _audio_files(folder, recursive=False)}
        stems = {name: str(p) for name, p in files.items() if name in STEM_NAMES}
        ignored += len(files) - len(stems)
        if "mixture" in stems:
            split = "test" if "test" in folder.relative_to(root).parts else None
            items.append(_item(folder, root, stems, folder.name, split))
        else:
            ignored += len(stems)
    return items, ignored


def _paired_items(root: Path) -> tuple[list[dict], int]:
    mixtures = {p.stem: p for p in _audio_files(root / "mixtures", recursive=True)}
    instruments = {p.stem: p for p in _audio_files(root / "instruments", recursive=True)}
    items = []
    for name in sorted(mixtures.keys() | instruments.keys()):
        if name in mixtures and name in instruments:
            files = {"mixture": str(mixtures[name]), "accompaniment": str(instruments[name])}
            items.append(_item(mixtures[name], root, files, name, None))
        else:
            lonely = mixtures.get(name) or instruments[name]
            other = "instruments" if name in mixtures else "mixtures"
            items.append({"kind": "stems", "path": str(lonely), "root": str(root), "status": "failed",
                          "reason": f"no file named {name}.* in {other}/"})
    return items, 0


def _item(path: Path, root: Path, files: dict, name: str, split: str | None) -> dict:
    stats = [os.stat(p) for p in files.values()]
    item = {"kind": "stems", "path": str(path), "root": str(root), "files": files, "name": name,
            "size": sum(s.st_size for s in stats), "mtime_ns": max(s.st_mtime_ns for s in stats)}
    if split:
        item["split"] = split
    if min(s.st_size for s in stats) == 0:
        item.update(status="failed", reason="empty file among the stems")
    return item


def identify(item: dict) -> dict:
    """Add ``id`` (hash of all stem files), ``artist, album, title`` (from ``Artist - Title``)."""
    try:
        content = content_hash(item["files"][name] for name in sorted(item["files"]))
    except OSError as err:
        return {**item, "status": "failed", "reason": f"unreadable: {err.strerror or err}"}
    artist, sep, title = item["name"].partition(" - ")
    artist, title = (artist.strip(), title.strip()) if sep else ("Unknown artist", item["name"])
    try:
        declared = sf.info(item["files"]["mixture"]).duration  # only to plan shard sizes
    except (sf.LibsndfileError, RuntimeError):
        declared = None
    return {**item, "id": content, "artist": artist, "album": item["name"], "title": title,
            "declared": declared}


def stems_track(item: dict, cfg: Config) -> Track:
    """Read the files that ``cfg.ingest.stems`` need, align them, derive, store each as complex float16."""
    recipes = {name: _recipe(name, set(item["files"])) for name in cfg.ingest.stems}
    needed = sorted({source for recipe in recipes.values() for _, source in recipe})
    waves = {name: read_audio(item["files"][name], cfg.audio) for name in needed}
    lengths = {name: wave.shape[1] for name, wave in waves.items()}
    if max(lengths.values()) - min(lengths.values()) > MAX_LENGTH_MISMATCH * cfg.audio.sample_rate:
        sizes = ", ".join(f"{name} {n} samples" for name, n in lengths.items())
        raise AudioError(f"stems differ in length: {sizes}")
    n = min(lengths.values())
    arrays, peaks = {}, {}
    for name, recipe in recipes.items():
        arrays[name], peaks[name] = stored_array(_mix(waves, recipe, n), cfg.audio, keep_complex=True)
    return Track(arrays, peaks["mixture"], n / cfg.audio.sample_rate)


def _mix(waves: dict[str, np.ndarray], recipe: list[tuple[int, str]], n: int) -> np.ndarray:
    """The first ``n`` samples of the stem that ``recipe`` makes from ``waves`` (``[C, N]`` each): a view
    of a lone file, else one new array (a stem is a whole track: no temporary per term)."""
    (sign, source), *rest = recipe
    if not rest:
        return waves[source][:, :n]  # a lone file is never negated
    out = sign * waves[source][:, :n]
    for sign, source in rest:
        (np.add if sign > 0 else np.subtract)(out, waves[source][:, :n], out=out)
    return out


def _recipe(name: str, files: set[str]) -> list[tuple[int, str]]:
    """How to make stem ``name`` from the files present: ``[(sign, file stem), ...]`` to add up."""
    if name in files:
        return [(1, name)]
    if name == "accompaniment" and {"drums", "bass", "other"} <= files:
        return [(1, "drums"), (1, "bass"), (1, "other")]
    if name == "accompaniment" and "vocals" in files:
        return [(1, "mixture"), (-1, "vocals")]
    if name == "vocals":
        return [(1, "mixture")] + [(-sign, source) for sign, source in _recipe("accompaniment", files)]
    raise AudioError(f"no {name} stem, and it cannot be derived from {', '.join(sorted(files))}")
