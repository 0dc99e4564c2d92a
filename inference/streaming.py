"""Streaming audio I/O: blocks in and out, in memory independent of the length (the streamed STFT and its
inverse are ``pipeline.spectral``'s ``StreamingSTFT`` and ``StreamingISTFT``).

A stage takes its input in pieces with ``push(x)`` and returns what is complete so far; ``finish()``
returns the rest.  Pushed through in any pieces, it gives the same result as on the whole signal:

- ``Source``: a file (soundfile, or an ffmpeg pipe for M4A/AAC and the like) or an array, read in blocks
  of float32 ``[C, n]`` at its own rate and channel count; it can be read more than once.
- ``Resampler``: soxr's streaming resampler (the same samples as ``soxr.resample`` of the whole).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from specbert.pipeline.audio import SOUNDFILE_EXTS, AudioError, ffmpeg_command, ffprobe_stream

BLOCK = 1 << 18  # samples read at once (6 s at 44.1 kHz)


@dataclass
class Source:
    """Audio to read in blocks: ``blocks()`` yields float32 ``[channels, n]`` at ``rate``, from the start
    each time it is called.  ``length`` is the number of samples when known before reading (None for a
    pipe); after a complete read it is always set."""

    rate: int
    channels: int
    length: int | None
    _open: Callable[[int], Iterator[np.ndarray]]

    def blocks(self, size: int = BLOCK) -> Iterator[np.ndarray]:
        count = 0
        for block in self._open(size):
            count += block.shape[1]
            yield block
        self.length = count

    @property
    def seconds(self) -> float | None:
        return None if self.length is None else self.length / self.rate


def array_source(wave: np.ndarray, rate: int) -> Source:
    """An in-memory ``[C, N]`` (or mono ``[N]``) array."""
    wave = np.atleast_2d(np.asarray(wave, dtype=np.float32))
    if wave.shape[1] == 0:
        raise AudioError("zero duration")
    return Source(rate, wave.shape[0], wave.shape[1],
                  lambda size: (wave[:, i : i + size] for i in range(0, wave.shape[1], size)))


def file_source(path: str | Path) -> Source:
    """A file of any format ``pipeline.audio`` reads; decoded block by block, never whole."""
    path = Path(path)
    if path.suffix.lower() in SOUNDFILE_EXTS:
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioError(f"{path}: cannot decode: {str(err).strip().splitlines()[0]}") from None
        if info.frames == 0:
            raise AudioError(f"{path}: zero duration")

        def open_blocks(size):
            for block in sf.blocks(str(path), blocksize=size, dtype="float32", always_2d=True):
                yield np.ascontiguousarray(block.T)

        return Source(info.samplerate, info.channels, info.frames, open_blocks)
    return _ffmpeg_source(path)


def _ffmpeg_source(path: Path) -> Source:
    """Decode through an ffmpeg pipe (formats libsndfile lacks): float32 at the native rate and channels."""
    try:
        rate, channels = ffprobe_stream(path)
    except AudioError as err:
        raise AudioError(f"{path}: {err}") from None

    def open_blocks(size):
        with subprocess.Popen(ffmpeg_command(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            while chunk := proc.stdout.read(size * channels * 4):
                data = np.frombuffer(chunk[: len(chunk) // (4 * channels) * 4 * channels], dtype="<f4")
                yield np.ascontiguousarray(data.reshape(-1, channels).T)
            if proc.wait() != 0:
                reason = proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise AudioError(f"{path}: cannot decode: {reason[-1] if reason else 'ffmpeg failed'}")

    return Source(rate, channels, None, open_blocks)


class Resampler:
    """Streaming soxr (HQ) resampling of ``[C, n]`` blocks; identity when the rates are equal."""

    def __init__(self, rate_in: int, rate_out: int, channels: int):
        self.stream = None if rate_in == rate_out else soxr.ResampleStream(
            rate_in, rate_out, channels, dtype="float32", quality="HQ")

    def push(self, wave: np.ndarray, last: bool = False) -> np.ndarray:
        if self.stream is None:
            return wave
        return np.ascontiguousarray(self.stream.resample_chunk(np.ascontiguousarray(wave.T), last=last).T)

    def finish(self, channels: int) -> np.ndarray:
        return self.push(np.zeros((channels, 0), np.float32), last=True)


