"""Multi-head attention over frames: Primer-EZ depthwise convs and relative positions.

Tokens are frames, ``x [B, L, d]`` with L = time frames and d = bins of the level.  Positions are either
Music-Transformer relative attention (a learned embedding per head and relative distance, added to the
logits as ``S_rel[i, j] = q_i . E[j - i]``) or rotary embeddings (RoPE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TimeConv(nn.Module):
    """1-D convolution along time with symmetric ("same") padding: ``[B, L, Cin] -> [B, L, Cout]``.

    ``groups=channels`` gives a depthwise convolution (one kernel per channel).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


def skew(rel: Tensor) -> Tensor:
    """Bidirectional skew: ``rel [..., L, 2L-1] -> S [..., L, L]`` with ``S[i, j] = rel[i, j - i + L - 1]``.

    Column ``r`` of ``rel`` holds relative distance ``r - (L - 1)``.  Pad one zero column on the left
    (``[L, 2L]``), view as ``[2L, L]``, drop the first row, view as ``[L, 2L-1]`` and keep the first L
    columns.  Only the padding copies: O(L^2) per head, like the logits themselves.
    """
    *batch, length, width = rel.shape
    padded = F.pad(rel, (1, 0)).reshape(*batch, 2 * length, length)[..., 1:, :]
    return padded.reshape(*batch, length, width)[..., :length]


class RelativePosition(nn.Module):
    """Music-Transformer relative logits, bidirectional.

    One learned embedding per head and relative distance in ``-(max_distance-1) .. max_distance-1``;
    longer distances share the last one, so sequences longer than the training crop work.
    ``q [B, H, L, Dh] -> bias [B, H, L, L]``, already scaled by ``1/sqrt(Dh)`` like the logits.
    """

    def __init__(self, heads: int, head_dim: int, max_distance: int):
        super().__init__()
        self.max_distance = max_distance
        self.embedding = nn.Parameter(torch.randn(heads, 2 * max_distance - 1, head_dim) * 0.02)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        length, m = q.shape[-2], self.max_distance
        distance = torch.arange(1 - length, length, device=q.device).clamp(1 - m, m - 1)
        table = self.embedding[:, distance + m - 1]  # [H, 2L-1, Dh]
        rel = q @ table.transpose(-1, -2).to(q.dtype)  # [B, H, L, 2L-1]
        return q, k, skew(rel) * q.shape[-1] ** -0.5


class Rotary(nn.Module):
    """Rotary position embedding of queries and keys (no logit bias): ``[B, H, L, Dh]``, Dh even."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.register_buffer("freqs", base ** (-torch.arange(0, head_dim, 2) / head_dim), persistent=False)

    def rotate(self, x: Tensor) -> Tensor:
        angles = torch.arange(x.shape[-2], device=x.device)[:, None] * self.freqs  # [L, Dh/2]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, None]:
        return self.rotate(q), self.rotate(k), None


def plain_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, dropout: float) -> Tensor:
    """``softmax(q k^T / sqrt(Dh) + bias) v`` by matmuls, softmax in fp32; same maths as SDPA.

    ``q, k, v [B, H, L, Dh]``, ``bias [B, H, L, L]`` or None -> ``[B, H, L, Dh]``.
    """
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias
    weights = F.dropout(scores.float().softmax(dim=-1), dropout)
    return weights.to(v.dtype) @ v


class Attention(nn.Module):
    """Multi-head self-attention, or attention over ``memory`` (same length), with Primer-EZ convs.

    Primer-EZ: a depthwise convolution of width 3 along time after each of the Q, K and V projections,
    one kernel per channel (each of Q, K and V has its own), non-causal.
    ``x [B, L, d]``, ``memory [B, L, d]`` or None -> ``[B, L, d]``.
    """

    def __init__(self, dim: int, heads: int, dropout: float, position: str, max_distance: int, sdpa: bool):
        super().__init__()
        if dim % heads:
            raise ValueError(f"num_heads ({heads}) must divide d_model ({dim})")
        self.heads, self.dropout, self.sdpa = heads, dropout, sdpa
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_conv = TimeConv(dim, dim, 3, groups=dim)
        self.kv_conv = TimeConv(2 * dim, 2 * dim, 3, groups=2 * dim)
        self.out = nn.Linear(dim, dim)
        head_dim = dim // heads
        if position == "relative":
            self.position = RelativePosition(heads, head_dim, max_distance)
        else:
            self.position = Rotary(head_dim)

    def forward(self, x: Tensor, memory: Tensor | None = None) -> Tensor:
        batch, length, dim = x.shape
        q = self.q_conv(self.q(x))
        k, v = self.kv_conv(self.kv(x if memory is None else memory)).chunk(2, dim=-1)
        q, k, v = (t.reshape(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        q, k, bias = self.position(q, k)
        dropout = self.dropout if self.training else 0.0
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        else:
            y = plain_attention(q, k, v, bias, dropout)
        return self.out(y.transpose(1, 2).reshape(batch, length, dim))
