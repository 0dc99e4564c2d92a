"""Stems datasets: find tracks, identify them, and load their aligned stems as complex STFTs.

Layouts under each root:
- MUSDB18-HQ: every folder holding ``mixture.<ext>`` is a track, with any of ``vocals, drums, bass,
  other, accompaniment``; tracks under a ``test`` folder get the split "test", the others are split
  train/validation like a library (the artist and title come from ``Artist - Title`` folder names);
- MUSDB18 as distributed: every ``Artist - Title.stem.mp4`` is a track whose audio streams are, in
  order, ``MUSDB_STREAMS`` (decoded by ffmpeg); splits as above;
- paired folders: ``mixtures/`` and ``instruments/`` holding files with the same names (any audio
  extension); the instrumental is the accompaniment;
- an instrumental library (``ingest.synthetic_vocals``, ``scan_instrumentals``): every audio file is a
  track's accompaniment, its vocals a synthetic voice drawn from the track's id (``pipeline.voices``), the
  mixture their sum; artist, album and title as ``specbert ingest`` reads them.

Stored stems are ``ingest.stems`` (default mixture, vocals, accompaniment); a missing one is derived
exactly in the waveform domain: accompaniment = drums + bass + other (or mixture - vocals), vocals =
mixture - accompaniment. All stems of a track are trimmed to the shortest (they must agree to 1 s).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import mutagen
import numpy as np

from specbert.configs import Config
from specbert.configs.audio import AudioConfig
from specbert.pipeline import scan
from specbert.pipeline.audio import AUDIO_EXTS, AudioError, read_audio
from specbert.pipeline.schema import FAILED, STEMS, TEST
from specbert.pipeline.tracks import Track, stored_array
from specbert.pipeline.voices import vocals_for

STEM_NAMES = ("mixture", "vocals", "drums", "bass", "other", "accompaniment")
MUSDB_STREAMS = ("mixture", "drums", "bass", "other", "vocals")  # the audio streams of a .stem.mp4
STEM_MP4 = ".stem.mp4"
MAX_LENGTH_MISMATCH = 1.0  # seconds


NOT_STEMS = "audio files ignored (not stems of a track)"


def scan_stems(roots: Iterable[str | Path]) -> tuple[list[dict], dict[str, list[str]]]:
    """Stems tracks under ``roots`` as items (``files``: stem -> path), and what was left out (as
    ``scan.scan_library``): audio files that are not a track's stems."""
    items, ignored = [], []
    for root in roots:
        root = Path(os.path.abspath(root))
        if (root / "mixtures").is_dir() and (root / "instruments").is_dir():
            found, skipped = _paired_items(root)
        else:
            found, skipped = _musdb_items(root)
        items += found
        ignored += skipped
    return sorted(items, key=lambda item: item["path"]), {NOT_STEMS: ignored} if ignored else {}


def scan_instrumentals(roots: Iterable[str | Path]) -> tuple[list[dict], dict[str, list[str]]]:
    """Every audio file under ``roots`` (as ``scan.scan_library`` finds them) as a stems track whose only
    file is its accompaniment; ``stem_waves`` adds the synthetic vocals."""
    items, left_out = scan.scan_library(roots)
    return [{**item, "kind": STEMS, "files": {"accompaniment": item["path"]}, "synthetic_vocals": True}
            for item in items], left_out


def _audio_files(folder: Path, recursive: bool) -> list[Path]:
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in paths
                  if p.is_file() and p.suffix.lower() in AUDIO_EXTS and not p.name.startswith("."))


def _musdb_items(root: Path) -> tuple[list[dict], list[str]]:
    items, ignored = [], []
    for folder in sorted({p.parent for p in _audio_files(root, recursive=True)}):
        split = TEST if "test" in folder.relative_to(root).parts else None
        paths = _audio_files(folder, recursive=False)
        for path in paths:
            if path.name.lower().endswith(STEM_MP4):
                files = dict.fromkeys(MUSDB_STREAMS, str(path))
                streams = {name: i for i, name in enumerate(MUSDB_STREAMS)}
                items.append(_item(path, root, files, path.name[: -len(STEM_MP4)], split, streams))
        files = {p.stem.lower(): p for p in paths if not p.name.lower().endswith(STEM_MP4)}
        stems = {name: str(p) for name, p in files.items() if name in STEM_NAMES}
        if "mixture" in stems:
            items.append(_item(folder, root, stems, folder.name, split))
            ignored += [str(p) for name, p in files.items() if name not in stems]
        else:
            ignored += map(str, files.values())
    return items, ignored


