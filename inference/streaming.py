"""Streaming audio: blocks in, STFT frames, and back to blocks, in memory independent of the length.

Each stage takes its input in pieces with ``push(x)`` and returns what is complete so far; ``finish()``
returns the rest.  Pushed through in any pieces, a stage gives the same result as on the whole signal:

- ``Source``: a file (soundfile, or an ffmpeg pipe for M4A/AAC and the like) or an array, read in blocks
  of float32 ``[C, n]`` at its own rate and channel count; it can be read more than once.
- ``Resampler``: soxr's streaming resampler (the same samples as ``soxr.resample`` of the whole).
- ``StreamingSTFT``: frames equal to ``pipeline.audio.stft`` of the whole signal.
- ``StreamingISTFT``: overlap-add equal to ``pipeline.audio.istft`` of all the frames.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.signal
import soundfile as sf
import soxr

from specbert.configs.audio import AudioConfig
from specbert.pipeline.audio import SOUNDFILE_EXTS, AudioError, ffmpeg_command, ffprobe_stream, stft

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


class StreamingSTFT:
    """``pipeline.audio.stft`` of a signal given in pieces: ``push([C, n]) -> [C, bins, k]`` complex64.

    Frame ``t`` covers samples ``[t * hop - n_fft / 2, t * hop + n_fft / 2)``.  Frames are computed by
    ``stft`` of a segment starting at a multiple of ``hop``, keeping those whose window lies inside the
    segment, or that touch the signal's true start or end (where the segment's reflect padding is the
    whole signal's): the same numbers as one ``stft`` of the whole.
    """

    def __init__(self, audio: AudioConfig, channels: int):
        self.audio = audio
        self.pad = audio.n_fft // 2
        self.buffer = np.zeros((channels, 0), np.float32)  # samples from self.start on
        self.start = 0  # signal index of buffer[:, 0], a multiple of hop
        self.length = 0  # samples pushed
        self.next = 0  # next frame to return

    def push(self, wave: np.ndarray) -> np.ndarray:
        self.buffer = np.concatenate([self.buffer, wave], axis=1)
        self.length += wave.shape[1]
        if self.length <= self.pad:  # frame 0's reflect padding needs pad + 1 samples
            return self._frames(self.next)
        return self._frames((self.length - self.pad) // self.audio.hop + 1)  # windows inside the signal

    def finish(self) -> np.ndarray:
        """The remaining frames, up to ``1 + length // hop`` in all."""
        return self._frames(1 + self.length // self.audio.hop)

    def _frames(self, stop: int) -> np.ndarray:
        """Frames ``[next, stop)`` from a segment that runs to the end of the buffer."""
        if stop <= self.next:
            return np.zeros((self.buffer.shape[0], self.audio.bins, 0), np.complex64)
        first = self._segment_start()
        offset = first // self.audio.hop  # the segment's frame 0
        out = stft(self.buffer[:, first - self.start :], self.audio)[:, :, self.next - offset : stop - offset]
        self.next = stop
        keep = self._segment_start()
        self.buffer, self.start = self.buffer[:, keep - self.start :], keep
        return out

    def _segment_start(self) -> int:
        """Where a segment may start: a multiple of hop at most pad samples before the next frame's centre
        and, so that its reflect padding at the end is the whole signal's, over pad samples before the end."""
        hop = self.audio.hop
        return max(0, min(self.next * hop - self.pad, self.length - self.pad - 1)) // hop * hop


class StreamingISTFT:
    """``pipeline.audio.istft`` by overlap-add of frames given in pieces: ``push([C, bins, k]) -> [C, m]``.

    Each frame's inverse FFT times the window is added at ``t * hop`` in the padded signal; samples that
    no later frame reaches are divided by the summed squared window and returned, less the first
    ``n_fft / 2`` (the centring padding).  Output is held back by one hop so that it never passes the
    signal's length, which ``finish(length)`` gives: it returns the rest, cut or zero-padded so that
    ``length`` samples came out in all.
    """

    def __init__(self, audio: AudioConfig, channels: int):
        self.audio = audio
        self.parts = -(-audio.n_fft // audio.hop)  # hops spanned by a frame
        window = scipy.signal.get_window(audio.window, audio.n_fft, fftbins=True).astype(np.float32)
        self.window = window[:, None]
        self.window_sq = np.pad(window**2, (0, self.parts * audio.hop - audio.n_fft)).reshape(self.parts, -1)
        self.sum = np.zeros((channels, 0), np.float32)  # the padded signal from self.start on
        self.norm = np.zeros(0, np.float32)  # the summed squared window, likewise
        self.start = 0  # a multiple of hop
        self.frames = 0  # frames pushed
        self.emitted = 0  # output samples returned

    def push(self, spec: np.ndarray) -> np.ndarray:
        n_fft, hop, parts = self.audio.n_fft, self.audio.hop, self.parts
        channels, count = spec.shape[0], spec.shape[-1]
        frames = scipy.fft.irfft(spec, n=n_fft, axis=1).astype(np.float32, copy=False) * self.window
        frames = np.pad(frames, ((0, 0), (0, parts * hop - n_fft), (0, 0)))
        frames = frames.reshape(channels, parts, hop, count).transpose(0, 1, 3, 2)  # [C, parts, k, hop]
        grow = (self.frames + count - 1 + parts) * hop - self.start - self.norm.shape[0]
        if grow > 0:
            self.sum = np.pad(self.sum, ((0, 0), (0, grow)))
            self.norm = np.pad(self.norm, (0, grow))
        for j in range(parts):  # the j-th hop of every frame, all frames at once
            at = (self.frames + j) * hop - self.start
            self.sum[:, at : at + count * hop] += frames[:, j].reshape(channels, count * hop)
            self.norm[at : at + count * hop] += np.tile(self.window_sq[j], count)
        self.frames += count
        return self._emit((self.frames - 1) * hop)  # complete: later frames start at frames * hop

    def finish(self, length: int) -> np.ndarray:
        want = length - self.emitted
        out = self._emit(self.start + self.norm.shape[0])[:, :want]
        self.emitted = length
        return np.pad(out, ((0, 0), (0, want - out.shape[1])))

    def _emit(self, stop: int) -> np.ndarray:
        """Padded samples ``[start, stop)``, normalised, less any of the centring padding."""
        n = max(0, stop - self.start)
        out = self.sum[:, :n] / np.maximum(self.norm[:n], 1e-11)
        skip = min(n, max(0, self.audio.n_fft // 2 - self.start))
        self.sum, self.norm, self.start = self.sum[:, n:], self.norm[n:], self.start + n
        self.emitted += n - skip
        return out[:, skip:]
