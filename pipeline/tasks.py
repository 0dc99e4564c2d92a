"""What the Dask workers run: identify a batch of items, and write one shard from a group of items.

Both return small JSON-able results (never audio). A file that cannot be used becomes a ``failed`` track
with a one-line reason and never fails the task; every decodable track is stored, however short; a full
disk moves the shard to the next folder, and "no room on any folder" is a result too (its tracks
failed): an outcome that running the task again cannot change is never raised, so Dask never retries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specbert.configs import Config
from specbert.pipeline import scan, stems
from specbert.pipeline.audio import AudioError
from specbert.pipeline.codecs import get_codec
from specbert.pipeline.drives import has_room, is_disk_full
from specbert.pipeline.schema import FAILED, OK, SPECTROGRAM, STEMS, ShardEntry, TrackEntry
from specbert.pipeline.shards import open_shard
from specbert.pipeline.tracks import spectrogram_track, track_samples

IDENTIFY = {SPECTROGRAM: scan.identify, STEMS: stems.identify}
LOAD = {SPECTROGRAM: spectrogram_track, STEMS: stems.stems_track}


@dataclass(frozen=True)
class ShardJob:
    """One task: write ``items`` (all of one split) into the shard file ``name``."""

    name: str
    split: str
    items: tuple[dict, ...]
    folders: tuple[str, ...]  # output folders in order of preference
    estimate: int  # expected shard bytes


def identify_batch(items: list[dict]) -> list[dict]:
    """Content hash and tags of each item (``failed`` with a reason when unreadable)."""
    return [IDENTIFY[item["kind"]](item) for item in items]


def write_shard(job: ShardJob, cfg: Config) -> dict:
    """Write ``job`` to the first preferred folder with room: ``{"shard": info | None, "tracks":
    [track dicts], "full": [folders found full]}``; when none takes it, no shard and every track failed."""
    _one_core()
    full = []
    for folder in job.folders:
        if not has_room(folder, job.estimate, cfg.ingest.reserve_bytes):
            full.append(folder)
            continue
        try:
            return {**_write(Path(folder) / job.name, job, cfg), "full": full}
        except OSError as err:
            if not is_disk_full(err):
                raise
            full.append(folder)
    reason = (f"no output folder has room for its shard (~{job.estimate / 1e6:.0f} MB): "
              f"{', '.join(full) or 'all were dropped as full'}")
    return {"shard": None, "tracks": failed_tracks(job.items, reason), "full": full}


def failed_tracks(items, reason: str) -> list[TrackEntry]:
    """``items`` as failed manifest entries with ``reason``."""
    return [{**item, "status": FAILED, "reason": reason} for item in items]


def _one_core() -> None:
    """A Dask worker is one core: no extra threads in torch (float16 casts) or blosc (codec)."""
    import torch
    from numcodecs import blosc

    torch.set_num_threads(1)
    blosc.use_threads = False


def _write(path: Path, job: ShardJob, cfg: Config) -> dict:
    """All of ``job.items`` into one shard at ``path`` (nothing visible unless it completes)."""
    writer = open_shard(path, cfg.ingest.format, get_codec(cfg.ingest.codec))
    try:
        tracks = [_write_track(writer, item, cfg) for item in job.items]
        done = [t for t in tracks if t["status"] == OK]
        if not done:
            writer.abort()
            return {"shard": None, "tracks": tracks}
        size = writer.commit()
    except BaseException:
        writer.abort()
        raise
    for track in done:
        track["shards"] = [str(path)]
    shard = ShardEntry(path=str(path), split=job.split, format=cfg.ingest.format, kind=done[0]["kind"],
                       codec=cfg.ingest.codec, tracks=len(done), samples=sum(t["segments"] for t in done),
                       frames=sum(t["frames"] for t in done), bytes=size)
    return {"shard": shard, "tracks": tracks}


def _write_track(writer, item: TrackEntry, cfg: Config) -> TrackEntry:
    """Append one track's samples; return its manifest entry. Errors of the track are caught here,
    errors of the writer (a full disk) are not."""
    try:
        track = LOAD[item["kind"]](item, cfg)
        samples = track_samples(item, track, cfg)
    except AudioError as err:
        return {**item, "status": FAILED, "reason": str(err)}
    except MemoryError:
        return {**item, "status": FAILED, "reason": "out of memory while decoding"}
    except Exception as err:  # a file must never stop the job
        return {**item, "status": FAILED, "reason": one_line(err)}
    for key, record, arrays in samples:
        writer.write(key, record, arrays)
    frames = sum(record["frames"] for _, record, _ in samples)
    return {**item, "status": OK, "reason": None, "duration": round(track.seconds, 3), "frames": frames,
            "segments": len(samples), "max_magnitude": track.peak}


def one_line(err: BaseException) -> str:
    """``"ValueError: first line of the message"``."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
