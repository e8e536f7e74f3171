"""Protocol 3 (prequential, test-then-train) measured from the recommendations topic.

The worker runs with ``RUM_EMIT=event``: the message for event e is the list the
user would have been shown right after e. So the list "shown before" event e is
the message of the user's previous event; before a user's first event the
system shows its popularity fallback. The events ranked are those at or after
the split time T of ``model.splits.prequential_split`` on the same file, so the
figures are comparable with ``rum evaluate --protocol prequential``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from model.data import load_events
from model.metrics import topk_metrics
from model.options import add_option
from model.serving import Scorer
from model.splits import Replay, prequential_split
from stream.replay import LogRow, read_log


def read_recommendations(
    bootstrap: str, topic: str, event_ids: set[str], timeout_s: float = 600.0
) -> dict[str, list[str]]:
    """event_id -> the item ids recommended right after it, for every id in ``event_ids``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        # Incremental fetch sessions let kafka-python 3.0 readers of a topic still being
        # written miss new records of some partitions (seen against Kafka 4.1).
        enable_incremental_fetch_sessions=False,
    )
    after: dict[str, list[str]] = {}
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        if not partitions:
            msg = f"topic {topic!r} does not exist on {bootstrap}"
            raise SystemExit(msg)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout_s
        while not event_ids <= after.keys():
            if time.monotonic() > deadline:
                missing = len(event_ids - after.keys())
                msg = (
                    f"{missing} events have no recommendation on {topic!r} after {timeout_s:.0f} s"
                )
                raise TimeoutError(msg)
            for records in consumer.poll(timeout_ms=500, max_records=5000).values():
                for record in records:
                    message = json.loads(record.value)
                    items = [item["item_id"] for item in message["items"]]
                    for event_id in message["event_ids"]:
                        after[event_id] = items
    finally:
        consumer.close()
    return after


def prequential_positions(
    rows: Sequence[LogRow],
    after: dict[str, list[str]],
    start: float,
    fallback: list[str],
) -> list[int | None]:
    """1-based position of each ranked event's item in the list shown before it."""
    shown: dict[str, list[str]] = {}
    positions: list[int | None] = []
    for row in rows:
        if row.ts >= start:
            ranked = shown.get(row.user_id, fallback)
            positions.append(ranked.index(row.item_id) + 1 if row.item_id in ranked else None)
        shown[row.user_id] = after[row.event_id]
    return positions


def evaluate_topic(
    bootstrap: str, topic: str, data: str, scorer: Scorer, k: int, timeout_s: float = 600.0
) -> dict[str, Any]:
    log = read_log(data)
    split = prequential_split(load_events(data))
    assert isinstance(split.test, Replay)
    after = read_recommendations(bootstrap, topic, {row.event_id for row in log.rows}, timeout_s)
    fallback = [rec.item_id for rec in scorer.popular(k, exclude=())]
    positions = prequential_positions(log.rows, after, float(split.test.start), fallback)
    result: dict[str, Any] = {
        "protocol": "prequential",
        "source": f"topic:{topic}",
        "events_ranked": len(positions),
    }
    result.update(topk_metrics(positions, [k]))
    return result


def add_evaluate_stream_options(parser: argparse.ArgumentParser) -> None:
    # --data and --model read RUM_EVALUATE_STREAM_DATA / _MODEL (model.options derives them).
    add_option(parser, "--data", required=True, help="the event log that was replayed")
    add_option(parser, "--model", required=True, help="the model artifact the worker ran")
    add_option(
        parser,
        "--topic",
        default="recommendations",
        help="recommendations topic",
        env="RUM_TOPIC_RECOMMENDATIONS",
    )
    add_option(
        parser, "--broker", default="kafka://127.0.0.1:9092", help="Kafka URL", env="RUM_BROKER"
    )
    add_option(
        parser,
        "--k",
        type=int,
        default=10,
        help="list length the worker emitted (RUM_TOPK)",
        env="RUM_TOPK",
    )
    add_option(
        parser,
        "--timeout",
        type=float,
        default=600.0,
        help="seconds to wait for every event's recommendation",
        env="RUM_EVAL_TIMEOUT_S",
    )


def evaluate_stream_main(args: argparse.Namespace) -> int:
    from stream.replay import kafka_bootstrap

    scorer = Scorer.load(args.model)
    result = evaluate_topic(
        kafka_bootstrap(args.broker), args.topic, args.data, scorer, args.k, args.timeout
    )
    json.dump(result, sys.stdout)
    print()
    return 0
