"""A DataLoader worker process: who it is, and its memory settings.

A crop is 4 MB of float16 and its masked input another 4; fresh memory costs a page fault per 4 KB page on
first touch, more than all the processing of a crop, so a worker keeps what it frees
(``keep_freed_memory``) and writes batches into reused tensors (``pipeline.batch_ring``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from torch.utils.data import get_worker_info


def worker_info() -> tuple[int, int]:
    """(this DataLoader worker's id, number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for reuse (no trimming, no mmap below 32 MB), so per-sample
    arrays of a few MB land on pages already faulted in. For a loader worker process only: its
    memory stays at its peak. A no-op off glibc."""
    if not sys.platform.startswith("linux") or not ctypes.util.find_library("c"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3
    if hasattr(libc, "mallopt"):
        libc.mallopt(m_trim_threshold, 1 << 30)
        libc.mallopt(m_mmap_threshold, 32 << 20)


def setup_worker() -> None:
    """A DataLoader worker is one core: one thread in blosc (torch's threads are set by the
    DataLoader), and freed memory kept."""
    from numcodecs import blosc

    blosc.use_threads = False
    keep_freed_memory()
