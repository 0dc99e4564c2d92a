"""What is stored: the shard sample record, the manifest's entries, and the names they use.

The one place that defines them.  The structures are ``TypedDict``s: plain dicts at run time, written as
JSON exactly as listed (key order included), so shards and manifests written before this module stay
readable and new ones are byte-for-byte what they were.  Writers build them by name
(``ShardEntry(path=..., ...)``), readers index them (``record["max_magnitude"]``).

Sample: one segment of one track, key ``<track_id>_<segment:04d>`` (``sample_key``; 16 hex digits, no
dots).  Its data members: ``spec`` for a spectrogram sample, one per stem (``mixture``, ``vocals``, ...)
for a stems sample, stored time-major (what the STFT produces, no transposes on either side): magnitude
float16 ``[C, frames, bins]``, complex float16 ``[C, frames, bins, 2 (re, im)]``.  ``decode_sample``
(``pipeline.shards``) returns a ``DecodedSample`` with float16 *views* in the project's order (crop along
the last axis, then convert; ``to_complex`` makes complex64)::

    magnitude        {"spec": [C, bins, frames]}
    complex          {"spec": [2 (re, im), C, bins, frames]}
    stems            {"stems": {name: [2 (re, im), C, bins, frames]}}   (stems are always complex)
"""

from __future__ import annotations

import re
from typing import Any, NotRequired, TypedDict

# what a dataset holds (manifest config ``kind``, shard ``kind``, record ``kind``)
SPECTROGRAM, STEMS = "spectrogram", "stems"
KINDS = (SPECTROGRAM, STEMS)
# the splits of a dataset (manifest, records, shard names)
TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
# how a sample's data is stored (record ``layout``)
MAGNITUDE, COMPLEX = "magnitude", "complex"
# shard file formats (shard ``format``; ``configs.ingest.IngestConfig.format`` names the same two)
TAR, ZARR = "tar", "zarr"
# what became of a track (manifest track ``status``)
OK, SKIPPED, FAILED = "ok", "skipped", "failed"
# manifest line types
CONFIG_LINE, BATCH_LINE = "config", "batch"


# shard files: ``<split>-<seq:06d>-<dataset>.<format>``, ``stems-`` first for stems datasets
SHARD_NAME = re.compile(rf"(stems-)?({'|'.join(SPLITS)})-(\d{{6}})-([0-9a-f]{{8}})\.({TAR}|{ZARR})")


def shard_name(kind: str, split: str, seq: int, dataset: str, fmt: str) -> str:
    """``train-000012-3fa9c2e1.tar`` (``stems-`` prefix for stems)."""
    return f"{'stems-' if kind == STEMS else ''}{split}-{seq:06d}-{dataset}.{fmt}"


def sample_key(track_id: str, segment: int) -> str:
    return f"{track_id}_{segment:04d}"


class SampleRecord(TypedDict):
    """A sample's record: ``<key>.json`` in a tar shard, the ``record`` attribute of its zarr group."""

    track_id: str
    artist: str
    album: str
    title: str
    split: str  # SPLITS
    source: str  # the audio file, or the stems folder
    segments: int  # of the track
    duration: float  # track seconds
    sample_rate: int
    n_fft: int
    hop: int
    max_magnitude: float  # the track's peak |STFT| (of the mixture for stems): normalise crops by it
    kind: str  # KINDS
    layout: str  # MAGNITUDE | COMPLEX
    codec: str  # pipeline.codecs
    checksum: NotRequired[str]  # of the tar members' bytes (codecs.CHECKSUM); absent in older shards
    members: list[str]  # data member names
    segment: int
    start_frame: int
    frames: int
    shape: list[int]  # stored shape of each member


class DecodedSample(TypedDict):
    """A sample as ``decode_sample`` returns it: ``spec`` (spectrogram) or ``stems`` (stems)."""

    key: str
    record: SampleRecord
    spec: NotRequired[Any]  # float16 view, see the module docstring
    stems: NotRequired[dict[str, Any]]


class ManifestConfig(TypedDict):
    """A manifest's first line: what the dataset is and the settings it was made with."""

    type: str  # CONFIG_LINE
    dataset: str  # 8 hex digits, in every shard name
    kind: str  # KINDS
    audio: dict  # configs.audio.AudioConfig
    ingest: dict  # configs.ingest.IngestConfig
    loader: NotRequired[dict]  # older manifests only: {"crop_frames": ...}
    created: str  # ISO time


class ShardEntry(TypedDict):
    """A shard in the manifest."""

    path: str  # absolute
    split: str  # SPLITS
    format: str  # TAR | ZARR
    kind: str  # KINDS
    codec: str
    tracks: int
    samples: int
    frames: int
    bytes: int


class TrackEntry(TypedDict, total=False):
    """A source file (or stems folder) in the manifest; what is known of it grows with its status."""

    id: str  # content hash; the sample keys start with it
    kind: str  # KINDS
    path: str
    root: str  # the library folder it was found under
    size: int
    mtime_ns: int
    status: str  # OK | SKIPPED | FAILED
    reason: str | None  # why it was skipped or failed
    artist: str
    album: str
    title: str
    declared: float | None  # seconds its header declares
    split: str  # SPLITS
    duration: float  # seconds decoded
    frames: int
    segments: int
    max_magnitude: float
    shards: list[str]  # paths
    files: dict[str, str]  # stems: stem name -> file
    streams: dict[str, int]  # stems sharing one file (a .stem.mp4): stem name -> its audio stream
    name: str  # stems: the track's folder name


class BatchLine(TypedDict):
    """A manifest line with the outcome of one task (a shard and its tracks, atomically) or of a scan."""

    type: str  # BATCH_LINE
    shards: list[ShardEntry]
    tracks: list[TrackEntry]
