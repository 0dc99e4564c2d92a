"""Optimisation settings shared by pretraining and fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    steps: int = 100_000
    batch_size: int = 8  # per rank and step, before accumulation
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 1000
    schedule: Literal["cosine", "poly", "constant"] = "poly"
    grad_clip: float = 0.5
    seed: int = 0
