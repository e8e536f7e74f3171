"""The debug report follows await chains through async generators and wrappers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from typing import Any

from stream.debug import await_chain, dump_tasks


async def _ticks() -> AsyncIterator[int]:
    while True:
        await asyncio.sleep(3600)
        yield 1


async def _consume() -> None:
    async for _ in _ticks():
        pass


class _Actor:
    """Like Faust's agent actors: awaiting it awaits another coroutine's ``__await__``."""

    def __await__(self) -> Generator[Any, None, None]:
        return _consume().__await__()


async def _outer() -> None:
    await _Actor()


def test_chain_reaches_the_innermost_await() -> None:
    async def main() -> tuple[list[str], str]:
        task = asyncio.create_task(_outer(), name="stuck")
        await asyncio.sleep(0.01)
        chain = await_chain(task.get_coro())
        report = dump_tasks()
        task.cancel()
        return chain, report

    chain, report = asyncio.run(main())
    names = [line.rsplit(" ", 1)[-1] for line in chain]
    # Through the wrapper to _consume, through `async for` into the generator, to sleep.
    assert names.index("_outer") < names.index("_consume") < names.index("_ticks")
    assert names.index("_ticks") < names.index("sleep")
    assert "== stuck" in report
