"""``rum trainer``: fine-tune the current model from the purchases topic, publish it guarded.

One cycle (``rum trainer --once`` runs exactly one):

1. **Read** ``purchases`` with kafka-python, every partition manually assigned
   (never the workers' consumer group), from the beginning up to the end offsets
   seen when the cycle starts. The topic *is* the training data (keep it
   retained, README "Retention of the input topic"), so each cycle re-reads the
   window instead of keeping a second copy of the log; records are validated like
   the worker validates them and de-duplicated by ``event_id`` (replays repeat
   events; the workers drop those, so the trainer does too).
2. **Window**: every retained event, or the last ``RUM_TRAINER_WINDOW_DAYS`` days
   before the newest event's ``ts`` (event time, not wall-clock: a replayed
   history keeps its own clock).
3. **Held-out tail**: each user's last event in the window (users with at least
   two events) is a ranking question over the whole catalogue; the rest is fitted.
4. **Warm start** from the current version (the last announcement on the models
   topic, else the newest artifact of ``RUM_MODEL_DIR``), vocabularies grown for
   the window's new users and items, ``RUM_TRAINER_EPOCHS`` epochs of fine-tuning
   (``--candidate DIR`` evaluates a model trained elsewhere instead).
5. **Guard**: HR@10 and NDCG@10 of both versions on the tail; the new version is
   published unless one of them is lower than the current one's by more than
   ``RUM_TRAINER_TOLERANCE``; otherwise the cycle logs why and keeps the current.
6. **Publish**: the artifact is written atomically as ``STORE/<UTC time>-<version>``
   and announced on the models topic (:mod:`stream.models`).

Between cycles it sleeps. The offsets up to which the last cycle read, and when it
ran, are kept in ``RUM_TRAINER_DATA_DIR/trainer-state.json``: a cycle is due when
``RUM_TRAINER_EVERY_EVENTS`` new events have arrived since, or when
``RUM_TRAINER_EVERY_MIN`` minutes have passed and at least one new event arrived.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import evaluate as ev
from model.artifact import (
    CONFIG,
    Artifact,
    ArtifactError,
    load_artifact,
    new_store_entry,
    resolve_model_dir,
    save_artifact,
    weights_version,
)
from model.data import EventLog, from_rows
from model.finetune import fine_tune, grow, heldout_tail
from model.options import add_flag, add_option
from model.serving import Scorer
from model.splits import Case
from model.training import TrainConfig
from stream.events import Position, Purchase, parse_purchase
from stream.logs import configure_logging, get_logger
from stream.models import (
    Announcement,
    announce,
    artifact_path,
    artifact_uri,
    check_scorer,
    read_announcements,
)
from stream.settings import Settings, SettingsError

log = get_logger("rum.trainer")

STATE_FILE = "trainer-state.json"
GUARDED = ("hr@10", "ndcg@10")
DAY_S = 86400.0


class TrainerError(RuntimeError):
    """A cycle cannot run (no model, no data, a store that is not a store); the message says
    what to fix."""


# --- the guard (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    publish: bool
    reason: str


def judge(
    current: dict[str, float],
    new: dict[str, float],
    tolerance: float,
    keys: tuple[str, ...] = GUARDED,
) -> Verdict:
    """Publish unless a guarded metric of ``new`` is below ``current``'s by more than
    ``tolerance`` (absolute)."""
    worse = [
        f"{key} {new[key]:.4f} < current {current[key]:.4f} - tolerance {tolerance:g}"
        for key in keys
        if new[key] < current[key] - tolerance
    ]
    if worse:
        return Verdict(False, "new version is worse on the held-out tail: " + "; ".join(worse))
    summary = ", ".join(f"{key} {current[key]:.4f} -> {new[key]:.4f}" for key in keys)
    return Verdict(True, f"not worse beyond tolerance {tolerance:g}: {summary}")


# --- schedule (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class TrainerState:
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> next offset to read
    last_cycle_at: float = 0.0
    last_version: str = ""

    def new_events(self, end_offsets: dict[int, int]) -> int:
        return sum(max(0, end - self.offsets.get(p, 0)) for p, end in end_offsets.items())


def cycle_due(
    state: TrainerState, end_offsets: dict[int, int], settings: Settings, now: float
) -> bool:
    new = state.new_events(end_offsets)
    if new == 0:
        return False
    if settings.trainer_every_events and new >= settings.trainer_every_events:
        return True
    never_ran = state.last_cycle_at == 0.0
    return bool(
        settings.trainer_every_min
        and (never_ran or now - state.last_cycle_at >= settings.trainer_every_min * 60.0)
    )


def load_state(data_dir: str | Path) -> TrainerState:
    path = Path(data_dir) / STATE_FILE
    if not path.is_file():
        return TrainerState()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return TrainerState(
            offsets={int(p): int(o) for p, o in raw.get("offsets", {}).items()},
            last_cycle_at=float(raw.get("last_cycle_at", 0.0)),
            last_version=str(raw.get("last_version", "")),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("trainer_state_unreadable", path=str(path), error=repr(exc))
        return TrainerState()


def save_state(data_dir: str | Path, state: TrainerState) -> None:
    path = Path(data_dir) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    body = {
        "offsets": {str(p): o for p, o in sorted(state.offsets.items())},
        "last_cycle_at": state.last_cycle_at,
        "last_version": state.last_version,
    }
    tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --- reading the window ---------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    log: EventLog
    end_offsets: dict[int, int]
    records: int  # records read
    rejected: int  # records the worker would dead-letter
    duplicates: int  # repeated event ids
    outside: int  # events older than the window


def _consumer(settings: Settings) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        group_id=None,
        client_id="rum-trainer",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )


def end_offsets(settings: Settings) -> dict[int, int]:
    """The end offset of every partition of the purchases topic (empty if it does not exist)."""
    from kafka import TopicPartition

    consumer = _consumer(settings)
    try:
        ids = consumer.partitions_for_topic(settings.topic_purchases) or set()
        parts = [TopicPartition(settings.topic_purchases, p) for p in sorted(ids)]
        return (
            {tp.partition: int(o) for tp, o in consumer.end_offsets(parts).items()} if parts else {}
        )
    finally:
        consumer.close()


def read_window(settings: Settings, now: float | None = None, timeout_s: float = 600.0) -> Window:
    """Read the purchases topic up to its current end and build the training window."""
    from kafka import TopicPartition

    now = time.time() if now is None else now
    consumer = _consumer(settings)
    purchases: list[Purchase] = []
    seen: set[str] = set()
    records = rejected = duplicates = 0
    try:
        ids = consumer.partitions_for_topic(settings.topic_purchases) or set()
        parts = [TopicPartition(settings.topic_purchases, p) for p in sorted(ids)]
        if not parts:
            msg = f"topic {settings.topic_purchases!r} does not exist at {settings.broker}"
            raise TrainerError(msg)
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = {tp: int(o) for tp, o in consumer.end_offsets(parts).items()}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            if time.monotonic() > deadline:
                msg = f"reading {settings.topic_purchases} took over {timeout_s:.0f} s"
                raise TrainerError(msg)
            for tp, batch in consumer.poll(timeout_ms=500, max_records=50_000).items():
                for record in batch:
                    if record.offset >= ends[tp]:
                        continue
                    records += 1
                    parsed = parse_purchase(
                        record.key,
                        record.value,
                        [(str(k), bytes(v or b"")) for k, v in record.headers or []],
                        Position(record.topic, record.partition, record.offset),
                        record.timestamp,
                        settings,
                        now,
                    )
                    if not isinstance(parsed, Purchase):
                        rejected += 1
                        continue
                    if parsed.event_id in seen:
                        duplicates += 1
                        continue
                    seen.add(parsed.event_id)
                    purchases.append(parsed)
    finally:
        consumer.close()
    outside = 0
    if purchases and settings.trainer_window_days > 0:
        newest = max(p.ts for p in purchases)
        start = newest - settings.trainer_window_days * DAY_S
        kept = [p for p in purchases if p.ts >= start]
        outside = len(purchases) - len(kept)
        purchases = kept
    times = np.array([p.ts for p in purchases], dtype=np.float64)
    if len(times) and np.all(np.floor(times) == times):
        times = times.astype(np.int64)
    # Partitions are concatenated, and a user's events share one partition: the stable
    # sort keeps each user's arrival order on equal timestamps, as the worker saw it.
    window = from_rows(
        [p.user_id for p in purchases], [p.item_id for p in purchases], times, source="purchases"
    )
    return Window(
        log=window,
        end_offsets={tp.partition: o for tp, o in ends.items()},
        records=records,
        rejected=rejected,
        duplicates=duplicates,
        outside=outside,
    )


# --- one cycle -------------------------------------------------------------------------------


@dataclass
class CycleResult:
    published: bool
    reason: str
    current_version: str
    new_version: str = ""
    uri: str = ""
    current_metrics: dict[str, float] = field(default_factory=dict)
    new_metrics: dict[str, float] = field(default_factory=dict)
    window_events: int = 0
    window_users: int = 0
    window_items: int = 0
    heldout_users: int = 0
    new_users: int = 0
    new_items: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    end_offsets: dict[int, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        body["end_offsets"] = {str(p): o for p, o in self.end_offsets.items()}
        return body


def _store(settings: Settings) -> Path:
    if not settings.model_dir:
        msg = "RUM_MODEL_DIR is not set: point it at the model store (a directory of artifacts)"
        raise TrainerError(msg)
    store = Path(settings.model_dir)
    if (store / CONFIG).is_file():
        msg = (
            f"RUM_MODEL_DIR={store} is one artifact, not a store: the trainer publishes new "
            f"versions beside the current one. Move it to {store}/seed and point "
            f"RUM_MODEL_DIR (workers and trainer) at {store}"
        )
        raise TrainerError(msg)
    return store


def current_artifact(settings: Settings) -> tuple[Artifact, Path]:
    """The version workers serve now: the last announcement, else the store's newest."""
    announcements = read_announcements(settings)
    if announcements:
        path = artifact_path(announcements[-1].uri, settings.model_dir)
        return load_artifact(path), path
    path = resolve_model_dir(_store(settings))
    return load_artifact(path), path


