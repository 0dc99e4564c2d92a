"""Library scan: which files to ingest, what their content is, who made them, and their split.

A scanned file is an *item*: a JSON-able dict that travels to the Dask workers and into the manifest.
``scan_library`` fills ``kind, path, size, mtime_ns, root``; ``identify`` (on a worker) adds ``id`` (a
hash of the file's bytes: the same file twice is ingested once; the same music in two containers is
not recognised, which would need a full decode just to compare), ``artist, album, title`` and the
``declared`` duration from the tags. Artist is the album artist when tagged (so a tagged compilation
stays whole), else the artist tag, else the folder two levels up; album is the tag, else the folder.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import mutagen

from specbert.pipeline.audio import AUDIO_EXTS
from specbert.pipeline.schema import FAILED, SPECTROGRAM, TRAIN, VALIDATION

HASH_CHUNK = 1 << 20


NON_AUDIO = "non-audio files ignored"
HIDDEN = "hidden files or folders ignored (name starting with '.')"


def scan_library(roots: Iterable[str | Path]) -> tuple[list[dict], dict[str, list[str]]]:
    """Audio files under ``roots`` as items, sorted by path, and what was left out: reason -> paths.

    Directory symlinks are followed, each directory visited once (no loops). Left out, and reported:
    non-audio files (``NON_AUDIO``), hidden files and folders (``HIDDEN``), folders that cannot be
    listed (``"unreadable folder (<cause>)"``). A file that cannot be stat'ed, or is empty, comes back
    already ``failed``.
    """
    items, left_out = {}, defaultdict(list)
    for root in roots:
        root = Path(os.path.abspath(root))
        for path, reason in _walk(root):
            if reason is not None:
                left_out[reason].append(str(path))
            elif str(path) not in items:  # roots may overlap
                items[str(path)] = _stat_item(path, root)
    return sorted(items.values(), key=lambda item: item["path"]), dict(left_out)


def _walk(root: Path) -> Iterator[tuple[Path, str | None]]:
    """(path, why it is left out, or None for an audio file) for everything under ``root``, each
    directory once."""
    if not root.is_dir():
        yield root, None if root.suffix.lower() in AUDIO_EXTS else NON_AUDIO
        return
    seen, errors = set(), []
    for folder, dirs, files in os.walk(root, followlinks=True, onerror=errors.append):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        for name in sorted(d for d in dirs if d.startswith(".")):
            yield Path(folder) / name, HIDDEN
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            hidden, audio = name.startswith("."), Path(name).suffix.lower() in AUDIO_EXTS
            yield Path(folder) / name, HIDDEN if hidden else None if audio else NON_AUDIO
    for err in errors:  # folders os.walk could not list
        yield Path(err.filename), f"unreadable folder ({err.strerror})"


def _stat_item(path: Path, root: Path) -> dict:
    item = {"kind": SPECTROGRAM, "path": str(path), "root": str(root)}
    try:
        st = os.stat(path)
    except OSError as err:
        return {**item, "status": FAILED, "reason": f"unreadable: {err.strerror}"}
    item.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    if st.st_size == 0:
        item.update(status=FAILED, reason="empty file")
    return item


def identify(item: dict) -> dict:
    """Add ``id`` (content hash), ``artist, album, title, declared``; unreadable -> ``failed``."""
    try:
        content = content_hash([item["path"]])
    except OSError as err:
        return {**item, "status": FAILED, "reason": f"unreadable: {err.strerror or err}"}
    return {**item, "id": content, **read_tags(Path(item["path"]), Path(item["root"]))}


def content_hash(paths: Iterable[str | Path]) -> str:
    """16 hex digits of SHA-256 (hardware-accelerated: 3x blake2b here) over the bytes of ``paths``."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(HASH_CHUNK):
                digest.update(block)
    return digest.hexdigest()[:16]


def read_tags(path: Path, root: Path) -> dict:
    """Artist, album and title from the tags, else from ``root/<artist>/<album>/<file>``; the
    duration the header declares (None when unknown)."""
    try:
        info = mutagen.File(path, easy=True)
    except Exception:  # mutagen raises many kinds on odd files; decoding will judge them
        info = None
    tags = (info.tags if info is not None else None) or {}

    def tag(key: str) -> str | None:
        values = tags.get(key) if hasattr(tags, "get") else None
        text = str(values[0]).strip() if values else ""
        return text or None

    folders = path.relative_to(root).parts[:-1] if path.is_relative_to(root) else ()
    folder_artist = folders[-2] if len(folders) >= 2 else "Unknown artist"
    return {
        "artist": tag("albumartist") or tag("artist") or folder_artist,
        "album": tag("album") or (folders[-1] if folders else path.stem),
        "title": tag("title") or path.stem,
        "declared": getattr(getattr(info, "info", None), "length", None) or None,
    }


def assign_split(artist: str, album: str, val_fraction: float, split_by: str) -> str:
    """``TRAIN`` or ``VALIDATION`` from a stable hash of the artist (or artist + album)."""
    key = artist if split_by == "artist" else f"{artist}\x00{album}"
    digest = hashlib.blake2b(key.strip().casefold().encode(), digest_size=8).digest()
    return VALIDATION if int.from_bytes(digest, "big") / 2**64 < val_fraction else TRAIN
