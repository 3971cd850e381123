"""Autograd graphs of recent training forwards, kept until their backward comes, within a hard memory limit.

Without them a server recomputes the forward pass inside every backward (it stores nothing between the two
requests), which costs a third of a training step's compute. A client that will send a backward marks its
forward with an id; the server keeps that forward's graph under (client, id), and the backward with the same
id uses it. When the graph is gone (evicted for memory, expired, another server, a replayed request), the
backward recomputes: the kept graph only saves time, never decides a result.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

# A forward whose backward has not come within this many seconds is dropped: its client moved on or failed.
KEEP_SECONDS = 60.0


@dataclass
class KeptForward:
    """The leaves and output of one forward pass, with what the backward must match to use them."""

    inputs: torch.Tensor
    prompts: torch.Tensor | None
    output: torch.Tensor
    start: int
    end: int
    adapter: str | None
    nbytes: int
    expires: float

    def matches(self, hidden: torch.Tensor, prompts: torch.Tensor | None, start: int, end: int, adapter) -> bool:
        """True if a backward is for exactly this forward (same blocks, adapter, inputs and prompts)."""
        if (self.start, self.end, self.adapter) != (start, end, adapter) or (self.prompts is None) != (prompts is None):
            return False
        if self.inputs.shape != hidden.shape or not torch.equal(self.inputs.detach(), hidden):
            return False
        return prompts is None or (self.prompts.shape == prompts.shape and torch.equal(self.prompts.detach(), prompts))


class ActivationStore:
    """Kept forwards by (client, id), oldest evicted first beyond ``max_bytes``. Used from the compute thread only."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.used = 0
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], KeptForward] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: tuple[str, str], entry: KeptForward) -> bool:
        """Keep ``entry`` if it fits after dropping expired and older ones; returns whether it was kept."""
        self._drop(key)
        self._expire()
        if entry.nbytes > self.max_bytes:
            return False
        while self._entries and self.used + entry.nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._entries[key] = entry
        self.used += entry.nbytes
        return True

    def pop(self, key: tuple[str, str]) -> KeptForward | None:
        self._expire()
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.used -= entry.nbytes
        return entry

    def deadline(self) -> float:
        return self.clock() + KEEP_SECONDS

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.used -= entry.nbytes

    def _expire(self) -> None:
        now = self.clock()
        for key in [key for key, entry in self._entries.items() if entry.expires <= now]:
            self._drop(key)


class SavedBytes:
    """Counts the bytes autograd saves for backward during a forward, leaving out the frozen weights.

    Used as ``torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack)``; storages are counted once.
    """

    def __init__(self, excluded: Iterable[torch.Tensor]):
        self._excluded = {tensor.untyped_storage().data_ptr() for tensor in excluded}
        self._seen: set[int] = set()
        self.total = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in self._excluded and pointer not in self._seen:
            self._seen.add(pointer)
            self.total += storage.nbytes()
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor
