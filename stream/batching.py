"""Micro-batches that keep filling while the previous one is processed.

Faust's ``take``/``take_events``/``noack_take`` stop adding to their buffer while
the caller works on the batch they yielded, so each batch holds only what arrives
in the ``within`` window after the previous one was done. In ``rum bench
stream`` (a backlog of 60,000 events, batches of up to 2,048) that made batches of
50 to 180 events, and the fixed costs of a batch (one scoring call, one produce
request per partition) dominated. Here the agent's reader keeps appending events
while a batch is processed (up to ``limit``, then it waits: back-pressure reaches
Faust's queue and the fetcher), and a batch is taken when ``max_size`` events are
there or the oldest of them has waited ``wait_s``.

Pure asyncio; nothing here knows Faust or Kafka.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    """``put`` items in arrival order; ``next_batch`` returns 1..max_size of them in order."""

    def __init__(self, max_size: int, wait_s: float, limit: int | None = None) -> None:
        if max_size < 1:
            msg = f"max_size must be at least 1, got {max_size}"
            raise ValueError(msg)
        self.max_size = max_size
        self.wait_s = max(0.0, wait_s)
        self.limit = max(limit or 2 * max_size, max_size)
        self._items: deque[T] = deque()
        self._first_at = 0.0  # when the oldest buffered item arrived (loop time)
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: T) -> None:
        """Add one item; waits while ``limit`` items are buffered."""
        while len(self._items) >= self.limit:
            self._space.clear()
            await self._space.wait()
        if not self._items:
            self._first_at = asyncio.get_running_loop().time()
        self._items.append(item)
        self._arrived.set()
        if len(self._items) >= self.max_size:
            self._full.set()

    async def next_batch(self) -> list[T]:
        """The next batch: as soon as ``max_size`` items are buffered, or once the oldest
        buffered item has waited ``wait_s`` (it waits for the first item)."""
        loop = asyncio.get_running_loop()
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        while len(self._items) < self.max_size:
            remaining = self._first_at + self.wait_s - loop.time()
            if remaining <= 0:
                break
            self._full.clear()
            try:
                await asyncio.wait_for(self._full.wait(), remaining)
            except TimeoutError:
                break
        count = min(self.max_size, len(self._items))
        batch = [self._items.popleft() for _ in range(count)]
        # What is left arrived while this batch was waiting: it has waited long enough.
        self._first_at = loop.time() - self.wait_s
        if len(self._items) < self.max_size:
            self._full.clear()
        self._space.set()
        return batch
