"""Micro-batches: full ones at once, partial ones after the wait, order kept, bounded."""

from __future__ import annotations

import asyncio

import pytest

from stream.batching import MicroBatcher


def test_a_full_batch_comes_at_once_and_the_rest_waits_for_its_time() -> None:
    async def scenario() -> tuple[list[int], list[int], float]:
        loop = asyncio.get_running_loop()
        batcher: MicroBatcher[int] = MicroBatcher(max_size=3, wait_s=0.05)
        for i in range(4):
            await batcher.put(i)
        began = loop.time()
        first = await asyncio.wait_for(batcher.next_batch(), 0.01)  # no waiting when full
        second = await batcher.next_batch()  # left over: it already waited
        await batcher.put(9)
        began = loop.time()
        third = await batcher.next_batch()  # a lone new item waits out wait_s
        return first, second + third, loop.time() - began

    first, rest, waited = asyncio.run(scenario())
    assert first == [0, 1, 2]
    assert rest == [3, 9]
    assert 0.04 <= waited < 0.5


def test_items_that_arrive_while_waiting_join_the_batch_in_order() -> None:
    async def scenario() -> list[int]:
        batcher: MicroBatcher[int] = MicroBatcher(max_size=10, wait_s=0.05)

        async def produce() -> None:
            for i in range(5):
                await batcher.put(i)
                await asyncio.sleep(0.001)

        producing = asyncio.ensure_future(produce())
        batch = await batcher.next_batch()
        await producing
        return batch

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


def test_put_waits_at_the_limit_until_a_batch_is_taken() -> None:
    async def scenario() -> tuple[bool, list[int]]:
        batcher: MicroBatcher[int] = MicroBatcher(max_size=2, wait_s=0.0, limit=3)
        for i in range(3):
            await batcher.put(i)
        blocked = asyncio.ensure_future(batcher.put(3))
        await asyncio.sleep(0.01)
        was_blocked = not blocked.done()
        taken = await batcher.next_batch()
        await asyncio.wait_for(blocked, 0.1)
        return was_blocked, taken + await batcher.next_batch()

    was_blocked, taken = asyncio.run(scenario())
    assert was_blocked
    assert taken == [0, 1, 2, 3]


def test_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_size"):
        MicroBatcher(0, 0.1)
