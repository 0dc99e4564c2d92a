"""Ingest settings: how a music library (or a stems dataset) becomes shards."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Stem = Literal["mixture", "vocals", "accompaniment", "drums", "bass", "other"]
_LOSSY = re.compile(r"f16r([1-9])")


def codec_bits(name: str) -> int | None:
    """The storage codecs' names (``pipeline.codecs.get_codec`` builds them): None for the lossless
    ``"f16"``, N for ``"f16rN"`` (N = 1..9 mantissa bits); ValueError names the valid ones."""
    if name == "f16":
        return None
    match = _LOSSY.fullmatch(name)
    if match is None:
        raise ValueError(f"unknown codec {name!r} (valid: f16, f16r1 .. f16r9; default f16r6)")
    return int(match.group(1))


@dataclass
class IngestConfig:
    format: Literal["tar", "zarr"] = "tar"
    codec: str = "f16r6"  # storage codec, see pipeline/codecs.py (0.071 dB max error, < FLAC bytes)
    keep_complex: bool = False  # store real/imag float16 instead of magnitude
    segment_frames: int = 2048  # frames per stored segment; a tail under half of one joins the one before
    shard_bytes: int = 1_000_000_000  # target shard size (a shard holds whole tracks)
    val_fraction: float = 0.05  # share of albums (or artists) held out for validation
    split_by: Literal["album", "artist"] = "artist"  # what never straddles train/validation
    workers: int = 2  # LocalCluster workers (one thread each)
    scheduler: str | None = None  # tcp://host:port of an existing Dask cluster
    stems: tuple[Stem, ...] = ("mixture", "vocals", "accompaniment")  # stored by ingest-stems
    reserve_bytes: int = 1_000_000_000  # free space left untouched on every output drive
    # ingest-stems of an instrumental library: every audio file is a track's accompaniment, and a synthetic
    # voice its vocals (pipeline/voices.py), so that music without vocals can teach vocal removal.
    synthetic_vocals: bool = False

    def __post_init__(self):
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.segment_frames <= 0 or self.shard_bytes <= 0 or self.workers <= 0:
            raise ValueError("segment_frames, shard_bytes and workers must be positive")
        if self.reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be >= 0, got {self.reserve_bytes}")
        if "mixture" not in self.stems or len(set(self.stems)) != len(self.stems):
            raise ValueError(f"stems must name mixture and no stem twice, got {list(self.stems)}")
        if self.synthetic_vocals and not set(self.stems) <= {"mixture", "vocals", "accompaniment"}:
            raise ValueError(f"synthetic_vocals makes mixture, vocals and accompaniment only, not "
                             f"{list(self.stems)}")
        codec_bits(self.codec)