def _paired_items(root: Path) -> tuple[list[dict], list[str]]:
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
            items.append({"kind": STEMS, "path": str(lonely), "root": str(root), "status": FAILED,
                          "reason": f"no file named {name}.* in {other}/"})
    return items, []


def _item(path: Path, root: Path, files: dict, name: str, split: str | None,
          streams: dict | None = None) -> dict:
    """A track's item: ``files`` maps each stem to its file, ``streams`` (when several stems share a file)
    to its audio stream in that file."""
    stats = [os.stat(p) for p in sorted(set(files.values()))]
    item = {"kind": STEMS, "path": str(path), "root": str(root), "files": files, "name": name,
            "size": sum(s.st_size for s in stats), "mtime_ns": max(s.st_mtime_ns for s in stats)}
    if streams:
        item["streams"] = streams
    if split:
        item["split"] = split
    if min(s.st_size for s in stats) == 0:
        item.update(status=FAILED, reason="empty file among the stems")
    return item


def identify(item: dict) -> dict:
    """Add ``id`` (hash of all stem files), ``artist, album, title`` (from ``Artist - Title``; an
    instrumental library's from tags and folders, as ``scan.identify``)."""
    if item.get("synthetic_vocals"):
        return scan.identify(item)
    try:
        content = scan.content_hash(sorted(set(item["files"].values())))
    except OSError as err:
        return {**item, "status": FAILED, "reason": f"unreadable: {err.strerror or err}"}
    artist, sep, title = item["name"].partition(" - ")
    artist, title = (artist.strip(), title.strip()) if sep else ("Unknown artist", item["name"])
    try:  # only to plan shard sizes
        declared = mutagen.File(item["files"]["mixture"]).info.length
    except Exception:  # mutagen raises many kinds on odd files (None has no .info): decoding will judge
        declared = None
    return {**item, "id": content, "artist": artist, "album": item["name"], "title": title,
            "declared": declared}


def stems_track(item: dict, cfg: Config) -> Track:
    """Read the files that ``cfg.ingest.stems`` need, align them, derive, store each as complex float16."""
    arrays, peaks, n = {}, {}, 0
    for name, wave in stem_waves(item, cfg.ingest.stems, cfg.audio):
        arrays[name], peaks[name] = stored_array(wave, cfg.audio, keep_complex=True)
        n = wave.shape[1]
    return Track(arrays, peaks["mixture"], n / cfg.audio.sample_rate)


def stem_waves(item: dict, names: Iterable[str], audio: AudioConfig) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, float32 [C, N])`` of each stem in ``names`` of a scanned track, read (every file or stream
    once) or derived, all trimmed to the shortest; one new array at a time for a derived stem.
    AudioError when the stems differ in length by more than ``MAX_LENGTH_MISMATCH`` or a stem cannot be
    made from the files present."""
    if item.get("synthetic_vocals"):
        yield from _with_voice(item, names, audio)
        return
    recipes = {name: _recipe(name, set(item["files"])) for name in names}
    needed = sorted({source for recipe in recipes.values() for _, source in recipe})
    streams = item.get("streams", {})
    waves = {name: read_audio(item["files"][name], audio, streams.get(name, 0)) for name in needed}
    lengths = {name: wave.shape[1] for name, wave in waves.items()}
    if max(lengths.values()) - min(lengths.values()) > MAX_LENGTH_MISMATCH * audio.sample_rate:
        sizes = ", ".join(f"{name} {n} samples" for name, n in lengths.items())
        raise AudioError(f"stems differ in length: {sizes}")
    n = min(lengths.values())
    for name, recipe in recipes.items():
        yield name, _mix(waves, recipe, n)


def _with_voice(item: dict, names: Iterable[str], audio: AudioConfig) -> Iterator[tuple[str, np.ndarray]]:
    """The stems of an instrumental track: the file is the accompaniment, the vocals a voice drawn from the
    track's id, the mixture their sum (``configs.ingest`` allows no other stem)."""
    accompaniment = read_audio(item["files"]["accompaniment"], audio)
    vocals = vocals_for(accompaniment, int(item["id"], 16), audio.sample_rate)
    stems = {"accompaniment": accompaniment, "vocals": vocals}
    for name in names:
        yield name, stems[name] if name in stems else accompaniment + vocals  # the mixture


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
