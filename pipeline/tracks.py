"""One track -> stored float16 arrays -> shard samples (fixed-length segments and their records)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specbert.configs import Config
from specbert.configs.audio import AudioConfig
from specbert.pipeline.audio import AudioError, read_audio
from specbert.pipeline.codecs import CHECKSUM
from specbert.pipeline.schema import COMPLEX, MAGNITUDE, SampleRecord, sample_key
from specbert.pipeline.spectral import max_magnitude, num_frames, stft_blocks

FLOAT16_SAFE = 60000.0  # magnitudes above this overflow float16 (audio far above full scale)


@dataclass
class Track:
    """A decoded track: stored-layout arrays (``pipeline.schema``) and what records need."""

    arrays: dict[str, np.ndarray]  # name -> float16 [C, T, bins] or [C, T, bins, 2]
    peak: float  # max |STFT| (of the mixture for stems)
    seconds: float  # decoded duration

    @property
    def frames(self) -> int:
        return next(iter(self.arrays.values())).shape[1]


def spectrogram_track(item: dict, cfg: Config) -> Track:
    """Decode ``item["path"]`` and keep its magnitude (or real/imag with ``ingest.keep_complex``)."""
    wave = read_audio(item["path"], cfg.audio)
    seconds = wave.shape[1] / cfg.audio.sample_rate
    check_complete(seconds, item.get("declared"))
    array, peak = stored_array(wave, cfg.audio, cfg.ingest.keep_complex)
    return Track({"spec": array}, peak, seconds)


def check_complete(seconds: float, declared: float | None) -> None:
    """Raise AudioError when fewer seconds decode than the header declares (a truncated file)."""
    if declared and seconds < 0.95 * declared - 0.05:
        raise AudioError(f"truncated: decoded {seconds:.1f} s of the {declared:.1f} s its header declares")


def stored_array(wave: np.ndarray, audio: AudioConfig, keep_complex: bool) -> tuple[np.ndarray, float]:
    """Waveform ``[C, N]`` -> its STFT as float16 ``[C, T, bins]`` magnitude (or ``[C, T, bins, 2]``
    real/imag) and the max magnitude; block by block, with numpy's abs and torch's float16 cast."""
    frames = num_frames(wave.shape[-1], audio)
    out = np.empty((wave.shape[0], frames, audio.bins, *((2,) if keep_complex else ())), np.float16)
    peak = 0.0
    for start, block in stft_blocks(wave, audio):
        magnitude = np.abs(block)
        block_peak = max_magnitude(magnitude)
        if not block_peak <= FLOAT16_SAFE:  # also NaN
            raise AudioError(f"samples far above full scale or not finite (STFT magnitude {block_peak:.3g})")
        peak = max(peak, block_peak)
        source = block.view(np.float32).reshape(*block.shape, 2) if keep_complex else magnitude
        to_float16(source, out=out[:, start : start + block.shape[1]])
    return out, peak


def to_float16(array: np.ndarray, out: np.ndarray) -> None:
    """Cast float32 ``array`` into float16 ``out`` through torch, 10x faster than numpy's cast
    (torch is imported here, on the workers only)."""
    import torch

    torch.from_numpy(out).copy_(torch.from_numpy(array))


def segment_bounds(frames: int, segment_frames: int) -> list[tuple[int, int]]:
    """``(start, length)`` of the segments that cover all ``frames``: ``segment_frames`` each, except that a
    tail shorter than half a segment joins the segment before it. So every segment of a track of at least
    half a segment is at least that long, and every frame is stored whatever the training crop (a loader
    pads a segment shorter than its crop)."""
    starts = list(range(0, frames, segment_frames))
    if len(starts) > 1 and frames - starts[-1] < segment_frames / 2:
        starts.pop()
    ends = [*starts[1:], frames]
    return [(start, end - start) for start, end in zip(starts, ends, strict=True)]


def track_samples(item: dict, track: Track, cfg: Config) -> list[tuple[str, SampleRecord, dict]]:
    """``(key, record, arrays)`` for each segment (arrays are views)."""
    audio = cfg.audio
    bounds = segment_bounds(track.frames, cfg.ingest.segment_frames)
    first = next(iter(track.arrays.values()))

    def record(segment: int, start: int, n: int) -> SampleRecord:
        return SampleRecord(
            track_id=item["id"], artist=item["artist"], album=item["album"], title=item["title"],
            split=item["split"], source=item["path"], segments=len(bounds), duration=round(track.seconds, 3),
            sample_rate=audio.sample_rate, n_fft=audio.n_fft, hop=audio.hop, max_magnitude=track.peak,
            kind=item["kind"], layout=COMPLEX if first.ndim == 4 else MAGNITUDE, codec=cfg.ingest.codec,
            checksum=CHECKSUM, members=list(track.arrays), segment=segment, start_frame=start, frames=n,
            shape=[first.shape[0], n, *first.shape[2:]],
        )

    return [
        (sample_key(item["id"], segment), record(segment, start, n),
         {name: array[:, start : start + n] for name, array in track.arrays.items()})
        for segment, (start, n) in enumerate(bounds)
    ]
