"""The model's view of a spectrogram, shared by the loaders and separation: magnitudes normalised by
the track's peak, ``clip(|X| / peak, 0, 1)``.

Imports torch and numpy only, so that separation never loads the loaders' dependencies.
"""

from __future__ import annotations

import torch


def normalise(magnitude: torch.Tensor, peak: float, dtype: torch.dtype = torch.float16,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """``clip(magnitude / peak, 0, 1)`` as a new ``dtype`` tensor of the same shape and memory order
    (or into ``out``): the model's input in training (float16 batches) and in separation (float32)."""
    out = torch.empty_like(magnitude, dtype=dtype) if out is None else out
    torch.mul(magnitude, peak_scale(peak), out=out)
    return out.clamp_(0.0, 1.0)


def peak_scale(peak: float) -> float:
    """The factor that normalises magnitudes by a track's ``peak`` (a silent track's peak is 0)."""
    return 1.0 / max(float(peak), 1e-12)