def _scorer(art: Artifact) -> Scorer:
    return Scorer(art.config, art.version, art.users, art.items, art.weights, art.popularity)


def _fine_tune_config(art: Artifact, settings: Settings) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    trained = {k: v for k, v in art.settings.items() if k in names}
    trained.update(
        epochs=settings.trainer_epochs,
        lr=settings.trainer_lr,
        device="cpu",
        progress=False,
        variant=art.config.variant,
        slots=art.config.slots,
        dim=art.config.dim,
    )
    return TrainConfig(**trained)


def evaluate_tail(scorer: Scorer, cases: list[Case]) -> dict[str, float]:
    results = ev.evaluate_single(scorer, cases, (10,))
    return {key: results[key] for key in GUARDED}


def run_cycle(
    settings: Settings,
    candidate: str | None = None,
    say: Callable[[str], None] = lambda line: log.info("fine_tune", detail=line),
) -> CycleResult:
    """One read → fine-tune → evaluate → publish-or-keep cycle (see the module docstring)."""
    store = _store(settings)
    times: dict[str, float] = {}
    began = time.perf_counter()
    current_art, current_path = current_artifact(settings)
    current = _scorer(current_art)
    window = read_window(settings)
    times["read"] = time.perf_counter() - began
    fit, cases = heldout_tail(window.log)
    result = CycleResult(
        published=False,
        reason="",
        current_version=current.version,
        window_events=len(window.log),
        window_users=len(set(window.log.user_ids)),
        window_items=len(set(window.log.item_ids)),
        heldout_users=len(cases),
        end_offsets=window.end_offsets,
    )
    log.info(
        "window_read",
        topic=settings.topic_purchases,
        records=window.records,
        events=len(window.log),
        rejected=window.rejected,
        duplicates=window.duplicates,
        outside_window=window.outside,
        heldout_users=len(cases),
        current_version=current.version,
        current_path=str(current_path),
        seconds=round(times["read"], 2),
    )
    if not cases or len(fit) == 0:
        result.reason = "no user has two events in the window: nothing to fit and hold out"
        result.seconds = times
        return result
    step = time.perf_counter()
    if candidate is not None:
        art = load_artifact(candidate)
        net, users, items, popularity = art.network(), art.users, art.items, art.popularity
        train_settings: dict[str, Any] = {**art.settings, "candidate": str(Path(candidate))}
        train_metrics: dict[str, Any] = dict(art.metrics)
        times["fine_tune"] = 0.0
    else:
        grown = grow(
            current_art.config,
            current_art.weights,
            current_art.users,
            current_art.items,
            dict.fromkeys(str(u) for u in fit.user_ids),
            dict.fromkeys(str(i) for i in fit.item_ids),
        )
        result.new_users, result.new_items = grown.new_users, grown.new_items
        cfg = _fine_tune_config(current_art, settings)
        tuned = fine_tune(grown.net, grown.users, grown.items, fit, cfg, log=say)
        net, users, items, popularity = tuned.net, grown.users, grown.items, tuned.popularity
        times["fine_tune"] = time.perf_counter() - step
        train_settings = {
            **current_art.settings,
            **cfg.to_dict(),
            "protocol": "trainer",
            "finetuned_from": current.version,
            "window_days": settings.trainer_window_days,
        }
        train_metrics = {"history": tuned.history, "window_events": len(window.log)}
    new = Scorer.from_network(net, users, items, popularity)
    weights = {name: t.detach().cpu().contiguous() for name, t in net.state_dict().items()}
    new.version = weights_version(net.config.variant, weights)
    result.new_version = new.version
    step = time.perf_counter()
    result.current_metrics = evaluate_tail(current, cases)
    result.new_metrics = evaluate_tail(new, cases)
    times["evaluate"] = time.perf_counter() - step
    result.seconds = times
    if new.version == current.version:
        result.reason = "the new weights are the current version's (nothing learnt)"
        return result
    verdict = judge(result.current_metrics, result.new_metrics, settings.trainer_tolerance)
    result.reason = verdict.reason
    log.info(
        "guard",
        publish=verdict.publish,
        reason=verdict.reason,
        current_version=current.version,
        new_version=new.version,
        current=result.current_metrics,
        new=result.new_metrics,
        heldout_users=len(cases),
    )
    if not verdict.publish:
        times["total"] = time.perf_counter() - began
        return result
    step = time.perf_counter()
    metrics = {
        **{f"heldout_{k}": v for k, v in result.new_metrics.items()},
        "heldout_users": len(cases),
        "window_events": len(window.log),
        "previous_version": current.version,
        **{f"previous_heldout_{k}": v for k, v in result.current_metrics.items()},
    }
    entry = new_store_entry(store, new.version)
    saved = save_artifact(
        entry,
        net,
        users,
        items,
        popularity,
        train_settings,
        {**train_metrics, "trainer": metrics},
    )
    published = Scorer.load(entry)  # what workers will load, checked before it is announced
    check_scorer(published, saved)
    announced = announce(
        settings,
        Announcement(
            version=saved,
            uri=artifact_uri(entry),
            created_at=time.time(),
            metrics=metrics,
            announced_at=time.time(),
            reason="trainer",
        ),
    )
    times["publish"] = time.perf_counter() - step
    times["total"] = time.perf_counter() - began
    result.published = True
    result.uri = announced.uri
    log.info(
        "published",
        version=saved,
        uri=announced.uri,
        topic=settings.topic_models,
        offset=announced.offset,
        previous=current.version,
    )
    return result


# --- command line -----------------------------------------------------------------------------


def add_trainer_options(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--broker", help="Kafka URL", env="RUM_BROKER")
    add_option(
        parser, "--model-dir", help="model store (a directory of artifacts)", env="RUM_MODEL_DIR"
    )
    add_flag(parser, "--once", help="run one cycle now, print its summary as JSON, exit")
    add_option(
        parser,
        "--candidate",
        help="with --once: guard and publish this artifact instead of fine-tuning",
        env="RUM_TRAINER_CANDIDATE",
    )
    add_option(
        parser,
        "--poll-s",
        type=float,
        default=10.0,
        help="seconds between checks of the schedule",
        env="RUM_TRAINER_POLL_S",
    )
    parser.epilog = "Every other setting is read from its RUM_* variable (see the README's table)."


def trainer_main(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(broker=args.broker, model_dir=args.model_dir)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    torch.set_num_threads(settings.trainer_threads)
    if args.candidate and not args.once:
        print("error: --candidate needs --once", file=sys.stderr)
        return 2
    from stream.models import ensure_models_topic

    ensure_models_topic(settings)
    state = load_state(settings.trainer_data_dir)
    log.info(
        "trainer_starting",
        broker=settings.broker,
        store=settings.model_dir,
        purchases=settings.topic_purchases,
        models=settings.topic_models,
        every_min=settings.trainer_every_min,
        every_events=settings.trainer_every_events,
        window_days=settings.trainer_window_days,
        tolerance=settings.trainer_tolerance,
        once=args.once,
    )
    try:
        while True:
            now = time.time()
            if args.once or cycle_due(state, end_offsets(settings), settings, now):
                try:
                    result = run_cycle(settings, args.candidate)
                except (TrainerError, ArtifactError) as exc:
                    log.error("cycle_failed", error=str(exc))
                    if args.once:
                        print(f"error: {exc}", file=sys.stderr)
                        return 1
                else:
                    state = TrainerState(
                        offsets=result.end_offsets or state.offsets,
                        last_cycle_at=now,
                        last_version=result.new_version if result.published else state.last_version,
                    )
                    save_state(settings.trainer_data_dir, state)
                    log.info("cycle_finished", **result.summary())
                    if args.once:
                        print(json.dumps(result.summary(), sort_keys=True), flush=True)
                        return 0
            time.sleep(args.poll_s)
    except KeyboardInterrupt:
        return 0
