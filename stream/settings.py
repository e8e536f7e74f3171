"""Worker settings: one frozen, typed object, read from the environment once, at the edge.

Each field's ``metadata`` names its environment variable and says what it is
for; :func:`settings_table` renders that as the README's table, so the
documentation cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from stream.brokers import DEFAULT_BROKER, BrokerError, bootstrap_servers, parse_broker

Emit = Literal["user", "event"]
Scoring = Literal["exact", "two-stage", "auto"]
InputFormat = Literal["auto", "json", "msgpack"]
Guarantee = Literal["at_least_once", "exactly_once"]


def _setting(env: str, default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


class SettingsError(ValueError):
    """A setting from the environment has a value the worker cannot use; fix the variable."""


@dataclass(frozen=True)
class Settings:
    broker: str = _setting(
        "RUM_BROKER",
        DEFAULT_BROKER,
        "Kafka bootstrap URL(s), `kafka://host:port[;host:port]`",
    )
    app_id: str = _setting(
        "RUM_APP_ID", "rum-stream", "Faust app id (consumer group, changelog topic prefix)"
    )
    model_dir: str = _setting(
        "RUM_MODEL_DIR", "", "model artifact directory, or a store of them (newest is used)"
    )
    data_dir: str = _setting(
        "RUM_DATA_DIR", "var/worker", "worker data directory (RocksDB state); one per worker"
    )
    web_port: int = _setting("RUM_WEB_PORT", 6066, "HTTP port of this worker; one per worker")
    web_host: str = _setting(
        "RUM_WEB_HOST",
        "127.0.0.1",
        "host name other workers reach this one at (request routing); `@hostname`: this"
        " machine's host name, `@ip`: its address (one per replica in compose)",
    )
    web_bind: str = _setting(
        "RUM_WEB_BIND", "127.0.0.1", "HTTP bind address (`0.0.0.0` in a container)"
    )
    session_timeout_s: float = _setting(
        "RUM_SESSION_TIMEOUT_S",
        10.0,
        "consumer-group session timeout: how soon a dead worker's partitions move on",
    )
    topic_purchases: str = _setting("RUM_TOPIC_PURCHASES", "purchases", "input topic")
    topic_recommendations: str = _setting(
        "RUM_TOPIC_RECOMMENDATIONS", "recommendations", "output topic"
    )
    topic_dlq: str = _setting("RUM_TOPIC_DLQ", "purchases.dlq", "dead-letter topic")
    topic_models: str = _setting(
        "RUM_TOPIC_MODELS",
        "rum-models",
        "compacted topic of model announcements (trainer writes, workers follow)",
    )
    partitions: int = _setting(
        "RUM_PARTITIONS", 4, "partitions of the input topic and the state table"
    )
    k: int = _setting("RUM_TOPK", 10, "recommendations per message")
    max_k: int = _setting("RUM_MAX_K", 200, "largest `k` the HTTP endpoint accepts")
    batch_size: int = _setting(
        "RUM_MICRO_BATCH", 2048, "largest micro-batch (a backlog is worked off in big ones)"
    )
    batch_wait_s: float = _setting(
        "RUM_MICRO_BATCH_WAIT_S",
        0.005,
        "longest an event waits for others to join its micro-batch (seconds); what arrives "
        "while a batch is processed forms the next one at once",
    )
    emit: Emit = _setting(
        "RUM_EMIT", "user", "`user`: one message per touched user per batch; `event`: one per event"
    )
    exclude_seen: bool = _setting(
        "RUM_EXCLUDE_SEEN", True, "never recommend items in the user's history"
    )
    history: int = _setting("RUM_HISTORY", 50, "raw item ids kept per user (H)")
    dedupe_ring: int = _setting(
        "RUM_DEDUPE_RING", 64, "recent event ids kept per user for idempotence"
    )
    scoring: Scoring = _setting(
        "RUM_SCORING", "auto", "`exact`, `two-stage`, or `auto` (exact below `RUM_EXACT_MAX_ITEMS`)"
    )
    exact_max_items: int = _setting(
        "RUM_EXACT_MAX_ITEMS", 20000, "catalogue size up to which `auto` scores exactly"
    )
    candidates: int = _setting(
        "RUM_CANDIDATES", 200, "items retrieved per user before the exact re-rank (two-stage)"
    )
    input_format: InputFormat = _setting(
        "RUM_INPUT_FORMAT",
        "auto",
        "input encoding when no content-type header says: `auto`, `json`, `msgpack`",
    )
    max_value_bytes: int = _setting(
        "RUM_MAX_VALUE_BYTES", 16384, "larger input values are dead-lettered"
    )
    max_id_length: int = _setting("RUM_MAX_ID_LENGTH", 256, "longer ids are dead-lettered")
    max_future_s: float = _setting(
        "RUM_MAX_FUTURE_S", 86400.0, "timestamps further ahead of the clock are dead-lettered"
    )
    processing_guarantee: Guarantee = _setting(
        "RUM_PROCESSING_GUARANTEE", "at_least_once", "Faust processing guarantee"
    )
    torch_threads: int = _setting("RUM_TORCH_THREADS", 1, "torch intra-op threads for scoring")
    rocksdb_write_buffer_mb: int = _setting(
        "RUM_ROCKSDB_WRITE_BUFFER_MB",
        16,
        "RocksDB memtable size per state partition (two at most; Faust's default is 3 x 64)",
    )
    rocksdb_block_cache_mb: int = _setting(
        "RUM_ROCKSDB_BLOCK_CACHE_MB",
        32,
        "RocksDB block cache per state partition (Faust's default is 2048)",
    )
    log_level: str = _setting("RUM_LOG_LEVEL", "info", "log level")
    resync_idle_s: float = _setting(
        "RUM_RESYNC_IDLE_S",
        5.0,
        "idle seconds after which records read but never committed are read again (0: off)",
    )
    debug_endpoints: bool = _setting(
        "RUM_DEBUG_ENDPOINTS",
        False,
        "serve `GET /debug/tasks` (consumer offsets, every task's await chain)",
    )
    trainer_every_min: float = _setting(
        "RUM_TRAINER_EVERY_MIN",
        60.0,
        "trainer: a cycle every this many minutes when new events arrived (0: off)",
    )
    trainer_every_events: int = _setting(
        "RUM_TRAINER_EVERY_EVENTS",
        0,
        "trainer: a cycle as soon as this many new events arrived (0: off)",
    )
    trainer_window_days: float = _setting(
        "RUM_TRAINER_WINDOW_DAYS",
        0.0,
        "trainer: fit the last T days before the newest event (0: every retained event)",
    )
    trainer_epochs: int = _setting("RUM_TRAINER_EPOCHS", 2, "trainer: fine-tuning epochs")
    trainer_lr: float = _setting("RUM_TRAINER_LR", 5e-4, "trainer: fine-tuning learning rate")
    trainer_tolerance: float = _setting(
        "RUM_TRAINER_TOLERANCE",
        0.005,
        "trainer: publish unless HR@10 or NDCG@10 on the held-out tail drops by more",
    )
    trainer_data_dir: str = _setting(
        "RUM_TRAINER_DATA_DIR", "var/trainer", "trainer: where it keeps its offsets (JSON)"
    )
    trainer_threads: int = _setting("RUM_TRAINER_THREADS", 2, "trainer: torch CPU threads")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``RUM_*`` variable once; ``overrides`` (e.g. from the command line) win."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _convert(f, raw)
        values.update({key: value for key, value in overrides.items() if value is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        try:
            parse_broker(self.broker)
        except BrokerError as exc:
            raise SettingsError(str(exc)) from exc
        for f in fields(self):
            literal = _LITERALS.get(str(f.type))
            value = getattr(self, f.name)
            allowed = get_args(literal) if literal is not None else ()
            if allowed and value not in allowed:
                msg = f"{f.metadata['env']}={value!r}: expected one of {', '.join(allowed)}"
                raise SettingsError(msg)
        for name in (
            "partitions",
            "k",
            "max_k",
            "batch_size",
            "history",
            "dedupe_ring",
            "web_port",
            "trainer_threads",
            "rocksdb_write_buffer_mb",
            "rocksdb_block_cache_mb",
        ):
            if getattr(self, name) < 1:
                env = self.__dataclass_fields__[name].metadata["env"]
                msg = f"{env}={getattr(self, name)}: must be at least 1"
                raise SettingsError(msg)
        for name in ("trainer_every_min", "trainer_every_events", "trainer_window_days"):
            if getattr(self, name) < 0:
                env = self.__dataclass_fields__[name].metadata["env"]
                msg = f"{env}={getattr(self, name)}: must be 0 (off) or positive"
                raise SettingsError(msg)
        if self.trainer_epochs < 0 or self.trainer_tolerance < 0 or self.trainer_lr <= 0:
            msg = (
                "RUM_TRAINER_EPOCHS and RUM_TRAINER_TOLERANCE must be >= 0 and "
                f"RUM_TRAINER_LR > 0 (got {self.trainer_epochs}, {self.trainer_tolerance}, "
                f"{self.trainer_lr})"
            )
            raise SettingsError(msg)

    @property
    def kafka_bootstrap(self) -> str:
        """``kafka://a:1;b:2`` -> ``a:1,b:2`` for kafka-python."""
        return bootstrap_servers(self.broker)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_LITERALS = {"Emit": Emit, "Scoring": Scoring, "InputFormat": InputFormat, "Guarantee": Guarantee}


_NUMBERS = {"int": "an integer", "float": "a number"}


def _number(kind: str, raw: str) -> int | float:
    try:
        return int(raw) if kind == "int" else float(raw)
    except ValueError:
        raise ValueError(f"expected {_NUMBERS[kind]}") from None


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    env = f.metadata["env"]
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError("expected true/false")
        if kind in _NUMBERS:
            return _number(kind, raw)
        if kind in _LITERALS:
            allowed = get_args(_LITERALS[kind])
            if raw not in allowed:
                raise ValueError(f"expected one of {', '.join(allowed)}")
        return raw
    except ValueError as exc:
        msg = f"{env}={raw!r}: {exc}"
        raise SettingsError(msg) from exc


def settings_table() -> str:
    """The Markdown table of every setting: variable, default, meaning."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        default = f.default
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        rows.append(f"| `{f.metadata['env']}` | `{shown}` | {f.metadata['doc']} |")
    return "\n".join(rows)
