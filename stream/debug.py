"""What a stuck worker is doing: its consumer's offsets and every task's await chain.

Served at ``GET /debug/tasks`` when ``RUM_DEBUG_ENDPOINTS`` is on. Python's own task
stacks stop at the first async generator or C-level wrapper (``async for`` over a
Faust stream, Cython's iterator), which is where a streaming stall hides; the chains
here follow those wrappers through their referents. This is how the post-rebalance
stall was found (records handed out by aiokafka, dropped by Faust, never re-read).
"""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any


def _frame_of(obj: Any) -> Any:
    for name in ("cr_frame", "ag_frame", "gi_frame"):
        frame = getattr(obj, name, None)
        if frame is not None:
            return frame
    return None


def _awaited(obj: Any) -> Any:
    for name in ("cr_await", "ag_await", "gi_yieldfrom"):
        if hasattr(obj, name):
            return getattr(obj, name)
    if isinstance(obj, asyncio.Future):
        return None
    # Wrappers (``async_generator_asend``, ``coroutine_wrapper``, Cython's) do not
    # expose what they drive; it is among their referents.
    for ref in gc.get_referents(obj):
        if hasattr(ref, "cr_await") or hasattr(ref, "ag_await") or hasattr(ref, "gi_yieldfrom"):
            return ref
        if "coroutine" in type(ref).__name__ or "generator" in type(ref).__name__:
            return ref
    return None


def await_chain(coro: Any, limit: int = 64) -> list[str]:
    lines: list[str] = []
    obj = coro
    while obj is not None and len(lines) < limit:
        frame = _frame_of(obj)
        if frame is not None:
            code = frame.f_code
            lines.append(f"{code.co_filename}:{frame.f_lineno} {code.co_name}")
        else:
            lines.append(repr(obj)[:300])
        obj = _awaited(obj)
    return lines


def dump_tasks(loop: Any = None) -> str:
    out: list[str] = []
    for task in asyncio.all_tasks(loop):
        out.append(f"== {task.get_name()} {task!r:.200}")
        out.extend("   " + line for line in await_chain(task.get_coro()))
    return "\n".join(out) + "\n"


def consumer_state(app: Any, input_topic: Any) -> dict[str, Any]:
    """Faust's and aiokafka's view of each partition (private attributes: read only)."""
    consumer = app.consumer
    kafka = consumer._thread._ensure_consumer()
    assignment = kafka._subscription.subscription.assignment
    return {
        "flow_active": app.flow_control.is_active(),
        "consumer_flow_active": consumer.flow_active,
        "generation": app.consumer_generation_id,
        "assignment": sorted(str(tp) for tp in consumer.assignment()),
        "faust_read_offset": {str(tp): off for tp, off in consumer._read_offset.items()},
        "faust_committed": {str(tp): off for tp, off in consumer._committed_offset.items()},
        "faust_unacked": len(consumer._unacked_messages),
        "input_queue": input_topic.queue.qsize(),
        "kafka_positions": {
            str(tp): {"position": st._position, "status": str(st._status), "paused": st._paused}
            for tp, st in assignment._tp_state.items()
        },
        "kafka_fetched": {str(tp): repr(r) for tp, r in kafka._fetcher._records.items()},
    }


def debug_report(app: Any, input_topic: Any) -> str:
    """``input_topic``: the agent's own Topic (``app.topic(name)`` would make a new, empty one)."""
    try:
        state = json.dumps(consumer_state(app, input_topic), indent=1, default=str)
    except Exception as exc:  # a report while starting or stopping: say so, keep going
        state = f"consumer state unavailable: {exc!r}"
    thread_loop = getattr(getattr(app.consumer, "_thread", None), "thread_loop", None)
    parts = [state, "==== event loop ====", dump_tasks()]
    if thread_loop is not None:
        parts += ["==== consumer thread ====", dump_tasks(thread_loop)]
    return "\n".join(parts)
