"""An exponential moving average of a model's weights (``train.ema_decay``).

A short, high-learning-rate run ends on weights that still jitter from batch to batch; their running
average is a smoother point of the same trajectory, which usually validates and separates better at
no cost in training speed.  With ``train.ema_decay`` > 0 the trainer validates, previews, checkpoints
(``model.safetensors``, hence ``export`` and ``finetune --init``) and resumes the average; the trained
weights travel in the checkpoint's state so that a resumed run trains on exactly where it stopped.

    average = WeightAverage(model, decay=0.99)
    ...; optimizer.step(); average.update(model)
    average.module          # a frozen copy of ``model`` in eval mode holding the average
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """``module`` follows ``model``'s floating-point weights and buffers (BatchNorm statistics too) as
    ``avg <- d * avg + (1 - d) * new`` after each update; integer buffers (BatchNorm's batch counts) are
    copied.  ``d`` warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that the first
    steps' random weights do not linger in the average of a run of a few hundred steps."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = model.state_dict()
        for name, avg in self.module.state_dict().items():
            if avg.is_floating_point():
                avg.lerp_(current[name], 1.0 - d)
            else:
                avg.copy_(current[name])
