"""A minimal Faust app for the foundation proofs: counts events per key.

Run as a separate worker process, configured from the environment:
``COUNTER_BROKER``, ``COUNTER_APP_ID``, ``COUNTER_TOPIC``, ``COUNTER_DATA_DIR``,
``COUNTER_WEB_PORT``. Every event increments ``counts[key]`` in a RocksDB table
(rocksdict driver) and sends ``{"key", "count"}`` to ``<topic>.counts``.
"""

from __future__ import annotations

import os
import sys

import faust

app = faust.App(
    os.environ.get("COUNTER_APP_ID", "rum-counter"),
    broker=os.environ.get("COUNTER_BROKER", "kafka://127.0.0.1:9092"),
    store="rocksdb://",
    datadir=os.environ.get("COUNTER_DATA_DIR", "/tmp/rum-counter"),
    web_port=int(os.environ.get("COUNTER_WEB_PORT", "6066")),
    web_host="127.0.0.1",
    topic_partitions=2,
    topic_replication_factor=1,
    broker_commit_every=10,
)
events = app.topic(
    os.environ.get("COUNTER_TOPIC", "counter-in"), key_serializer="raw", value_serializer="raw"
)
counts_out = app.topic(
    os.environ.get("COUNTER_TOPIC", "counter-in") + ".counts",
    key_serializer="raw",
    value_serializer="json",
)
counts = app.Table("counts", default=int, partitions=2, options={"driver": "rocksdict"})


@app.agent(events)
async def count(stream: faust.StreamT[bytes]) -> None:
    async for key, _value in stream.items():
        name = key.decode()
        counts[name] = counts[name] + 1
        await counts_out.send(key=key, value={"key": name, "count": counts[name]})


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()
