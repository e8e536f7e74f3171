"""Where one micro-batch's writes go: the state table, recommendations, dead letters.

The agent hands every write of a batch to a :class:`BatchOutput` and then calls
``close()``; the events of the batch are acked only once what ``close()``
returns has completed, so an offset is never committed before the state
changes and recommendations of its event are in Kafka (at-least-once means
nothing lost, not "probably sent").

Three implementations, chosen once per worker by :func:`output_for`:

- :class:`RecordBatchOutput` (at-least-once, the default): the records of a batch
  are appended to one aiokafka batch per topic partition and sent with
  ``send_batch``. Faust's per-record path (``Topic.send`` → ``FutureMessage`` →
  producer buffer → ``AIOKafkaProducer.send`` → callbacks) cost about 25-35 µs of
  event loop per record in ``rum bench stream``, with two records per event; a
  batch append costs about 5 µs. The state table stays Faust's: values go to its
  RocksDB store, records to its changelog topic (which Faust's recovery reads as
  if the table had sent them), and the persisted changelog offset is set once per
  partition after delivery, as Faust does after each record.
- :class:`TransactionalOutput` (exactly-once): every record goes into the
  transaction of the input partition its event came from, the one Faust commits
  with that partition's offsets. Faust's own ``Topic.send`` picks the transaction
  from the *consumer's* metadata, which knows only subscribed topics: for the
  recommendations and dead-letter topics it found none and sent outside any
  transaction, so read_committed subscribers saw a crashed batch's
  recommendations and then the redone batch's again (issue 8).
- :class:`FaustOutput` (Faust's agent tests, in-memory store): the table's own
  ``__setitem__`` and the runtime's send callbacks, which tests replace.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import faust
from aiokafka.partitioner import DefaultPartitioner
from faust.streams import _current_event
from faust.types import TP
from faust.types.stores import StoreT

Headers = list[tuple[str, bytes]]
Send = Callable[[bytes | None, bytes | None, Headers], Awaitable[Any]]


@contextlib.contextmanager
def as_current_event(event: faust.types.EventT) -> Iterator[None]:
    """Make ``event`` the one tables see as current (its partition picks the RocksDB
    database and the changelog partition), for this task only.

    Only faust's context variable is set, never ``Stream.current_event``: the
    micro-batch buffer reads that attribute to pair each buffered value with its
    event, and pointing it at an older record made the buffer take one record
    twice and lose another.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class BatchOutput(Protocol):
    """The writes of one micro-batch; ``event`` is the input record a write belongs to.

    ``thread_safe``: ``write_state`` may be called from the scoring thread (the
    agent then applies and writes whole batches there).
    """

    thread_safe: bool

    def write_state(self, event: faust.types.EventT, key: bytes, value: bytes) -> None: ...

    async def recommend(
        self, event: faust.types.EventT, key: bytes, value: bytes, headers: Headers
    ) -> None: ...

    async def dead_letter(
        self, event: faust.types.EventT, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None: ...

    async def close(self) -> Awaitable[Any] | None:
        """Hand everything to Kafka; the awaitable completes when all of it is delivered
        (None: delivery is the transport's business, as with exactly-once commits)."""
        ...


@dataclass
class FaustOutput:
    """Faust's table assignment and the runtime's send callbacks, record by record."""

    states: faust.types.TableT[Any, Any]
    send_recommendation: Send
    send_dead_letter: Send
    thread_safe = False  # Faust's table sends its changelog from the event loop

    def write_state(self, event: faust.types.EventT, key: bytes, value: bytes) -> None:
        # The table writes its changelog to the partition of the current event.
        with as_current_event(event):
            self.states[key] = value

    async def recommend(
        self, event: faust.types.EventT, key: bytes, value: bytes, headers: Headers
    ) -> None:
        await self.send_recommendation(key, value, headers)

    async def dead_letter(
        self, event: faust.types.EventT, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        await self.send_dead_letter(key, value, headers)

    async def close(self) -> Awaitable[Any] | None:
        return None


@dataclass
class TransactionalOutput(FaustOutput):
    """Exactly-once: recommendations and dead letters in the input partition's transaction."""

    app: faust.App | None = None
    recommendations_topic: str = ""
    dlq_topic: str = ""

    def _transactional_id(self, event: faust.types.EventT) -> str:
        # Faust's TransactionManager.transactional_id_format, for the input partition.
        assert self.app is not None
        tp = event.message.tp
        group = self.app.assignor.group_for_topic(tp.topic)
        return f"{self.app.conf.id}-{group}-{tp.partition}"

    async def _send(
        self,
        event: faust.types.EventT,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
    ) -> None:
        assert self.app is not None
        producer: Any = self.app.producer
        await producer.send(
            topic,
            key,
            value,
            None,  # partition: by key, in the output topic
            None,  # timestamp: now
            headers,
            transactional_id=self._transactional_id(event),
        )

    async def recommend(
        self, event: faust.types.EventT, key: bytes, value: bytes, headers: Headers
    ) -> None:
        await self._send(event, self.recommendations_topic, key, value, headers)

    async def dead_letter(
        self, event: faust.types.EventT, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        await self._send(event, self.dlq_topic, key, value, headers)


@dataclass
class _Record:
    key: bytes | None
    value: bytes | None
    headers: Headers

    def fields(self) -> dict[str, Any]:
        """Keyword arguments of ``BatchBuilder.append`` (timestamp None: now)."""
        return {"key": self.key, "value": self.value, "timestamp": None, "headers": self.headers}


@dataclass
class RecordBatchOutput:
    """At-least-once: a batch's records in one aiokafka batch per topic partition.

    One per batch (batches overlap: the next is written while this one is scored).
    """

    producer: Any  # aiokafka.AIOKafkaProducer (started by Faust)
    states: faust.types.TableT[Any, Any]
    recommendations_topic: str
    dlq_topic: str
    # Shared by the worker's batches: changelog partition -> last offset set in RocksDB.
    persisted_offsets: dict[int, int]
    _records: dict[tuple[str, int | None], list[_Record]] = field(default_factory=dict)
    _partitioner: DefaultPartitioner = field(default_factory=DefaultPartitioner)
    # The RocksDB store and the record lists: written from the scoring thread while the
    # event loop does not touch them (it reads them only in close(), after the work).
    thread_safe = True

    def write_state(self, event: faust.types.EventT, key: bytes, value: bytes) -> None:
        with as_current_event(event):
            self.states.data[key] = value  # the RocksDB store of the event's partition
        changelog = self.states.changelog_topic.get_topic_name()
        self._append(changelog, event.message.partition, key, value, [])

    async def recommend(
        self, event: faust.types.EventT, key: bytes, value: bytes, headers: Headers
    ) -> None:
        self._append(self.recommendations_topic, None, key, value, headers)

    async def dead_letter(
        self, event: faust.types.EventT, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        self._append(self.dlq_topic, None, key, value, headers)

    def _append(
        self, topic: str, partition: int | None, key: bytes | None, value: bytes | None, h: Headers
    ) -> None:
        self._records.setdefault((topic, partition), []).append(_Record(key, value, h))

    async def close(self) -> Awaitable[Any] | None:
        if not self._records:
            return None
        by_partition: dict[tuple[str, int], list[_Record]] = {}
        for (topic, fixed), records in self._records.items():
            if fixed is not None:
                by_partition.setdefault((topic, fixed), []).extend(records)
                continue
            # Keyed like the producer's own default partitioner would (murmur2).
            partitions = sorted(await self.producer.partitions_for(topic))
            for record in records:
                chosen = self._partitioner(record.key, partitions, partitions)
                by_partition.setdefault((topic, chosen), []).append(record)
        self._records = {}
        changelog = self.states.changelog_topic.get_topic_name()
        pending: list[asyncio.Future[Any]] = []
        for (topic, partition), records in by_partition.items():
            for future, count in await self._send(topic, partition, records):
                if topic == changelog:
                    future = asyncio.ensure_future(self._persisted(future, partition, count))
                pending.append(future)
        return asyncio.gather(*pending)

    async def _send(
        self, topic: str, partition: int, records: list[_Record]
    ) -> list[tuple[asyncio.Future[Any], int]]:
        """(delivery future, record count) per aiokafka batch sent."""
        sent: list[tuple[asyncio.Future[Any], int]] = []
        batch, count = self.producer.create_batch(), 0
        for record in records:
            if batch.append(**record.fields()) is None:
                if count == 0:
                    size = len(record.value or b"") + len(record.key or b"")
                    msg = f"a record of {size} bytes does not fit in a producer batch ({topic})"
                    raise ValueError(msg)
                sent.append((await self._submit(batch, topic, partition), count))
                batch, count = self.producer.create_batch(), 0
                batch.append(**record.fields())
            count += 1
        sent.append((await self._submit(batch, topic, partition), count))
        return sent

    async def _submit(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        # Closed, the sender takes it at once; an open one would wait out
        # producer_linger, which only pays when records are sent one by one.
        batch.close()
        return await self.producer.send_batch(batch, topic, partition=partition)

    async def _persisted(self, delivery: asyncio.Future[Any], partition: int, count: int) -> None:
        # The last offset in RocksDB tells Faust's recovery where the changelog is
        # already applied locally (Faust does this after every record it sends).
        # Deliveries may complete out of order; the offset only moves forward.
        metadata = await delivery
        last = metadata.offset + count - 1
        if last > self.persisted_offsets.get(partition, -1):
            self.persisted_offsets[partition] = last
            changelog = self.states.changelog_topic.get_topic_name()
            store = cast(StoreT[Any, Any], self.states.data)
            store.set_persisted_offset(TP(changelog, partition), last)
