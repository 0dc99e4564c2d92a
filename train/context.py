"""Does a masked model learn from context?  Trivial reconstructions of the masked frames, and one fixed
measure to score the model and them alike.

A pretraining loss that falls proves little: predicting silence, or copying the frames around a gap,
also scores well on music.  The model learns from context only when it fills masked frames better than
every rule that needs no learning.  The rules see what the model sees, the frames it may use (``known``),
and nothing else:

- ``silence``: 0 everywhere;
- ``neighbours``: the mean of the nearest known frame on the left and on the right;
- ``interpolation``: the straight line in time between those two frames, per bin;
- ``bin_mean``: each bin's mean over the crop's known frames.

(Where a frame has a known frame on one side only, ``neighbours`` and ``interpolation`` repeat it; with
none, they give 0.)

The measure: ``db_error``, the mean absolute difference in dB over every bin of the scored frames, both
magnitudes floored at ``DB_FLOOR`` (a bin below the floor counts as silent: an error there costs only
what lies above the floor).  It does not depend on the training loss, so losses in different domains
compare.  ``context_gain = 1 - model / best trivial`` in it: 0 is no better than the best rule, 1 perfect.

Spectrograms are ``[B, C, F, T]`` magnitudes (normalised to the track's peak), frame selections ``[B, T]``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from specbert.train.losses import region_l1

DB_FLOOR = -80.0  # dB below the track's peak: quieter counts as silent (scores and preview colours)


def to_db(spec: Tensor) -> Tensor:
    """Magnitudes -> dB, floored at ``DB_FLOOR`` (float32)."""
    return 20 * torch.log10(spec.float().clamp_min(10 ** (DB_FLOOR / 20)))


def db_error(pred: Tensor, target: Tensor, frames: Tensor) -> Tensor:
    """Mean absolute dB difference over the bins of the selected ``frames`` (a scalar; 0 if none)."""
    return region_l1(to_db(pred), to_db(target), frames)[0]


def db_scale(spec: Tensor) -> Tensor:
    """Magnitudes -> dB on a unit scale: ``DB_FLOOR`` and below 0, the track's peak 1 (float32).  L1
    there is ``db_error / -DB_FLOOR``: the ``residual`` reconstruction's loss (``train.pretrain``)."""
    return 1 - to_db(spec) / DB_FLOOR


def from_db_scale(level: Tensor) -> Tensor:
    """``db_scale``'s inverse: magnitudes (a level below 0 gives a magnitude below the floor)."""
    return 10 ** ((1 - level.float()) * DB_FLOOR / 20)


def db_image(spec: Tensor) -> np.ndarray:
    """Magnitudes ``[F, T]`` -> an image in [0, 1] (``db_scale``: every preview panel on this one colour
    scale)."""
    return db_scale(spec).cpu().numpy()


def nearest_known(known: Tensor) -> tuple[Tensor, Tensor]:
    """For every frame the index of the nearest known frame at or before it (-1 if none) and at or after
    it (T if none): two ``[B, T]`` int64.  A known frame is its own nearest on both sides."""
    b, t = known.shape
    idx = torch.arange(t, device=known.device).expand(b, t)
    left = torch.where(known, idx, -1).cummax(dim=1).values
    right = torch.where(known, idx, t).flip(1).cummin(dim=1).values.flip(1)
    return left, right


def _frames(x: Tensor, index: Tensor) -> Tensor:
    """``x [B, C, F, T]`` at frame ``index [B, T]`` (clamped into range) for every frame."""
    b, c, f, t = x.shape
    return x.gather(3, index.clamp(0, t - 1)[:, None, None, :].expand(b, c, f, t))


def _blend(x: Tensor, known: Tensor, right_weight) -> Tensor:
    """Every unknown frame = (1 - w) x[left] + w x[right] with ``w = right_weight(left, right)`` where both
    exist, the one that exists otherwise, 0 with none; known frames are kept."""
    left, right = nearest_known(known)
    t = known.shape[1]
    has_left, has_right = left >= 0, right < t
    w = torch.where(has_left & has_right, right_weight(left, right), has_right.to(x.dtype))
    w = w.to(x.dtype)[:, None, None]
    guess = (1 - w) * _frames(x, left) + w * _frames(x, right)
    guess = guess * (has_left | has_right).to(x.dtype)[:, None, None]
    return torch.where(known[:, None, None, :], x, guess)


