"""Audio I/O: any file -> float32 ``[C, N]`` at the project's rate and channels (the STFT is
``pipeline.spectral``'s).

Waveforms are float32 ``[C, N]`` at ``sample_rate`` with ``channels`` channels (``configs.audio``), of any
strides (a decoded file is a transposed view of the decoder's interleaved ``[N, C]`` buffer: no copy).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from specbert.configs.audio import AudioConfig
from specbert.pipeline.spectral import DEFAULT_AUDIO

# Formats libsndfile decodes natively; everything else goes through ffmpeg.
SOUNDFILE_EXTS = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc"}
FFMPEG_EXTS = {".m4a", ".aac", ".mp4", ".wma", ".alac", ".ape", ".wv", ".webm", ".mka"}
AUDIO_EXTS = SOUNDFILE_EXTS | FFMPEG_EXTS


class AudioError(RuntimeError):
    """A file that cannot be used as audio; the message is one line naming the cause."""


def read_audio(path: str | Path, audio: AudioConfig = DEFAULT_AUDIO, stream: int = 0) -> np.ndarray:
    """Decode any supported file (its audio stream number ``stream``) to float32 ``[audio.channels, N]``
    at ``audio.sample_rate``."""
    wave, rate = decode(path, stream)
    if wave.shape[1] == 0:
        raise AudioError("zero duration")
    return resample(to_channels(wave, audio.channels), rate, audio.sample_rate)


def decode(path: str | Path, stream: int = 0) -> tuple[np.ndarray, int]:
    """Decode a file's audio stream number ``stream`` at its own rate and channel count: float32 ``[C, N]``
    (a transposed view of soundfile's ``[N, C]``; a contiguous copy of ffmpeg's read-only bytes) and the
    rate. Files with several audio streams (MUSDB18's ``.stem.mp4``) go through ffmpeg."""
    path = Path(path)
    if path.suffix.lower() in SOUNDFILE_EXTS and stream == 0:
        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError) as err:
            raise AudioError(f"cannot decode: {_soundfile_reason(path, err)}") from None
        return data.T, rate
    return _decode_ffmpeg(path, stream)


def _soundfile_reason(path: Path, err: Exception) -> str:
    """The first line of libsndfile's error; but for content it cannot parse at all (a text file named
    ``.mp3``) libsndfile says "File does not exist or is not a regular file": for an existing file the
    content is the cause."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "does not exist or is not a regular file" in str(err) and path.is_file():
        reason = f"not {path.suffix.lower()} audio (libsndfile does not recognise the content)"
    return reason


def ffprobe_stream(path: Path, stream: int = 0) -> tuple[int, int]:
    """``(sample rate, channels)`` of audio stream number ``stream`` of a file that ffmpeg decodes;
    AudioError when ffmpeg is missing or there is no such stream."""
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise AudioError(f"{path.suffix} needs ffmpeg, which is not installed")
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", f"a:{stream}", "-show_entries",
         "stream=sample_rate,channels",
         "-of", "json", str(path)],
        capture_output=True, text=True,
    )
    streams = json.loads(probe.stdout or "{}").get("streams") if probe.returncode == 0 else None
    if not streams:
        raise AudioError(f"cannot decode: no audio stream {stream} (ffprobe)")
    return int(streams[0]["sample_rate"]), int(streams[0]["channels"])


def ffmpeg_command(path: Path, stream: int = 0) -> list[str]:
    """ffmpeg decoding audio stream number ``stream`` of ``path`` to float32 little-endian on stdout."""
    return ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", f"0:a:{stream}", "-f", "f32le", "-"]


def _decode_ffmpeg(path: Path, stream: int = 0) -> tuple[np.ndarray, int]:
    rate, channels = ffprobe_stream(path, stream)
    out = subprocess.run(ffmpeg_command(path, stream), capture_output=True)
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


