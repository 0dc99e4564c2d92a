"""The U-Net over frequency with transformer blocks over frames at every level.

Spectrograms are ``[B, C, F, T]``.  Frame convolutions have (k, 1) kernels, so frames never mix in the
convolutions and the time resolution never changes; frames meet only in the transformer blocks (and in
their time convolutions).  Level ``l`` has ``F = bins / (bin_patch * 2**l)`` bins, its blocks' d_model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specbert.configs.model import ModelConfig
from specbert.model.blocks import EvolvedBlock
from specbert.model.frame_conv import FrameConv
from specbert.model.heads import MaskHead, NextSegmentHead


def memory_layout(x: Tensor) -> torch.memory_format:
    """The memory layout of a map ``[B, C, F, T]``: channels-last or contiguous (see SpecUNet.forward)."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def upsample_bins(x: Tensor) -> Tensor:
    """Double the bins, bilinear: ``[B, C, F, T] -> [B, C, 2F, T]`` (half-bin centres, edges clamped).

    Eager runs ``F.interpolate``'s kernels.  torch.compile would turn their gradient into atomic
    scatter-adds (a large share of a compiled step on a GPU: ``benchmarks/README.md``), so a compiled
    model blends shifted copies instead (``blend_upsample``: the same values, an elementwise gradient).
    """
    if torch.compiler.is_compiling():
        return blend_upsample(x)
    return F.interpolate(x, scale_factor=(2, 1), mode="bilinear")


def blend_upsample(x: Tensor) -> Tensor:
    """``upsample_bins`` by shifted copies, in the layout of x: bin 2i is ``0.75 x[i] + 0.25 x[i-1]``,
    bin 2i+1 is ``0.75 x[i] + 0.25 x[i+1]``.  In eager mode 2.5-4x slower than ``F.interpolate`` (CPU)."""
    below = torch.cat([x[:, :, :1], x[:, :, :-1]], dim=2)  # x[i-1], clamped at the lowest bin
    above = torch.cat([x[:, :, 1:], x[:, :, -1:]], dim=2)  # x[i+1], clamped at the highest bin
    batch, channels, bins, frames = x.shape
    out = torch.empty(
        batch, channels, 2 * bins, frames, dtype=x.dtype, device=x.device, memory_format=memory_layout(x)
    )
    out[:, :, 0::2] = torch.lerp(x, below, 0.25)
    out[:, :, 1::2] = torch.lerp(x, above, 0.25)
    return out


def frame_convs(in_channels: int, channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """Two (k, 1) convs with BatchNorm and GELU, the second with stride (s, 1).

    ``[B, Cin, F, T] -> [B, channels, F / s, T]``: each frame is convolved along frequency only.
    """
    layers: list[nn.Module] = []
    for cin, s in ((in_channels, 1), (channels, stride)):
        layers += [FrameConv(cin, channels, kernel_size, s), nn.BatchNorm2d(channels), nn.GELU()]
    return nn.Sequential(*layers)


class FrameTransformer(nn.Module):
    """One transformer block over frames, with DenseNet growth.

    A 1x1 conv extracts a single channel; each frame's F bins are a token.  The block's output frames
    are concatenated to the input as one more channel.  With ``memory_channels`` (a decoder block) the
    block also attends over a 1x1 bottleneck of the memory (the level's skip).
    ``x [B, C, F, T]``, ``memory [B, Cm, F, T]`` or None -> ``[B, C + 1, F, T]``.
    """

    def __init__(self, channels: int, bins: int, cfg: ModelConfig, memory_channels: int = 0):
        super().__init__()
        self.bottleneck = FrameConv(channels, 1, 1, bias=True)
        if memory_channels:
            self.memory_bottleneck = FrameConv(memory_channels, 1, 1, bias=True)
        self.block = EvolvedBlock(bins, cfg, cross=memory_channels > 0)

    def forward(self, x: Tensor, memory: Tensor | None = None) -> Tensor:
        tokens = self.bottleneck(x)[:, 0].transpose(1, 2)  # [B, T, F]
        if memory is not None:
            memory = self.memory_bottleneck(memory)[:, 0].transpose(1, 2)
        out = self.block(tokens, memory).transpose(1, 2)[:, None]  # [B, 1, F, T]
        return torch.cat([x, out.to(x.dtype, memory_format=memory_layout(x))], dim=1)


class EncoderLevel(nn.Module):
    """Frame encoder (two (k, 1) convs, the second strided) then transformer encoder blocks.

    ``[B, Cin, F * stride, T] -> [B, channels + blocks, F, T]`` (the level's skip).
    """

    def __init__(
        self, in_channels: int, channels: int, bins: int, stride: int, blocks: int, cfg: ModelConfig
    ):
        super().__init__()
        self.conv = frame_convs(in_channels, channels, cfg.kernel_size, stride)
        self.blocks = nn.ModuleList(FrameTransformer(channels + i, bins, cfg) for i in range(blocks))
        self.out_channels = channels + blocks

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        for block in self.blocks:
            h = block(h)
        return h


class DecoderLevel(nn.Module):
    """Upsample along frequency, transformer decoder blocks over the skip, concatenate the skip, two convs.

    ``h [B, Cin, F / 2, T]``, ``skip [B, Cs, F, T] -> [B, channels, F, T]``.
    """

    def __init__(
        self, in_channels: int, skip_channels: int, channels: int, bins: int, blocks: int, cfg: ModelConfig
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            FrameTransformer(in_channels + i, bins, cfg, memory_channels=skip_channels) for i in range(blocks)
        )
        self.conv = frame_convs(in_channels + blocks + skip_channels, channels, cfg.kernel_size)

    def forward(self, h: Tensor, skip: Tensor) -> Tensor:
        h = upsample_bins(h)
        for block in self.blocks:
            h = block(h, skip)
        return self.conv(torch.cat([h, skip], dim=1))


def fold_bins(x: Tensor, patch: int) -> Tensor:
    """``[B, C, F, T] -> [B, C * p, F / p, T]``: bin ``p f + j`` of channel c is row f of channel
    ``c p + j``."""
    if patch == 1:
        return x
    batch, channels, bins, frames = x.shape
    return x.reshape(batch, channels, bins // patch, patch, frames).transpose(2, 3).flatten(1, 2)


def unfold_bins(x: Tensor, patch: int) -> Tensor:
    """The inverse of ``fold_bins``: ``[B, C * p, F / p, T] -> [B, C, F, T]``."""
    if patch == 1:
        return x
    batch, channels, rows, frames = x.shape
    return x.reshape(batch, channels // patch, patch, rows, frames).transpose(2, 3).flatten(2, 3)


class InputNorm(nn.Module):
    """The network's features of its input: ``x ** power`` (1: ``x``), then a learned per-bin, per-channel
    scale and offset (starting at 1 and 0).  ``x [B, C, F, T]`` in [0, 1] -> same shape.

    The affine lets each bin find its own level (magnitudes normalised by the track's peak are mostly
    1e-4..1e-2, and the loud bins are few), and travels with the model into every exported file.
    """

    def __init__(self, channels: int, bins: int, power: float):
        super().__init__()
        self.power = power
        self.scale = nn.Parameter(torch.ones(channels, bins, 1))
        self.offset = nn.Parameter(torch.zeros(channels, bins, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.power != 1.0:
            x = x.clamp_min(0).pow(self.power)
        return x * self.scale + self.offset


class SpecUNet(nn.Module):
    """The whole model: ``x [B, C, F, T]`` magnitudes in [0, 1] -> ``(mask [B, C, F, T], next_logit [B])``.

    The mask is multiplicative (``prediction = x * mask``), float32 in [0, 1] (``logits=True``: before
    its sigmoid); the next-segment logit comes from the deepest features.  T may be any length.
    """

    def __init__(self, cfg: ModelConfig, bins: int = 1024, in_channels: int = 2):
        super().__init__()
        divisor = cfg.bin_patch * 2 ** (cfg.depth - 1)
        if bins % divisor:
            raise ValueError(f"{cfg.depth} levels of bin_patch {cfg.bin_patch} need bins ({bins}) "
                             f"divisible by {divisor}")
        self.patch = cfg.bin_patch
        level_bins = [bins // self.patch >> level for level in range(cfg.depth)]
        self.input_norm = InputNorm(in_channels, bins, cfg.input_power)
        self.encoders = nn.ModuleList()
        width = in_channels * self.patch
        for level, (channels, blocks) in enumerate(zip(cfg.channels, cfg.encoder_blocks, strict=True)):
            stride = 1 if level == 0 else 2
            self.encoders.append(EncoderLevel(width, channels, level_bins[level], stride, blocks, cfg))
            width = self.encoders[-1].out_channels
        self.next_head = NextSegmentHead(width, level_bins[-1])
        decoders = []  # built deepest first, each taking the width of the one below
        for level in reversed(range(cfg.depth - 1)):
            skip = self.encoders[level].out_channels
            channels = cfg.channels[level]
            decoders.append(
                DecoderLevel(width, skip, channels, level_bins[level], cfg.decoder_blocks[level], cfg)
            )
            width = channels
        self.decoders = nn.ModuleList(reversed(decoders))  # index = level
        self.mask_head = MaskHead(width, in_channels * self.patch)

    def forward(self, x: Tensor, logits: bool = False) -> tuple[Tensor, Tensor]:
        skips = []
        # On CUDA the maps are channels-last: BatchNorm's kernels for NCHW reduce each channel in one
        # thread block (a few dozen channels leave most of the GPU idle), and cuDNN converts NCHW maps
        # to NHWC and back around every convolution.  So they are in CPU inference: oneDNN's forward is
        # several times faster on channels-last maps of 512-1024 bins (benchmarks/README.md).  CPU
        # training keeps NCHW maps: oneDNN's backward is no faster on channels-last ones, and
        # FrameConv's narrow path wants NCHW.
        channels_last = x.is_cuda or not torch.is_grad_enabled()
        h = fold_bins(self.input_norm(x), self.patch)
        h = h.contiguous(memory_format=torch.channels_last) if channels_last else h
        for encoder in self.encoders:
            h = encoder(h)
            skips.append(h)
        next_logit = self.next_head(h)
        for level in reversed(range(len(self.decoders))):
            h = self.decoders[level](h, skips[level])
        return unfold_bins(self.mask_head(h, logits), self.patch).contiguous(), next_logit
