"""The naive Faust baseline of ``rum bench stream`` (BENCHMARKS.md): the framework's per-event cost.

A minimal agent over the same input topic and partition count as the worker:
per event it reads a table entry, appends the item id, writes it back and sends
one message. No model, no micro-batches, Faust's default settings. Run as
``python -m stream.bench_naive`` with the ``RUM_*`` variables the worker reads
(broker, app id, topics, partitions, data directory, web port).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faust
import msgpack

from stream.settings import Settings

TABLE = "naive-state"


def create_naive_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=settings.broker,
        store="rocksdb://",
        datadir=settings.data_dir,
        web_port=settings.web_port,
        web_bind=settings.web_bind,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    purchases = app.topic(settings.topic_purchases, key_serializer="raw", value_serializer="raw")
    outputs = app.topic(
        settings.topic_recommendations, key_serializer="raw", value_serializer="raw"
    )
    table = app.Table(
        TABLE,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        options={"driver": "rocksdict"},
    )
    history = settings.history

    @app.agent(purchases, name="naive-purchases")
    async def naive(stream: faust.StreamT[Any]) -> None:
        async for key, value in stream.items():
            event = json.loads(value)
            user = str(event["user_id"]).encode()
            raw = table.get(user)
            items: list[str] = msgpack.unpackb(raw) if raw is not None else []
            items = [*items, str(event["item_id"])][-history:]
            table[user] = msgpack.packb(items)
            message = {
                "user_id": event["user_id"],
                "items": items,
                "event_ids": [event.get("event_id")],
            }
            await outputs.send(key=key, value=json.dumps(message).encode())

    return app


def main() -> int:
    from faust.worker import Worker

    settings = Settings.from_env()
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    app = create_naive_app(settings)
    worker = Worker(app, loglevel=settings.log_level, quiet=True)
    worker.spinner = None  # as the RUM worker: no DEBUG root logger for a terminal spinner
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
