"""Audio I/O and the STFT: the one module that turns files into spectrograms and back.

Conventions (parameters in ``configs.audio.AudioConfig``):
- waveforms are float32 ``[C, N]`` at ``sample_rate`` with ``channels`` channels, of any strides (a
  decoded file is a transposed view of the decoder's interleaved ``[N, C]`` buffer: no copy);
- the STFT is centred (reflect padding of ``n_fft // 2``) with a periodic Hann window, so
  ``T = 1 + N // hop`` frames, identical to ``torch.stft(..., center=True)``;
- spectrograms are ``[C, bins, T]`` with ``bins = n_fft // 2 + 1``; the model sees the first
  ``model_bins = n_fft // 2`` (see ``model_view``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.fft
import soundfile as sf
import soxr
from numpy.lib.stride_tricks import as_strided

from specbert.configs.audio import AudioConfig

if TYPE_CHECKING:  # torch is imported where it is used: the ingest driver never needs it
    import torch

# Formats libsndfile decodes natively; everything else goes through ffmpeg.
SOUNDFILE_EXTS = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc"}
FFMPEG_EXTS = {".m4a", ".aac", ".mp4", ".wma", ".alac", ".ape", ".wv", ".webm", ".mka"}
AUDIO_EXTS = SOUNDFILE_EXTS | FFMPEG_EXTS

DEFAULT_AUDIO = AudioConfig()
_STFT_BLOCK = 64  # frames transformed at once: ~1 MB of temporaries, stays in cache


class AudioError(RuntimeError):
    """A file that cannot be used as audio; the message is one line naming the cause."""


def read_audio(path: str | Path, audio: AudioConfig = DEFAULT_AUDIO) -> np.ndarray:
    """Decode any supported file to float32 ``[audio.channels, N]`` at ``audio.sample_rate``."""
    wave, rate = decode(path)
    if wave.shape[1] == 0:
        raise AudioError("zero duration")
    return resample(to_channels(wave, audio.channels), rate, audio.sample_rate)


def decode(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a file at its own rate and channel count: float32 ``[C, N]`` (a transposed view of
    soundfile's ``[N, C]``; a contiguous copy of ffmpeg's read-only bytes) and the rate."""
    path = Path(path)
    if path.suffix.lower() in SOUNDFILE_EXTS:
        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError) as err:
            raise AudioError(f"cannot decode: {str(err).strip().splitlines()[0]}") from None
        return data.T, rate
    return _decode_ffmpeg(path)


def ffprobe_stream(path: Path) -> tuple[int, int]:
    """``(sample rate, channels)`` of the first audio stream of a file that ffmpeg decodes; AudioError
    when ffmpeg is missing or there is no audio stream."""
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise AudioError(f"{path.suffix} needs ffmpeg, which is not installed")
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=sample_rate,channels",
         "-of", "json", str(path)],
        capture_output=True, text=True,
    )
    streams = json.loads(probe.stdout or "{}").get("streams") if probe.returncode == 0 else None
    if not streams:
        raise AudioError("cannot decode: no audio stream (ffprobe)")
    return int(streams[0]["sample_rate"]), int(streams[0]["channels"])


def ffmpeg_command(path: Path) -> list[str]:
    """ffmpeg decoding the first audio stream of ``path`` to float32 little-endian on stdout."""
    return ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-f", "f32le", "-"]


