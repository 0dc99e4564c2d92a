"""Numerically delicate parts (sigmoid, logits, pooling) run in float32 even under bf16 autocast."""

from __future__ import annotations

import contextlib

import torch


def float32_region(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``x``'s device; a no-op on the meta device (used to count FLOPs)."""
    if x.device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, enabled=False)
