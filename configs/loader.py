"""Pretraining loader settings: crops, span masking and next-segment pairs (see pipeline/masking.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoaderConfig:
    crop_frames: int = 1024  # two halves of 512 frames
    crops_per_segment: int = 4  # crops per decoded segment in training (decoding is most of the cost)
    segment_pool: int = 8  # decoded segments a crop is drawn from at random (mixes batches; 8.4 MB each)
    token_frames: int = 16  # frames per masked "word"
    mask_rate: float = 0.15  # share of tokens selected
    mask_white: float = 0.8  # of the selected: every bin set to mask_value
    # A white token's bins: 1.0 (the reference design) or e.g. 0 (silent); train.reconstruct=residual
    # shows the network the interpolation across the gap instead.
    mask_value: float = 1.0
    mask_noise: float = 0.1  # of the selected: max(uniform noise, original)
    mask_keep: float = 0.1  # of the selected: left unchanged
    next_segment: bool = True  # build next-segment pairs
    next_prob: float = 0.5  # probability that the second half is the true continuation
    pair_pool: int = 8  # recent second halves a foreign half is drawn from
    channel_swap: float = 0.5  # probability of swapping left and right
    shuffle_buffer: int = 64  # raw (still encoded) samples in each worker's shuffle buffer
    epoch_batches: int = 1000  # batches per epoch and rank (resampled shards)

    def __post_init__(self):
        if not 0.0 < self.mask_rate <= 1.0:
            raise ValueError(f"mask_rate must be in (0, 1], got {self.mask_rate}")
        split = (self.mask_white, self.mask_noise, self.mask_keep)
        if min(split) < 0 or abs(sum(split) - 1.0) > 1e-6:
            raise ValueError(f"mask_white + mask_noise + mask_keep must be 1, got {split}")
        if not 0.0 <= self.mask_value <= 1.0:
            raise ValueError(f"mask_value must be in [0, 1], got {self.mask_value}")
        if self.token_frames <= 0 or self.crop_frames % (2 * self.token_frames):
            raise ValueError(
                f"crop_frames ({self.crop_frames}) must be a multiple of 2 * token_frames "
                f"({self.token_frames})"
            )
        if self.next_segment and (self.token_frames % 2 or self.crop_frames < 4 * self.token_frames):
            raise ValueError(
                f"next_segment needs an even token_frames ({self.token_frames}) and crop_frames "
                f"({self.crop_frames}) of at least 4 tokens (the two seam tokens are never masked)"
            )
        for name in ("next_prob", "channel_swap"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("crops_per_segment", "segment_pool", "pair_pool", "shuffle_buffer", "epoch_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
