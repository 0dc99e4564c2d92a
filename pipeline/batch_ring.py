"""Batches written into reused shared memory: ``BatchRing`` (a small ring of stacked tensors per
DataLoader worker) and ``Deferred`` (a sample's big tensors, computed straight into its row of the batch).

A task can have its crops written straight into the ring at collate time instead of building them and
then copying them: a crop is written once, into the (shared) batch memory that crosses to the main
process without another copy, on pages already faulted in.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import get_worker_info

from specbert.pipeline.worker import worker_info

RING_SLOTS = 4  # batch buffers per worker: prefetch_factor (2) in flight, one being filled, one spare
IN_FLIGHT = -1  # a ring slot's batch is sent and not yet received


@dataclass(frozen=True)
class Deferred:
    """Big tensors of a sample that are computed straight into its row of the batch at collate time,
    so a crop is written once, into (shared) batch memory, instead of being built and then copied.

    ``layout`` maps each tensor's name to its shape, dtype and memory order (dimensions from the
    outermost to the innermost, as ``memory_order`` gives them); ``write(rows)`` fills the rows
    ``{name: tensor of that layout}``. A sample holds it under any key (``"deferred"`` by custom); the
    batch gets the layout's names instead.
    """

    layout: dict[str, tuple[tuple[int, ...], torch.dtype, tuple[int, ...]]]
    write: Callable[[dict[str, torch.Tensor]], None]


def stack(values: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """``torch.stack`` into ``out`` (as ``stack_buffer`` makes it for ``values[0]``'s memory order)
    that keeps the samples' memory order (a frames-major ``[C, bins, T]`` view stays frames-major: a
    plain copy instead of a transpose)."""
    order = memory_order(values[0])
    torch.stack([value.permute(order) for value in values], out=out.permute(0, *(1 + d for d in order)))
    return out


def memory_order(x: torch.Tensor) -> tuple[int, ...]:
    """``x``'s dimensions from the outermost in memory to the innermost."""
    return tuple(sorted(range(x.dim()), key=lambda d: -x.stride(d)))


def stack_buffer(shape: tuple[int, ...], dtype: torch.dtype, order: tuple[int, ...], n: int,
                 shared: bool) -> torch.Tensor:
    """An uninitialised ``[n, *shape]`` tensor whose rows have the memory ``order``, shared if ``shared``."""
    out = torch.empty((n, *(shape[d] for d in order)), dtype=dtype)
    out = out.share_memory_() if shared else out
    return out.permute(0, *(1 + order.index(d) for d in range(len(shape))))


class BatchRing:
    """Reused shared-memory batch tensors of DataLoader workers: ``RING_SLOTS`` slots per worker,
    each slot a dict of stacked tensors (without workers, every batch gets new tensors).

    A slot is reused only after the consumer has dropped every tensor of the batch it held.
    ``board`` (int32 ``[workers, RING_SLOTS]``, shared memory, made before the workers start) says
    per slot: 0 free; ``IN_FLIGHT`` sent by the worker; n > 0 received by the consumer, which
    counts it down as the n tensors' storages are freed (``release_on_drop``; at once for batches
    ``pin_memory`` has copied). Batches the DataLoader drops unseen when a pass ends early (its
    prefetched batches) stay ``IN_FLIGHT``: a worker frees those when its next pass starts
    (``new_pass``; the DataLoader has drained them by then). When no slot is free the batch gets
    new tensors, so a consumer may keep batches as long as it likes.
    """

    def __init__(self, workers: int):
        self.board = torch.zeros(max(workers, 1), RING_SLOTS, dtype=torch.int32).share_memory_()
        self.slots: list[dict[str, torch.Tensor]] = [{} for _ in range(RING_SLOTS)]
        self.next = 0

    def collate(self, samples: list[dict]) -> dict:
        """Samples -> a batch: tensors stacked ``[B, ...]`` and ``Deferred`` tensors written into a
        free slot (in a worker: shared memory, so they cross to the main process without another
        copy), bools and numbers as tensors, the rest (strings) as lists; ``ring`` says which slot
        holds the batch (or None)."""
        worker, _ = worker_info()
        shared = get_worker_info() is not None
        slot = self.free_slot(worker) if shared else None  # in-process, the ring's own reference would pin it
        batch, stacked = {}, []

        def buffer(name: str, shape: tuple, dtype: torch.dtype, order: tuple) -> torch.Tensor:
            stacked.append(name)
            if slot is None:
                return stack_buffer(shape, dtype, order, len(samples), shared)
            return self.buffer(slot, name, (len(samples), *shape), dtype, order)

        for name, first in samples[0].items():
            values = [sample[name] for sample in samples]
            if isinstance(first, Deferred):
                rows = {key: buffer(key, *layout) for key, layout in first.layout.items()}
                for i, value in enumerate(values):
                    value.write({key: out[i] for key, out in rows.items()})
                batch.update(rows)
            elif isinstance(first, torch.Tensor):
                batch[name] = stack(values, buffer(name, first.shape, first.dtype, memory_order(first)))
            elif isinstance(first, (bool, int, float)):
                batch[name] = torch.tensor(values)
            else:
                batch[name] = values
        if slot is not None:
            self.board.numpy()[worker, slot] = IN_FLIGHT
        batch["ring"] = None if slot is None else (worker, slot, stacked)
        return batch

    def new_pass(self, worker: int) -> None:
        """In a worker starting a pass: free the slots of batches the consumer never received."""
        board = self.board.numpy()[worker]
        board[board == IN_FLIGHT] = 0

    def free_slot(self, worker: int) -> int | None:
        board = self.board.numpy()[worker]
        for i in range(RING_SLOTS):
            slot = (self.next + i) % RING_SLOTS
            if board[slot] == 0:
                self.next = slot + 1
                return slot
        return None

    def buffer(self, slot: int, name: str, shape: tuple, dtype: torch.dtype, order: tuple) -> torch.Tensor:
        """The slot's tensor for ``name``, (re)made when the batch's shape, type or order changed."""
        out = self.slots[slot].get(name)
        if out is None or out.shape != shape or out.dtype != dtype or memory_order(out[0]) != order:
            out = self.slots[slot][name] = stack_buffer(shape[1:], dtype, order, shape[0], True)
        return out

    def release_on_drop(self, batch: dict, ring: tuple | None) -> None:
        """In the consumer: free the batch's slot once its stacked tensors are all gone."""
        if ring is None:
            return
        worker, slot, names = ring
        board = self.board.numpy()
        if all(batch[name].is_pinned() for name in names):  # pin_memory copied them: the slot is free
            board[worker, slot] = 0
            return
        board[worker, slot] = len(names)
        for name in names:
            weakref.finalize(batch[name].untyped_storage(), _count_down, board, worker, slot)


def _count_down(board, worker: int, slot: int) -> None:
    board[worker, slot] -= 1
