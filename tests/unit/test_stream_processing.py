"""A micro-batch without Kafka: what is applied, what is scored, what is dead-lettered."""

from __future__ import annotations

import json

import pytest

from stream.processing import apply_batch, score_requests
from stream.state import UserState
from tests.stream_toys import record, settings, tiny_scorer


def run(records, variant="item", store=None, **changes):
    scorer = tiny_scorer(variant)
    store = {} if store is None else store
    conf = settings(**changes)
    batch = apply_batch(records, lambda user, _index: store.get(user), scorer, conf, now=2e9)
    # The wire form: each message is the JSON the worker sends.
    messages = [json.loads(m) for m in score_requests(batch.requests, scorer, conf)]
    store.update(batch.states)
    return scorer, batch, messages


def ev(user: str, item: str, ts: float, event_id: str | None = None) -> dict:
    payload = {"user_id": user, "item_id": item, "ts": ts}
    if event_id is not None:
        payload["event_id"] = event_id
    return payload


@pytest.mark.parametrize("variant", ["item", "feature"])
def test_one_message_per_touched_user_with_offline_scores(variant) -> None:
    events = [ev("u1", "1", 1), ev("u2", "5", 2), ev("u1", "2", 3), ev("u1", "0", 4)]
    records = [record(e, offset=i) for i, e in enumerate(events)]
    scorer, _batch, messages = run(records, variant)
    assert [m["user_id"] for m in messages] == ["u1", "u2"]
    assert messages[0]["event_ids"] == ["purchases/0/0", "purchases/0/2", "purchases/0/3"]
    # Equal to the offline scorer for the same history, seen items excluded.
    history = ["1", "2", "0"]
    offline = scorer.score_many(["u1"], [scorer.memory_from_history(history)], [set(history)], 10)[
        0
    ]
    got = messages[0]["items"]
    assert [g["item_id"] for g in got] == [r.item_id for r in offline]
    assert [g["score"] for g in got] == pytest.approx([r.score for r in offline], abs=1e-6)
    assert not {g["item_id"] for g in got} & set(history)
    assert all(m["model_version"] == "v1" for m in messages)


def test_emit_event_gives_the_recommendation_after_each_event() -> None:
    events = [ev("u1", "1", 1), ev("u1", "2", 2)]
    scorer, _batch, messages = run(
        [record(e, offset=i) for i, e in enumerate(events)], emit="event"
    )
    assert [m["event_ids"] for m in messages] == [["purchases/0/0"], ["purchases/0/1"]]
    after_first = scorer.score_many(["u1"], [scorer.memory_from_history(["1"])], [{"1"}], 10)[0]
    assert [i["item_id"] for i in messages[0]["items"]] == [r.item_id for r in after_first]
    assert messages[0]["items"] != messages[1]["items"]


def test_bad_records_are_dead_lettered_and_the_rest_goes_on() -> None:
    records = [
        record(ev("u1", "1", 1), offset=0),
        record(None, raw=b"\xff\xfe garbage", key=b"u1", offset=1),
        record({"user_id": "u2"}, offset=2),
        record(ev("u2", "3", 3), offset=3),
    ]
    _scorer, batch, messages = run(records)
    assert [(i, r.reason) for i, r in batch.dead_letters] == [
        (1, "undecodable"),
        (2, "missing_item_id"),
    ]
    assert {m["user_id"] for m in messages} == {"u1", "u2"}
    assert batch.outcomes["applied"] == 2


def test_a_redelivered_batch_changes_no_state_but_is_answered() -> None:
    records = [record(ev("u1", str(i), i, event_id=f"e{i}"), offset=i) for i in range(3)]
    store: dict[str, UserState] = {}
    run(records, store=store)
    first = store["u1"]
    _scorer, batch, messages = run(records, store=store)
    assert store["u1"] == first
    assert batch.outcomes["duplicate"] == 3
    assert len(messages) == 1 and messages[0]["event_ids"] == ["e0", "e1", "e2"]


def test_seen_items_can_be_allowed() -> None:
    records = [record(ev("u1", str(i), i), offset=i) for i in range(25)]
    _s, _b, excluded = run(records, exclude_seen=True)
    _s, _b, allowed = run(records, exclude_seen=False)
    seen = {str(i) for i in range(25)}
    assert not {i["item_id"] for i in excluded[0]["items"]} & seen
    assert {i["item_id"] for i in allowed[0]["items"]} & seen


def test_unknown_user_without_memory_gets_the_popular_items() -> None:
    scorer, _batch, messages = run([record(ev("stranger", "not-an-item", 1))])
    popular = scorer.popular(10, exclude={"not-an-item"})
    assert [i["item_id"] for i in messages[0]["items"]] == [r.item_id for r in popular]
    assert json.dumps(messages[0])  # the message is JSON-serialisable
