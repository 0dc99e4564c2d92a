"""The dataset manifest: one append-only JSONL file per dataset (default ``<first --out>/manifest.jsonl``).

Lines (each written whole, then fsync'ed; a write that fails part-way, on a full drive, is cut off
again and raises ManifestError, so every line that was appended stays readable; a torn last line left
by a killed writer is ignored on read, with a warning, and cut off before the next append), as
``pipeline.schema`` defines them:

- ``ManifestConfig`` (``"type": "config"``): the first line, what the dataset is and its settings;
- ``BatchLine`` (``"type": "batch"``): the outcome of one task (a ``ShardEntry`` and the
  ``TrackEntry``s in it, atomically) or of a scan (failed and skipped files).

The last entry of a path wins (a failed file is retried by the next run).
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from pathlib import Path

from specbert.pipeline.schema import BATCH_LINE, CONFIG_LINE, ManifestConfig, ShardEntry, TrackEntry


class ManifestError(RuntimeError):
    """The manifest cannot be used (corrupt, locked, or made with other settings)."""


class Manifest:
    """What a manifest says: ``config``, ``shards()``, ``tracks()``."""

    def __init__(self, path: Path, lines: list[dict]):
        self.path = Path(path)
        configs = [line for line in lines if line.get("type") == CONFIG_LINE]
        self.config: ManifestConfig | dict = configs[0] if configs else {}
        self._shards: dict[str, ShardEntry] = {}
        self._tracks: dict[str, TrackEntry] = {}
        for line in lines:
            if line.get("type") == BATCH_LINE:
                self._shards.update((s["path"], s) for s in line["shards"])
                self._tracks.update((t["path"], t) for t in line["tracks"])

    def shards(self, split: str | None = None) -> list[ShardEntry]:
        """Shards in the order written, optionally of one split."""
        return [s for s in self._shards.values() if split is None or s["split"] == split]

    def tracks(self) -> list[TrackEntry]:
        """The latest entry of every source path."""
        return list(self._tracks.values())

    def track(self, path: str) -> TrackEntry | None:
        return self._tracks.get(path)


def read_manifest(path: str | Path) -> Manifest:
    """Parse a manifest; a torn last line (a killed writer) is ignored with a warning. ManifestError
    when it cannot be read, is empty or is corrupt."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ManifestError(f"{path}: cannot read the manifest: {err.strerror}") from None
    lines = _parse(data, path)[0]
    if not lines or lines[0].get("type") != CONFIG_LINE:
        raise ManifestError(f"{path}: not a specbert manifest (no config line; "
                            f"{'empty file' if not data else 'it starts with something else'})")
    return Manifest(path, lines)


def _parse(data: bytes, path: Path) -> tuple[list[dict], int]:
    """The lines and the byte length of the intact part (all but a torn last line)."""
    lines, end = [], 0
    chunks = data.split(b"\n")
    for number, chunk in enumerate(chunks, 1):
        if number == len(chunks):  # after the last newline: empty, or a line whose writer was killed
            if chunk:
                warnings.warn(f"{path}: ignoring a torn last line ({len(chunk)} bytes of a write that "
                              "did not complete)", RuntimeWarning, stacklevel=3)
            break
        try:
            lines.append(json.loads(chunk))
        except json.JSONDecodeError:
            raise ManifestError(f"{path}: line {number} is not JSON (corrupt manifest)") from None
        end += len(chunk) + 1
    return lines, end


class ManifestWriter:
    """Exclusive appender: locks ``<manifest>.lock``, repairs a torn tail, writes the config line once.

    ``config`` is the first line for a new manifest; for an existing one, ``check(old_config)`` may
    raise ManifestError when the settings are incompatible.
    """

    def __init__(self, path: str | Path, config: dict, check=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_name(self.path.name + ".lock"), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ManifestError(f"{self.path}: another ingest is writing this manifest") from None
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        lines, end = _parse(self._read_all(), self.path)
        os.ftruncate(self._fd, end)
        if lines:
            if check is not None:
                check(lines[0])
        else:
            self.append(config)
            lines = [config]
        self.manifest = Manifest(self.path, lines)

    def _read_all(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def append(self, entry: dict) -> None:
        """Write ``entry`` as one line, durably. A write can stop part-way (a full drive writes what
        fits, then fails): the rest is written until done, and on an error the partial line is cut
        off again and ManifestError (naming the cause) raised, so the file still ends with a whole line."""
        line = memoryview((json.dumps(entry, separators=(",", ":")) + "\n").encode())
        end = os.fstat(self._fd).st_size
        try:
            while line:
                line = line[os.write(self._fd, line):]
            os.fsync(self._fd)
        except OSError as err:
            os.ftruncate(self._fd, end)
            raise ManifestError(f"{self.path}: cannot append to the manifest: {err.strerror}; what it "
                                "holds is kept (free some space and run again to finish)") from None

    def close(self) -> None:
        os.close(self._fd)
        self._lock.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
