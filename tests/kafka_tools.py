"""Helpers the integration tests share: topics, consuming, worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from deploy.kafka.harness import free_port

REPO = Path(__file__).resolve().parents[1]


def create_topics(bootstrap: str, names: list[str], partitions: int = 1, **configs: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="rum-tests")
    try:
        new = [NewTopic(name, partitions, 1, topic_configs=dict(configs)) for name in names]
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics(new)
    finally:
        admin.close()


def reader_config(bootstrap: str) -> dict[str, Any]:
    """A group-less reader. Incremental fetch sessions are off: with them, kafka-python
    3.0 readers of a topic still being written stopped receiving some partitions'
    new records against Apache Kafka 4.1 (the records were on the broker)."""
    return {
        "bootstrap_servers": bootstrap,
        "enable_auto_commit": False,
        "fetch_max_wait_ms": 100,
        "enable_incremental_fetch_sessions": False,
    }


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Any]], bool],
    timeout_s: float = 60.0,
) -> list[Any]:
    """Read ``topic`` from the beginning with manual assignment until ``until(records)``.

    Manual assignment (no group) works on Apache Kafka and on the embedded broker.
    Raises ``TimeoutError`` listing what arrived when the condition is not met in time.
    """
    consumer = KafkaConsumer(**reader_config(bootstrap))
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        partitions: list[TopicPartition] = []
        while not partitions and time.monotonic() < deadline:
            ids = consumer.partitions_for_topic(topic)
            partitions = [TopicPartition(topic, p) for p in sorted(ids or [])]
            if not partitions:
                time.sleep(0.2)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
            if until(records):
                return records
    finally:
        consumer.close()
    msg = f"{topic}: condition not met within {timeout_s:.0f} s; {len(records)} records arrived"
    raise TimeoutError(msg)


class WorkerProcess:
    """A worker in its own process, with its own data directory and web port."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.argv = argv
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *self.argv],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final commit."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM and wait for a clean shutdown; SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@contextlib.contextmanager
def running(worker: WorkerProcess) -> Iterator[WorkerProcess]:
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def web_port() -> int:
    return free_port()


def read_all(bootstrap: str, topic: str, idle_polls: int = 3, **consumer_config: Any) -> list[Any]:
    """Every record of ``topic`` now there: read until ``idle_polls`` polls bring nothing."""
    consumer = KafkaConsumer(**{**reader_config(bootstrap), **consumer_config})
    records: list[Any] = []
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        idle = 0
        while idle < idle_polls:
            batch = consumer.poll(timeout_ms=1000)
            idle = 0 if batch else idle + 1
            for part in batch.values():
                records.extend(part)
    finally:
        consumer.close()
    return records
