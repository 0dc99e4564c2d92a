"""Audio and STFT conventions: every stage (ingest, loader, model, separation) reads these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class AudioConfig:
    """Sample rate, channels and STFT of the whole project.

    Shards keep all ``n_fft // 2 + 1`` bins; the model sees the first ``n_fft // 2``
    (the Nyquist bin is dropped and its mask padded back for the inverse STFT: ``pipeline.spectral``).
    """

    sample_rate: int = 44100
    channels: int = 2
    n_fft: int = 2048
    hop: int = 1024
    window: Literal["hann"] = "hann"

    def __post_init__(self):
        if self.n_fft <= 0 or self.n_fft & (self.n_fft - 1):
            raise ValueError(f"n_fft must be a power of two, got {self.n_fft}")
        if not 0 < self.hop <= self.n_fft:
            raise ValueError(f"hop must be in (0, n_fft], got {self.hop}")
        if self.sample_rate <= 0 or self.channels not in (1, 2):
            raise ValueError(f"bad sample_rate/channels {self.sample_rate}/{self.channels}")

    @property
    def bins(self) -> int:
        """Frequency bins of the one-sided STFT (stored in shards): 1025."""
        return self.n_fft // 2 + 1

    @property
    def model_bins(self) -> int:
        """Bins the model sees (Nyquist dropped): 1024."""
        return self.n_fft // 2

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop
