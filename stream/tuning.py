"""Faust and Kafka client settings chosen for throughput, each with the profile behind it.

``rum bench stream`` under py-spy showed the worker's event loop spending about
half of its time in ``socket.send`` of produce requests: with Faust's default
``producer_linger = 0`` every recommendation and changelog record left as its
own tiny request, one syscall (and one broker wake-up) each. These options
let the producer and the consumer move records in batches; the worker's own
micro-batching does the rest.
"""

from __future__ import annotations

from typing import Any

from stream.settings import Settings

PRODUCER_LINGER_S = 0.005  # a few ms: well inside the latency budget (p50 ≤ 20 ms)
PRODUCER_BATCH_BYTES = 512 * 1024  # per partition; below producer_max_request_size (1 MB)
FETCH_BYTES = 8 * 1024 * 1024  # per partition and fetch: a whole micro-batch in one request


def raise_producer_buffer(app: Any, settings: Settings) -> None:
    """Let a whole micro-batch of table writes queue before Faust throttles the consumer.

    Table writes go through Faust's producer buffer; above ``max_messages`` (100) the
    conductor flushes it one ``wait_for`` per message and logs a warning each time,
    which the profile showed on every batch of a few hundred users.
    """
    app.producer.buffer.max_messages = max(1000, 4 * settings.batch_size)


def faust_throughput_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``faust.App`` (the worker's app and nothing else)."""
    return {
        "producer_linger": PRODUCER_LINGER_S,
        "producer_max_batch_size": PRODUCER_BATCH_BYTES,
        "consumer_max_fetch_size": FETCH_BYTES,
        # Events buffered per partition ahead of the agent: several micro-batches, so the
        # fetcher keeps filling while a batch is scored.
        "stream_buffer_maxsize": max(4096, 4 * settings.batch_size),
    }


def rocksdb_options(settings: Settings) -> dict[str, Any]:
    """Options of the state table's RocksDB databases (one per partition).

    Faust's defaults (three 64 MB memtables and a 2 GB block cache per partition)
    let a worker holding four partitions of W1 grow past 1.5 GB of resident memory;
    the whole W1 state is about 120 MB, so a small cache holds its hot part.
    """
    mb = 1024 * 1024
    return {
        "driver": "rocksdict",
        "write_buffer_size": settings.rocksdb_write_buffer_mb * mb,
        "max_write_buffer_number": 2,
        "block_cache_size": settings.rocksdb_block_cache_mb * mb,
    }
