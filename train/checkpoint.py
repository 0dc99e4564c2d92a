"""Checkpoints that are written atomically and that cannot execute code when loaded.

Layout under a run directory::

    checkpoints/
      step_00000100/
        model.safetensors      weights of each model, by name (safetensors: tensors only)
        disc.safetensors
        state.pt               optimizers, schedulers, step, loader position, RNG states:
                               tensors and plain containers, read with torch.load(weights_only=True)
        meta.json              step, config and anything else a person may want to read
      latest                   name of the newest complete checkpoint

A checkpoint is written to a ``.tmp-*`` folder and renamed into place, then ``latest`` is replaced
(temp file + rename); only the ``keep_last`` newest are kept.  ``export_checkpoint`` turns one into a
separation model file (``inference.export``).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from specbert.configs import merge
from specbert.inference.export import (
    ExportError,
    build_with,
    config_from,
    default_permissions,
    save_model_file,
)

_NAME = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, does not fit the models, or holds unsafe objects."""


def save_checkpoint(root: Path, step: int, models: dict[str, nn.Module], state: dict, meta: dict,
                    keep_last: int) -> Path:
    """Write ``step_<step>`` under ``root`` atomically, point ``latest`` at it, prune; return its path."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, model in models.items():
        save_model(model, str(tmp / f"{name}.safetensors"))
        default_permissions(tmp / f"{name}.safetensors")
    torch.save(state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=1))
    for file in tmp.iterdir():
        _fsync(file)
    if final.exists():  # the same step saved again: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(root / "latest", final.name + "\n")
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / "meta.json").exists()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``latest`` names, else the newest complete one, else None."""
    pointer = root / "latest"
    if pointer.exists():
        path = root / pointer.read_text().strip()
        if _NAME.match(path.name) and (path / "meta.json").exists():
            return path
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: Path, models: dict[str, nn.Module], device: torch.device) -> tuple[dict, dict]:
    """Load the weights of ``models`` in place (strict); return ``(state, meta)``."""
    for name, model in models.items():
        file = path / f"{name}.safetensors"
        if not file.exists():
            raise CheckpointError(f"{path}: no weights for {name!r} ({file.name} missing)")
        try:
            load_model(model, str(file), strict=True, device=str(device))
        except (RuntimeError, ValueError) as err:
            raise CheckpointError(f"{file}: does not fit the model: {str(err).splitlines()[0]}") from None
    return load_state(path / "state.pt"), json.loads((path / "meta.json").read_text())


def load_state(file: Path) -> dict:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{file}: refused: it holds objects other than tensors and plain containers, which could "
            f"run code when loaded ({str(err).splitlines()[0]})"
        ) from None
    except (FileNotFoundError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"{file}: unreadable ({str(err).splitlines()[0]})") from None


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (``step_*``), or the latest one under a run or ``checkpoints`` folder."""
    path = Path(path)
    if (path / "model.safetensors").exists():
        return path
    for root in (path / "checkpoints", path):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    raise ExportError(f"{path}: no checkpoint (expected step_*/model.safetensors, or a run folder)")


def export_checkpoint(checkpoint: str | Path, out: str | Path, overrides: dict | None = None) -> Path:
    """Export a training checkpoint (or a run folder's latest one) as a model file at ``out``.

    The checkpoint's ``meta.json`` config is used, with ``overrides`` merged over it.
    """
    folder = find_checkpoint(checkpoint)
    meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
    if "config" not in meta and not overrides:
        raise ExportError(f"{folder}: meta.json has no config; give one with --config")
    config = config_from(merge(meta.get("config", {}), overrides or {}), folder)
    tensors = load_file(str(folder / "model.safetensors"))
    return save_model_file(build_with(config, tensors, folder), config, out)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
