"""One micro-batch, without Kafka: validate, drop duplicates, WRITE in arrival order,
then score every touched user once, in one batched call.

The agent (``stream.app``) only does I/O around these two steps:
:func:`apply_batch` (cheap, on the event loop, reads states through a callback)
and :func:`score_requests` (the heavy tensor work, run in a thread so the event
loop keeps heartbeating).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from model.serving import Memory, Recommendation, Scorer
from stream.events import Position, Purchase, Rejection, parse_purchase
from stream.settings import Settings
from stream.state import Limits, UserState, apply_purchase


@dataclass(frozen=True)
class Record:
    """The parts of a Kafka record the worker reads."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    position: Position
    timestamp_ms: int | None


@dataclass(frozen=True)
class ScoreRequest:
    """Score ``user_id`` with ``memory``; the message will cover ``event_ids``."""

    user_id: str
    memory: Memory
    exclude: frozenset[str]
    event_ids: tuple[str, ...]
    event_ts: float
    record_ts_ms: tuple[int, ...]  # Kafka timestamps of the covered events (lag metric)


@dataclass
class AppliedBatch:
    states: dict[str, UserState] = field(default_factory=dict)  # touched users, new states
    last_index: dict[str, int] = field(default_factory=dict)  # user -> index of last record
    requests: list[ScoreRequest] = field(default_factory=list)
    dead_letters: list[tuple[int, Rejection]] = field(default_factory=list)  # record index
    outcomes: Counter[str] = field(default_factory=Counter)


def limits_of(settings: Settings) -> Limits:
    return Limits(history=settings.history, dedupe_ring=settings.dedupe_ring)


def apply_batch(
    records: Sequence[Record],
    load_state: Callable[[str, int], UserState | None],
    scorer: Scorer,
    settings: Settings,
    now: float | None = None,
) -> AppliedBatch:
    """Validate and apply every record in arrival order; decide what to score.

    ``load_state(user_id, index)`` reads a stored state; ``index`` is the record
    being applied (its partition is the user's: the key is checked first).
    """
    now = time.time() if now is None else now
    limits = limits_of(settings)
    batch = AppliedBatch()
    covered: dict[str, list[Purchase]] = {}
    stamps: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        parsed = parse_purchase(
            record.key,
            record.value,
            record.headers,
            record.position,
            record.timestamp_ms,
            settings,
            now,
        )
        if isinstance(parsed, Rejection):
            batch.dead_letters.append((index, parsed))
            batch.outcomes[f"dead_letter:{parsed.reason}"] += 1
            continue
        user = parsed.user_id
        state = batch.states[user] if user in batch.states else load_state(user, index)
        state, outcome = apply_purchase(state, parsed, scorer, limits)
        batch.states[user] = state
        batch.last_index[user] = index
        batch.outcomes[outcome.value] += 1
        # A duplicate is answered too: it may be a re-delivery after a crash that
        # happened before its recommendation went out (at-least-once on the output).
        if settings.emit == "event":
            batch.requests.append(_request(state, [parsed], [record.timestamp_ms], settings))
        else:
            covered.setdefault(user, []).append(parsed)
            stamps.setdefault(user, []).append(record.timestamp_ms or 0)
    for user, purchases in covered.items():
        batch.requests.append(_request(batch.states[user], purchases, stamps[user], settings))
    return batch


def _request(
    state: UserState,
    purchases: Sequence[Purchase],
    record_ts_ms: Sequence[int | None],
    settings: Settings,
) -> ScoreRequest:
    return ScoreRequest(
        user_id=purchases[-1].user_id,
        memory=state.memory,
        exclude=frozenset(state.history) if settings.exclude_seen else frozenset(),
        event_ids=tuple(p.event_id for p in purchases),
        event_ts=max(p.ts for p in purchases),
        record_ts_ms=tuple(ts or 0 for ts in record_ts_ms),
    )


def scoring_mode(scorer: Scorer, settings: Settings) -> Literal["exact", "two-stage"]:
    if settings.scoring == "auto":
        return "exact" if scorer.num_items <= settings.exact_max_items else "two-stage"
    return settings.scoring


def prepare_scorer(scorer: Scorer, settings: Settings) -> Scorer:
    """``scorer`` with what the worker's scoring mode needs computed up front."""
    scorer.prepare(scoring_mode(scorer, settings))
    return scorer


def recommend_many(
    scorer: Scorer,
    user_ids: Sequence[str],
    memories: Sequence[Memory],
    excludes: Sequence[frozenset[str]],
    k: int,
    settings: Settings,
) -> list[list[Recommendation]]:
    if not user_ids:
        return []
    return scorer.score_many(
        user_ids,
        memories,
        excludes,
        k,
        mode=scoring_mode(scorer, settings),
        candidates=settings.candidates,
    )


def items_payload(recommendations: Sequence[Recommendation]) -> list[dict[str, Any]]:
    return [
        {
            "item_id": rec.item_id,
            "score": rec.score,
            "because": [{"item_id": r.item_id, "weight": r.weight} for r in rec.because],
        }
        for rec in recommendations
    ]


def score_requests(
    requests: Sequence[ScoreRequest], scorer: Scorer, settings: Settings
) -> list[bytes]:
    """One batched scoring call for the whole batch; one encoded JSON message per request.

    Encoding happens here, in the scoring thread, so the event loop only sends bytes.
    """
    ranked = recommend_many(
        scorer,
        [r.user_id for r in requests],
        [r.memory for r in requests],
        [r.exclude for r in requests],
        settings.k,
        settings,
    )
    generated_at = time.time()
    return [
        orjson.dumps(
            {
                "user_id": request.user_id,
                "items": items_payload(recommendations),
                "model_version": scorer.version,
                "event_ids": list(request.event_ids),
                "event_ts": request.event_ts,
                "generated_at": generated_at,
            }
        )
        for request, recommendations in zip(requests, ranked, strict=True)
    ]
