"""The exported separation model: one safetensors file that carries everything needed to use it.

A model file of ``model.weights`` (format ``SEPARATOR``): the model's ``state_dict``, and in its header
(besides format, version and the sha256 that covers the tensors and every entry below)::

    specbert   the package version that wrote it
    config     JSON of ``Config.to_dict()``: the model is built from its ``model`` section, the STFT
               from ``audio``, and the default chunk length from ``loader.crop_frames``
    audio      JSON of the STFT and rate (sample_rate, channels, n_fft, hop, window), for other readers

Loading (``model.weights.read_weights``) parses the header and maps the tensors (no pickle is ever
executed), then checks the format, version and digest before building the model.  ``export_onnx`` and
``export_torchscript`` write the mask network alone (``magnitude [B, 2, 1024, T] -> mask [B, 2, 1024,
T]``) for other runtimes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from specbert.configs import Config, ConfigError, from_dict, merge
from specbert.configs.audio import AudioConfig
from specbert.model import build_model
from specbert.model.weights import SEPARATOR, WeightsError, read_weights, save_weights
from specbert.model.weights import read_header as read_weights_header
from specbert.pipeline.audio import AUDIO_EXTS
from specbert.provenance import package_version


class ExportError(RuntimeError):
    """A model file or checkpoint that cannot be exported or loaded; the message says why."""


def save_model_file(model: nn.Module, config: Config, path: str | Path) -> Path:
    """Write ``model``'s weights and ``config`` as one self-contained separation model file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"specbert": package_version(), "config": json.dumps(config.to_dict()),
                "audio": json.dumps(dataclasses.asdict(config.audio))}
    return save_weights(path, model.state_dict(), SEPARATOR, metadata)


def read_header(path: str | Path) -> dict:
    """The metadata of a model file, with ``config`` and ``audio`` parsed; checks format and version
    (the digest needs the tensors: ``load_model``)."""
    refuse_audio(path)
    try:
        metadata = read_weights_header(path, (SEPARATOR,))
        return {**metadata, "config": json.loads(metadata["config"]), "audio": json.loads(metadata["audio"])}
    except WeightsError as err:
        raise ExportError(str(err)) from None
    except (KeyError, ValueError) as err:
        raise ExportError(f"{path}: bad header ({type(err).__name__}: {err})") from None


AUDIO_MAGIC = (b"RIFF", b"RF64", b"fLaC", b"OggS", b"ID3", b"FORM", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")


def refuse_audio(path: str | Path) -> None:
    """ExportError when ``path``, given as a model, is an audio file (the arguments swapped)."""
    if is_audio(path):
        raise ExportError(f"{path} is an audio file, not a model: give the model file (.safetensors, from "
                          "`specbert export`) first, then the audio")


def is_audio(path: str | Path) -> bool:
    """``path`` names or starts like an audio file (WAV, FLAC, Ogg, MP3, AIFF, MP4/M4A...)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return (Path(path).suffix.lower() in AUDIO_EXTS or head.startswith(AUDIO_MAGIC)
            or head[4:8] == b"ftyp")


def load_model(path: str | Path, device: str | torch.device = "cpu",
               overrides: dict | None = None) -> tuple[nn.Module, Config]:
    """Load a model file: ``(model in eval mode on device, its Config)``.

    ``overrides`` (a nested dict, e.g. ``{"model": {"sdpa": False}}``) is merged over the stored config.
    """
    refuse_audio(path)
    try:
        tensors, metadata = read_weights(path, (SEPARATOR,))
    except WeightsError as err:
        raise ExportError(str(err)) from None
    config = config_from(merge(json.loads(metadata["config"]), overrides or {}), path)
    return build_with(config, tensors, path).to(device).eval(), config


class MaskNetwork(nn.Module):
    """The model without its next-segment output: ``magnitude [B, 2, 1024, T] -> mask [B, 2, 1024, T]``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, magnitude: Tensor) -> Tensor:
        return self.model(magnitude)[0]


def export_onnx(model: nn.Module, audio: AudioConfig, path: str | Path, frames: int = 64) -> Path:
    """Write the mask network as ONNX with dynamic batch and frames (input "magnitude", output "mask").

    Uses the TorchScript-based exporter: the dynamo exporter takes minutes on this model.  The written
    graph is checked with the ``onnx`` package (``pip install 'specbert[onnx]'``).
    """
    import onnx

    axes = {0: "batch", 3: "frames"}
    torch.onnx.export(MaskNetwork(model).eval(), (_example(audio, frames),), str(path),
                      input_names=["magnitude"], output_names=["mask"],
                      dynamic_axes={"magnitude": axes, "mask": axes}, dynamo=False)
    onnx.checker.check_model(str(path))
    return Path(path)


def export_torchscript(model: nn.Module, audio: AudioConfig, path: str | Path, frames: int = 64) -> Path:
    """Write the mask network as a traced TorchScript module (any batch and frames)."""
    with torch.no_grad():
        traced = torch.jit.trace(MaskNetwork(model).eval(), _example(audio, frames), check_trace=False)
    traced.save(str(path))
    return Path(path)


def _example(audio: AudioConfig, frames: int) -> Tensor:
    return torch.zeros(1, audio.channels, audio.model_bins, frames)


def config_from(data: dict, where: Path | str) -> Config:
    """A ``Config`` from a stored dict; ExportError naming ``where`` if it is not one."""
    try:
        return from_dict(Config, data)
    except ConfigError as err:
        raise ExportError(f"{where}: bad config: {err}") from None


def build_with(config: Config, tensors: dict[str, Tensor], where: Path | str) -> nn.Module:
    """The model of ``config`` with ``tensors`` loaded (strict); ExportError naming ``where`` if they do
    not fit."""
    model = build_model(config)
    mismatch = first_mismatch(model.state_dict(), tensors)
    if mismatch:
        raise ExportError(f"{where}: the weights do not fit the config's model: first mismatch {mismatch} "
                          "(a --config or --set that changes the model?)")
    model.load_state_dict(tensors, strict=True)
    return model


def first_mismatch(expected: dict[str, Tensor], tensors: dict[str, Tensor]) -> str | None:
    """The first tensor, in the model's order, that ``tensors`` lack or hold with another shape, else the
    first one the model does not have; None when they fit."""
    for name, tensor in expected.items():
        if name not in tensors:
            return f"{name}: in the model, not in the weights"
        if tensors[name].shape != tensor.shape:
            got, want = list(tensors[name].shape), list(tensor.shape)
            return f"{name}: shape {got} in the weights, {want} in the model"
    extra = [name for name in tensors if name not in expected]
    return f"{extra[0]}: in the weights, not in the model" if extra else None
