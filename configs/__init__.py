"""Typed configuration: YAML presets in this folder, loaded into dataclasses.

Every section's defaults live in its dataclass (one place for each fact); a YAML file only
overrides.  A YAML file may start from another preset with ``extends: NAME``.  Command-line
``--set a.b=value`` overrides are applied last and parsed as YAML scalars.

    cfg = load_config("tiny", ["loader.mask_rate=0.3"])
    cfg.loader.mask_rate   # 0.3
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from specbert.configs.audio import AudioConfig
from specbert.configs.finetune import FinetuneConfig
from specbert.configs.ingest import IngestConfig
from specbert.configs.loader import LoaderConfig
from specbert.configs.model import ModelConfig
from specbert.configs.train import TrainConfig

PRESET_DIR = Path(__file__).resolve().parent
FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # numbers YAML 1.1 leaves as text


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it."""


@dataclass
class Config:
    """The whole configuration of a run, one section per stage."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (tuples as lists): what checkpoints and manifests record."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def preset_names() -> list[str]:
    """Names of the YAML presets shipped in ``configs/``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_preset(source: str | Path) -> Path:
    """A preset name (``tiny``) or a YAML path -> the YAML file's path."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = PRESET_DIR / f"{source}.yaml"
    if candidate.exists():
        return candidate
    if path.suffix in (".yaml", ".yml") and (PRESET_DIR / path.name).exists():
        return PRESET_DIR / path.name  # "configs/pretrain.yaml" from any working directory
    presets = ", ".join(preset_names())
    raise ConfigError(f"config {str(source)!r}: no such file or preset (presets: {presets})")


def read_yaml(source: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML preset as a nested dict, following ``extends:`` chains."""
    path = resolve_preset(source)
    if path in _seen:
        raise ConfigError(f"config {path}: 'extends' loop")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return merge(read_yaml(parent, _seen + (path,)), data)


def merge(base: dict, override: dict) -> dict:
    """Recursively merge two nested dicts; ``override`` wins."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """``"a.b=value"`` -> ``{"a": {"b": value}}`` with the value parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. loader.mask_rate=0.3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: Any = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def load_config(source: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the YAML ``source`` (preset name or path), then ``--set`` overrides."""
    data = read_yaml(source) if source is not None else {}
    for text in overrides:
        data = merge(data, parse_override(text))
    return from_dict(Config, data)


def from_dict(cls: type, data: Any, where: str = ""):
    """Build dataclass ``cls`` from a nested dict, checking keys and types."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r} (valid: {', '.join(sorted(names))})")
        kwargs[key] = coerce(hints[key], value, dotted)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or 'config'}: {err}") from None


def coerce(hint: Any, value: Any, where: str):
    """Check ``value`` against type ``hint`` (converting where lossless); raise ConfigError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
            pairs = enumerate(zip(args, value, strict=True))
            return tuple(coerce(a, v, f"{where}[{i}]") for i, (a, v) in pairs)
        item = args[0] if args else Any
        return [coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads exponents without a dot ("3e-3") as strings
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {hint!r}")  # a schema bug, not user error


__all__ = ["Config", "ConfigError", "load_config", "from_dict", "preset_names", "resolve_preset"]
