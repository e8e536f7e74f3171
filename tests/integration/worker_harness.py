"""Running real workers against the session's Apache Kafka, and reading what they did."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from tests.kafka_tools import WorkerProcess, read_all, read_topic, web_port


@dataclass
class Deployment:
    """One deployment (app id + topics) that any number of workers can join."""

    bootstrap: str
    name: str
    model_dir: Path
    root: Path
    partitions: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def purchases(self) -> str:
        return f"{self.name}.purchases"

    @property
    def recommendations(self) -> str:
        return f"{self.name}.recommendations"

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"

    def worker(
        self,
        label: str,
        data_dir: Path | None = None,
        port: int | None = None,
        bind: str = "127.0.0.1",
        **env: str,
    ) -> WorkerProcess:
        """A worker listening on ``bind``:``port`` (a free port unless given).

        Every address of 127.0.0.0/8 is the loopback on Linux: workers bound to
        127.0.0.1 and 127.0.0.2 can share a port, as containers share one.
        """
        port = port or web_port()
        data = data_dir or (self.root / f"data-{label}")
        environment = {
            "RUM_BROKER": f"kafka://{self.bootstrap}",
            "RUM_APP_ID": self.name,
            "RUM_MODEL_DIR": str(self.model_dir),
            "RUM_DATA_DIR": str(data),
            "RUM_WEB_PORT": str(port),
            "RUM_WEB_BIND": bind,
            "RUM_PARTITIONS": str(self.partitions),
            "RUM_TOPIC_PURCHASES": self.purchases,
            "RUM_TOPIC_RECOMMENDATIONS": self.recommendations,
            "RUM_TOPIC_DLQ": self.dlq,
            "RUM_LOG_LEVEL": "info",
            **self.extra_env,
            **env,
        }
        worker = WorkerProcess(
            ["-m", "stream.cli", "worker"], environment, self.root / f"{label}.log"
        )
        worker.port = port  # type: ignore[attr-defined]
        worker.host = bind  # type: ignore[attr-defined]
        self.workers.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()


def url(worker: WorkerProcess, path: str) -> str:
    host = getattr(worker, "host", "127.0.0.1")
    return f"http://{host}:{worker.port}{path}"  # type: ignore[attr-defined]


def http_json(worker: WorkerProcess, path: str, timeout_s: float = 10.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url(worker, path), timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode("utf-8", "replace")


def http_text(worker: WorkerProcess, path: str, timeout_s: float = 10.0) -> str:
    with urllib.request.urlopen(url(worker, path), timeout=timeout_s) as response:
        text: str = response.read().decode()
        return text


def wait_healthy(worker: WorkerProcess, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not worker.alive():
            raise AssertionError(f"worker exited:\n{worker.log_tail()}")
        try:
            status, _body = http_json(worker, "/health", timeout_s=2.0)
            if status == 200:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"worker not healthy in {timeout_s:.0f} s:\n{worker.log_tail()}")


def produce(bootstrap: str, topic: str, events: Iterable[dict[str, Any]]) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    count = 0
    for event in events:
        producer.send(topic, key=str(event["user_id"]).encode(), value=json.dumps(event).encode())
        count += 1
    producer.flush()
    producer.close()
    return count


def produce_raw(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None, list]]
) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for key, value, headers in records:
        producer.send(topic, key=key, value=value, headers=headers)
    producer.flush()
    producer.close()


def recommendations_covering(
    bootstrap: str, topic: str, event_ids: set[str], timeout_s: float = 120.0
) -> list[dict[str, Any]]:
    """Read the recommendations topic until every id in ``event_ids`` is covered."""

    def covered(records: list) -> bool:
        seen = {e for r in records for e in json.loads(r.value)["event_ids"]}
        return event_ids <= seen

    try:
        records = read_topic(bootstrap, topic, until=covered, timeout_s=timeout_s)
    except TimeoutError as exc:
        fresh = read_all(bootstrap, topic)
        seen = {e for r in fresh for e in json.loads(r.value)["event_ids"]}
        covered_now = len(seen & event_ids)
        msg = (
            f"{exc}; a fresh reader now sees {len(fresh)} records covering"
            f" {covered_now}/{len(event_ids)} ids"
        )
        raise TimeoutError(msg) from exc
    return [json.loads(r.value) for r in records]


def synthetic_events(
    users: int, per_user: int, items: int, prefix: str = "e", seed: int = 0
) -> list[dict[str, Any]]:
    """Events interleaved across users in time order, with explicit event ids."""
    import random

    rng = random.Random(seed)
    events = []
    for step in range(per_user):
        for user in range(users):
            events.append(
                {
                    "event_id": f"{prefix}-{user}-{step}",
                    "user_id": f"u{user}",
                    "item_id": str(rng.randrange(items)),
                    "ts": 1_600_000_000 + step * 60 + user,
                }
            )
    return events


class NotServing(Exception):
    """The worker answered 503: the user's owner is not reachable yet (rebalancing)."""


def user_states(worker: WorkerProcess, users: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each user's state as ``GET /recommendations/{user}`` reports it."""
    states = {}
    for user in users:
        status, body = http_json(worker, f"/recommendations/{user}?k=10")
        if status == 503:
            raise NotServing(body)
        assert status == 200, body
        states[user] = body
    return states


def wait_applied(
    worker: WorkerProcess, expected: dict[str, int], timeout_s: float = 180.0
) -> dict[str, dict[str, Any]]:
    """Poll until every user has at least ``expected[user]`` events applied.

    A 503 (the owner of a user unreachable while partitions move) is retried.
    """
    deadline = time.monotonic() + timeout_s
    states: dict[str, dict[str, Any]] = {}
    unavailable: NotServing | None = None
    while True:
        try:
            states = user_states(worker, expected)
            unavailable = None
            if all(states[u]["events_applied"] >= n for u, n in expected.items()):
                return states
        except NotServing as exc:
            unavailable = exc
        if time.monotonic() > deadline:
            short = {
                u: s["events_applied"]
                for u, s in states.items()
                if s["events_applied"] < expected[u]
            }
            msg = f"events not applied in {timeout_s:.0f} s: {short}; last 503: {unavailable}"
            raise AssertionError(msg)
        time.sleep(1.0)