def silence(x: Tensor, known: Tensor) -> Tensor:
    return torch.where(known[:, None, None, :], x, torch.zeros((), dtype=x.dtype, device=x.device))


def neighbour_mean(x: Tensor, known: Tensor) -> Tensor:
    return _blend(x, known, lambda left, right: torch.full_like(left, 0.5, dtype=torch.float32))


def interpolation(x: Tensor, known: Tensor) -> Tensor:
    frame = torch.arange(known.shape[1], device=known.device)
    return _blend(x, known, lambda left, right: (frame - left) / (right - left).clamp_min(1))


def bin_mean(x: Tensor, known: Tensor) -> Tensor:
    weight = known.to(x.dtype)[:, None, None, :]
    mean = (x * weight).sum(dim=3, keepdim=True) / weight.sum(dim=3, keepdim=True).clamp_min(1)
    return torch.where(known[:, None, None, :], x, mean.expand_as(x))


TRIVIAL = {"silence": silence, "neighbours": neighbour_mean, "interpolation": interpolation,
           "bin_mean": bin_mean}


def gaps(known: Tensor) -> list[tuple[int, int]]:
    """The runs ``[start, stop)`` of unknown frames in one crop's ``known [T]``."""
    edges = torch.diff(torch.nn.functional.pad((~known).int(), (1, 1))).tolist()
    starts = [i for i, e in enumerate(edges) if e == 1]
    return list(zip(starts, [i for i, e in enumerate(edges) if e == -1], strict=True))


def repetition(x: Tensor, known: Tensor, context: int = 4, reference: Tensor | None = None) -> Tensor:
    """Music repeats (a beat, a bar, a held chord): each gap copied from the stretch of known frames, at
    least a gap's length away, whose ``context`` frames on each side best match the known frames on each
    side of the gap (mean absolute dB difference over every bin).  Not a trivial rule, a search: it is
    not in ``TRIVIAL`` (``context_gain``'s denominator), and validation reports it beside them as what
    copying from the crop is worth.  With ``reference`` (the target) the stretch is the one that best
    matches the gap itself: the most that copying can give.  A gap with no such stretch keeps the
    interpolation."""
    db, out = to_db(x), to_db(interpolation(x, known))
    t = known.shape[1]
    for b in range(x.shape[0]):
        k = known[b]
        for start, stop in gaps(k):
            if reference is None:
                where = torch.cat([torch.arange(start - context, start), torch.arange(stop, stop + context)])
                where = where[(where >= 0) & (where < t)].to(k.device)
                where = where[k[where]]
                pattern = db[b][..., where]
            else:
                where = torch.arange(start, stop, device=k.device)
                pattern = to_db(reference[b][..., start:stop])
            shifts = torch.arange(-t + 1, t, device=k.device)
            shifts = shifts[shifts.abs() >= stop - start]  # the copy does not overlap the gap
            frames = torch.cat([where, torch.arange(start, stop, device=k.device)])[None] + shifts[:, None]
            fits = (frames >= 0).all(1) & (frames < t).all(1)
            frames = frames[fits]
            frames = frames[k[frames].all(1)]  # every frame matched or copied is known
            if not len(where) or not len(frames):
                continue
            matched = db[b][..., frames[:, : len(where)]]  # [C, F, candidates, len(where)]
            best = (matched - pattern[..., None, :]).abs().mean(dim=(0, 1, 3)).argmin()
            out[b][..., start:stop] = db[b][..., frames[best, len(where):]]
    return torch.where(known[:, None, None, :], x, 10 ** (out / 20))


def context_gain(errors: dict[str, float]) -> float:
    """``1 - errors["model"] / min(errors of the TRIVIAL predictors)``."""
    return 1.0 - errors["model"] / max(min(errors[name] for name in TRIVIAL), 1e-12)
