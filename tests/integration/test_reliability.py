"""The fault suite: crashes at exact points, a broker restart, rebalances, garbage at
scale, hostile HTTP, a short soak, and exactly-once output. Every scenario ends by
comparing each user's state with the offline memory of its history: nothing lost,
nothing applied twice."""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from deploy.kafka import harness
from model.serving import Scorer
from tests.integration.worker_harness import (
    Deployment,
    http_json,
    produce,
    produce_raw,
    recommendations_covering,
    synthetic_events,
    wait_applied,
    wait_healthy,
)
from tests.kafka_tools import create_topics, read_all, read_topic

pytestmark = pytest.mark.kafka


REPORT = Path(os.environ.get("RUM_FAULT_REPORT", "/tmp/rum-fault-report.jsonl"))


def _report(scenario: str, **figures: Any) -> None:
    """Figures for the closing note; the assertions are what make the test."""
    with REPORT.open("a") as handle:
        handle.write(json.dumps({"scenario": scenario, **figures}) + "\n")


def _deployment(bootstrap: str, model: Path, root: Path, **env: str) -> Deployment:
    return Deployment(
        bootstrap=bootstrap,
        name=f"rel-{uuid.uuid4().hex[:8]}",
        model_dir=model,
        root=root,
        extra_env={"RUM_MICRO_BATCH": "32", **env},
    )


