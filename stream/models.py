"""Model versions on Kafka: announcements on the compacted ``rum-models`` topic.

Layout: one partition, ``cleanup.policy=compact``, key = the version (UTF-8), value
= JSON ``{version, uri, created_at, metrics, announced_at, reason}``. **The last
record of the partition is the current version.** Compaction keeps the latest
record of every key, and the latest record overall is the latest of its own key,
so compaction never loses the current version; it keeps one record per version
ever announced, which is what ``rum models list`` shows. Rolling back
(``rum models promote VERSION``) re-announces an earlier version: a new record
with its key, which makes it the last one again.

A worker reads the topic from the beginning when it starts (the current version
is whatever it finds last) and then follows it; see :mod:`stream.app`.
This module uses kafka-python with manual assignment: it never joins a group.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from model.artifact import ArtifactError, resolve_model_dir
from model.options import add_flag, add_option
from stream.settings import Settings
from stream.topics import MODELS_CONFIG

if TYPE_CHECKING:
    # Imported where a model is loaded: `rum models list` needs no torch.
    from model.serving import Scorer


class AnnouncementError(ValueError):
    """A record on the models topic is not an announcement; it is skipped (logged)."""


@dataclass(frozen=True)
class Announcement:
    version: str
    uri: str  # file:// URI of the artifact directory
    created_at: float  # unix seconds: when the version was published (kept on promote)
    metrics: dict[str, Any] = field(default_factory=dict)
    announced_at: float = 0.0
    reason: str = "trainer"  # "trainer" | "promote" | "seed"
    offset: int = -1  # position on the topic (set when read)

    def to_bytes(self) -> bytes:
        body = asdict(self)
        body.pop("offset")
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None, offset: int = -1) -> Announcement:
        try:
            body = json.loads(raw or b"")
            return cls(
                version=str(body["version"]),
                uri=str(body["uri"]),
                created_at=float(body.get("created_at", 0.0)),
                metrics=dict(body.get("metrics") or {}),
                announced_at=float(body.get("announced_at", 0.0)),
                reason=str(body.get("reason", "trainer")),
                offset=offset,
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            msg = (
                f"offset {offset}: expected a JSON announcement "
                f"{{version, uri, created_at, metrics}} ({exc!r})"
            )
            raise AnnouncementError(msg) from exc


def artifact_uri(path: str | Path) -> str:
    return Path(path).resolve().as_uri()


def artifact_path(uri: str, model_dir: str = "") -> Path:
    """The local directory an announcement's ``uri`` names.

    When that path does not exist here but the local store (``RUM_MODEL_DIR``)
    holds a directory of the same name, that one is used: a trainer and its
    workers may mount the same store at different paths.
    """
    parsed = urlparse(uri)
    path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)
    if not path.exists() and model_dir:
        local = Path(model_dir) / path.name
        if local.exists():
            return local
    return path


def check_scorer(scorer: Scorer, expected_version: str | None = None) -> None:
    """Refuse a loaded model that is not the announced one or cannot score (``ArtifactError``)."""
    import torch

    if expected_version is not None and scorer.version != expected_version:
        msg = (
            f"the artifact holds version {scorer.version} but the announcement says "
            f"{expected_version}; the store and the topic disagree"
        )
        raise ArtifactError(msg)
    memories = [scorer.empty_memory()]
    if scorer.num_items:
        memories.append(scorer.write_one(memories[0], scorer.items.raw(1)))
    users = ["\x00probe"] * len(memories)
    logits = scorer.logits_many(users, memories)[:, 1:]  # column 0 is padding (-inf)
    probe = scorer.score_many(users, memories, [()] * len(memories), 1)
    scores = [rec.score for recs in probe for rec in recs]
    if not bool(torch.isfinite(logits).all()) or not all(math.isfinite(s) for s in scores):
        msg = f"model {scorer.version} scores NaN or infinity; its weights are corrupt"
        raise ArtifactError(msg)


def load_announced(announcement: Announcement, model_dir: str = "") -> Scorer:
    """Load and check the artifact of an announcement; ``ArtifactError`` says why not.

    The announcement's ``file://`` path must be readable on this host (a filesystem
    shared with the trainer, or a store of the same names under ``RUM_MODEL_DIR``), and
    the weights must hash to the announced version: a copy cut short or altered is refused.
    """
    from model.artifact import load_artifact, weights_version
    from model.serving import Scorer

    path = artifact_path(announcement.uri, model_dir)
    if not path.exists():
        also = f" nor {Path(model_dir) / path.name}" if model_dir else ""
        msg = (
            f"announced artifact {announcement.uri} is not on this host ({path}{also} does "
            "not exist): workers read the trainer's model store, so it must be on a shared "
            "filesystem at the same path, or hold the same names under RUM_MODEL_DIR"
        )
        raise ArtifactError(msg)
    art = load_artifact(path)
    digest = weights_version(art.config.variant, art.weights)
    if digest != art.version:
        msg = (
            f"{path}: the weights hash to {digest}, they do not hash to {art.version}; "
            "the artifact was altered or copied incompletely"
        )
        raise ArtifactError(msg)
    scorer = Scorer(art.config, art.version, art.users, art.items, art.weights, art.popularity)
    check_scorer(scorer, announcement.version)
    return scorer


def ensure_models_topic(settings: Settings) -> None:
    """Create the compacted one-partition models topic if it is missing."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="rum-admin")
    try:
        if settings.topic_models not in set(admin.list_topics()):
            topic = NewTopic(settings.topic_models, 1, 1, topic_configs=dict(MODELS_CONFIG))
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([topic])
    finally:
        admin.close()


