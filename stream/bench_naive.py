"""The naive Faust baseline of ``rum bench stream`` (BENCHMARKS.md): the framework's per-event cost.

A minimal agent over the same input topic and partition count as the worker:
per event it reads a table entry, appends the item id, writes it back and sends
one message. No model, no micro-batches, Faust's default settings. Run as
``python -m stream.bench_naive`` with the ``RUM_*`` variables the worker reads
(broker, app id, topics, partitions, data directory, web port).

``RUM_BENCH_AGENT=floor`` runs the other yardstick instead: an agent that does
nothing with an event but ack it, with the worker's own Faust settings and fetch
fast path; it sends one record per batch of up to 1,000 events (listing their
positions, so the throughput clock reads it like a worker's output). No Faust
worker can be faster than it on the same machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import faust
import msgpack

from stream.settings import Settings

TABLE = "naive-state"


def _app_options(settings: Settings) -> dict[str, Any]:
    """What the naive baseline and the floor share: raw bytes, one replica, from the start."""
    return {
        "broker": settings.broker,
        "web_port": settings.web_port,
        "web_bind": settings.web_bind,
        "topic_partitions": settings.partitions,
        "topic_replication_factor": 1,
        "consumer_auto_offset_reset": "earliest",
        "autodiscover": False,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }


def _topics(app: faust.App, settings: Settings) -> tuple[Any, Any]:
    """The purchases topic it reads and the output topic it writes, both raw."""
    purchases = app.topic(settings.topic_purchases, key_serializer="raw", value_serializer="raw")
    outputs = app.topic(
        settings.topic_recommendations, key_serializer="raw", value_serializer="raw"
    )
    return purchases, outputs


def create_naive_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.app_id,
        store="rocksdb://",
        datadir=settings.data_dir,
        **_app_options(settings),
    )
    purchases, outputs = _topics(app, settings)
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


def create_floor_app(settings: Settings) -> faust.App:
    from stream import fastpath
    from stream.tuning import faust_throughput_options

    class FloorApp(faust.App):
        def _new_consumer(self) -> Any:
            consumer = super()._new_consumer()
            fastpath.install(consumer)
            return consumer

    app = FloorApp(
        settings.app_id,
        store="memory://",
        **_app_options(settings),
        **faust_throughput_options(settings),
    )
    purchases, outputs = _topics(app, settings)

    @app.agent(purchases, name="floor-purchases")
    async def floor(stream: faust.StreamT[Any]) -> None:
        async for events in stream.take_events(1000, within=0.05):  # type: ignore[attr-defined]
            ids = [f"{e.message.partition}/{e.message.offset}" for e in events]
            await outputs.send(value=json.dumps({"event_ids": ids}).encode())

    return app


def main() -> int:
    from faust.worker import Worker

    settings = Settings.from_env()
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    floor = os.environ.get("RUM_BENCH_AGENT") == "floor"
    app = create_floor_app(settings) if floor else create_naive_app(settings)
    worker = Worker(app, loglevel=settings.log_level, quiet=True)
    worker.spinner = None  # as the RUM worker: no DEBUG root logger for a terminal spinner
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
