"""Per-user state and the pure transition that applies one purchase to it.

``apply_purchase(state, purchase, scorer, limits) -> (state, outcome)`` never
mutates its input and never touches Kafka; the agent assigns the returned state
back to the table (``table[user] = encode_state(state)``) so the changelog sees
every change.

State per user is bounded: the memory (K ids or K×D floats), the last H raw
item ids, the last R event ids (as 64-bit hashes) with their timestamps, and a
few scalars.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import msgpack

from model.serving import Memory, Scorer
from stream.events import Purchase

STATE_FORMAT = 2  # 1: the dedupe ring held raw event ids; still read, written as 2


def event_key(event_id: str) -> int:
    """A stable 64-bit hash of an event id: what the dedupe ring remembers.

    Raw ids are tens of bytes each (a replayed log's ids carry a content hash), and
    the ring holds R of them per user; 8 bytes keep the state small. Python's own
    ``hash`` is salted per process, so it would not survive a restart. A collision
    among one user's R most recent events (2**-64 per pair) would skip one event.
    """
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class UserState:
    memory: Memory
    memory_version: str  # the model version that wrote ``memory``
    history: tuple[str, ...]  # last H raw item ids, oldest first (known or not)
    recent: tuple[tuple[int, float], ...]  # last R (event_key(event_id), ts), oldest first
    last_ts: float
    applied: int  # events applied over the user's lifetime


@dataclass(frozen=True)
class Limits:
    history: int
    dedupe_ring: int


class Outcome(Enum):
    APPLIED = "applied"
    APPLIED_UNKNOWN_ITEM = "applied_unknown_item"  # recorded in history, not embedded
    DUPLICATE = "duplicate"  # event id seen before
    STALE = "stale"  # older than every remembered event id: cannot tell, so not applied twice


def new_state(scorer: Scorer) -> UserState:
    return UserState(
        memory=scorer.empty_memory(),
        memory_version=scorer.version,
        history=(),
        recent=(),
        last_ts=0.0,
        applied=0,
    )


def current_memory(state: UserState, scorer: Scorer) -> Memory:
    """The memory under ``scorer``: a memory written by another version is rebuilt
    from the stored history (feature-level slots live in that version's space)."""
    if state.memory_version == scorer.version:
        return state.memory
    return scorer.memory_from_history(state.history)


def is_duplicate(state: UserState, purchase: Purchase, limits: Limits) -> Outcome | None:
    key = event_key(purchase.event_id)
    if any(seen == key for seen, _ts in state.recent):
        return Outcome.DUPLICATE
    if len(state.recent) >= limits.dedupe_ring and is_before_ring(state.recent, purchase.ts):
        return Outcome.STALE
    return None


def is_before_ring(recent: tuple[tuple[int, float], ...], ts: float) -> bool:
    """Whether an event at ``ts`` that the full ring does not hold is a re-delivery.

    Every id older than the ring has been forgotten, so an event from before the
    ring's window is taken for one applied long ago. An event at the ring's oldest
    time counts as before it too when the ring also holds later times: in time
    order it would have arrived before them (a replay of a log with many events in
    one second re-applied those evicted from the ring otherwise). Only when the whole
    ring shares one time (more than R events of a user in one timestamp) can a
    re-delivery at that time not be told from a new event; it is applied.
    """
    oldest = min(t for _key, t in recent)
    return ts < oldest or (ts == oldest and max(t for _key, t in recent) > oldest)


def apply_purchase(
    state: UserState | None, purchase: Purchase, scorer: Scorer, limits: Limits
) -> tuple[UserState, Outcome]:
    """Apply one purchase (RUM WRITE + bookkeeping); duplicates leave the state as it was."""
    state = new_state(scorer) if state is None else state
    rejected = is_duplicate(state, purchase, limits)
    if rejected is not None:
        return state, rejected
    memory = current_memory(state, scorer)
    known = scorer.knows_item(purchase.item_id)
    if known:
        memory = scorer.write_one(memory, purchase.item_id)
    updated = UserState(
        memory=memory,
        memory_version=scorer.version,
        history=(*state.history, purchase.item_id)[-limits.history :],
        recent=(*state.recent, (event_key(purchase.event_id), purchase.ts))[-limits.dedupe_ring :],
        last_ts=max(state.last_ts, purchase.ts),
        applied=state.applied + 1,
    )
    return updated, Outcome.APPLIED if known else Outcome.APPLIED_UNKNOWN_ITEM


def refresh(state: UserState, scorer: Scorer) -> UserState:
    """The state with its memory brought to ``scorer``'s version."""
    if state.memory_version == scorer.version:
        return state
    return replace(state, memory=current_memory(state, scorer), memory_version=scorer.version)


def encode_state(state: UserState, scorer: Scorer) -> bytes:
    memory = scorer.encode_memory(state.memory) if state.memory_version == scorer.version else None
    payload: dict[str, Any] = {
        "f": STATE_FORMAT,
        "m": memory,
        "v": state.memory_version if memory is not None else "",
        "h": list(state.history),
        "r": _pack_ring(state.recent),
        "t": state.last_ts,
        "n": state.applied,
    }
    return msgpack.packb(payload, use_bin_type=True)


class StateDecodeError(ValueError):
    """A stored state could not be read; the message says which part."""


def decode_state(raw: bytes, scorer: Scorer) -> UserState:
    """Read a stored state. A memory from another model version is not decoded (its
    shape may differ); it is rebuilt from the history when the state is next used."""
    try:
        payload = msgpack.unpackb(raw, raw=False)
        fmt = payload.get("f")
        if fmt not in (1, STATE_FORMAT):
            raise StateDecodeError(f"state format {fmt!r}, expected 1 or {STATE_FORMAT}")
        history = tuple(str(item) for item in payload["h"])
        version = str(payload["v"])
        if version == scorer.version and payload["m"] is not None:
            memory = scorer.decode_memory(payload["m"])
        else:
            memory = scorer.memory_from_history(history)
            version = scorer.version
        return UserState(
            memory=memory,
            memory_version=version,
            history=history,
            recent=_unpack_ring(payload["r"]) if fmt == STATE_FORMAT else _ring_v1(payload["r"]),
            last_ts=float(payload["t"]),
            applied=int(payload["n"]),
        )
    except (KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
        if isinstance(exc, StateDecodeError):
            raise
        raise StateDecodeError(f"stored user state is unreadable: {exc!r}") from exc


def _pack_ring(recent: tuple[tuple[int, float], ...]) -> bytes:
    """The ring as little-endian uint64 keys, then float64 timestamps (16 bytes an entry)."""
    n = len(recent)
    return struct.pack(f"<{n}Q{n}d", *(k for k, _ in recent), *(ts for _, ts in recent))


def _unpack_ring(raw: Any) -> tuple[tuple[int, float], ...]:
    if not isinstance(raw, bytes) or len(raw) % 16:
        raise StateDecodeError(f"dedupe ring must be bytes of 16-byte entries, got {raw!r:.64}")
    n = len(raw) // 16
    values = struct.unpack(f"<{n}Q{n}d", raw)
    return tuple(zip(values[:n], values[n:], strict=True))


def _ring_v1(raw: Any) -> tuple[tuple[int, float], ...]:
    """Format 1 kept raw event ids: hash them as format 2 would have."""
    return tuple((event_key(str(event_id)), float(ts)) for event_id, ts in raw)
