"""Output heads: the multiplicative mask and the next-segment logit."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from specbert.model.frame_conv import FrameConv
from specbert.model.precision import float32_region


class MaskHead(nn.Module):
    """1x1 conv back to the input channels, sigmoid, in fp32 even under autocast.

    ``h [B, C, F, T] -> mask [B, out_channels, F, T]`` in [0, 1], float32; with ``logits`` the conv's
    output before the sigmoid (pretraining's ``residual`` reconstruction reads it as a correction).
    """

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.proj = FrameConv(channels, out_channels, 1, bias=True)

    def start_at(self, level: float) -> None:
        """Set the bias to ``logit(level)``, so the initial mask is about ``level`` (0 < level < 1)."""
        with torch.no_grad():
            self.proj.bias.fill_(math.log(level / (1.0 - level)))

    def zero_(self) -> None:
        """Weights and bias 0: every logit starts at 0 whatever the features."""
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.bias.zero_()

    def forward(self, h: Tensor, logits: bool = False) -> Tensor:
        with float32_region(h):
            out = self.proj(h.float())
            return out if logits else torch.sigmoid(out)


class NextSegmentHead(nn.Module):
    """Is the second half the continuation of the first?  Mean over time, then a linear layer.

    ``h [B, C, F, T]`` (the deepest U-Net features) -> logit ``[B]`` (float32).
    """

    def __init__(self, channels: int, bins: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels * bins)
        self.proj = nn.Linear(channels * bins, 1)

    def forward(self, h: Tensor) -> Tensor:
        with float32_region(h):
            pooled = h.float().mean(dim=-1).flatten(1)  # [B, C * F]
            return self.proj(self.norm(pooled))[:, 0]