def read_announcements(settings: Settings, timeout_s: float = 30.0) -> list[Announcement]:
    """Every announcement on the models topic, in topic order (the last one is current).

    Records that are not announcements are skipped. An absent topic reads as empty.
    """
    from stream.logs import get_logger

    log = get_logger("rum.models")
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        client_id="rum-models-reader",
    )
    out: list[Announcement] = []
    try:
        ids = consumer.partitions_for_topic(settings.topic_models)
        if not ids:
            return []
        partitions = [TopicPartition(settings.topic_models, p) for p in sorted(ids)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            if time.monotonic() > deadline:
                msg = (
                    f"reading {settings.topic_models} did not reach its end within "
                    f"{timeout_s:.0f} s; is the broker at {settings.broker} healthy?"
                )
                raise TimeoutError(msg)
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.offset >= end[TopicPartition(record.topic, record.partition)]:
                        continue
                    try:
                        out.append(Announcement.from_bytes(record.value, record.offset))
                    except AnnouncementError as exc:
                        log.warning(
                            "announcement_skipped",
                            error=str(exc),
                            topic=record.topic,
                            partition=record.partition,
                            offset=record.offset,
                        )
    finally:
        consumer.close()
    return sorted(out, key=lambda a: a.offset)


def announce(settings: Settings, announcement: Announcement) -> Announcement:
    """Append ``announcement`` to the models topic (acks=all); returns it with its offset."""
    ensure_models_topic(settings)
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", client_id="rum-models-writer"
    )
    try:
        metadata = producer.send(
            settings.topic_models,
            key=announcement.version.encode(),
            value=announcement.to_bytes(),
            headers=[("content-type", b"application/json")],
        ).get(timeout=30)
        producer.flush()
    finally:
        producer.close()
    return Announcement(**{**asdict(announcement), "offset": int(metadata.offset)})


def initial_scorer(settings: Settings) -> tuple[Scorer, str]:
    """The model a starting worker serves, and where it came from.

    The current announcement wins; without one (or when its artifact is refused)
    the newest artifact of ``RUM_MODEL_DIR`` is used.
    """
    from stream.logs import get_logger

    log = get_logger("rum.models")
    announcements = read_announcements(settings)
    if announcements:
        current = announcements[-1]
        try:
            return load_announced(current, settings.model_dir), f"announcement {current.offset}"
        except ArtifactError as exc:
            log.error(
                "model_refused",
                version=current.version,
                uri=current.uri,
                error=str(exc),
                topic=settings.topic_models,
                offset=current.offset,
                action="serving the newest artifact of RUM_MODEL_DIR instead",
            )
    if not settings.model_dir:
        msg = "RUM_MODEL_DIR is not set: point it at a model artifact or store (rum train --out)"
        raise ArtifactError(msg)
    from model.serving import Scorer

    path = resolve_model_dir(settings.model_dir)
    scorer = Scorer.load(path)
    check_scorer(scorer)
    return scorer, str(path)


# --- rum models list | promote ------------------------------------------------------------


