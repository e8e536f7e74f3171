"""Issue 18: one event log gives bit-identical memories and recommendations whether
it is fed one event per batch, as one backlog, through a crash with a full
duplicate replay, or across a rebalance between two workers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from kafka import KafkaAdminClient

from stream.app import STATE_TABLE
from stream.bench import end_offsets
from tests.integration.worker_harness import Deployment, http_json, produce, wait_healthy
from tests.kafka_tools import WorkerProcess, create_topics, read_all

pytestmark = pytest.mark.kafka

TRAIN_EVENTS = 20_000
STREAM_EVENTS = 4_000
PARTITIONS = 4


@dataclass(frozen=True)
class Outcome:
    """What one run left behind, per user."""

    states: dict[bytes, bytes]  # last changelog value of each user's state
    messages: dict[bytes, list[dict[str, Any]]]  # items of each user's last recommendation
    answers: dict[str, list[dict[str, Any]]]  # items of GET /recommendations/{user}?k=10


def _time_ordered(data: Path) -> list[dict[str, Any]]:
    with data.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda row: int(row["timestamp"]))  # stable: file order within a second
    return [
        {
            "event_id": f"ml-{index}",
            "user_id": row["user_id"],
            "item_id": row["item_id"],
            "ts": int(row["timestamp"]),
        }
        for index, row in enumerate(rows)
    ]


@pytest.fixture(scope="module")
def ml_events(shared_data: Path) -> list[dict[str, Any]]:
    return _time_ordered(shared_data / "ml-100k" / "events.csv")


@pytest.fixture(scope="module")
def ml_model(ml_events: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature-level model trained for one epoch on ml-100k's first 20k events."""
    root = tmp_path_factory.mktemp("ml-model")
    log = root / "events.csv"
    lines = ["user_id,item_id,timestamp"]
    lines += [f"{e['user_id']},{e['item_id']},{e['ts']}" for e in ml_events[:TRAIN_EVENTS]]
    log.write_text("\n".join(lines) + "\n")
    model = root / "model"
    cmd = [sys.executable, "-m", "stream.cli", "train", "--data", str(log), "--out", str(model)]
    cmd += ["--variant", "feature", "--epochs", "1", "--all", "--dim", "32", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"training failed:\n{result.stdout}\n{result.stderr}"
    return model


def _deployment(bootstrap: str, model: Path, root: Path, label: str, **env: str) -> Deployment:
    deployment = Deployment(
        bootstrap=bootstrap,
        name=f"det-{label}-{uuid.uuid4().hex[:6]}",
        model_dir=model,
        root=root / label,
        partitions=PARTITIONS,
        extra_env=env,
    )
    deployment.root.mkdir(parents=True)
    create_topics(bootstrap, [deployment.purchases], partitions=PARTITIONS)
    return deployment


def _wait_committed(deployment: Deployment, live: list[WorkerProcess], timeout_s: float) -> None:
    """Until the group has committed every input record: all of it applied and delivered."""
    ends = end_offsets(deployment.bootstrap, deployment.purchases)
    admin = KafkaAdminClient(bootstrap_servers=deployment.bootstrap, client_id="rum-tests")
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            for worker in live:
                assert worker.alive(), worker.log_tail()
            offsets = admin.list_group_offsets(deployment.name)[deployment.name]
            committed = {
                tp.partition: meta.offset
                for tp, meta in offsets.items()
                if tp.topic == deployment.purchases
            }
            if all(committed.get(p, -1) >= end for p, end in ends.items()):
                return
            if time.monotonic() > deadline:
                tails = "\n".join(worker.log_tail(1500) for worker in live)
                msg = f"committed {committed} of {ends} in {timeout_s:.0f} s\n{tails}"
                raise AssertionError(msg)
            time.sleep(0.5)
    finally:
        admin.close()


def _last_by_key(records: list[Any]) -> dict[bytes, bytes]:
    last: dict[bytes, bytes] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        last[record.key] = record.value
    return last


def _answers(workers: list[WorkerProcess], users: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each user's top 10 over HTTP from any live worker (a 503 while routing is retried)."""
    answers = {}
    for user in users:
        deadline = time.monotonic() + 60
        while True:
            status, body = http_json(workers[0], f"/recommendations/{user}?k=10")
            if status == 200:
                answers[user] = body["items"]
                break
            assert status == 503 and time.monotonic() < deadline, (status, body)
            time.sleep(0.5)
    return answers


def _outcome(deployment: Deployment, live: list[WorkerProcess], users: list[str]) -> Outcome:
    changelog = f"{deployment.name}-{STATE_TABLE}-changelog"
    messages = _last_by_key(read_all(deployment.bootstrap, deployment.recommendations))
    return Outcome(
        states=_last_by_key(read_all(deployment.bootstrap, changelog)),
        messages={key: json.loads(value)["items"] for key, value in messages.items()},
        answers=_answers(live, users),
    )


def _produce_paced(deployment: Deployment, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 200):
        produce(deployment.bootstrap, deployment.purchases, events[start : start + 200])
        time.sleep(0.2)


def _one_event_per_batch(
    make: Callable[..., Deployment], events: list[dict], users: list[str]
) -> Outcome:
    deployment = make("per-event", RUM_MICRO_BATCH="1")
    worker = deployment.worker("w").start()
    try:
        wait_healthy(worker)
        _produce_paced(deployment, events)
        _wait_committed(deployment, [worker], timeout_s=300)
        return _outcome(deployment, [worker], users)
    finally:
        deployment.stop_all()


def _one_backlog(make: Callable[..., Deployment], events: list[dict], users: list[str]) -> Outcome:
    deployment = make("backlog")
    produce(deployment.bootstrap, deployment.purchases, events)
    worker = deployment.worker("w").start()
    try:
        wait_healthy(worker)
        _wait_committed(deployment, [worker], timeout_s=300)
        return _outcome(deployment, [worker], users)
    finally:
        deployment.stop_all()


def _crash_and_duplicate_replay(
    make: Callable[..., Deployment], events: list[dict], users: list[str]
) -> Outcome:
    deployment = make("crash", RUM_MICRO_BATCH="64")
    data = deployment.root / "data"
    crashing = deployment.worker("crashing", data_dir=data, RUM_FAILPOINT="after_delivery:4")
    try:
        wait_healthy(crashing.start())
        producer = threading.Thread(target=_produce_paced, args=(deployment, events))
        producer.start()
        deadline = time.monotonic() + 120
        while crashing.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        producer.join()
        assert not crashing.alive(), "the failpoint never killed the worker"
        restarted = deployment.worker("restarted", data_dir=data).start()
        wait_healthy(restarted)
        _wait_committed(deployment, [restarted], timeout_s=300)
        produce(deployment.bootstrap, deployment.purchases, events)  # the whole log again
        _wait_committed(deployment, [restarted], timeout_s=300)
        return _outcome(deployment, [restarted], users)
    finally:
        deployment.stop_all()


def _rebalance_midway(
    make: Callable[..., Deployment], events: list[dict], users: list[str]
) -> Outcome:
    deployment = make("rebalance", RUM_MICRO_BATCH="64")
    first, second = deployment.worker("first").start(), deployment.worker("second").start()
    try:
        wait_healthy(first)
        wait_healthy(second)
        half = len(events) // 2
        _produce_paced(deployment, events[:half])
        _wait_committed(deployment, [first, second], timeout_s=300)
        holder, other = (first, second)
        if http_json(first, "/health")[1]["assigned_partitions"] == 0:
            holder, other = second, first
        holder.stop()  # its partitions and their state move to the other worker
        _produce_paced(deployment, events[half:])
        _wait_committed(deployment, [other], timeout_s=300)
        return _outcome(deployment, [other], users)
    finally:
        deployment.stop_all()


def _differences(reference: Outcome, other: Outcome) -> dict[str, int]:
    def differing(a: dict, b: dict) -> int:
        return sum(a.get(key) != b.get(key) for key in a.keys() | b.keys())

    return {
        "states": differing(reference.states, other.states),
        "messages": differing(reference.messages, other.messages),
        "answers": differing(reference.answers, other.answers),
    }


def test_batching_crash_replay_and_rebalance_leave_bit_identical_state(
    kafka_bootstrap: str, ml_events: list[dict[str, Any]], ml_model: Path, tmp_path: Path
) -> None:
    events = ml_events[:STREAM_EVENTS]
    counts = Counter(e["user_id"] for e in events)
    users = sorted(counts)

    def make(label: str, **env: str) -> Deployment:
        return _deployment(kafka_bootstrap, ml_model, tmp_path, label, **env)

    runs = {
        run.__name__: run(make, events, users)
        for run in (_one_event_per_batch, _one_backlog, _crash_and_duplicate_replay)
    }
    runs["_rebalance_midway"] = _rebalance_midway(make, events, users)
    reference = runs["_one_event_per_batch"]

    assert len(users) >= 30 and len(reference.states) == len(users)
    applied = {key.decode(): msgpack.unpackb(raw)["n"] for key, raw in reference.states.items()}
    assert applied == dict(counts)  # every event applied once in the reference run
    assert all(len(items) == 10 for items in reference.answers.values())
    assert {key.decode() for key in reference.messages} == set(users)
    differences = {name: _differences(reference, outcome) for name, outcome in runs.items()}
    assert all(not any(d.values()) for d in differences.values()), differences
