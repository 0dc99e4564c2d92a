"""Transformer blocks over frames: the Evolved-Transformer cell with the Primer-EZ changes, pre-norm.

``x [B, L, d]`` with L = frames and d = bins of the level.  Encoder blocks attend over their own frames;
decoder blocks add attention over a memory (the U-Net skip of their level) after the self-attention.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from specbert.configs.model import ModelConfig
from specbert.model.attention import Attention, TimeConv


def pad_to(x: Tensor, width: int) -> Tensor:
    """Zero-pad the last dimension to ``width`` (how the Evolved Transformer sums narrow branches)."""
    return F.pad(x, (0, width - x.shape[-1]))


class FeedForward(nn.Module):
    """Primer feed-forward with squared ReLU: ``[B, L, d] -> [B, L, d]``."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.drop(F.relu(self.up(x)).square()))


class SeparableConv(nn.Module):
    """Depthwise conv along time then a pointwise projection: ``[B, L, Cin] -> [B, L, Cout]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.depthwise = TimeConv(in_channels, in_channels, kernel_size, groups=in_channels)
        self.pointwise = nn.Linear(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class EvolvedBlock(nn.Module):
    """Evolved-Transformer encoder cell, Primer-EZ attention and feed-forward, pre-norm residuals.

    1. GLU branch; 2. parallel 1x1 (to ``expansion * d``, ReLU) and 3x1 (to d/2, ReLU) convs, summed,
    then a separable 9x1 conv to d/2; 3. self-attention; 3b. (decoder) attention over ``memory``;
    4. squared-ReLU feed-forward.  ``x [B, L, d]``, ``memory [B, L, d]`` or None -> ``[B, L, d]``.
    """

    def __init__(self, dim: int, cfg: ModelConfig, cross: bool = False):
        super().__init__()
        wide = cfg.expansion * dim

        def attention():
            return Attention(dim, cfg.num_heads, cfg.dropout, cfg.position, cfg.max_distance, cfg.sdpa)

        self.glu_norm = nn.LayerNorm(dim)
        self.glu = nn.Linear(dim, 2 * dim)
        self.conv_norm = nn.LayerNorm(dim)
        self.left = nn.Linear(dim, wide)
        self.right = TimeConv(dim, dim // 2, 3)
        self.wide_norm = nn.LayerNorm(wide)
        self.separable = SeparableConv(wide, dim // 2, 9)
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = attention()
        if cross:
            self.memory_norm = nn.LayerNorm(dim)
            self.cross_norm = nn.LayerNorm(dim)
            self.cross_attn = attention()
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, wide, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, memory: Tensor | None = None) -> Tensor:
        dim = x.shape[-1]
        x = x + self.drop(F.glu(self.glu(self.glu_norm(x))))
        h = self.conv_norm(x)
        wide = F.relu(self.left(h))
        wide = wide + pad_to(F.relu(self.right(h)), wide.shape[-1])
        x = x + self.drop(pad_to(self.separable(self.wide_norm(wide)), dim))
        x = x + self.drop(self.attn(self.attn_norm(x)))
        if memory is not None:
            x = x + self.drop(self.cross_attn(self.cross_norm(x), self.memory_norm(memory)))
        return x + self.drop(self.ffn(self.ffn_norm(x)))
