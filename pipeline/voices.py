"""Synthetic voices: the vocals a vocal-free library lacks, so that it can teach vocal removal.

``ingest-stems --synthetic-vocals`` makes each track of an instrumental library a stems track: the track is
the accompaniment, a voice drawn from the track's own seed is the vocals, their sum the mixture.  A voice is
phrases of syllables with pauses between them; a syllable is a harmonic source (a sung note on a scale with
vibrato, or a spoken glide) shaped by the three formants of a vowel, with an attack and a release, and half
the time a consonant's burst of high noise at its onset.  It is placed a little off centre and scaled to a
vocal-to-accompaniment ratio drawn from ``VOCAL_DB`` over the frames where the voice sounds.

``specbert pretrain`` (``train.mix_source: voice``) mixes voices into magnitude crops of the library instead:
``magnitude_bank`` renders a few once, as spectrogram magnitudes that crops are cut from.

Voices are synthesised in numpy, one pass over the samples per harmonic of each syllable; the level and pan
rules (``voice_gain``, ``pan_gains``) are torch, shared by the waveforms of ``vocals_for`` and the batches of
magnitudes that pretraining mixes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from specbert.configs.audio import AudioConfig
from specbert.pipeline.spectral import model_view, stft

# Vowel formants F1, F2, F3 in Hz (adult averages) and their bandwidths.
VOWELS = np.array([(730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410),
                   (300, 870, 2240), (660, 1720, 2410), (490, 1350, 1690)], dtype=np.float64)
BANDWIDTHS = np.array([80.0, 100.0, 140.0])
MAJOR_SCALE = np.array([0, 2, 4, 5, 7, 9, 11])  # semitones of the sung notes over the voice's key
TOP_HZ = 8000.0  # the highest harmonic synthesised
SUNG_SHARE = 0.6  # voices that sing; the others speak
VOCAL_DB = (-7.0, 3.0)  # vocal-to-accompaniment ratio over the voice's active frames (the devset's range)
PAN = 0.2  # the voice's gain is 1 -+ pan on the two channels, pan uniform in +-PAN
ACTIVE_DB = -20.0  # a frame sounds when its energy is within this of the loudest frame's


def syllable(rng: np.random.Generator, seconds: float, f0: float, glide: float, sung: bool,
             formant_scale: float, sample_rate: int) -> np.ndarray:
    """One syllable ``[N]``: harmonics of ``f0`` (sung: steady, vibrato fading in; spoken: gliding by
    ``glide`` octaves) weighted by a random vowel's formants and a spectral tilt, enveloped."""
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    if sung:
        depth, rate = rng.uniform(0.1, 0.4) / 12, rng.uniform(4.5, 6.5)  # octaves, Hz
        pitch = f0 * 2 ** (depth * np.sin(2 * np.pi * rate * t) * np.clip(t / 0.15, 0, 1))
    else:
        pitch = f0 * 2 ** (glide * t / max(seconds, 1e-3))
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    formants = VOWELS[rng.integers(len(VOWELS))] * formant_scale
    widths = BANDWIDTHS * formant_scale
    tilt = rng.uniform(0.8, 1.6)  # the source's roll-off: amplitude ~ k ** -tilt
    harmonics = np.arange(1, int(min(TOP_HZ, sample_rate / 2 - 1000) / pitch.max()) + 1)
    freqs = harmonics * pitch.mean()
    weights = (1.0 / (1 + ((freqs[:, None] - formants) / widths) ** 2)).sum(axis=1) + 0.02
    weights *= harmonics ** -tilt
    out = np.zeros(n)
    for k, w in zip(harmonics, weights, strict=True):
        out += w * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    attack, release = rng.uniform(0.01, 0.05), rng.uniform(0.03, 0.12)
    out *= np.clip(np.minimum(t / attack, (seconds - t) / release), 0, 1)
    if rng.random() < 0.5:  # a consonant: differentiated noise is high noise
        m = min(n, int(rng.uniform(0.02, 0.08) * sample_rate))
        burst = np.diff(rng.standard_normal(m) * np.hanning(m), prepend=0.0)
        out[:m] += burst * rng.uniform(0.05, 0.3) * np.abs(out).max()
    return out


