"""The pretraining task on crops: next-segment pairs and span masking.

The mask policy lives here and only here (its numbers are ``configs.loader.LoaderConfig``):

- a crop ``[C, bins, T]`` is cut into ``T // token_frames`` tokens of ``token_frames`` frames;
- each token is selected with probability ``mask_rate`` (at least one per crop); each selected
  token becomes white (every bin 1.0) with probability ``mask_white``, ``max(U(0, 1), original)``
  with ``mask_noise`` and stays unchanged with ``mask_keep``; the loss covers every selected frame;
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

from configs.loader import LoaderConfig

WHITE, NOISE, KEEP = 1, 2, 3  # token kinds; 0 = not selected


def write_separator(spec: torch.Tensor, start: int, stop: int):
    """Overwrite frames ``start:stop`` of ``spec`` ``[..., bins, T]`` with the separator pattern:
    1 on even bins, 0 on odd bins."""
    spec[..., start:stop] = 0.0
    spec[..., 0::2, start:stop] = 1.0


def seam_tokens(n_tokens: int) -> tuple[int, int]:
    """The two tokens the seam of a pair touches (the last of the first half, the first of the second)."""
    return n_tokens // 2 - 1, n_tokens // 2


def next_segment_pairs(
    samples: Iterable[dict], cfg: LoaderConfig, rng: np.random.Generator
) -> Iterator[dict]:
    """Stream stage: adds ``is_next`` and ``pair_track`` to crops ``target`` ``[C, bins, T]``, whose
    second half (modified in place) is, with probability ``1 - next_prob``, a crop of another track.

    ``pool`` keeps (views of) the second halves of the last ``cfg.pair_pool`` crops kept whole (the
    stream is already shuffled, so they are a random draw; each is used about once on average); a
    foreign half is copied from an entry of another track. While the pool holds no other track (the
    first crops of a stream, or a one-track library), the true continuation is kept. The separator
    is written over the seam of every crop. With ``cfg.next_segment`` off, crops pass unchanged
    with ``is_next`` true.
    """
    pool: deque[dict] = deque(maxlen=cfg.pair_pool)
    for sample in samples:
        target, track = sample["target"], sample["track"]
        pair_track = track
        if cfg.next_segment:
            half, width = target.shape[-1] // 2, cfg.token_frames // 2
            others = [i for i, entry in enumerate(pool) if entry["track"] != track]
            if rng.random() >= cfg.next_prob and others:
                entry = pool[others[rng.integers(len(others))]]
                target[..., half:] = entry["half"]
                pair_track = entry["track"]
            else:
                pool.append({"track": track, "half": target[..., half:]})
            write_separator(target, half - width, half + width)
        yield {**sample, "is_next": pair_track == track, "pair_track": pair_track}


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


def apply_mask(target: torch.Tensor, kinds: np.ndarray, token_frames: int, rng: np.random.Generator):
    """The masked input: ``target`` ``[C, bins, T]`` with WHITE tokens 1.0, NOISE tokens max(U(0, 1), x)."""
    masked = target.clone()
    for token in np.flatnonzero(kinds):
        frames = masked[..., token * token_frames : (token + 1) * token_frames]
        if kinds[token] == WHITE:
            frames.fill_(1.0)
        elif kinds[token] == NOISE:
            noise = torch.from_numpy(rng.random(frames.shape, dtype=np.float32))
            torch.maximum(frames, noise.to(frames.dtype), out=frames)
    return masked


def mask_sample(sample: dict, cfg: LoaderConfig, rng: np.random.Generator) -> dict:
    """Add ``input`` ``[C, bins, T]`` (the masked target) and ``masked`` bool ``[T]`` (selected frames)."""
    target = sample["target"]
    n_tokens = target.shape[-1] // cfg.token_frames
    exclude = seam_tokens(n_tokens) if cfg.next_segment else ()
    kinds = select_tokens(n_tokens, cfg, rng, exclude)
    masked = torch.from_numpy(np.repeat(kinds > 0, cfg.token_frames))
    return {**sample, "input": apply_mask(target, kinds, cfg.token_frames, rng), "masked": masked}
