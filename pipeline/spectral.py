"""The spectral front end: the one place for the STFT and for what the model sees of a spectrogram.

Ingest, both loaders, fine-tuning's validation and separation call these; the numbers are
``configs.audio.AudioConfig``'s.

- window: periodic Hann of ``n_fft`` samples (``window``: the same as ``torch.hann_window`` and scipy's
  ``get_window("hann", fftbins=True)``), for the STFT and its inverse alike;
- STFT: centred (reflect padding of ``n_fft // 2``), so ``T = 1 + N // hop`` frames, identical to
  ``torch.stft(..., center=True)``; waveforms float32 ``[C, N]``, spectrograms complex ``[C, bins, T]``.
  Whole (``stft``, ``istft``), in time blocks (``stft_blocks``, the ingest's) and streamed
  (``StreamingSTFT``, ``StreamingISTFT``, separation's): the same numbers;
- bins: shards keep all ``bins = n_fft // 2 + 1``; the model sees the first ``model_bins = n_fft // 2``
  (``model_view`` drops the Nyquist bin); a mask is padded back to ``bins`` by repeating its last bin
  (``full_bins``);
- peak and normalisation: a track's ``peak`` is its largest magnitude over all channels, bins and frames
  (``max_magnitude``, stored in every shard record); the model's input is ``clip(|X| / peak, 0, 1)``
  (``normalise``, ``model_input``), the same in pretraining, fine-tuning and separation.

Imports numpy and scipy only (torch where a function needs it): the ingest's driver and separation
never load more.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import as_strided

from specbert.configs.audio import AudioConfig

if TYPE_CHECKING:
    import torch

DEFAULT_AUDIO = AudioConfig()
_STFT_BLOCK = 64  # frames transformed at once: ~1 MB of temporaries, stays in cache


@lru_cache(maxsize=4)
def window(audio: AudioConfig) -> np.ndarray:
    """The analysis and synthesis window: periodic Hann (``audio.window``), float32 ``[n_fft]``, read-only."""
    n = np.arange(audio.n_fft)
    taper = (0.5 - 0.5 * np.cos(2 * np.pi * n / audio.n_fft)).astype(np.float32)
    taper.flags.writeable = False
    return taper


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
    taper = window(audio)
    windowed = np.empty((wave.shape[0], min(_STFT_BLOCK, total), n_fft), dtype=np.float32)
    for start in range(0, total, _STFT_BLOCK):
        n = min(_STFT_BLOCK, total - start)
        first = start * hop - n_fft // 2  # of the frame ``start``, in the unpadded wave
        samples = _centred_span(wave, first, first + (n - 1) * hop + n_fft, n_fft // 2)
        np.multiply(_frames(samples, n_fft, hop), taper, out=windowed[:, :n])
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


class StreamingSTFT:
    """``stft`` of a signal given in pieces: ``push([C, n]) -> [C, bins, k]`` complex64.

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


def model_view(spec: np.ndarray | torch.Tensor):
    """Drop the Nyquist bin: ``[..., bins, T]`` -> ``[..., model_bins, T]`` (a view)."""
    return spec[..., :-1, :]


def full_bins(mask: np.ndarray) -> np.ndarray:
    """A mask over the model's bins ``[..., model_bins, T]`` -> ``[..., bins, T]``: the Nyquist bin repeats
    the last one."""
    return np.concatenate([mask, mask[..., -1:, :]], axis=-2)


def max_magnitude(magnitude: np.ndarray) -> float:
    """A track's ``peak``: the largest of ``magnitude`` (all channels, bins with the Nyquist one, and
    frames); 0 for silence or no frames."""
    return float(magnitude.max(initial=0.0))


def peak_scale(peak: float) -> float:
    """The factor that normalises magnitudes by a track's ``peak`` (a silent track's peak is 0)."""
    return 1.0 / max(float(peak), 1e-12)


def normalise(magnitude: torch.Tensor, peak: float, dtype: torch.dtype | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """``clip(magnitude / peak, 0, 1)`` as a new ``dtype`` tensor (default float16) of the same shape and
    memory order (or into ``out``): the model's input in training (float16 batches) and in separation
    (float32)."""
    import torch

    out = torch.empty_like(magnitude, dtype=dtype or torch.float16) if out is None else out
    torch.mul(magnitude, peak_scale(peak), out=out)
    return out.clamp_(0.0, 1.0)


def clip_magnitudes(magnitude: np.ndarray, peak: float) -> None:
    """Clip float16 magnitudes in place to [0, ``peak``] (the codec's rounding can exceed the peak by
    0.07 dB), so that ``magnitude * peak_scale(peak)`` is ``normalise`` (``clip(x / peak, 0, 1)``) up to
    one float16 step at 1.0: the pretraining loader clips a segment once and normalises each of its crops
    by one multiplication."""
    import torch

    top = np.float16(peak)
    if top > peak:  # the largest float16 not above the peak
        top = np.nextafter(top, np.float16(0))
    torch.from_numpy(magnitude).clamp_(0.0, float(top))


def model_input(spec: np.ndarray, peak: float) -> np.ndarray:
    """The network's input: complex ``[C, bins, T]`` -> float32 ``[C, model_bins, T]`` in [0, 1]:
    ``normalise`` of the magnitudes without the Nyquist bin, by the track's ``peak``."""
    import torch

    return normalise(torch.from_numpy(np.abs(model_view(spec))), peak, torch.float32).numpy()


def istft(spec: np.ndarray | torch.Tensor, length: int, audio: AudioConfig = DEFAULT_AUDIO) -> np.ndarray:
    """Inverse of ``stft``: complex ``[C, bins, T]`` -> float32 ``[C, length]``."""
    import torch

    spec = torch.as_tensor(spec)
    taper = torch.tensor(window(audio), device=spec.device)
    wave = torch.istft(spec, audio.n_fft, audio.hop, window=taper, center=True, length=length)
    return wave.cpu().numpy().astype(np.float32, copy=False)


class StreamingISTFT:
    """``istft`` by overlap-add of frames given in pieces: ``push([C, bins, k]) -> [C, m]``.

    Each frame's inverse FFT times the window is added at ``t * hop`` in the padded signal; samples that
    no later frame reaches are divided by the summed squared window and returned, less the first
    ``n_fft / 2`` (the centring padding).  Output is held back by one hop so that it never passes the
    signal's length, which ``finish(length)`` gives: it returns the rest, cut or zero-padded so that
    ``length`` samples came out in all.
    """

    def __init__(self, audio: AudioConfig, channels: int):
        self.audio = audio
        self.parts = -(-audio.n_fft // audio.hop)  # hops spanned by a frame
        taper = window(audio)
        self.window = taper[:, None]
        self.window_sq = np.pad(taper**2, (0, self.parts * audio.hop - audio.n_fft)).reshape(self.parts, -1)
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