def _when(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every known version, oldest announcement first: announced ones, then store-only ones."""
    from model.artifact import artifact_version, store_entries

    announcements = read_announcements(settings)
    latest: dict[str, Announcement] = {}
    for item in announcements:
        latest.pop(item.version, None)  # keep announcement order by the latest record
        latest[item.version] = item
    current = announcements[-1].version if announcements else None
    rows: list[dict[str, Any]] = []
    for item in latest.values():
        path = artifact_path(item.uri, settings.model_dir)
        rows.append(
            {
                "version": item.version,
                "current": item.version == current,
                "created_at": item.created_at,
                "announced_at": item.announced_at,
                "reason": item.reason,
                "metrics": item.metrics,
                "path": str(path),
                "present": (path / "config.json").is_file(),
            }
        )
    if settings.model_dir:
        for entry in store_entries(settings.model_dir):
            version = artifact_version(entry)
            if version is None or version in latest:
                continue
            rows.append(
                {
                    "version": version,
                    "current": current is None and entry == store_entries(settings.model_dir)[-1],
                    "created_at": (entry / "config.json").stat().st_mtime,
                    "announced_at": 0.0,
                    "reason": "store only",
                    "metrics": {},
                    "path": str(entry),
                    "present": True,
                }
            )
    return rows


def promote(settings: Settings, version: str) -> Announcement:
    """Re-announce ``version`` (announced before, or present in the store) as the current one.

    The artifact is loaded and checked first: a version workers would refuse is not
    announced (``ArtifactError``).
    """
    from model.artifact import find_in_store

    previous = [a for a in read_announcements(settings) if a.version == version]
    if previous:
        base = previous[-1]
    else:
        path = find_in_store(settings.model_dir, version) if settings.model_dir else None
        if path is None:
            msg = (
                f"version {version} is neither announced on {settings.topic_models} nor in "
                f"the store {settings.model_dir or '(RUM_MODEL_DIR unset)'}; "
                "`rum models list` shows the known versions"
            )
            raise ArtifactError(msg)
        base = Announcement(
            version=version,
            uri=artifact_uri(path),
            created_at=(path / "config.json").stat().st_mtime,
        )
    load_announced(base, settings.model_dir)
    now = time.time()
    return announce(
        settings,
        Announcement(
            version=base.version,
            uri=base.uri,
            created_at=base.created_at,
            metrics=base.metrics,
            announced_at=now,
            reason="promote",
        ),
    )


def _add_shared_options(parser: argparse.ArgumentParser, *, inherited: bool) -> None:
    """``--broker`` and ``--model-dir``, before the action (``rum models --broker X list``) or
    after it (``rum models list --broker X``).

    After the action they default to ``SUPPRESS``: a sub-parser writes its defaults over
    the values parsed before it, and an absent option must not undo one given before.
    """
    if inherited:
        parser.add_argument(
            "--broker", default=argparse.SUPPRESS, help="Kafka URL [env: RUM_BROKER]"
        )
        parser.add_argument(
            "--model-dir", default=argparse.SUPPRESS, help="model store [env: RUM_MODEL_DIR]"
        )
        return
    add_option(parser, "--broker", help="Kafka URL", env="RUM_BROKER")
    add_option(parser, "--model-dir", help="model store", env="RUM_MODEL_DIR")


def add_models_options(parser: argparse.ArgumentParser) -> None:
    _add_shared_options(parser, inherited=False)
    actions = parser.add_subparsers(dest="action", required=True)
    text = "versions announced (and in the store); * = current"
    listing = actions.add_parser("list", help=text, description=text)
    _add_shared_options(listing, inherited=True)
    add_flag(listing, "--json", help="one JSON object per line", env="RUM_MODELS_LIST_JSON")
    text = "make VERSION current again (rollback)"
    chosen = actions.add_parser("promote", help=text, description=text)
    _add_shared_options(chosen, inherited=True)
    chosen.add_argument("version", help="a version string from `rum models list`")


def models_main(args: argparse.Namespace) -> int:
    from stream.logs import configure_logging
    from stream.settings import SettingsError

    try:
        settings = Settings.from_env(broker=args.broker, model_dir=args.model_dir)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging("warning")
    if args.action == "promote":
        try:
            announced = promote(settings, args.version)
        except ArtifactError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(
            f"{announced.version} is current (offset {announced.offset} on {settings.topic_models})"
        )
        return 0
    rows = list_versions(settings)
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0
    if not rows:
        print(f"no model version announced on {settings.topic_models} or in the store")
        return 0
    header = f"{'version':<26} {'announced (UTC)':<19} {'reason':<10} {'hr@10':>7} {'ndcg@10':>7}"
    print(f"  {header}  path")
    for row in rows:
        metrics = row["metrics"]
        hr = metrics.get("heldout_hr@10")
        ndcg = metrics.get("heldout_ndcg@10")
        mark = "*" if row["current"] else " "
        print(
            f"{mark} {row['version']:<26} {_when(row['announced_at']):<19} "
            f"{row['reason']:<10} {'-' if hr is None else f'{hr:.4f}':>7} "
            f"{'-' if ndcg is None else f'{ndcg:.4f}':>7}  {row['path']}"
            + ("" if row["present"] else "  (missing)")
        )
    return 0
