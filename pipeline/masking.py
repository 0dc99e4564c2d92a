"""The pretraining task on crops: next-segment pairs and span masking.

The mask policy lives here and only here (its numbers are ``configs.loader.LoaderConfig``):

- a crop ``[C, bins, T]`` is cut into ``T // token_frames`` tokens of ``token_frames`` frames;
- each token is selected with probability ``mask_rate`` (at least one per crop); each selected
  token becomes white (every bin ``mask_value``, 1.0 by default) with probability ``mask_white``,
  ``max(U(0, 1), original)`` with ``mask_noise`` and stays unchanged with ``mask_keep``; the loss
  covers every selected frame;
- with ``next_segment`` on, the crop's second half is kept with probability ``next_prob``
  (``is_next``) and otherwise replaced by the second half of a recent crop of another track. The
  seam (``token_frames // 2`` frames each side) is overwritten with the separator pattern in input
  and target, and the two tokens it touches are never selected.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from specbert.configs.loader import LoaderConfig

WHITE, NOISE, KEEP = 1, 2, 3  # token kinds; 0 = not selected


def write_separator(spec: torch.Tensor, start: int, stop: int):
    """Overwrite frames ``start:stop`` of ``spec`` ``[..., bins, T]`` with the separator pattern:
    1 on even bins, 0 on odd bins."""
    spec[..., start:stop] = 0.0
    spec[..., 0::2, start:stop] = 1.0


def seam_frames(crop_frames: int, token_frames: int) -> slice:
    """The frames of a pair's seam (the separator): ``token_frames // 2`` each side of the middle."""
    half, width = crop_frames // 2, token_frames // 2
    return slice(half - width, half + width)


def seam_tokens(n_tokens: int) -> tuple[int, int]:
    """The two tokens the seam of a pair touches (the last of the first half, the first of the second)."""
    return n_tokens // 2 - 1, n_tokens // 2


def next_segment_pairs(
    samples: Iterable[dict], cfg: LoaderConfig, rng: np.random.Generator
) -> Iterator[dict]:
    """Stream stage: adds ``is_next`` and ``pair_track`` to crops whose ``halves`` (two windows of
    ``crop_frames // 2`` frames, not read here) are consecutive; the second half
    becomes, with probability ``1 - next_prob``, the second half of a recent crop of another track.

    ``pool`` keeps the second halves of the last ``cfg.pair_pool`` crops kept whole (the stream is
    already shuffled, so they are a random draw; each is used about once on average). While the pool
    holds no other track (the first crops of a stream, or a one-track library), the true
    continuation is kept. With ``cfg.next_segment`` off, crops pass with ``is_next`` true.
    """
    pool: deque[tuple[str, object]] = deque(maxlen=cfg.pair_pool)  # (track, second half)
    for sample in samples:
        first, second = sample["halves"]
        track = pair_track = sample["track"]
        if cfg.next_segment:
            others = [entry for entry in pool if entry[0] != track]
            if rng.random() >= cfg.next_prob and others:
                pair_track, second = others[rng.integers(len(others))]
            else:
                pool.append((track, second))
        yield {**sample, "halves": (first, second), "is_next": pair_track == track, "pair_track": pair_track}


def select_tokens(
    n_tokens: int, cfg: LoaderConfig, rng: np.random.Generator, exclude: Iterable[int] = ()
) -> np.ndarray:
    """Kinds of the ``n_tokens`` tokens, int8 ``[n_tokens]``: 0 (not selected), WHITE, NOISE or KEEP."""
    eligible = np.ones(n_tokens, dtype=bool)
    eligible[list(exclude)] = False
    chosen = eligible & (rng.random(n_tokens) < cfg.mask_rate)
    if not chosen.any():
        chosen[rng.choice(np.flatnonzero(eligible))] = True
    draws = rng.random(int(chosen.sum()))
    kinds = np.zeros(n_tokens, dtype=np.int8)
    kinds[chosen] = np.where(draws < cfg.mask_white, WHITE,
                             np.where(draws < cfg.mask_white + cfg.mask_noise, NOISE, KEEP))
    return kinds


def mask_batch(target: torch.Tensor, kinds: torch.Tensor, noise_seeds: torch.Tensor, token_frames: int,
               out: torch.Tensor | None = None, value: float = 1.0) -> torch.Tensor:
    """The masked input of crops: ``target`` ``[B, C, bins, T]`` with WHITE tokens ``value`` (the loader's
    ``mask_value``) and NOISE tokens
    max(U(0, 1), target), into ``out`` (laid out like ``target``) or a new tensor, on ``target``'s
    device. ``kinds`` int8 ``[B, tokens]`` (``select_tokens``) and ``noise_seeds`` int64 ``[B]`` are
    CPU tensors (read without a device sync). Each crop's noise is drawn on the CPU from its own seed,
    so a crop's input is the same wherever it is built. One small operation per selected token
    (about 10 per crop): on a CPU (a worker calls this per crop, B = 1) slices are cheaper than indexed
    writes of all tokens at once; on a GPU that is a few dozen small launches per batch."""
    x = torch.empty_like(target) if out is None else out
    x.copy_(target)
    for crop, crop_kinds, seed in zip(x, kinds.numpy(), noise_seeds.tolist(), strict=True):
        rng = np.random.default_rng(seed)
        for token in np.flatnonzero(crop_kinds):
            frames = crop[..., token * token_frames : (token + 1) * token_frames]
            if crop_kinds[token] == WHITE:
                frames.fill_(value)
            elif crop_kinds[token] == NOISE:
                noise = torch.from_numpy(rng.random(frames.shape, dtype=np.float32))
                torch.maximum(frames, noise.to(x.device, non_blocking=True).to(x.dtype), out=frames)
    return x


def mask_sample(sample: dict, cfg: LoaderConfig, rng: np.random.Generator) -> dict:
    """Stream stage: draws the mask of a crop of ``cfg.crop_frames`` frames: adds ``kinds`` (int8
    ``[tokens]``, as ``select_tokens``), ``masked`` (bool ``[T]``, the selected frames) and
    ``noise_seed`` (of the NOISE tokens' values, drawn by ``mask_batch``)."""
    n_tokens = cfg.crop_frames // cfg.token_frames
    exclude = seam_tokens(n_tokens) if cfg.next_segment else ()
    kinds = torch.from_numpy(select_tokens(n_tokens, cfg, rng, exclude))
    masked = (kinds > 0).repeat_interleave(cfg.token_frames)
    return {**sample, "kinds": kinds, "masked": masked, "noise_seed": int(rng.integers(2**63))}
