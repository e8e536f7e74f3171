"""The worker against Apache Kafka: offline-equal recommendations, dead letters,
crash recovery from the changelog, idempotent re-delivery, two workers sharing load."""

from __future__ import annotations

import json
import re
import uuid
from collections import defaultdict
from pathlib import Path

import msgpack
import pytest

from model.serving import Scorer
from tests.integration.worker_harness import (
    Deployment,
    http_json,
    http_text,
    produce,
    produce_raw,
    recommendations_covering,
    synthetic_events,
    user_states,
    wait_applied,
    wait_healthy,
)
from tests.kafka_tools import read_topic, web_port

pytestmark = pytest.mark.kafka


def _deployment(kafka_bootstrap: str, model: Path, tmp_path: Path, **env: str) -> Deployment:
    return Deployment(
        bootstrap=kafka_bootstrap,
        name=f"rum-{uuid.uuid4().hex[:8]}",
        model_dir=model,
        root=tmp_path,
        extra_env=dict(env),
    )


def _histories(events: list[dict]) -> dict[str, list[str]]:
    histories: dict[str, list[str]] = defaultdict(list)
    for event in events:
        histories[event["user_id"]].append(event["item_id"])
    return histories


def _assert_matches_offline(
    scorer: Scorer, user: str, history: list[str], items: list[dict]
) -> None:
    memory = scorer.memory_from_history(history)
    offline = scorer.score_many([user], [memory], [set(history)], len(items))[0]
    assert [i["item_id"] for i in items] == [r.item_id for r in offline], user
    for got, want in zip(items, offline, strict=True):
        assert got["score"] == pytest.approx(want.score, abs=1e-5)


