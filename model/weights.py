"""Model files: safetensors weights whose header says what they are, checked by one reader.

Every file of model weights specbert writes (a checkpoint's ``<name>.safetensors``, an exported
separation model) is safetensors: a JSON header, then the raw tensors, so loading never runs a pickle.
Its ``__metadata__`` (string values) holds::

    format     what the file is: ``SEPARATOR`` (an exported model) or ``CHECKPOINT``
    version    FORMAT_VERSION of this layout
    sha256     ``digest``: of the tensors (names, dtypes, shapes, bytes; in name order) and of every
               other metadata entry (in key order), so a flipped byte in the weights and an edited
               stored configuration are both caught
    ...        anything the writer adds (an exported model: its config and STFT)

``read_weights`` is the one reader (``separate``, ``export``, ``finetune --init``, ``--resume``): what is
not safetensors, of another format or version, or does not match its digest is refused with a
``WeightsError`` naming the file and the cause. A checkpoint's weights written before they had this
header (version 0) are read, with nothing to check.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

SEPARATOR = "specbert-separator"  # an exported separation model (``inference.export``)
CHECKPOINT = "specbert-checkpoint"  # the weights of one model of a training checkpoint
NAMES = {SEPARATOR: "specbert separation model", CHECKPOINT: "specbert checkpoint's weights"}
FORMAT_VERSION = 2
# version 1 (exported models only) had a digest of the tensors alone: still read, and that digest checked
OLD_VERSIONS = {"1"}
# a checkpoint's weights from before they had a header (safetensors' own "pt" or nothing): read unchecked
LEGACY_CHECKPOINT = {"format": CHECKPOINT, "version": "0"}


class WeightsError(RuntimeError):
    """A model file that cannot be used; the message names the file and the cause, in one line."""


def digest(tensors: dict[str, Tensor], metadata: dict[str, str] | None) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes (in name order), then of the metadata
    entries other than ``sha256`` (as JSON, keys sorted; None: the tensors alone, version 1)."""
    sha = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        sha.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    if metadata is not None:
        sha.update(json.dumps({key: value for key, value in metadata.items() if key != "sha256"},
                              sort_keys=True).encode())
    return sha.hexdigest()


def save_weights(path: str | Path, tensors: dict[str, Tensor], fmt: str,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` with the header (``format``, ``version``, ``metadata``, ``sha256``) atomically
    (temp file, fsync, rename), with the mode a new file gets under the umask."""
    path = Path(path)
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    header = {**(metadata or {}), "format": fmt, "version": str(FORMAT_VERSION)}
    header["sha256"] = digest(tensors, header)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=header)
    default_permissions(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_header(path: str | Path, formats: tuple[str, ...]) -> dict[str, str]:
    """The metadata of a model file, after checking that it is safetensors of one of ``formats`` and of
    a version this code reads (the tensors are not read: see ``read_weights``)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"{path}: not a safetensors file ({_first_line(err)})") from None
    if CHECKPOINT in formats and "version" not in metadata and metadata.get("format", "pt") == "pt":
        return LEGACY_CHECKPOINT
    if metadata.get("format") not in formats:
        found = f"its format is {metadata['format']!r}" if "format" in metadata else "no specbert header"
        raise WeightsError(f"{path}: not a {' or a '.join(NAMES[f] for f in formats)} ({found})")
    version = metadata.get("version")
    if version != str(FORMAT_VERSION) and version not in OLD_VERSIONS:
        raise WeightsError(f"{path}: model file version {version}; this specbert reads versions "
                           f"{', '.join(sorted(OLD_VERSIONS | {str(FORMAT_VERSION)}))}")
    return metadata


def read_weights(path: str | Path, formats: tuple[str, ...]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors on the CPU, metadata)`` of a model file of one of ``formats``, its digest checked."""
    metadata = read_header(path, formats)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"{path}: not a safetensors file ({_first_line(err)})") from None
    if metadata is LEGACY_CHECKPOINT:
        return tensors, metadata
    covered = metadata if metadata["version"] not in OLD_VERSIONS else None
    if digest(tensors, covered) != metadata.get("sha256"):
        raise WeightsError(f"{path}: the weights or the stored configuration do not match the file's "
                           "sha256 (a corrupted or edited file)")
    return tensors, metadata


def default_permissions(path: Path) -> None:
    """Give a file safetensors wrote (always mode 0600) the mode a new file gets under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
