"""AdamW with decoupled weight decay on matrices only, and a warm-up + decay learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from specbert.configs.train import TrainConfig


def build_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float):
    """AdamW (the fused kernel on CUDA); biases, norm weights and other 1-D parameters get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def lr_factor(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps``, then cosine or polynomial decay to ``min_lr_ratio`` at
    ``total_steps`` (or constant).
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    if cfg.schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = (1.0 - progress) ** cfg.poly_power
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def build_scheduler(optimizer, cfg: TrainConfig, total_steps: Callable[[], int]):
    """LambdaLR over ``lr_factor``, the run's length read from ``total_steps()`` at every step (a run on a
    time budget estimates it as it goes); its state dict holds plain numbers only."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps()))
