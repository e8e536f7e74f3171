"""A cheaper per-record step in Faust's fetch loop.

Faust's ``Consumer._drain_messages`` hands every fetched record to the conductor
with ``await self.wait_first(callback(message), self.suspend_flow.wait())``, so
that a rebalance (``suspend_flow``) can interrupt a callback that is blocked on
flow control, a full stream queue or a full producer buffer. mode's
``wait_first`` makes four tasks per call (the two awaitables plus the service's
stopped and crashed events) and runs ``asyncio.wait`` over them: in an agent that
did nothing but count records, that was a quarter of the event loop's time.

Nearly always the callback does not block: it runs to its end in one step. So
:func:`fast_wait_first` steps it once by hand; if it finished, no task was
needed; if it suspended, the started coroutine goes on under the original
``wait_first`` exactly as before (the rebalance can still interrupt it). Any
other call of ``wait_first`` is passed through untouched.

This is one of the two places where the worker reaches below Faust's API (the
other is in :class:`stream.app.WorkerApp`); both are checked against
faust-streaming 0.15 and must be re-checked when it is upgraded.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

WaitFirst = Callable[..., Awaitable[Any]]


class _Resumed:
    """Awaitable that carries on a coroutine which suspended on its first step.

    ``pending`` is what the coroutine yielded (the future it waits for); it is passed
    up to the task that awaits this object, and whatever the task sends or throws
    back goes on to the coroutine, as if the task had driven it from the start.
    """

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, to_yield = self._coro, self._pending
        while True:
            try:
                sent = yield to_yield
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    to_yield = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    to_yield = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def _waits_on(awaitable: object, event: object) -> bool:
    """True for the coroutine object of ``event.wait()``."""
    if not inspect.iscoroutine(awaitable) or awaitable.cr_code.co_name != "wait":
        return False
    frame = awaitable.cr_frame
    return frame is not None and frame.f_locals.get("self") is event


def fast_wait_first(original: WaitFirst, suspend_flow: Any) -> WaitFirst:
    """``original`` (a consumer's ``wait_first``) with the fetch loop's call made cheap."""

    async def wait_first(*coros: Any, timeout: Any = None) -> Any:
        if (
            len(coros) != 2
            or timeout is not None
            or not inspect.iscoroutine(coros[0])
            or not _waits_on(coros[1], suspend_flow)
            or suspend_flow.is_set()
        ):
            return await original(*coros, timeout=timeout)
        callback, suspended = coros
        try:
            pending = callback.send(None)
        except StopIteration:
            suspended.close()  # never started: nothing to wait for
            return None  # the fetch loop ignores the result
        except BaseException:
            suspended.close()
            raise

        async def carry_on() -> Any:
            return await _Resumed(callback, pending)

        return await original(carry_on(), suspended, timeout=timeout)

    return wait_first


def install(consumer: Any) -> None:
    """Give ``consumer`` (Faust's aiokafka Consumer) the cheaper ``wait_first``."""
    consumer.wait_first = fast_wait_first(consumer.wait_first, consumer.suspend_flow)
