"""Output drives: spread shards over the ``--out`` folders in proportion to their free space.

The driver hands each shard a preference order (``Rotation.order``: smooth weighted round robin, so
two equal drives alternate exactly); the worker writes to the first folder that still has room
(``has_room``) and moves on, rewriting the shard from its tracks, when a write fails with a full disk.
Folders found full are reported back and dropped from the rotation.
"""

from __future__ import annotations

import errno
import shutil

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def free_bytes(folder: str) -> int:
    return shutil.disk_usage(folder).free


def has_room(folder: str, nbytes: int, reserve: int) -> bool:
    """Whether ``folder`` can take ``nbytes`` (with 20 % slack) and keep ``reserve`` bytes free."""
    return free_bytes(folder) - reserve >= 1.2 * nbytes


def is_disk_full(err: OSError) -> bool:
    return err.errno in FULL_ERRNOS


class Rotation:
    """Smooth weighted round robin over folders, weighted by the free space they had at the start."""

    def __init__(self, folders: list[str], reserve: int):
        free = {f: free_bytes(f) for f in folders}
        self.weights = {f: max(free[f] - reserve, 0) for f in folders}
        self.credit = dict.fromkeys(folders, 0)
        # folders never used, each with why (for the run's summary)
        self.unused = [f"{f} ({free[f] / 1e9:.2f} GB free, under the reserve)" for f in folders
                       if not self.weights[f]]
        if not any(self.weights.values()):
            raise OSError(errno.ENOSPC, f"no free space beyond the reserve on any of {', '.join(folders)}")

    def order(self) -> list[str]:
        """Folders to try for the next shard: this turn's pick, then the others by free space."""
        live = [f for f, w in self.weights.items() if w > 0]
        if not live:
            return []
        total = sum(self.weights[f] for f in live)
        for f in live:
            self.credit[f] += self.weights[f]
        pick = max(live, key=lambda f: self.credit[f])
        self.credit[pick] -= total
        return [pick] + sorted((f for f in live if f != pick), key=lambda f: -self.weights[f])

    def drop(self, folder: str) -> None:
        self.weights[folder] = 0
