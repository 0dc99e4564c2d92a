"""Model settings: a U-Net over frequency with transformer blocks over frames at every level.

Level ``l`` works at ``model_bins / 2**l`` frequency bins (1024, 512, 256, ...); the bins of a level
are also the d_model of its transformer blocks (each frame is a token).  The defaults are the ``base``
preset (about 50M parameters).  One level and no decoder is the pure-transformer ablation (``flat``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ModelConfig:
    channels: tuple[int, ...] = (8, 16, 32, 64, 64, 64)  # conv channels per level; depth = len
    # The network's view of its input (the mask always multiplies the linear magnitudes): x ** input_power
    # (1: linear; below 1 compresses), then a learned scale and offset per bin and channel (Open-Unmix's
    # input normalisation, carried in the model's weights).  Linear measured best when fine-tuning on
    # real music (benchmarks/README.md).
    input_power: float = 1.0
    # Bins folded into channels before the first level (lossless: bin p*f + j becomes channel c*p + j of
    # row f), and unfolded after the mask head, which gives each bin its own value.  2 halves every
    # level's bins (and its blocks' d_model) and leaves no map at the full 1024 bins, where the thin
    # frame convolutions are slowest on CPU (benchmarks/README.md).
    bin_patch: int = 1
    kernel_size: int = 3  # frequency kernel k of the (k, 1) frame convolutions (odd)
    encoder_blocks: tuple[int, ...] = (1, 1, 1, 2, 2, 2)  # transformer encoder blocks per level
    decoder_blocks: tuple[int, ...] = (0, 1, 1, 2, 2)  # transformer decoder blocks per level but the deepest
    num_heads: int = 8  # must divide the bins of every level that has transformer blocks
    expansion: int = 4  # width of the wide conv branch and of the feed-forward, in units of d_model
    dropout: float = 0.1
    position: Literal["relative", "rope"] = "relative"  # Music-Transformer relative attention or RoPE
    max_distance: int = 1024  # relative distances clip at +-(max_distance - 1) frames
    sdpa: bool = True  # scaled_dot_product_attention; False: the plain matmul-softmax path (same result)
    disc_channels: int = 32  # discriminator: channels of its first strided conv (doubling per layer)
    disc_layers: int = 4  # discriminator: strided convs, each halving the bins

    @property
    def depth(self) -> int:
        return len(self.channels)

    def __post_init__(self):
        if not self.channels or min(self.channels) <= 0:
            raise ValueError(f"channels must be a non-empty list of positive ints, got {self.channels}")
        if len(self.encoder_blocks) != self.depth:
            raise ValueError(
                f"encoder_blocks needs one entry per level ({self.depth}), got {list(self.encoder_blocks)}"
            )
        if len(self.decoder_blocks) != self.depth - 1:
            raise ValueError(
                f"decoder_blocks needs one entry per level but the deepest ({self.depth - 1}), "
                f"got {list(self.decoder_blocks)}"
            )
        if min(self.encoder_blocks) < 0 or min(self.decoder_blocks, default=0) < 0:
            raise ValueError("encoder_blocks and decoder_blocks must be >= 0")
        if self.bin_patch < 1 or self.bin_patch & (self.bin_patch - 1):
            raise ValueError(f"bin_patch must be a power of two, got {self.bin_patch}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size}")
        if not 0.0 < self.input_power <= 1.0:
            raise ValueError(f"input_power must be in (0, 1], got {self.input_power}")
        if self.num_heads <= 0 or self.expansion <= 0 or self.max_distance <= 0:
            raise ValueError("num_heads, expansion and max_distance must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.disc_channels <= 0 or self.disc_layers <= 0:
            raise ValueError("disc_channels and disc_layers must be positive")
