"""Analytic FLOP count of a forward pass (2 FLOPs per multiply-add), from the shapes met in it.

Counted: linear and convolution layers and the attention matmuls (QK^T, AV and the relative logits).
Norms, activations and resampling are not.  A backward pass costs about twice the forward.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from specbert.model.attention import Attention, RelativePosition, TimeConv


def forward_flops(model: nn.Module, *inputs) -> int:
    """FLOPs of one forward pass of ``model(*inputs)``; works on the meta device (no compute)."""
    total = 0

    def count(module, args, output):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2 * module.in_features * output.numel()
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            total += 2 * module.in_channels // module.groups * math.prod(module.kernel_size) * output.numel()
        elif isinstance(module, TimeConv):  # computes with its nn.Conv1d's parameters, without calling it
            conv = module.conv
            total += 2 * conv.in_channels // conv.groups * conv.kernel_size[0] * output.numel()
        elif isinstance(module, Attention):
            batch, length, dim = output.shape
            total += 4 * batch * length * length * dim  # QK^T and AV
            if isinstance(module.position, RelativePosition):
                total += 2 * batch * length * (2 * length - 1) * dim  # q . E[r]

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return total