def voice(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """A mono voice ``[n]``: phrases of 1-5 s of syllables, 0.3-2 s of pause between them, each phrase
    within 4 dB of the voice's level."""
    out = np.zeros(n)
    sung = rng.random() < SUNG_SHARE
    base = rng.uniform(100, 330) if sung else rng.uniform(85, 240)  # Hz
    formant_scale = 0.85 + 0.3 * base / 150  # higher voices, smaller vocal tracts
    key = int(rng.integers(12))
    pos = int(rng.uniform(0, 2) * sample_rate)
    while pos < n:
        phrase_end = min(n, pos + int(rng.uniform(1, 5) * sample_rate))
        level = 10 ** (rng.uniform(-4, 4) / 20)
        while pos < phrase_end:
            if sung:
                step = MAJOR_SCALE[rng.integers(7)] - 12 * int(rng.integers(2)) + key
                s = syllable(rng, rng.uniform(0.12, 0.6), base * 2 ** ((step % 24 - 6) / 12), 0.0, True,
                             formant_scale, sample_rate)
            else:
                s = syllable(rng, rng.uniform(0.08, 0.35), base * 2 ** rng.uniform(-0.3, 0.3),
                             rng.uniform(-0.4, 0.2), False, formant_scale, sample_rate)
            m = min(len(s), n - pos)
            out[pos:pos + m] += level * s[:m]
            pos += m + int(rng.uniform(0, 0.08) * sample_rate)
        pos += int(rng.uniform(0.3, 2.0) * sample_rate)
    return out


def frame_power(wave: np.ndarray, frame: int) -> np.ndarray:
    """Mean power of ``wave`` ``[N]`` in each whole frame of ``frame`` samples."""
    count = len(wave) // frame
    return (wave[: count * frame].reshape(count, frame) ** 2).mean(axis=1)


def voice_gain(voice_power: Tensor, music_power: Tensor, ratio_db: Tensor) -> Tensor:
    """``[B]``: the gain that sets each voice at ``ratio_db`` ``[B]`` to its music over the frames where the
    voice sounds (within ``ACTIVE_DB`` of its loudest frame), from each frame's power ``[B, T]`` of the voice
    (before panning) and of the music; 0 for a silent voice or silent music."""
    active = voice_power > voice_power.amax(1, keepdim=True) * 10 ** (ACTIVE_DB / 10)
    music, sound = (music_power * active).sum(1), (voice_power * active).sum(1)
    return (music / sound.clamp_min(1e-20)).sqrt() * 10 ** (ratio_db / 20)


def pan_gains(pan: Tensor, channels: int) -> Tensor:
    """``[B, channels]``: each channel's gain for voices placed at ``pan`` ``[B]``: 1 -+ pan (mono: 1)."""
    return torch.stack([1 - pan, 1 + pan], dim=1) if channels == 2 else torch.ones(len(pan), 1)


def vocals_for(accompaniment: np.ndarray, seed: int, sample_rate: int, frame: int = 2048) -> np.ndarray:
    """Synthetic vocals ``[C, N]`` float32 for ``accompaniment`` ``[C, N]``: a voice drawn from ``seed``,
    panned, at a ratio uniform in ``VOCAL_DB`` to the accompaniment over the frames where it sounds."""
    rng = np.random.default_rng(seed)
    channels, n = accompaniment.shape
    mono = voice(rng, n, sample_rate)
    ratio_db, pan = rng.uniform(*VOCAL_DB), rng.uniform(-PAN, PAN)
    power = [torch.from_numpy(frame_power(wave, frame)).double()[None]  # [1, frames]
             for wave in (mono, accompaniment.mean(axis=0))]
    gain = voice_gain(*power, torch.tensor([ratio_db], dtype=torch.float64))
    gains = (gain[:, None] * pan_gains(torch.tensor([pan], dtype=torch.float64), channels))[0].numpy()  # [C]
    return (gains[:, None] * mono[None, :]).astype(np.float32)


def magnitude_bank(seed: int, count: int, frames: int, audio: AudioConfig) -> np.ndarray:
    """``count`` mono voices drawn from ``seed``, as STFT magnitudes over the model's bins: float16
    ``[count, model_bins, frames]``, each voice scaled to a peak of 1 (the mixing sets its level)."""
    rng = np.random.default_rng(seed)
    bank = np.empty((count, audio.model_bins, frames), dtype=np.float16)
    for i in range(count):
        wave = voice(rng, (frames - 1) * audio.hop, audio.sample_rate).astype(np.float32)
        magnitude = np.abs(model_view(stft(wave[None], audio)[0]))
        bank[i] = magnitude / max(float(magnitude.max()), 1e-12)
    return bank
