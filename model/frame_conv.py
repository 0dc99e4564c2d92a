"""Frame convolutions: (k, 1) kernels along frequency with stride (s, 1), on ``[B, C, F, T]`` maps.

With few channels oneDNN computes them slowly on CPU: it pads channels to blocks of 8, and its
backward (the weight gradient above all) takes many times the forward.  ``FrameConv`` computes such
narrow convolutions, forward and backward, as one batched matrix product per tap: a map is seen as
``[B, C, F * T]``, and the rows a tap reads are one contiguous ``[C, rows * T]`` block, once the
input's rows are regrouped by phase (row mod s) when s > 1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from specbert.model.attention import plain_ops

NARROW = 8  # fewer input or output channels than this: matrix products instead of oneDNN


def _phases(x: Tensor, stride: int) -> Tensor:
    """``x [B, C, F, T] -> [B, C, s, ceil(F / s) * T]``: row ``s q + r`` of x is row q of phase r."""
    batch, channels, bins, frames = x.shape
    rows = -(-bins // stride)
    if stride > 1:
        x = nn.functional.pad(x, (0, 0, 0, rows * stride - bins)).unflatten(2, (rows, stride)).transpose(2, 3)
    return x.reshape(batch, channels, stride, rows * frames)


def _unphase(phases: Tensor, bins: int, frames: int) -> Tensor:
    """The inverse of ``_phases``: ``[B, C, s, rows * T] -> [B, C, F, T]``."""
    batch, channels = phases.shape[:2]
    rows = phases.unflatten(3, (-1, frames)).transpose(2, 3)  # [B, C, rows, s, T]
    return rows.reshape(batch, channels, -1, frames)[:, :, :bins]


def _taps(kernel: int, stride: int, bins: int, frames: int):
    """``(j, phase, input rows, output rows)`` for every tap j, the centre first, as slices of ``rows * T``.

    Output row f reads input row ``s f + j - k // 2``: phase ``(j - k // 2) % s``, row
    ``f + (j - k // 2) // s`` of it.  Rows that fall into the zero padding are left out; the centre
    tap has none, it reads a row for every output row.
    """
    out_bins = -(-bins // stride)
    for j in sorted(range(kernel), key=lambda j: j != kernel // 2):
        shift = j - kernel // 2
        lo = max(0, -(shift // stride))
        hi = max(lo, min(out_bins, (bins - 1 - shift) // stride + 1))
        first = lo + shift // stride
        rows_in, rows_out = slice(first * frames, (first + hi - lo) * frames), slice(lo * frames, hi * frames)
        yield j, shift % stride, rows_in, rows_out


def _conv(x: Tensor, weight: Tensor, stride: int) -> Tensor:
    """``F.conv2d`` with "same" padding along frequency, by one batched matrix product per tap.

    ``x [B, Cin, F, T]``, ``weight [Cout, Cin, k, 1]`` -> ``[B, Cout, F / s, T]``.
    """
    batch, _, bins, frames = x.shape
    phases, out = _phases(x, stride), None
    for j, phase, rows_in, rows_out in _taps(weight.shape[2], stride, bins, frames):
        taps, rows = weight[:, :, j, 0].expand(batch, -1, -1), phases[:, :, phase, rows_in]
        if out is None:  # the centre tap writes every output row
            out = torch.bmm(taps, rows)
        else:
            out[..., rows_out].baddbmm_(taps, rows)
    return out.unflatten(2, (-1, frames))


class _FrameConvFunction(torch.autograd.Function):
    """``_conv``, and its backward by matrix products per tap too."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        return _conv(x, weight, stride)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, (batch, _, bins, frames) = ctx.stride, x.shape
        grad = grad.to(weight.dtype).contiguous()
        taps = list(_taps(weight.shape[2], stride, bins, frames))
        phases, grad_rows = _phases(x, stride), grad.flatten(2)  # [B, Cin, s, rows * T], [B, Cout, F / s * T]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0] and stride == 1:  # the convolution with the taps flipped
            grad_x = _conv(grad, weight.flip(2).transpose(0, 1), 1)
        elif ctx.needs_input_grad[0]:  # each tap adds its share to the rows it read
            grad_phases = torch.zeros_like(phases)
            for j, phase, rows_in, rows_out in taps:
                transposed = weight[:, :, j, 0].T.expand(batch, -1, -1)
                grad_phases[:, :, phase, rows_in].baddbmm_(transposed, grad_rows[..., rows_out])
            grad_x = _unphase(grad_phases, bins, frames)
        if ctx.needs_input_grad[1]:
            grad_w = torch.empty_like(weight)
            for j, phase, rows_in, rows_out in taps:
                read = phases[:, :, phase, rows_in]
                grad_w[:, :, j, 0] = torch.bmm(grad_rows[..., rows_out], read.mT).sum(0)
        return grad_x, grad_w, None


class FrameConv(nn.Conv2d):
    """A (k, 1) convolution with stride (s, 1), "same" padding along frequency, a bias if asked; k odd
    (k = 1: the pointwise convolutions of the heads and the blocks' bottlenecks, which oneDNN computes
    many times slower than a matrix product on CPU: ``benchmarks/README.md``).

    ``[B, Cin, F, T] -> [B, Cout, ceil(F / s), T]``.  Narrow ones (fewer than ``NARROW`` input or output
    channels) on NCHW maps on CPU (training) run ``_FrameConvFunction``; the others, channels-last maps
    (CUDA, CPU inference) and all when tracing or exporting to ONNX, ``nn.Conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 bias: bool = False):
        padding = (kernel_size // 2, 0)
        super().__init__(in_channels, out_channels, (kernel_size, 1), (stride, 1), padding, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        narrow = min(self.in_channels, self.out_channels) < NARROW
        if not narrow or x.device.type != "cpu" or not x.is_contiguous() or plain_ops():
            return super().forward(x)
        weight = self.weight
        if torch.is_autocast_enabled("cpu"):  # the dtype autocast gives convolutions
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
        out = _FrameConvFunction.apply(x, weight, self.stride[0])
        return out if self.bias is None else out + self.bias.to(out.dtype)[:, None, None]
