"""The cheaper wait_first of Faust's fetch loop: same outcomes as mode's, fewer tasks."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest

from stream.fastpath import fast_wait_first


class Flow:
    """What the fetch loop passes: the consumer's suspend_flow event."""

    def __init__(self) -> None:
        self.suspend_flow = asyncio.Event()


def make_original(calls: list[str]) -> Any:
    """mode's wait_first in miniature: every awaitable a task, the first done wins."""

    async def original(*coros: Any, timeout: Any = None) -> Any:
        calls.append("original")
        tasks = [asyncio.ensure_future(c) for c in coros]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return [t.result() for t in done]

    return original


def run(coro: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine was never awaited" fails the test
        return asyncio.run(coro)


def test_a_callback_that_does_not_block_runs_without_the_original() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        flow, calls, seen = Flow(), list[str](), list[str]()

        async def callback() -> None:
            seen.append("delivered")

        wait_first = fast_wait_first(make_original(calls), flow.suspend_flow)
        await wait_first(callback(), flow.suspend_flow.wait())
        return calls, seen

    calls, seen = run(scenario())
    assert seen == ["delivered"] and calls == []


def test_a_callback_that_blocks_finishes_under_the_original() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        flow, calls, seen = Flow(), list[str](), list[str]()
        gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def callback() -> str:
            seen.append("started")
            seen.append(await gate)  # e.g. flow control closed: it suspends here
            await asyncio.sleep(0)
            return "done"

        wait_first = fast_wait_first(make_original(calls), flow.suspend_flow)
        asyncio.get_running_loop().call_later(0.01, gate.set_result, "resumed")
        result = await wait_first(callback(), flow.suspend_flow.wait())
        assert result == ["done"]
        return calls, seen

    calls, seen = run(scenario())
    assert calls == ["original"] and seen == ["started", "resumed"]


def test_a_blocked_callback_is_still_interrupted_by_suspend_flow() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        flow, calls, seen = Flow(), list[str](), list[str]()
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def callback() -> None:
            try:
                await never
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        wait_first = fast_wait_first(make_original(calls), flow.suspend_flow)
        asyncio.get_running_loop().call_later(0.01, flow.suspend_flow.set)
        await wait_first(callback(), flow.suspend_flow.wait())
        await asyncio.sleep(0)
        return calls, seen

    calls, seen = run(scenario())
    assert calls == ["original"] and seen == ["cancelled"]


def test_errors_of_the_callback_propagate() -> None:
    async def scenario() -> None:
        flow = Flow()

        async def callback() -> None:
            raise KeyError("boom")

        wait_first = fast_wait_first(make_original([]), flow.suspend_flow)
        await wait_first(callback(), flow.suspend_flow.wait())

    with pytest.raises(KeyError, match="boom"):
        run(scenario())


def test_other_calls_and_a_suspended_flow_go_to_the_original() -> None:
    async def scenario() -> list[str]:
        flow, calls = Flow(), list[str]()
        wait_first = fast_wait_first(make_original(calls), flow.suspend_flow)

        async def callback() -> str:
            return "x"

        other = asyncio.Event()
        other.set()
        await wait_first(callback(), other.wait())  # not the fetch loop's event
        flow.suspend_flow.set()
        await wait_first(callback(), flow.suspend_flow.wait())  # rebalancing: as before
        return calls

    assert run(scenario()) == ["original", "original"]