@pytest.mark.parametrize("variant", ["feature", "item"])
def test_recommendations_equal_the_offline_scorer(
    variant: str, kafka_bootstrap: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    model = request.getfixturevalue(f"{variant}_model")
    deployment = _deployment(kafka_bootstrap, model, tmp_path)
    worker = deployment.worker("w1").start()
    try:
        wait_healthy(worker)
        events = synthetic_events(users=12, per_user=6, items=60)
        produce(kafka_bootstrap, deployment.purchases, events)
        messages = recommendations_covering(
            kafka_bootstrap, deployment.recommendations, {e["event_id"] for e in events}
        )
        live = http_json(worker, "/health/live")
        ready = http_json(worker, "/health/ready")
        metrics = http_text(worker, "/metrics")
        assert worker.alive(), worker.log_tail()
    finally:
        deployment.stop_all()
    assert live[0] == 200 and live[1]["status"] == "alive"
    assert ready[0] == 200 and ready[1]["status"] == "ok"
    _assert_a_clean_start(worker.log_path, metrics)
    scorer = Scorer.load(model)
    last_message: dict[str, dict] = {}
    for message in messages:
        last_message[message["user_id"]] = message  # per-user order is kept (one partition each)
    for user, history in _histories(events).items():
        message = last_message[user]
        assert message["event_ids"][-1] == f"e-{user[1:]}-5"
        assert message["model_version"] == scorer.version
        assert len(message["items"]) == 10
        _assert_matches_offline(scorer, user, history, message["items"])
        if variant == "item":
            for item in message["items"]:
                weights = [b["weight"] for b in item["because"]]
                assert {b["item_id"] for b in item["because"]} <= set(history)
                assert sum(weights) == pytest.approx(1.0, abs=1e-4)


def _assert_a_clean_start(log_path: Path, metrics: str) -> None:
    """One JSON stream, nothing at ERROR, and no repair counted on a fresh deployment."""
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert {line["level"] for line in lines} <= {"debug", "info", "warning"}, [
        line for line in lines if line["level"] not in ("debug", "info", "warning")
    ]
    assert any(line["event"] == "worker_starting" for line in lines)
    assert any(line["logger"].startswith("faust") for line in lines)  # Faust's own lines too
    assert re.search(r"^rum_stream_resyncs_total 0\.0$", metrics, re.M), metrics


BAD_RECORDS: list[tuple[str, bytes | None, bytes | None, list]] = [
    ("undecodable", b"u1", b"\xc1\xc1\xc1 not json", []),
    ("not_object", b"u1", b"[1, 2, 3]", []),
    ("missing_user_id", b"u1", json.dumps({"item_id": "1", "ts": 1}).encode(), []),
    ("missing_item_id", b"u1", json.dumps({"user_id": "u1", "ts": 1}).encode(), []),
    ("wrong_type", b"u1", json.dumps({"user_id": "u1", "item_id": [1], "ts": 1}).encode(), []),
    (
        "id_too_long",
        b"u1",
        json.dumps({"user_id": "u1", "item_id": "x" * 999, "ts": 1}).encode(),
        [],
    ),
    (
        "bad_timestamp",
        b"u1",
        json.dumps({"user_id": "u1", "item_id": "1", "ts": "soon"}).encode(),
        [],
    ),
    ("bad_timestamp", b"u1", b'{"user_id": "u1", "item_id": "1", "ts": NaN}', []),
    ("bad_timestamp", b"u1", b'{"user_id": "u1", "item_id": "1", "ts": -Infinity}', []),
    (
        "future_timestamp",
        b"u1",
        json.dumps({"user_id": "u1", "item_id": "1", "ts": 4e9}).encode(),
        [],
    ),
    (
        "unknown_content_type",
        b"u1",
        json.dumps({"user_id": "u1", "item_id": "1", "ts": 1}).encode(),
        [("content-type", b"application/xml")],
    ),
    (
        "oversized",
        b"u1",
        json.dumps({"user_id": "u1", "item_id": "1", "pad": "x" * 40000}).encode(),
        [],
    ),
    (
        "key_mismatch",
        b"someone-else",
        json.dumps({"user_id": "u1", "item_id": "1", "ts": 1}).encode(),
        [],
    ),
    ("empty_value", b"u1", None, []),
]


def test_bad_input_goes_to_the_dead_letter_topic_and_the_worker_goes_on(
    kafka_bootstrap: str, feature_model: Path, tmp_path: Path
) -> None:
    deployment = _deployment(kafka_bootstrap, feature_model, tmp_path)
    worker = deployment.worker("w1").start()
    try:
        wait_healthy(worker)
        for index, (_reason, key, value, headers) in enumerate(BAD_RECORDS):
            produce_raw(kafka_bootstrap, deployment.purchases, [(key, value, headers)])
            good = {
                "event_id": f"good-{index}",
                "user_id": "u1",
                "item_id": str(index),
                "ts": 10 + index,
            }
            produce(kafka_bootstrap, deployment.purchases, [good])
        msgpack_event = msgpack.packb({"event_id": "mp", "user_id": "u1", "item_id": "7", "ts": 99})
        produce_raw(
            kafka_bootstrap,
            deployment.purchases,
            [(b"u1", msgpack_event, [("content-type", b"application/msgpack")])],
        )
        expected_ids = {f"good-{i}" for i in range(len(BAD_RECORDS))} | {"mp"}
        recommendations_covering(kafka_bootstrap, deployment.recommendations, expected_ids)
        dead = read_topic(
            kafka_bootstrap,
            deployment.dlq,
            until=lambda r: len(r) >= len(BAD_RECORDS),
            timeout_s=60,
        )
        status, state = http_json(worker, "/recommendations/u1?k=3")
        metrics = http_text(worker, "/metrics")
        assert worker.alive(), worker.log_tail()
    finally:
        deployment.stop_all()
    reasons = [dict(r.headers)["rum-reason"].decode() for r in dead]
    assert reasons == [reason for reason, *_ in BAD_RECORDS]
    for record, (_reason, key, value, _sent_headers) in zip(dead, BAD_RECORDS, strict=True):
        dlq_headers = dict(record.headers)
        assert record.key == key and record.value == value  # the original bytes
        assert dlq_headers["rum-source-topic"].decode() == deployment.purchases
        assert int(dlq_headers["rum-source-offset"]) >= 0
        assert dlq_headers["rum-stage"] in (b"decode", b"validate")
    assert status == 200
    assert state["events_applied"] == len(BAD_RECORDS) + 1
    assert 'rum_dead_letters_total{reason="undecodable"} 1.0' in metrics
    assert "rum_scoring_seconds_count" in metrics


def test_sigkill_recovery_from_changelog_and_idempotent_redelivery(
    kafka_bootstrap: str, feature_model: Path, tmp_path: Path
) -> None:
    deployment = _deployment(kafka_bootstrap, feature_model, tmp_path, RUM_MICRO_BATCH="64")
    events = synthetic_events(users=30, per_user=40, items=60)
    histories = _histories(events)
    first = deployment.worker("first").start()
    try:
        wait_healthy(first)
        produce(kafka_bootstrap, deployment.purchases, events)
        # Kill it in the middle: once some but not all events have recommendations.
        read_topic(
            kafka_bootstrap, deployment.recommendations, until=lambda r: len(r) >= 20, timeout_s=60
        )
        first.kill()
        # A new worker on an EMPTY data directory: every memory must come back from
        # the changelog, and the rest of the stream must be applied exactly once.
        second = deployment.worker("second", data_dir=tmp_path / "fresh").start()
        wait_healthy(second)
        recommendations_covering(
            kafka_bootstrap,
            deployment.recommendations,
            {e["event_id"] for e in events},
            timeout_s=180,
        )
        states = wait_applied(second, {u: len(h) for u, h in histories.items()}, timeout_s=120)
        # Producing the whole input a second time changes no memory.
        produce(kafka_bootstrap, deployment.purchases, events)
        marker = {"event_id": "marker", "user_id": "u0", "item_id": "1", "ts": 1_700_000_000}
        produce(kafka_bootstrap, deployment.purchases, [marker])
        recommendations_covering(kafka_bootstrap, deployment.recommendations, {"marker"})
        again = user_states(second, list(histories))
        metrics = http_text(second, "/metrics")
        assert second.alive(), second.log_tail()
    finally:
        deployment.stop_all()
    scorer = Scorer.load(feature_model)
    for user, history in histories.items():
        assert states[user]["events_applied"] == len(history), user  # no event applied twice
        assert states[user]["history"] == history
        _assert_matches_offline(scorer, user, history, states[user]["items"])
        expected_applied = len(history) + (1 if user == "u0" else 0)
        assert again[user]["events_applied"] == expected_applied, user
        if user != "u0":
            assert again[user]["items"] == states[user]["items"]
    duplicates = float(re.search(r"^rum_duplicates_total (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
    assert duplicates >= len(events)  # every re-produced event was recognised


def test_two_workers_share_partitions_and_survive_losing_one(
    kafka_bootstrap: str, item_model: Path, tmp_path: Path
) -> None:
    deployment = _deployment(kafka_bootstrap, item_model, tmp_path)
    a = deployment.worker("a").start()
    b = deployment.worker("b").start()
    try:
        wait_healthy(a)
        wait_healthy(b)
        events = synthetic_events(users=24, per_user=5, items=60)
        histories = _histories(events)
        produce(kafka_bootstrap, deployment.purchases, events)
        recommendations_covering(
            kafka_bootstrap, deployment.recommendations, {e["event_id"] for e in events}
        )
        _status, health_a = http_json(a, "/health")
        _status, health_b = http_json(b, "/health")
        expected = {u: len(h) for u, h in histories.items()}
        # Either worker answers for every user: requests are routed to the owner.
        via_a = wait_applied(a, expected, timeout_s=120)
        via_b = wait_applied(b, expected, timeout_s=120)
        b.stop()
        after = wait_applied(a, expected, timeout_s=180)
        assert a.alive(), a.log_tail()
    finally:
        deployment.stop_all()
    assert health_a["assigned_partitions"] > 0 and health_b["assigned_partitions"] > 0
    for user, history in histories.items():
        assert via_a[user]["history"] == via_b[user]["history"] == after[user]["history"] == history
        assert after[user]["events_applied"] == len(history)
        assert not (via_a[user]["cold_start"] or via_b[user]["cold_start"])


def test_workers_announcing_one_address_never_answer_for_a_user_they_do_not_hold(
    kafka_bootstrap: str, item_model: Path, tmp_path: Path
) -> None:
    """Two replicas announcing the same RUM_WEB_HOST:RUM_WEB_PORT (compose's service
    name for every replica): each answers its own users, and a 503 for the others,
    never a 200 with a cold start for a user who has a history."""
    deployment = _deployment(kafka_bootstrap, item_model, tmp_path)
    port = web_port()
    a = deployment.worker("a", port=port, bind="127.0.0.1", RUM_WEB_HOST="127.0.0.1").start()
    b = deployment.worker("b", port=port, bind="127.0.0.2", RUM_WEB_HOST="127.0.0.1").start()
    answers: list[tuple[str, str, int, dict]] = []
    try:
        wait_healthy(a)
        wait_healthy(b)
        events = synthetic_events(users=24, per_user=3, items=60)
        expected = {u: len(h) for u, h in _histories(events).items()}
        produce(kafka_bootstrap, deployment.purchases, events)
        recommendations_covering(
            kafka_bootstrap, deployment.recommendations, {e["event_id"] for e in events}
        )
        for label, worker in (("a", a), ("b", b)):
            for user in expected:
                status, body = http_json(worker, f"/recommendations/{user}?k=3")
                answers.append((label, user, status, body))
        assert a.alive() and b.alive(), a.log_tail() + b.log_tail()
    finally:
        deployment.stop_all()
    answered = [(w, u, body) for w, u, status, body in answers if status == 200]
    wrong = [(w, u, body) for w, u, body in answered if body["events_applied"] != expected[u]]
    assert not wrong, wrong
    assert all(body["cold_start"] is False for _w, _u, body in answered)
    assert {status for *_, status, _body in answers} <= {200, 503}
    assert answered, answers  # the owner still answers its users
    refused = [body for *_, status, body in answers if status == 503]
    # The requests that were answered 200 with a cold start before: the owner's address
    # is this worker's own, and this worker does not hold the user's partition.
    assert any("does not hold partition" in body["error"] for body in refused), refused
