"""Model settings (placeholder fields; the model module defines the real schema)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    name: str = "base"
