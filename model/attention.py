"""Multi-head attention over frames: Primer-EZ depthwise convs and relative positions.

Tokens are frames, ``x [B, L, d]`` with L = time frames and d = bins of the level.  Positions are either
Music-Transformer relative attention (a learned embedding per head and relative distance, added to the
logits as ``S_rel[i, j] = q_i . E[j - i]``) or rotary embeddings (RoPE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _DepthwiseTimeConv(torch.autograd.Function):
    """Depthwise "same" convolution along time, channels last, as k shifted multiply-adds.

    ``x [B, L, C]``, ``weight [k, C]``, ``bias [C]`` -> ``[B, L, C]``.  Output frame t gets
    ``sum_j x[t + j - k//2] * weight[j]``; every tap is one contiguous multiply-add over the overlapping
    frames, with no [B, L, C] <-> [B, C, L] transposes (faster on CPU than a grouped ``conv1d``).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        x, centre = x.contiguous(), weight.shape[0] // 2
        out = torch.addcmul(bias, x, weight[centre])
        for j, lo, hi in _taps(x.shape[1], weight.shape[0]):
            out[:, lo:hi].addcmul_(x[:, lo + j - centre : hi + j - centre], weight[j])
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, weight = ctx.saved_tensors
        grad, centre = grad.contiguous(), weight.shape[0] // 2
        grad_x = grad * weight[centre]
        grad_w = torch.zeros_like(weight)  # taps beyond a short sequence get no gradient
        grad_w[centre] = (grad * x).sum((0, 1))
        for j, lo, hi in _taps(x.shape[1], weight.shape[0]):
            shifted = slice(lo + j - centre, hi + j - centre)
            grad_x[:, shifted].addcmul_(grad[:, lo:hi], weight[j])
            grad_w[j] = (grad[:, lo:hi] * x[:, shifted]).sum((0, 1))
        return grad_x, grad_w, grad.sum((0, 1))


def plain_ops() -> bool:
    """Whether hand-written kernels must give way to plain, traceable modules: tracing, ONNX export."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _taps(length: int, kernel_size: int):
    """``(j, lo, hi)`` for every tap but the centre: output frames ``lo:hi`` read frames shifted by
    ``j - kernel_size // 2`` (the others fall into the zero padding)."""
    centre = kernel_size // 2
    for j in range(kernel_size):
        lo, hi = max(0, centre - j), min(length, length + centre - j)
        if j != centre and hi > lo:
            yield j, lo, hi


class TimeConv(nn.Module):
    """1-D convolution along time with symmetric ("same") padding: ``[B, L, Cin] -> [B, L, Cout]``.

    ``groups=channels`` gives a depthwise convolution (one kernel per channel).  Parameters live in an
    ``nn.Conv1d``, but the maths stays in the tokens' channels-last layout: depthwise by shifted
    multiply-adds, dense by one matrix product over the k shifted frames (im2col by ``unfold``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1):
        super().__init__()
        if groups not in (1, in_channels) or kernel_size % 2 == 0:
            raise ValueError("TimeConv is dense or depthwise, with an odd kernel")
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        weight, bias, k = self.conv.weight, self.conv.bias, self.conv.kernel_size[0]
        if plain_ops():  # custom autograd and unfold do not export
            return self.conv(x.transpose(1, 2)).transpose(1, 2)
        if self.conv.groups > 1:  # weight [C, 1, k]
            return _DepthwiseTimeConv.apply(x, weight[:, 0].T.to(x.dtype), bias.to(x.dtype))
        cols = F.pad(x, (0, 0, k // 2, k // 2)).unfold(1, k, 1)  # [B, L, Cin, k]
        return F.linear(cols.flatten(2), weight.flatten(1), bias)  # weight [Cout, Cin, k]


def skew(rel: Tensor) -> Tensor:
    """Bidirectional skew: ``rel [..., L, 2L-1] -> S [..., L, L]`` with ``S[i, j] = rel[i, j - i + L - 1]``.

    Column ``r`` of ``rel`` holds relative distance ``r - (L - 1)``.  The Music-Transformer pad-and-reshape
    trick, without the pad: in a row-major ``[L, 2L-1]`` block ``rel[i, j - i + L - 1]`` sits at offset
    ``i (2L - 2) + j + L - 1``, so S is a view of ``rel``: flatten, skip L-1 elements, rows of 2L-2, keep
    L columns (a view; only the SDPA path copies it, to hand the kernel contiguous rows).
    """
    *batch, length, width = rel.shape
    if length == 1:
        return rel
    flat = rel.contiguous().flatten(-2)[..., length - 1 : length - 1 + length * (width - 1)]
    return flat.view(*batch, length, width - 1)[..., :length]


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
        if length <= m:  # distances 1-L .. L-1: a slice (its gradient is cheaper than a gather's)
            table = self.embedding[:, m - length : m + length - 1]
        else:
            distance = torch.arange(1 - length, length, device=q.device).clamp(1 - m, m - 1)
            table = self.embedding[:, distance + m - 1]
        table = table * q.shape[-1] ** -0.5  # [H, 2L-1, Dh], scaled like the logits
        rel = q @ table.transpose(-1, -2).to(q.dtype)  # [B, H, L, 2L-1]
        return q, k, skew(rel)


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
        if self.sdpa:  # a contiguous mask: rows aligned as the CUDA memory-efficient kernel wants them
            mask = None if bias is None else bias.contiguous()
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        else:
            y = plain_attention(q, k, v, bias, dropout)
        return self.out(y.transpose(1, 2).reshape(batch, length, dim))
