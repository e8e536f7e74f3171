"""Failpoints: crash the worker at a named point of batch processing, for fault tests.

``RUM_FAILPOINT=NAME:N`` makes the worker SIGKILL itself the N-th time it
reaches the point NAME (no shutdown hooks run, nothing is flushed), which is
how the fault suite crashes a worker *between* two exact steps rather than at
a random moment. Unset in production: every check is then one dict lookup.

Points: ``after_apply`` (batch applied in memory, no state written),
``after_state_write`` (state assigned to the table, nothing sent or committed),
``after_send`` (recommendations handed to the producer, offsets not committed),
``after_delivery`` (the batch's state changes and recommendations are in Kafka,
its offsets are neither acked nor committed; under exactly-once its transaction
is still open).
"""

from __future__ import annotations

import os
import signal

POINTS = ("after_apply", "after_state_write", "after_send", "after_delivery")


class _Failpoints:
    def __init__(self, spec: str) -> None:
        self.remaining: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, count = part.partition(":")
            if name not in POINTS:
                msg = f"RUM_FAILPOINT={spec!r}: unknown point {name!r}; expected one of {POINTS}"
                raise ValueError(msg)
            self.remaining[name] = int(count or "1")

    def reach(self, name: str) -> None:
        if name not in self.remaining:
            return
        self.remaining[name] -= 1
        if self.remaining[name] <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


_ACTIVE = _Failpoints(os.environ.get("RUM_FAILPOINT", ""))


def failpoint(name: str) -> None:
    """SIGKILL this process if ``RUM_FAILPOINT`` names ``name`` and its count is reached."""
    _ACTIVE.reach(name)
