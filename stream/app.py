"""The Faust worker: purchases in, per-user RUM memory in RocksDB, recommendations out.

``create_app(settings, scorer)`` builds the app; nothing connects or loads at
import. The agent does I/O only: the batch logic is in :mod:`stream.processing`
and the state transition in :mod:`stream.state`.

Model versions are swapped in without a restart: a task follows the models topic
(:mod:`stream.models`) with its own group-less consumer, loads an announced
artifact in a loader thread, and assigns ``runtime.scorer``. Each batch reads
``runtime.scorer`` once, when it starts, so a swap lands between two batches;
offsets are untouched, so no event is lost or applied twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import torch
from faust.exceptions import SameNode
from faust.tables.manager import TableManager
from faust.types import TP
from faust.web import Request, Response, View

from model.serving import Recommendation, Scorer
from stream import fastpath
from stream.batching import MicroBatcher
from stream.events import Position
from stream.faults import failpoint
from stream.logs import get_logger
from stream.metrics import Metrics
from stream.models import Announcement, AnnouncementError, load_announced
from stream.ordering import OffsetGuard, Verdict
from stream.output import (
    BatchOutput,
    FaustOutput,
    RecordBatchOutput,
    TransactionalOutput,
    as_current_event,
)
from stream.processing import (
    AppliedBatch,
    Record,
    apply_batch,
    items_payload,
    prepare_scorer,
    recommend_many,
    score_requests,
)
from stream.settings import Settings
from stream.state import StateDecodeError, UserState, decode_state, encode_state, refresh
from stream.tuning import faust_throughput_options, rocksdb_options

log = get_logger("rum.worker")

STATE_TABLE = "user-state"
IN_FLIGHT = 4  # batches applied but not yet handed to Kafka (at-least-once pipeline)


Send = Callable[[bytes | None, bytes | None, list[tuple[str, bytes]]], Awaitable[Any]]


async def _unset_send(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
) -> Any:
    raise RuntimeError("the worker's output topics are not wired")


@dataclass
class Runtime:
    """What the agent and the web views share in one worker process.

    ``send_recommendation`` and ``send_dead_letter`` are the two outputs; agent
    tests replace them to capture what would go to Kafka.
    """

    settings: Settings
    scorer: Scorer
    send_recommendation: Send = _unset_send
    send_dead_letter: Send = _unset_send
    metrics: Metrics = field(default_factory=Metrics)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="rum-score")
    )
    # Loading a new version must not hold up scoring: its own thread.
    loader: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="rum-load")
    )
    refused: dict[str, Any] | None = None  # the last announcement refused, for /health

    def _load_prepared(self, announcement: Announcement) -> Scorer:
        # In the loader thread: the first batch of the new version pays for nothing.
        scorer = load_announced(announcement, self.settings.model_dir)
        return prepare_scorer(scorer, self.settings)

    async def adopt(self, announcement: Announcement) -> bool:
        """Load, check and swap in an announced version; False (logged) when refused.

        The current version keeps serving while the new one loads, and stays when
        the new one is refused.
        """
        current = self.scorer
        if announcement.version == current.version:
            return False
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        try:
            scorer = await loop.run_in_executor(self.loader, self._load_prepared, announcement)
        except Exception as exc:  # any unusable artifact: refuse it, keep serving
            self.metrics.model_announcements.labels("refused").inc()
            self.refused = {
                "version": announcement.version,
                "uri": announcement.uri,
                "offset": announcement.offset,
                "error": str(exc),
            }
            log.error(
                "model_refused",
                version=announcement.version,
                uri=announcement.uri,
                error=str(exc),
                keeping=current.version,
                topic=self.settings.topic_models,
                partition=0,
                offset=announcement.offset,
            )
            return False
        self.scorer = scorer  # the next batch reads it
        self.metrics.model_announcements.labels("swapped").inc()
        self.metrics.serving(scorer.version, scorer.variant, (current.version, current.variant))
        log.info(
            "model_swapped",
            version=scorer.version,
            previous=current.version,
            variant=scorer.variant,
            items=scorer.num_items,
            users=scorer.users.size,
            load_seconds=round(time.perf_counter() - began, 3),
            reason=announcement.reason,
            topic=self.settings.topic_models,
            offset=announcement.offset,
        )
        return True


def _headers(raw: Any) -> list[tuple[str, bytes]]:
    if not raw:
        return []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(str(name), bytes(value or b"")) for name, value in items]


def _record(event: faust.types.EventT) -> Record:
    message = event.message
    return Record(
        key=message.key,
        value=message.value,
        headers=_headers(message.headers),
        position=Position(message.topic, message.partition, message.offset),
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
    )


class WorkerApp(faust.App):
    """faust.App whose consumer rewinds input partitions that have no committed offset.

    After a rebalance Faust drops what the fetcher read ahead and seeks every partition
    back to its committed offset; aiokafka's ``seek_to_committed`` skips a partition
    whose committed offset is missing or 0, so the records dropped there were never read
    again. A worker that replaced one killed before its first commit saw the whole
    backlog of such a partition vanish and then sat idle (the post-rebalance stall).
    Such partitions are now sought to offset 0 (the log start, by the reset policy);
    what was applied before is recognised by the per-user dedupe ring.
    """

    input_topic: str = ""
    rewind_uncommitted: bool = True
    commit_limit: Callable[[tuple[str, int]], int | None] | None = None

    def _new_consumer(self) -> Any:
        # The concrete aiokafka consumer; ConsumerT (the protocol) lacks these methods.
        consumer: Any = super()._new_consumer()
        fastpath.install(consumer)  # one step per record instead of four tasks
        input_topic = self.input_topic
        new_offset = consumer._new_offset

        def new_offset_within_limit(tp: Any) -> int | None:
            # Never commit an input offset beyond the first one the agent has not handled
            # (see stream.ordering.OffsetGuard.commit_limit).
            offset: int | None = new_offset(tp)
            limit = self.commit_limit((tp.topic, tp.partition)) if self.commit_limit else None
            if offset is not None and limit is not None and offset > limit:
                return limit
            return offset

        consumer._new_offset = new_offset_within_limit

        async def seek_to_committed_or_start() -> Any:
            # Runs in the consumer's own thread, as Faust's seek_to_committed does; the
            # extra seeks are synchronous (no waiting on positions: the fetcher that
            # delivers changelog records during recovery may be the caller).
            kafka = consumer._thread._ensure_consumer()
            committed = await kafka.seek_to_committed()
            if not self.rewind_uncommitted:
                return committed
            fresh = [tp for tp, off in committed.items() if not off and tp.topic == input_topic]
            for tp in fresh:
                kafka.seek(tp, 0)
            if fresh:
                partitions = sorted(tp.partition for tp in fresh)
                log.info("uncommitted_partitions_rewound", topic=input_topic, partitions=partitions)
            return committed

        async def seek_to_committed() -> Any:
            return await consumer._thread.call_thread(seek_to_committed_or_start)

        consumer.seek_to_committed = seek_to_committed
        return consumer


def create_app(settings: Settings, scorer: Scorer, store: str = "rocksdb://") -> faust.App:
    """The worker app; ``store="memory://"`` serves Faust's in-memory agent tests."""
    torch.set_num_threads(settings.torch_threads)
    runtime = Runtime(settings=settings, scorer=scorer)
    exactly_once = settings.processing_guarantee == "exactly_once"
    runtime.metrics.serving(scorer.version, scorer.variant, None)
    app = WorkerApp(
        settings.app_id,
        broker=settings.broker,
        store=store,
        datadir=settings.data_dir,
        web_port=settings.web_port,
        web_bind=settings.web_bind,
        web_host=settings.web_host,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        processing_guarantee=settings.processing_guarantee,
        consumer_auto_offset_reset="earliest",
        # Exactly-once commits after every batch (commit_batch), never on a timer.
        broker_commit_every=2**31 if exactly_once else max(1000, settings.batch_size),
        broker_commit_interval=86_400.0 if exactly_once else 2.8,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 5),
        autodiscover=False,
        # Every topic and the table carry bytes the worker encodes itself: a
        # decoding error is then ours to dead-letter, never a crashed agent.
        key_serializer="raw",
        value_serializer="raw",
        **faust_throughput_options(settings),
    )
    app.input_topic = settings.topic_purchases
    purchases = app.topic(settings.topic_purchases, key_serializer="raw", value_serializer="raw")
    recommendations = app.topic(
        settings.topic_recommendations, key_serializer="raw", value_serializer="raw"
    )
    dead_letters = app.topic(settings.topic_dlq, key_serializer="raw", value_serializer="raw")
    states = app.Table(
        STATE_TABLE,
        partitions=settings.partitions,
        key_type=bytes,  # bytes types make faust store them raw (msgpack is ours)
        value_type=bytes,
        options=rocksdb_options(settings) if store.startswith("rocksdb") else None,
    )

    async def to_recommendations(
        key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Any:
        return await recommendations.send(key=key, value=value, headers=headers)

    async def to_dead_letters(
        key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Any:
        return await dead_letters.send(key=key, value=value, headers=headers)

    runtime.send_recommendation = to_recommendations
    runtime.send_dead_letter = to_dead_letters

    def batch_output() -> BatchOutput:
        """The output of the next batch (see :mod:`stream.output` for the three kinds)."""
        if exactly_once:
            return TransactionalOutput(
                states,
                runtime.send_recommendation,
                runtime.send_dead_letter,
                app,
                settings.topic_recommendations,
                settings.topic_dlq,
            )
        if not store.startswith("rocksdb"):  # Faust's agent tests
            return FaustOutput(states, runtime.send_recommendation, runtime.send_dead_letter)
        # Faust's aiokafka producer, started with the app (Producer._ensure_producer).
        producer: Any = app.producer
        return RecordBatchOutput(
            producer._ensure_producer(),
            states,
            settings.topic_recommendations,
            settings.topic_dlq,
            persisted_offsets,
        )

    persisted_offsets: dict[int, int] = {}  # changelog partition -> last offset in RocksDB

    def load_state(user_id: str, scorer: Scorer) -> UserState | None:
        # The store itself, not the table: Table.get checks `key in store` and then
        # reads the key again (two RocksDB lookups and five Python layers per read).
        raw = states.data.get(user_id.encode())
        if raw is None:
            return None
        try:
            return decode_state(raw, scorer)
        except StateDecodeError as exc:
            # The stored value is kept in the changelog history; starting the user
            # afresh beats stopping every user of the partition.
            log.error("state_unreadable", user_id=user_id, error=str(exc))
            return None

    async def send_dead_letters(
        records: list[Record],
        events: list[faust.types.EventT],
        batch: AppliedBatch,
        output: BatchOutput,
    ) -> None:
        for index, rejection in batch.dead_letters:
            record = records[index]
            pos = record.position
            headers = [
                ("rum-reason", rejection.reason.encode()),
                ("rum-detail", rejection.detail[:512].encode("utf-8", "replace")),
                ("rum-stage", rejection.stage.encode()),
                ("rum-source-topic", pos.topic.encode()),
                ("rum-source-partition", str(pos.partition).encode()),
                ("rum-source-offset", str(pos.offset).encode()),
                *record.headers,
            ]
            await output.dead_letter(events[index], record.key, record.value, headers)
            runtime.metrics.dead_letters.labels(rejection.reason).inc()
            log.warning(
                "dead_letter",
                reason=rejection.reason,
                detail=rejection.detail,
                stage=rejection.stage,
                topic=pos.topic,
                partition=pos.partition,
                offset=pos.offset,
            )

    # Exactly-once reads a dead worker's open transaction as "no committed offset":
    # rewinding or gap-checking from 0 then would replay committed output.
    guard = OffsetGuard(trust_missing_commit=not exactly_once)
    app.rewind_uncommitted = not exactly_once
    app.commit_limit = guard.commit_limit

    def in_partition_order(events: list[faust.types.EventT]) -> list[faust.types.EventT]:
        """The events to handle, each partition's in sequence; a gap is read again."""
        committed: Any = getattr(app.consumer, "_committed_offset", {})
        kept: list[faust.types.EventT] = []
        behind: set[tuple[str, int]] = set()
        for event in events:
            message = event.message
            tp = (message.topic, message.partition)
            if tp in behind:
                continue
            verdict = guard.admit(
                tp, message.offset, message.generation_id or 0, committed.get(message.tp)
            )
            if verdict is Verdict.HANDLE:
                kept.append(event)
            elif verdict is Verdict.GAP:
                behind.add(tp)
                gaps[message.tp] = guard.expected(tp)
                log.warning(
                    "stream_gap",
                    reason="records before this one were dropped by the consumer",
                    topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                    expected=guard.expected(tp),
                )
        return kept

    gaps: dict[Any, int] = {}

    async def read_gaps_again() -> None:
        committed: Any = getattr(app.consumer, "_committed_offset", {})
        while gaps:
            tp, offset = gaps.popitem()
            count_reread(tp, committed.get(tp), "gap")
            await app.consumer.seek(tp, offset)

    def count_reread(tp: Any, committed: int | None, why: str) -> None:
        """A repair (``rum_stream_resyncs_total``) or a first read from the log start.

        A partition that never had a committed offset is read from its start: the
        first reading of a fresh deployment, not records lost and read again.
        """
        if committed is None:
            runtime.metrics.first_reads.inc()
            log.info(
                "uncommitted_partition_read_from_start",
                topic=tp.topic,
                partition=tp.partition,
                trigger=why,
            )
        else:
            runtime.metrics.resyncs.inc()

    @dataclass
    class Prepared:
        """A batch admitted; its apply, state writes and scoring under way."""

        events: list[faust.types.EventT]  # the admitted ones
        records: list[Record]
        work: asyncio.Future[tuple[AppliedBatch, list[bytes]]]  # batch, encoded messages

    def write_states(
        batch: AppliedBatch, events: list[faust.types.EventT], scorer: Scorer, output: BatchOutput
    ) -> None:
        for user_id, state in batch.states.items():
            # Each user's record: its partition is the user's state partition.
            last = events[batch.last_index[user_id]]
            output.write_state(last, user_id.encode(), encode_state(state, scorer))
        failpoint("after_state_write")

    def scored(batch: AppliedBatch, scorer: Scorer) -> tuple[AppliedBatch, list[bytes]]:
        if not batch.requests:
            return batch, []
        started = time.perf_counter()
        messages = score_requests(batch.requests, scorer, settings)
        runtime.metrics.scoring_seconds.observe(time.perf_counter() - started)
        return batch, messages

    async def prepare(all_events: list[faust.types.EventT], output: BatchOutput) -> Prepared:
        """Admit a batch and start its work: validate, apply, write the states, score.

        With an output that may be written from another thread (the RocksDB store and
        record batches of at-least-once), all of it runs in the scoring thread: the
        event loop only reads events and sends, so it keeps reading while a batch is
        worked on (Faust's stream hands over one event per loop iteration, and a loop
        held up by a big batch let the next events age for seconds at 1,000 events/s).
        Batches run in that one thread in order, so each sees the states the one
        before wrote. Faust's own table writes (agent tests, exactly-once) stay on the
        event loop.
        """
        loop = asyncio.get_running_loop()
        # Read once: a model swapped in while this batch awaits lands on the next batch.
        scorer = runtime.scorer
        events = in_partition_order(all_events)
        if gaps:
            await read_gaps_again()
        records = [_record(event) for event in events]
        if records:
            runtime.metrics.batch_size.observe(len(records))

        def load_for_record(user_id: str, index: int) -> UserState | None:
            # RocksDB keeps one database per partition and reads the current event's:
            # point it at this user's own record (a batch spans partitions).
            with as_current_event(events[index]):
                return load_state(user_id, scorer)

        def applied() -> AppliedBatch:
            batch = apply_batch(records, load_for_record, scorer, settings)
            failpoint("after_apply")
            return batch

        def all_of_it() -> tuple[AppliedBatch, list[bytes]]:
            batch = applied()
            write_states(batch, events, scorer, output)
            return scored(batch, scorer)

        if output.thread_safe:
            work = loop.run_in_executor(runtime.executor, all_of_it)
        else:
            batch = applied()
            write_states(batch, events, scorer, output)
            work = loop.run_in_executor(runtime.executor, scored, batch, scorer)
        return Prepared(events, records, work)

    async def finish(prepared: Prepared, output: BatchOutput) -> None:
        """Once the work is done: metrics, dead letters and recommendations to the output."""
        metrics = runtime.metrics
        batch, messages = await prepared.work
        for outcome, count in batch.outcomes.items():
            metrics.events.labels(outcome.split(":", 1)[0]).inc(count)
        metrics.duplicates.inc(batch.outcomes["duplicate"] + batch.outcomes["stale"])
        metrics.unknown_items.inc(batch.outcomes["applied_unknown_item"])
        events = prepared.events
        await send_dead_letters(prepared.records, events, batch, output)
        headers = [("content-type", b"application/json")]
        for request, message in zip(batch.requests, messages, strict=True):
            event = events[batch.last_index[request.user_id]]
            await output.recommend(event, request.user_id.encode(), message, headers)
            now_ms = time.time() * 1000
            for ts_ms in request.record_ts_ms:
                if ts_ms:
                    metrics.lag_seconds.observe(max(0.0, (now_ms - ts_ms) / 1000))
        metrics.recommendations.inc(len(messages))

    async def commit_batch(stream: faust.Stream[Any], events: Sequence[faust.types.EventT]) -> None:
        """Exactly-once: commit each batch's transactions before the next batch sends.

        Faust commits on a timer, and a commit landing while a batch is half sent put
        that batch's recommendations into a committed transaction with offsets from
        before it: after a crash the batch ran again and read_committed consumers saw
        its event ids twice. Here the timer is off (see ``create_app``); the batch's
        events are acked and committed with its output, atomically per partition,
        before the next batch starts.
        """
        await ack_all(stream, events)
        await app.producer.flush()  # the table's changelog writes
        failpoint("after_delivery")
        await app.consumer.commit()

    async def ack_all(stream: faust.Stream[Any], events: Sequence[faust.types.EventT]) -> None:
        # Every event of the batch, also those the offset guard held back: Faust waits
        # for unacked events at a rebalance, and OffsetGuard.commit_limit keeps the
        # commit from passing the held-back ones.
        for event in events:
            await stream.ack(event)

    background: set[asyncio.Task[Any]] = set()

    def log_batch_failed(events: Sequence[faust.types.EventT], exc: BaseException) -> None:
        first = events[0].message if events else None
        log.error(
            "batch_failed",
            error=repr(exc),
            topic=getattr(first, "topic", None),
            partition=getattr(first, "partition", None),
            offset=getattr(first, "offset", None),
            size=len(events),
            exc_info=exc,
        )

    def in_background(
        coro: Awaitable[None], events: Sequence[faust.types.EventT]
    ) -> asyncio.Task[None]:
        """A task for the rest of a batch; if it fails, the worker crashes (nothing of
        the batch was acked, so a restart reads it again)."""
        task = asyncio.ensure_future(coro)
        background.add(task)

        def done(task: asyncio.Task[None]) -> None:
            background.discard(task)
            if task.cancelled() or task.exception() is None:
                return
            exc = cast(BaseException, task.exception())
            log_batch_failed(events, exc)
            crash = asyncio.ensure_future(app.crash(exc))
            background.add(crash)
            crash.add_done_callback(background.discard)

        task.add_done_callback(done)
        return task

    async def ack_when_delivered(
        stream: faust.Stream[Any], events: Sequence[faust.types.EventT], delivered: Any
    ) -> None:
        """At-least-once: ack a batch once its state changes and outputs are in Kafka,
        while the next batch is already being worked on."""
        await delivered  # raises if the producer gave up: nothing of the batch is acked
        failpoint("after_delivery")
        await ack_all(stream, events)

    async def complete(
        stream: faust.Stream[Any],
        events: list[faust.types.EventT],
        prepared: Prepared,
        output: BatchOutput,
        after: asyncio.Task[None] | None,
    ) -> None:
        """The second half of a batch: recommendations, hand-over to Kafka, acks.

        ``after`` is the previous batch's completion: this batch's records go to the
        producer only once that one's have (a user's changelog records keep their
        order); its failure fails this one too.
        """
        await finish(prepared, output)
        if after is not None:
            await after
        delivered = await output.close()
        failpoint("after_send")
        if delivered is None:
            await ack_all(stream, events)
        else:
            in_background(ack_when_delivered(stream, events, delivered), events)

    busy_since: list[float | None] = [None]  # when the running batch began
    last_batch_at = [time.monotonic()]

    completing: deque[asyncio.Task[None]] = deque()  # batches applied, not yet handed over

    async def process_batches(stream: faust.Stream[Any], batcher: MicroBatcher[Any]) -> None:
        """Micro-batches, pipelined under at-least-once: batch N+1 is admitted and its
        work queued while N is still worked on and handed to Kafka (they took turns
        before, and at 1,000 events/s each turn waited out a thread hand-off and a
        produce round trip: batches of a few events, seconds of lag). At most
        ``IN_FLIGHT`` batches are between admission and hand-over, each handed over
        after the one before. Exactly-once commits each batch's transaction before the
        next batch writes anything, so it does not overlap.
        """
        while True:
            batch_events = cast(list[faust.types.EventT], await batcher.next_batch())
            busy_since[0] = time.monotonic()
            output = batch_output()
            try:
                prepared = await prepare(batch_events, output)
                if exactly_once:
                    await finish(prepared, output)
                    await output.close()
                    failpoint("after_send")
                    await commit_batch(stream, batch_events)
                else:
                    after = completing[-1] if completing else None
                    task = in_background(
                        complete(stream, batch_events, prepared, output, after), batch_events
                    )
                    completing.append(task)
                    task.add_done_callback(completing.remove)
                    if len(completing) > IN_FLIGHT:
                        await completing[0]
            except Exception as exc:
                log_batch_failed(batch_events, exc)
                raise
            busy_since[0] = None
            last_batch_at[0] = time.monotonic()

    @app.agent(purchases, name="rum-purchases")
    async def process_purchases(stream_t: faust.StreamT[Any]) -> None:
        """Read events into the micro-batcher; a task of its own processes the batches.

        The stream does not ack: a batch's events are acked once its output is
        delivered (see :func:`ack_when_delivered`).
        """
        stream = cast(faust.Stream[Any], cast(faust.Stream[Any], stream_t).noack())
        batcher: MicroBatcher[Any] = MicroBatcher(settings.batch_size, settings.batch_wait_s)
        processor = in_background(process_batches(stream, batcher), [])
        try:
            async for event in stream.events():
                if processor.done():
                    processor.result()  # its error ends the agent too
                await batcher.put(event)
        finally:
            processor.cancel()

    if settings.resync_idle_s > 0:

        @app.timer(interval=max(1.0, settings.resync_idle_s / 2))
        async def resync_dropped_records() -> None:
            """Read again what Faust took from Kafka but never handed to the agent.

            Around rebalances Faust drops records it has already fetched (queues
            cleared, records of an older generation skipped) and counts on a seek to
            the committed offset to read them again; when that seek misses, those
            records are never processed and the partition's commit cannot move past
            them. A quiet worker (no batch running, nothing queued, none for
            ``resync_idle_s``) whose consumer position is beyond its committed offset
            has such records: the partition is sought back to its committed offset.
            Events read twice are recognised by the dedupe ring.
            """
            now = time.monotonic()
            consumer: Any = app.consumer
            quiet = (
                busy_since[0] is None
                and not completing
                and now - last_batch_at[0] >= settings.resync_idle_s
            )
            recovered = cast(TableManager, app.tables).recovery.completed.is_set()
            if not quiet or app.rebalancing or not recovered or purchases.queue.qsize():
                return
            for tp in list(consumer.assignment()):
                if tp.topic != settings.topic_purchases:
                    continue
                known = consumer._committed_offset.get(tp)
                if known is None and exactly_once:
                    continue  # maybe an open transaction's offsets: not known to be 0
                committed = known or 0
                try:
                    position = await consumer.position(tp)
                    if position is None or position <= committed:
                        continue
                    await consumer.seek(tp, committed)
                except Exception as exc:  # revoked meanwhile, broker away: next round
                    log.info(
                        "stream_resync_skipped",
                        topic=tp.topic,
                        partition=tp.partition,
                        error=repr(exc),
                    )
                    continue
                if known is not None:
                    log.warning(
                        "stream_resync",
                        reason="records read but never committed",
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=committed,
                        position=position,
                    )
                count_reread(tp, known, "idle")
                last_batch_at[0] = now  # give the records read again time to arrive

    @app.page("/recommendations/{user_id}")
    async def recommendations_view(web: View, request: Request, user_id: str) -> Response:
        raw_k = request.query.get("k", str(settings.k))
        try:
            k = int(raw_k)
        except ValueError:
            return web.json({"error": f"k must be an integer, got {raw_k[:32]!r}"}, status=400)
        if not 1 <= k <= settings.max_k:
            return web.json({"error": f"k must be between 1 and {settings.max_k}"}, status=400)
        if not user_id or len(user_id) > settings.max_id_length:
            msg = f"user_id must have 1 to {settings.max_id_length} characters"
            return web.json({"error": msg}, status=400)
        # Routed to the worker that owns the user (faust's table_route, with a 503
        # instead of a 500 while that worker is unreachable, e.g. during a rebalance).
        try:
            return await app.router.route_req(states.name, user_id, web.web, request)
        except SameNode:
            refusal = not_held_here(user_id)
            if refusal is not None:
                return web.json(refusal, status=503, headers={"Retry-After": "1"})
        except Exception as exc:
            log.warning("route_failed", user_id=user_id, error=repr(exc))
            return web.json(
                {
                    "error": "the worker that owns this user is not reachable; retry",
                    "detail": repr(exc),
                },
                status=503,
                headers={"Retry-After": "1"},
            )
        scorer = runtime.scorer

        def read_and_rank() -> tuple[UserState | None, list[list[Recommendation]]]:
            # In the scoring thread, where the batches read and write the store too.
            state = load_state(user_id, scorer)
            if state is not None:
                state = refresh(state, scorer)
            memory = state.memory if state is not None else scorer.empty_memory()
            seen = frozenset(state.history) if state and settings.exclude_seen else frozenset()
            ranked = recommend_many(scorer, [user_id], [memory], [seen], k, settings)
            return state, ranked

        loop = asyncio.get_running_loop()
        state, ranked = await loop.run_in_executor(runtime.executor, read_and_rank)
        return web.json(recommendation_body(user_id, ranked[0], scorer.version, state))

    def not_held_here(user_id: str) -> dict[str, Any] | None:
        """Why this worker must not answer for ``user_id`` (None: it holds the user).

        The partition map names this worker's own address as the owner's. When the
        worker is not assigned that partition, another worker announces the same
        address (e.g. every replica of a compose service announcing one name): an
        answer from here would be a cold start for a user who has a history.
        """
        changelog = states.changelog_topic.get_topic_name()
        key = states.changelog_topic.prepare_key(user_id, None)[0]
        tp: TP = app.producer.key_partition(changelog, key)
        if app.assignor.is_active(tp):
            return None
        address = str(app.conf.canonical_url)
        log.warning("route_misdirected", user_id=user_id, partition=tp.partition, address=address)
        return {
            "error": (
                f"this worker ({address}) does not hold partition {tp.partition} of this user,"
                " yet the partition map names its address: another worker announces the same"
                " RUM_WEB_HOST:RUM_WEB_PORT (give each worker its own), or partitions are moving"
            ),
            "partition": tp.partition,
        }

    def current_health() -> tuple[bool, dict[str, Any]]:
        return health_report(
            assigned=len(app.consumer.assignment()) if app.consumer is not None else 0,
            recovered=cast(TableManager, app.tables).recovery.completed.is_set(),
            rebalancing=bool(app.rebalancing),
            runtime=runtime,
        )

    @app.page("/health")
    async def health(web: View, request: Request) -> Response:
        ok, body = current_health()
        return web.json(body, status=200 if ok else 503)

    @app.page("/health/ready")
    async def health_ready(web: View, request: Request) -> Response:
        ok, body = current_health()
        return web.json(body, status=200 if ok else 503)

    @app.page("/health/live")
    async def health_live(web: View, request: Request) -> Response:
        return web.json(liveness_report(runtime))

    @app.page("/metrics")
    async def metrics_view(web: View, request: Request) -> Response:
        return web.bytes(runtime.metrics.render(), content_type="text/plain; version=0.0.4")

    if settings.debug_endpoints:
        from stream.debug import debug_report

        @app.page("/debug/tasks")
        async def debug_tasks(web: View, request: Request) -> Response:
            return web.text(debug_report(app, purchases))

    @app.task
    async def follow_models() -> None:
        await follow_announcements(runtime)

    _RUNTIMES[id(app)] = runtime
    return app


def health_report(
    *, assigned: int, recovered: bool, rebalancing: bool, runtime: Runtime
) -> tuple[bool, dict[str, Any]]:
    """Whether the worker is ready, and the body of ``GET /health``.

    Ready once its first assignment has been recovered and no rebalance is under
    way. The assignment may be empty: faust's copartitioned assignor fills each
    worker up to ceil(partitions / workers) and keeps what a worker already holds,
    so a third worker over four partitions can stand by with none (2, 2, 0). Such
    a worker is up, answers HTTP by routing to the owners and takes partitions at
    the next rebalance; calling it "starting" would keep it unhealthy for good.
    """
    ok = recovered and not rebalancing
    body = {
        "status": "ok" if ok else "starting",
        "assigned_partitions": assigned,
        "rebalancing": rebalancing,
        "recovered": recovered,
        "model_version": runtime.scorer.version,
        "model_variant": runtime.scorer.variant,
        "model_refused": runtime.refused,
    }
    return ok, body


def recommendation_body(
    user_id: str, ranked: list[Recommendation], model_version: str, state: UserState | None
) -> dict[str, Any]:
    """The body of ``GET /recommendations/{user_id}`` (every field is in the README).

    ``cold_start`` is true when the worker holds no state for the user (no event of
    theirs applied): the list then comes from the model alone, the same for every
    such user.
    """
    return {
        "user_id": user_id,
        "items": items_payload(ranked),
        "model_version": model_version,
        "history": list(state.history) if state is not None else [],
        "events_applied": state.applied if state is not None else 0,
        "cold_start": state is None,
        "generated_at": time.time(),
    }


def liveness_report(runtime: Runtime) -> dict[str, Any]:
    """The body of ``GET /health/live``: the process is up and its web server answers.

    Always 200: a worker that is rebalancing or recovering is alive (restarting
    it would only start the recovery again); readiness is ``/health/ready``.
    """
    return {"status": "alive", "model_version": runtime.scorer.version}


async def follow_announcements(runtime: Runtime, retry_s: float = 5.0) -> None:
    """Follow the models topic for the life of the worker, without a consumer group.

    It reads from the beginning (compacted: one record per version), so a worker
    learns the current version when it starts; within what one fetch returns only
    the last announcement counts (earlier ones are already superseded).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    settings = runtime.settings
    topic = settings.topic_models
    while True:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"{settings.app_id}-models",
        )
        try:
            await consumer.start()
            if topic not in await consumer.topics():
                log.warning("models_topic_missing", topic=topic, retry_s=retry_s)
                await asyncio.sleep(retry_s)
                continue
            partitions = [TopicPartition(topic, 0)]  # one partition: a total order of versions
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            log.info("models_following", topic=topic, serving=runtime.scorer.version)
            while True:
                fetched = await consumer.getmany(*partitions, timeout_ms=1000)
                latest: Announcement | None = None
                for records in fetched.values():
                    for record in records:
                        try:
                            latest = Announcement.from_bytes(record.value, record.offset)
                        except AnnouncementError as exc:
                            log.warning(
                                "announcement_skipped",
                                error=str(exc),
                                topic=record.topic,
                                partition=record.partition,
                                offset=record.offset,
                            )
                if latest is not None:
                    await runtime.adopt(latest)
        except KafkaError as exc:
            log.error("models_follow_failed", error=repr(exc), topic=topic, retry_s=retry_s)
            await asyncio.sleep(retry_s)
        finally:
            await _stop_consumer(consumer)


async def _stop_consumer(consumer: Any) -> None:
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the worker is stopping: let it
        # aiokafka's group-less coordinator lets the cancellation of its own internal
        # task escape from stop(); that must not end the follower.


_RUNTIMES: dict[int, Runtime] = {}


def runtime_of(app: faust.App) -> Runtime:
    """The runtime that :func:`create_app` made for ``app`` (tests swap its outputs)."""
    return _RUNTIMES[id(app)]