def _histories(events: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for event in events:
        out[event["user_id"]].append(event["item_id"])
    return out


def _await_applied(worker, histories: dict[str, list[str]], timeout_s: float = 180) -> dict:
    return wait_applied(worker, {u: len(h) for u, h in histories.items()}, timeout_s)


def _assert_exact_state(scorer: Scorer, histories: dict[str, list[str]], states: dict) -> None:
    """Every event applied exactly once, and the memory equals the offline memory."""
    for user, history in histories.items():
        state = states[user]
        assert state["events_applied"] == len(history), (user, state["events_applied"])
        assert state["history"] == history[-len(state["history"]) :], user
        memory = scorer.memory_from_history(history)
        offline = scorer.score_many([user], [memory], [set(history)], 10)[0]
        assert [i["item_id"] for i in state["items"]] == [r.item_id for r in offline], user
        for got, want in zip(state["items"], offline, strict=True):
            assert got["score"] == pytest.approx(want.score, abs=1e-5)


def _output_event_counts(bootstrap: str, topic: str, committed_only: bool) -> Counter[str]:
    isolation = "read_committed" if committed_only else "read_uncommitted"
    counts: Counter[str] = Counter()
    for record in read_all(bootstrap, topic, isolation_level=isolation):
        counts.update(json.loads(record.value)["event_ids"])
    return counts


def _first_output_after(bootstrap: str, topic: str, since_ms: float) -> float:
    records = read_topic(
        bootstrap, topic, until=lambda r: any(x.timestamp >= since_ms for x in r), timeout_s=120
    )
    return min(x.timestamp for x in records if x.timestamp >= since_ms)


def test_crashes_at_every_failpoint_lose_and_duplicate_nothing(
    kafka_bootstrap: str, feature_model: Path, tmp_path: Path
) -> None:
    deployment = _deployment(kafka_bootstrap, feature_model, tmp_path)
    events = synthetic_events(users=20, per_user=30, items=60, prefix="crash")
    histories = _histories(events)
    data_dir = tmp_path / "data"
    recoveries = []
    try:
        create_topics(kafka_bootstrap, [deployment.purchases], partitions=deployment.partitions)
        produce(kafka_bootstrap, deployment.purchases, events)
        for point in ("after_apply", "after_state_write", "after_send", "after_delivery"):
            started = time.time() * 1000
            worker = deployment.worker(point, data_dir=data_dir, RUM_FAILPOINT=f"{point}:3").start()
            deadline = time.monotonic() + 120
            while worker.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not worker.alive(), f"the worker never reached {point}"
            assert worker.proc is not None and worker.proc.returncode == -9
            recoveries.append((point, started))
        final = deployment.worker("final", data_dir=data_dir).start()
        restarted_ms = time.time() * 1000
        wait_healthy(final)
        healthy_s = time.time() - restarted_ms / 1000
        first_ms = _first_output_after(kafka_bootstrap, deployment.recommendations, restarted_ms)
        recommendations_covering(
            kafka_bootstrap, deployment.recommendations, {e["event_id"] for e in events}
        )
        states = _await_applied(final, histories)
        assert final.alive(), final.log_tail()
    finally:
        deployment.stop_all()
    _assert_exact_state(Scorer.load(feature_model), histories, states)
    outputs = _output_event_counts(kafka_bootstrap, deployment.recommendations, False)
    assert set(outputs) >= {e["event_id"] for e in events}  # every event's user was answered
    _report(
        "worker_crash",
        points=[p for p, _ in recoveries],
        events_sent=len(events),
        events_applied=sum(s["events_applied"] for s in states.values()),
        duplicates_in_state=0,
        lost=0,
        output_duplicates=sum(c - 1 for c in outputs.values()),
        healthy_after_restart_s=round(healthy_s, 1),
        processing_again_s=round((first_ms - restarted_ms) / 1000, 1),
    )


def test_broker_restart_workers_reconnect_and_lose_nothing(
    item_model: Path, tmp_path: Path
) -> None:
    broker_dir = tmp_path / "broker"
    port = harness.free_port()
    info = harness.start(broker_dir, port)
    deployment = _deployment(info.bootstrap, item_model, tmp_path)
    events = synthetic_events(users=16, per_user=20, items=60, prefix="restart")
    half = len(events) // 2
    histories = _histories(events)
    workers = [deployment.worker("a").start(), deployment.worker("b").start()]
    try:
        for worker in workers:
            wait_healthy(worker)
        pids = [worker.proc.pid if worker.proc else None for worker in workers]
        produce(info.bootstrap, deployment.purchases, events[:half])
        recommendations_covering(
            info.bootstrap, deployment.recommendations, {e["event_id"] for e in events[:half]}
        )
        stopped_at = time.monotonic()
        harness.stop(broker_dir)
        time.sleep(5)
        harness.start(broker_dir, port)
        restarted_s = time.monotonic() - stopped_at
        produce(info.bootstrap, deployment.purchases, events[half:])
        recommendations_covering(
            info.bootstrap,
            deployment.recommendations,
            {e["event_id"] for e in events},
            timeout_s=180,
        )
        caught_up_s = time.monotonic() - stopped_at
        # Either worker answers for every user (routed to the owner).
        states = [_await_applied(worker, histories) for worker in workers]
        # Both reconnected by themselves: the same processes throughout.
        assert [worker.proc.pid if worker.proc else None for worker in workers] == pids
        assert all(worker.alive() for worker in workers)
    finally:
        deployment.stop_all()
        harness.stop(broker_dir)
    scorer = Scorer.load(item_model)
    for seen in states:
        _assert_exact_state(scorer, histories, seen)
    _report(
        "broker_restart",
        workers=len(workers),
        events_sent=len(events),
        events_applied=sum(s["events_applied"] for s in states[0].values()),
        duplicates_in_state=0,
        lost=0,
        broker_down_s=round(restarted_s, 1),
        caught_up_after_stop_s=round(caught_up_s, 1),
    )


def test_rebalance_while_streaming(kafka_bootstrap: str, item_model: Path, tmp_path: Path) -> None:
    deployment = _deployment(kafka_bootstrap, item_model, tmp_path)
    events = synthetic_events(users=24, per_user=40, items=60, prefix="rebal")
    histories = _histories(events)
    first = deployment.worker("first").start()
    try:
        wait_healthy(first)

        def paced() -> None:
            for start in range(0, len(events), 40):
                produce(kafka_bootstrap, deployment.purchases, events[start : start + 40])
                time.sleep(0.5)

        producer = threading.Thread(target=paced)
        producer.start()
        second = deployment.worker("second").start()
        third = deployment.worker("third").start()
        wait_healthy(second)
        wait_healthy(third)
        # The first worker is the one sure to own partitions: the copartitioned
        # assignor keeps what a worker holds up to ceil(4 / 3) = 2, so one of the
        # newcomers may stand by with none (2, 2, 0). Stopping the first makes the
        # other two take over its partitions and their state mid-stream.
        assert http_json(first, "/health")[1]["assigned_partitions"] > 0
        stopped_at = time.monotonic()
        first.stop()
        producer.join()
        recommendations_covering(
            kafka_bootstrap,
            deployment.recommendations,
            {e["event_id"] for e in events},
            timeout_s=180,
        )
        caught_up_s = time.monotonic() - stopped_at
        via_second = _await_applied(second, histories)
        via_third = _await_applied(third, histories)
        assert second.alive() and third.alive()
    finally:
        deployment.stop_all()
    scorer = Scorer.load(item_model)
    _assert_exact_state(scorer, histories, via_second)
    _assert_exact_state(scorer, histories, via_third)
    _report(
        "rebalance",
        events_sent=len(events),
        events_applied=sum(s["events_applied"] for s in via_second.values()),
        duplicates_in_state=0,
        lost=0,
        workers="1 -> 3 -> 2",
        all_answered_after_stopping_one_s=round(caught_up_s, 1),
    )


def _garbage(rng: random.Random, index: int) -> tuple[str, bytes | None, bytes | None, list]:
    good = json.dumps({"user_id": "g1", "item_id": "3", "ts": 1_600_000_000}).encode()
    kinds = [
        # Random bytes behind 0xc1, a byte neither JSON nor msgpack ever uses.
        ("undecodable", b"g1", b"\xc1" + rng.randbytes(rng.randrange(0, 64)), []),
        ("undecodable", b"g1", good[: rng.randrange(2, len(good) - 1)], []),
        ("not_object", b"g1", b"42", []),
        ("missing_user_id", b"g1", b'{"item_id": "1", "ts": 1}', []),
        ("missing_item_id", b"g1", b'{"user_id": "g1", "ts": 1}', []),
        ("wrong_type", b"g1", b'{"user_id": "g1", "item_id": 1.5e300, "ts": 1}', []),
        (
            "id_too_long",
            b"g1",
            json.dumps({"user_id": "g1", "item_id": "i" * 5000, "ts": 1}).encode(),
            [],
        ),
        ("bad_timestamp", b"g1", b'{"user_id": "g1", "item_id": "1", "ts": NaN}', []),
        ("future_timestamp", b"g1", b'{"user_id": "g1", "item_id": "1", "ts": 9e12}', []),
        ("unknown_content_type", b"g1", good, [("content-type", b"text/csv")]),
        ("oversized", b"g1", b'{"pad": "' + b"x" * 30000 + b'"}', []),
        ("key_mismatch", b"nobody", good, []),
        ("empty_value", b"g1", None, []),
    ]
    return kinds[index % len(kinds)]


def test_bad_input_at_scale_and_hostile_http(
    kafka_bootstrap: str, item_model: Path, tmp_path: Path
) -> None:
    deployment = _deployment(kafka_bootstrap, item_model, tmp_path)
    rng = random.Random(3)
    good = synthetic_events(users=20, per_user=50, items=60, prefix="scale")
    histories = _histories(good)
    bad = [_garbage(rng, i) for i in range(260)]
    stream: list[tuple[bytes | None, bytes | None, list]] = []
    sent_bad: list[tuple[str, bytes | None, bytes | None, list]] = []
    for index, event in enumerate(good):
        stream.append((event["user_id"].encode(), json.dumps(event).encode(), []))
        if index % 4 == 0 and len(sent_bad) < len(bad):  # one malformed record per four good
            reason, key, value, headers = bad[len(sent_bad)]
            stream.append((key, value, headers))
            sent_bad.append((reason, key, value, headers))
    worker = deployment.worker("w").start()
    try:
        wait_healthy(worker)
        pid = worker.proc.pid if worker.proc else None
        produce_raw(kafka_bootstrap, deployment.purchases, stream)
        recommendations_covering(
            kafka_bootstrap, deployment.recommendations, {e["event_id"] for e in good}
        )
        with contextlib.suppress(TimeoutError):  # the comparison below shows what is missing
            read_topic(
                kafka_bootstrap,
                deployment.dlq,
                until=lambda r: len(r) >= len(sent_bad),
                timeout_s=60,
            )
        dead = read_all(kafka_bootstrap, deployment.dlq)
        states = _await_applied(worker, histories)
        hostile = {
            "/recommendations/" + "u" * 5000: 400,
            "/recommendations/u1?k=100000000": 400,
            "/recommendations/u1?k=-3": 400,
            "/recommendations/u1?k=0": 400,
            "/recommendations/u1?k=ten": 400,
            "/recommendations/u1?k=1e3": 400,
            "/recommendations/%F0%9F%9B%92%20%E2%80%94%20caf%C3%A9": 200,
            "/recommendations/a%2Fb": 200,
            "/recommendations/%00": 200,
        }
        answers = {path: http_json(worker, path)[0] for path in hostile}
        still_fine, body = http_json(worker, "/recommendations/u1?k=5")
        log = worker.log_tail(200_000)
        assert worker.alive() and worker.proc is not None and worker.proc.pid == pid
    finally:
        deployment.stop_all()
    assert Counter(dict(r.headers)["rum-reason"].decode() for r in dead) == Counter(
        b[0] for b in sent_bad
    )
    assert answers == hostile
    assert still_fine == 200 and len(body["items"]) == 5
    assert "Restarting dead" not in log and "Crashed" not in log
    _assert_exact_state(Scorer.load(item_model), histories, states)
    _report(
        "bad_input",
        events_sent=len(stream),
        good=len(good),
        malformed=len(sent_bad),
        dead_letters=len(dead),
        events_applied=sum(s["events_applied"] for s in states.values()),
        duplicates_in_state=0,
        lost=0,
        worker_restarts=0,
    )


def test_short_soak_memory_and_lag_level_off(
    kafka_bootstrap: str, feature_model: Path, tmp_path: Path
) -> None:
    """CI's short soak: 45 s at a steady rate. `rum bench soak` runs the long one."""
    from stream.soak import run_soak

    result = run_soak(
        kafka_bootstrap, feature_model, tmp_path, duration_s=45, rate=150, users=300, items=60
    )
    samples = result["samples"]
    third = len(samples) // 3
    early_rss = max(s["rss_kb"] for s in samples[:third])
    late_rss = max(s["rss_kb"] for s in samples[-third:])
    assert late_rss <= early_rss * 1.25 + 30_000, samples
    assert result["events_lost"] == 0 and result["state_duplicates"] == 0
    assert result["max_lag_s"] < 10, result
    _report("soak_short", **{k: v for k, v in result.items() if k != "samples"})


def test_exactly_once_output_has_no_duplicate_event_ids(
    kafka_bootstrap: str, item_model: Path, tmp_path: Path
) -> None:
    deployment = _deployment(
        kafka_bootstrap, item_model, tmp_path, RUM_PROCESSING_GUARANTEE="exactly_once"
    )
    events = synthetic_events(users=12, per_user=25, items=60, prefix="eos")
    histories = _histories(events)
    data_dir = tmp_path / "data"
    try:
        create_topics(kafka_bootstrap, [deployment.purchases], partitions=deployment.partitions)
        produce(kafka_bootstrap, deployment.purchases, events)
        crashing = deployment.worker(
            # Output delivered inside the open transaction, offsets not committed: a
            # record sent outside the transaction would now be read twice.
            "crash",
            data_dir=data_dir,
            RUM_FAILPOINT="after_delivery:3",
        ).start()
        deadline = time.monotonic() + 120
        while crashing.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not crashing.alive(), crashing.log_tail()
        final = deployment.worker("final", data_dir=data_dir).start()
        wait_healthy(final)
        states = _await_applied(final, histories)
    finally:
        deployment.stop_all()
    committed = _output_event_counts(kafka_bootstrap, deployment.recommendations, True)
    assert set(committed) == {e["event_id"] for e in events}
    duplicated = {event_id: n for event_id, n in committed.items() if n > 1}
    assert duplicated == {}
    # The crash did leave delivered output of the dead batch in the log (aborted): a
    # read_uncommitted reader sees it, so the check above was not passed by luck.
    everything = _output_event_counts(kafka_bootstrap, deployment.recommendations, False)
    aborted = sum(everything.values()) - sum(committed.values())
    assert aborted > 0
    _assert_exact_state(Scorer.load(item_model), histories, states)
    _report(
        "exactly_once",
        events_sent=len(events),
        committed_outputs=sum(committed.values()),
        aborted_outputs=aborted,
        duplicate_outputs=0,
        duplicates_in_state=0,
        lost=0,
    )
