"""Where a run came from: ``meta.json`` in every run directory records the specbert version, the git
commit of the code (when it runs from a git checkout), Python, torch, CUDA and the hardware, so that a
result can be traced to the code and machine that made it. A resumed run appends its own record."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

META_FILE = "meta.json"


def package_version() -> str:
    """The installed specbert version ("unknown" when it runs from a folder that was not installed)."""
    try:
        return version("specbert")
    except PackageNotFoundError:
        return "unknown"


CODE = Path(__file__).resolve().parent  # the package: the repository root in a checkout


def git_commit(folder: Path = CODE) -> dict | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``folder`` (default: this code), or None when
    there is no checkout or no git."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def hardware() -> dict:
    """CPU model and cores, memory, and the CUDA devices torch sees."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gb = None
    gpus = [{"name": torch.cuda.get_device_name(i),
             "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
            for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "memory_gb": memory_gb, "gpus": gpus}


def run_metadata(world_size: int = 1) -> dict:
    """This process's provenance: versions, code commit, hardware, and the number of ranks."""
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "specbert": package_version(),
        "git": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "hardware": hardware(),
        "world_size": world_size,
    }


def write_meta(run_dir: Path, world_size: int = 1) -> Path:
    """Write ``run_dir/meta.json`` (temp name, then rename); a run that exists keeps its first record
    and lists this start under ``"resumed"``."""
    path = Path(run_dir) / META_FILE
    record = run_metadata(world_size)
    if path.exists():
        try:
            first = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            first = None
        if isinstance(first, dict):
            record = {**first, "resumed": [*first.get("resumed", []), record]}
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path
