"""Proofs that the foundation holds: Apache Kafka from the harness, Faust with a
RocksDB table recovering from its changelog, and the embedded broker."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from deploy.kafka import harness
from tests.kafka_tools import WorkerProcess, create_topics, read_topic, running, web_port

pytestmark = pytest.mark.kafka

COUNTER_APP = "tests/integration/faust_counter.py"


def test_producer_to_group_consumer_round_trip(kafka_bootstrap: str, unique_topic) -> None:
    topic = unique_topic("roundtrip")
    create_topics(kafka_bootstrap, [topic], partitions=3)
    sent = {f"user-{i}".encode(): json.dumps({"n": i}).encode() for i in range(50)}
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for key, value in sent.items():
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        consumer_timeout_ms=20_000,
    )
    received = {}
    for record in consumer:
        received[record.key] = record.value
        if len(received) == len(sent):
            break
    consumer.close()
    assert received == sent


def _counts(records: list) -> dict[str, int]:
    latest: dict[str, int] = {}
    for record in records:
        value = json.loads(record.value)
        latest[value["key"]] = max(latest.get(value["key"], 0), value["count"])
    return latest


def _counter(
    bootstrap: str, topic: str, app_id: str, data_dir: Path, tmp_path: Path
) -> WorkerProcess:
    env = {
        "COUNTER_BROKER": f"kafka://{bootstrap}",
        "COUNTER_APP_ID": app_id,
        "COUNTER_TOPIC": topic,
        "COUNTER_DATA_DIR": str(data_dir),
        "COUNTER_WEB_PORT": str(web_port()),
    }
    return WorkerProcess([COUNTER_APP], env, tmp_path / f"{data_dir.name}.log")


def _produce(bootstrap: str, topic: str, keys: list[str]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for key in keys:
        producer.send(topic, key=key.encode(), value=b"event")
    producer.flush()
    producer.close()


def test_faust_rocksdb_table_recovers_from_changelog(
    kafka_bootstrap: str, unique_topic, tmp_path: Path
) -> None:
    topic = unique_topic("counter")
    app_id = unique_topic("counter-app")
    create_topics(kafka_bootstrap, [topic, f"{topic}.counts"], partitions=2)
    first_keys = [f"k{i % 5}" for i in range(40)]  # 8 events per key
    data_dir = tmp_path / "data-1"

    with running(_counter(kafka_bootstrap, topic, app_id, data_dir, tmp_path)) as worker:
        _produce(kafka_bootstrap, topic, first_keys)
        records = read_topic(
            kafka_bootstrap, f"{topic}.counts", until=lambda r: len(r) >= 40, timeout_s=90
        )
        assert worker.alive(), worker.log_tail()
    assert _counts(records) == {f"k{i}": 8 for i in range(5)}
    # The table really lived in RocksDB files in the worker's own data directory.
    assert any(p.name.endswith(".sst") or p.name == "CURRENT" for p in data_dir.rglob("*"))

    # A new worker on an EMPTY data directory must rebuild the table from the changelog.
    shutil.rmtree(data_dir)
    fresh_dir = tmp_path / "data-2"
    with running(_counter(kafka_bootstrap, topic, app_id, fresh_dir, tmp_path)) as worker:
        _produce(kafka_bootstrap, topic, [f"k{i}" for i in range(5)])
        records = read_topic(
            kafka_bootstrap, f"{topic}.counts", until=lambda r: len(r) >= 45, timeout_s=120
        )
        assert worker.alive(), worker.log_tail()
    assert _counts(records) == {f"k{i}": 9 for i in range(5)}


def test_embedded_broker_round_trip_with_faust(unique_topic, tmp_path: Path) -> None:
    broker_dir = tmp_path / "embedded"
    info = harness.start(broker_dir, embedded=True)
    try:
        assert info.kind == "embedded"
        topic = unique_topic("embedded")
        create_topics(info.bootstrap, [topic, f"{topic}.counts"], partitions=2)
        worker = _counter(info.bootstrap, topic, unique_topic("emb-app"), tmp_path / "d", tmp_path)
        with running(worker):
            time.sleep(3)
            _produce(info.bootstrap, topic, ["a", "b", "a", "c", "a"])
            records = read_topic(
                info.bootstrap, f"{topic}.counts", until=lambda r: len(r) >= 5, timeout_s=90
            )
            assert worker.alive(), worker.log_tail()
        assert _counts(records) == {"a": 3, "b": 1, "c": 1}
    finally:
        harness.stop(broker_dir)
