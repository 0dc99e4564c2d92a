"""The specbert model: a U-Net over frequency with transformer blocks over STFT frames.

model = build_model("tiny")            # a preset name or YAML file (configs reads it), a Config, ...
mask, next_logit = model(x)            # x [B, 2, 1024, T] in [0, 1]; prediction = x * mask
print(describe(model))                 # parameter counts
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from specbert.configs import Config, load_config
from specbert.configs.audio import AudioConfig
from specbert.configs.model import ModelConfig
from specbert.model.discriminator import Discriminator
from specbert.model.unet import SpecUNet


def resolve(config: str | Path | Config | ModelConfig) -> tuple[ModelConfig, AudioConfig]:
    """A preset name or YAML file (``configs.load_config`` reads it), a run's Config, or a model section
    alone (default audio) -> (model section, audio section)."""
    if isinstance(config, ModelConfig):
        return config, AudioConfig()
    if isinstance(config, str | Path):
        config = load_config(config)
    if not isinstance(config, Config):
        raise TypeError(f"expected a preset name, a YAML file, a Config or a ModelConfig, got {config!r}")
    return config.model, config.audio


def build_model(config: str | Path | Config | ModelConfig) -> SpecUNet:
    """The model of ``config``: ``forward(x [B, 2, 1024, T]) -> (mask [B, 2, 1024, T], next_logit [B])``."""
    model_cfg, audio = resolve(config)
    return SpecUNet(model_cfg, bins=audio.model_bins, in_channels=audio.channels)


def build_discriminator(config: str | Path | Config | ModelConfig) -> Discriminator:
    """The discriminator of ``config``: ``forward(x [B, 2, 1024, T]) -> logits [B, 1024 / 2**layers, T]``."""
    model_cfg, audio = resolve(config)
    return Discriminator(audio.channels, model_cfg.disc_channels, model_cfg.disc_layers)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(model: nn.Module) -> str:
    """Parameter counts per top-level part and level, and the total, one per line."""
    lines = []
    for name, child in model.named_children():
        parts = list(child.named_children()) if isinstance(child, nn.ModuleList) else [("", child)]
        for index, part in parts:
            label = f"{name}.{index}" if index else name
            lines.append(f"{label:<16}{count_parameters(part):>14,}")
    lines.append(f"{'total':<16}{count_parameters(model):>14,}  ({count_parameters(model) / 1e6:.1f}M)")
    return "\n".join(lines)


__all__ = [
    "ModelConfig", "SpecUNet", "Discriminator",
    "build_model", "build_discriminator", "count_parameters", "describe",
]