def _decode_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    rate, channels = ffprobe_stream(path)
    out = subprocess.run(ffmpeg_command(path), capture_output=True)
    if out.returncode != 0:
        reason = out.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(f"cannot decode: {reason[-1] if reason else 'ffmpeg failed'}")
    data = np.frombuffer(out.stdout, dtype="<f4")
    data = data[: len(data) // channels * channels]
    return np.ascontiguousarray(data.reshape(-1, channels).T), rate


def to_channels(wave: np.ndarray, channels: int) -> np.ndarray:
    """Mono is duplicated; 5.1 uses the ITU downmix; other layouts average alternate channels."""
    have = wave.shape[0]
    if have == channels:
        return wave
    if channels == 1:
        return wave.mean(axis=0, keepdims=True)
    if have == 1:
        return np.repeat(wave, 2, axis=0)
    if have == 6:  # FL FR FC LFE BL BR
        g = np.float32(1 / np.sqrt(2))
        left = wave[0] + g * wave[2] + g * wave[4]
        right = wave[1] + g * wave[2] + g * wave[5]
        return np.stack([left, right]) / np.float32(1 + 2 * g)
    return np.stack([wave[0::2].mean(axis=0), wave[1::2].mean(axis=0)])


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """High-quality resampling with soxr; ``[C, N]`` in and out (a transposed view of soxr's ``[N, C]``)."""
    if rate == target:
        return wave
    return soxr.resample(wave.T, rate, target, quality="HQ").T.astype(np.float32, copy=False)


@lru_cache(maxsize=4)
def _window(n_fft: int) -> np.ndarray:
    """Periodic Hann window (as ``torch.hann_window`` and scipy's ``get_window("hann", fftbins=True)``)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def num_frames(samples: int, audio: AudioConfig = DEFAULT_AUDIO) -> int:
    """Frames of the centred STFT of ``samples`` samples."""
    return 1 + samples // audio.hop


def stft(wave: np.ndarray, audio: AudioConfig = DEFAULT_AUDIO) -> np.ndarray:
    """Centred STFT: float ``[C, N]`` -> complex64 ``[C, bins, T]`` with ``T = 1 + N // hop``.

    Equal to ``torch.stft(center=True, pad_mode="reflect")`` with a periodic Hann window,
    computed in blocks of frames with scipy's float32 rfft. The result is a transposed view of a
    ``[C, T, bins]`` array; ``np.ascontiguousarray`` it (after any elementwise work) if needed.
    """
    out = np.empty((wave.shape[0], num_frames(wave.shape[-1], audio), audio.bins), dtype=np.complex64)
    for start, block in stft_blocks(wave, audio):
        out[:, start : start + block.shape[1]] = block
    return out.transpose(0, 2, 1)  # a view: elementwise numpy ops on it stay fast


def stft_blocks(wave: np.ndarray, audio: AudioConfig = DEFAULT_AUDIO) -> Iterator[tuple[int, np.ndarray]]:
    """The STFT of ``stft`` in time blocks: ``(first frame, complex64 [C, frames, bins])``.

    Blocks are small enough to stay in cache, so per-block work (magnitude, float16) is cheap and
    the whole complex STFT is never held. Frames are strided views of ``wave`` (no copy of it, any
    layout); only the first and last blocks copy their samples, to pad them.
    """
    n_fft, hop = audio.n_fft, audio.hop
    wave = np.asarray(wave, dtype=np.float32)
    total = num_frames(wave.shape[-1], audio)
    window = _window(n_fft)
    windowed = np.empty((wave.shape[0], min(_STFT_BLOCK, total), n_fft), dtype=np.float32)
    for start in range(0, total, _STFT_BLOCK):
        n = min(_STFT_BLOCK, total - start)
        first = start * hop - n_fft // 2  # of the frame ``start``, in the unpadded wave
        samples = _centred_span(wave, first, first + (n - 1) * hop + n_fft, n_fft // 2)
        np.multiply(_frames(samples, n_fft, hop), window, out=windowed[:, :n])
        yield start, scipy.fft.rfft(windowed[:, :n])


def _frames(samples: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """The windows of ``n_fft`` samples every ``hop`` of ``samples`` ``[C, (n - 1) * hop + n_fft]``: a
    read-only view ``[C, n, n_fft]``, as ``sliding_window_view(...)[:, ::hop]`` (a quarter of its cost)."""
    channel, step = samples.strides
    n = (samples.shape[1] - n_fft) // hop + 1
    return as_strided(samples, (samples.shape[0], n, n_fft), (channel, hop * step, step), writeable=False)


def _centred_span(wave: np.ndarray, lo: int, hi: int, pad: int) -> np.ndarray:
    """Samples ``lo:hi`` (``-pad <= lo``, ``hi <= N + pad``) of ``wave`` ``[C, N]`` padded by ``pad`` on
    each side as ``torch.stft(center=True, pad_mode="reflect")`` pads (zeros when ``N <= pad``, too
    short to reflect): ``[C, hi - lo]``, a view when the span is inside the wave."""
    length = wave.shape[-1]
    if 0 <= lo and hi <= length:
        return wave[:, lo:hi]
    if length <= pad:
        return np.pad(wave, ((0, 0), (pad, pad)))[:, lo + pad : hi + pad]
    before, after = np.arange(lo, min(hi, 0)), np.arange(max(lo, length), hi)  # outside the wave
    reflected = wave[:, -before], wave[:, 2 * (length - 1) - after]  # about samples 0 and N - 1
    return np.concatenate([reflected[0], wave[:, max(lo, 0) : hi], reflected[1]], axis=1)


def istft(spec: np.ndarray | torch.Tensor, length: int, audio: AudioConfig = DEFAULT_AUDIO) -> np.ndarray:
    """Inverse of ``stft``: complex ``[C, bins, T]`` -> float32 ``[C, length]``."""
    import torch

    spec = torch.as_tensor(spec)
    window = torch.hann_window(audio.n_fft, device=spec.device)
    wave = torch.istft(spec, audio.n_fft, audio.hop, window=window, center=True, length=length)
    return wave.cpu().numpy().astype(np.float32, copy=False)


def model_view(spec: np.ndarray | torch.Tensor):
    """Drop the Nyquist bin: ``[..., bins, T]`` -> ``[..., model_bins, T]``."""
    return spec[..., :-1, :]

