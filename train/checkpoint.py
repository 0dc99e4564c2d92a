"""Checkpoints that are written atomically and that cannot execute code when loaded.

Layout under a run directory::

    checkpoints/
      step_00000100/
        model.safetensors      weights of each model, by name (``model.weights``: tensors only, checked)
        disc.safetensors
        state.pt               optimizers, schedulers, step, loader position, RNG states:
                               tensors and plain containers, read with torch.load(weights_only=True)
        meta.json              step, config and anything else a person may want to read
      latest                   name of the newest complete checkpoint

A checkpoint is written to a ``.tmp-<name>-<pid>`` folder and renamed into place, then ``latest`` is
replaced (temp file + rename); only the ``keep_last`` newest are kept. The temp folders of a killed
run are removed when the next run starts (``remove_unfinished``). ``export_checkpoint`` turns one into
a separation model file (``inference.export``).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from specbert.configs import merge
from specbert.inference.export import ExportError, build_with, config_from, save_model_file
from specbert.model.weights import CHECKPOINT, WeightsError, read_weights, save_weights

_NAME = re.compile(r"^step_(\d+)$")
_TEMP = re.compile(r"^\.(?:tmp-step_\d+|latest\.tmp)-(\d+)$")  # save_checkpoint's temp names, with the pid


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
        save_weights(tmp / f"{name}.safetensors", model.state_dict(), CHECKPOINT)
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


def remove_unfinished(root: Path) -> list[Path]:
    """Delete the temp folders and files of checkpoints whose writer is gone (a killed run); return them."""
    if not root.is_dir():
        return []
    removed = []
    for path in root.iterdir():
        match = _TEMP.match(path.name)
        if match and not _alive(int(match.group(1))):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return sorted(removed)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a temp name of this process is a leftover of a killed earlier run with this pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def load_checkpoint(path: Path, models: dict[str, nn.Module]) -> tuple[dict, dict]:
    """Load the weights of ``models`` in place (strict, onto their devices); return ``(state, meta)``."""
    for name, model in models.items():
        file = path / f"{name}.safetensors"
        if not file.exists():
            raise CheckpointError(f"{path}: no weights for {name!r} ({file.name} missing)")
        try:
            tensors, _ = read_weights(file, (CHECKPOINT,))
        except WeightsError as err:
            raise CheckpointError(str(err)) from None
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{file}: does not fit the model: {_first_line(err)}") from None
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path / 'meta.json'}: unreadable ({err})") from None
    return load_state(path / "state.pt"), meta


def load_state(file: Path) -> dict:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{file}: refused: it holds objects other than tensors and plain containers, "
                              f"which could run code when loaded ({_unpickler_reason(err)})") from None
    except Exception as err:  # noqa: BLE001 - a damaged file raises anything (a 0-byte file: IndexError)
        raise CheckpointError(f"{file}: unreadable ({type(err).__name__}: {_first_line(err)})") from None


def _unpickler_reason(err: pickle.UnpicklingError) -> str:
    """What the weights-only unpickler refused (e.g. "Unsupported global: GLOBAL builtins.exec"), without
    PyTorch's advice to load the file with weights_only=False: the unsafe option this refusal is for."""
    _, marker, rest = str(err).partition("WeightsUnpickler error:")
    lines = [line.strip() for line in rest.splitlines() if line.strip()]
    return lines[0].split(". ")[0] if marker and lines else "not a weights-only checkpoint"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no details"


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (``step_*``), or the latest one under a run or ``checkpoints`` folder.

    A run folder's checkpoints come first: the model exported into it (``compare``'s arms) is not one.
    """
    path = Path(path)
    found = latest_checkpoint(path / "checkpoints")
    if found is not None:
        return found
    if (path / "model.safetensors").exists():
        return path
    found = latest_checkpoint(path)
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
    try:
        tensors, _ = read_weights(folder / "model.safetensors", (CHECKPOINT,))
    except WeightsError as err:
        raise ExportError(str(err)) from None
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
