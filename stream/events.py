"""Decoding and validating purchase events: bytes in, a ``Purchase`` or a ``Rejection`` out.

Pure functions, no Kafka: the agent hands in the record's key, value, headers
and position, and routes a ``Rejection`` to the dead-letter topic.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgpack
import orjson

from stream.settings import Settings

JSON_TYPES = {"application/json", "json", "text/json"}
MSGPACK_TYPES = {"application/msgpack", "application/x-msgpack", "msgpack"}


@dataclass(frozen=True)
class Position:
    """Where a record came from; part of every error log line and dead letter."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Purchase:
    event_id: str
    user_id: str
    item_id: str
    ts: float  # unix seconds
    position: Position


@dataclass(frozen=True)
class Rejection:
    """Why a record is dead-lettered. ``reason`` is a stable machine-readable word."""

    reason: str
    detail: str
    stage: str = "validate"


def derived_event_id(position: Position) -> str:
    """The id of an event that carries none: stable across re-reads of the same log."""
    return f"{position.topic}/{position.partition}/{position.offset}"


def _content_type(headers: list[tuple[str, bytes]] | None) -> str | None:
    for name, value in headers or ():
        if name.lower() == "content-type":
            return value.decode("utf-8", "replace").split(";", 1)[0].strip().lower()
    return None


def _json_loads(value: bytes) -> Any:
    """orjson (the hot path), then the standard library for what only it reads.

    Python's ``json.dumps`` writes ``NaN`` and ``Infinity``, which orjson rejects as
    not JSON; read them so that such an event is dead-lettered for its timestamp
    (``bad_timestamp``), which tells the producer's owner what to fix.
    """
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return json.loads(value)


def decode_value(
    value: bytes | None, headers: list[tuple[str, bytes]] | None, settings: Settings
) -> Any | Rejection:
    """JSON or msgpack, chosen by the ``content-type`` header, else by configuration."""
    if value is None:
        return Rejection("empty_value", "the record has no value (tombstone)", "decode")
    if len(value) > settings.max_value_bytes:
        detail = f"value is {len(value)} bytes; the limit is {settings.max_value_bytes}"
        return Rejection("oversized", detail, "decode")
    content_type = _content_type(headers)
    if content_type is not None and content_type not in JSON_TYPES | MSGPACK_TYPES:
        return Rejection("unknown_content_type", f"content-type {content_type!r}", "decode")
    if content_type in MSGPACK_TYPES:
        formats = ["msgpack"]
    elif content_type in JSON_TYPES:
        formats = ["json"]
    elif settings.input_format != "auto":
        formats = [settings.input_format]
    else:
        # JSON first: a JSON document is never valid msgpack's usual map form, and
        # plain JSON values (``42``) must be read as JSON, not as msgpack integers.
        formats = ["json", "msgpack"]
    errors = []
    for fmt in formats:
        try:
            if fmt == "json":
                return _json_loads(value)
            return msgpack.unpackb(value, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException, msgpack.ExtraData) as exc:
            errors.append(f"not valid {fmt}: {exc}")
    return Rejection("undecodable", "; ".join(errors), "decode")


def parse_timestamp(raw: Any, settings: Settings, now: float | None = None) -> float | Rejection:
    if isinstance(raw, bool):
        return Rejection("wrong_type", "ts must be a number or an ISO-8601 string, not a boolean")
    if isinstance(raw, int | float):
        ts = float(raw)
    elif isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        except ValueError:
            return Rejection("bad_timestamp", f"ts {raw[:64]!r} is neither a number nor ISO-8601")
        if parsed.tzinfo is None:
            return Rejection("bad_timestamp", f"ts {raw[:64]!r} has no time zone")
        ts = parsed.timestamp()
    else:
        return Rejection(
            "wrong_type", f"ts must be a number or an ISO-8601 string, not {type(raw).__name__}"
        )
    if not math.isfinite(ts):
        return Rejection("bad_timestamp", f"ts {raw!r} is not finite")
    if ts < 0:
        return Rejection("bad_timestamp", f"ts {ts} is before 1970")
    now = time.time() if now is None else now
    if ts > now + settings.max_future_s:
        return Rejection(
            "future_timestamp", f"ts {ts:.0f} is more than {settings.max_future_s:.0f} s ahead"
        )
    return ts


def _check_id(payload: dict[str, Any], name: str, settings: Settings) -> str | Rejection:
    if name not in payload or payload[name] is None:
        return Rejection(f"missing_{name}", f"{name} is missing")
    raw = payload[name]
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return Rejection("wrong_type", f"{name} must be a string, not {type(raw).__name__}")
    value = str(raw)
    if value.strip() == "":
        return Rejection(f"missing_{name}", f"{name} is empty")
    if len(value) > settings.max_id_length:
        return Rejection(
            "id_too_long",
            f"{name} has {len(value)} characters; the limit is {settings.max_id_length}",
        )
    return value


def parse_purchase(
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None,
    position: Position,
    timestamp_ms: int | None,
    settings: Settings,
    now: float | None = None,
) -> Purchase | Rejection:
    """Decode and validate one record of the purchases topic."""
    payload = decode_value(value, headers, settings)
    if isinstance(payload, Rejection):
        return payload
    if not isinstance(payload, dict):
        return Rejection(
            "not_object", f"the value is a JSON/msgpack {type(payload).__name__}, not an object"
        )
    user_id = _check_id(payload, "user_id", settings)
    if isinstance(user_id, Rejection):
        return user_id
    item_id = _check_id(payload, "item_id", settings)
    if isinstance(item_id, Rejection):
        return item_id
    if "ts" in payload and payload["ts"] is not None:
        ts = parse_timestamp(payload["ts"], settings, now)
        if isinstance(ts, Rejection):
            return ts
    elif timestamp_ms is not None and timestamp_ms >= 0:
        ts = timestamp_ms / 1000.0  # no ts in the payload: the record's own timestamp
    else:
        return Rejection("bad_timestamp", "no ts in the value and no record timestamp")
    event_id: Any = payload.get("event_id")
    if event_id is None:
        event_id = derived_event_id(position)
    elif isinstance(event_id, bool) or not isinstance(event_id, str | int):
        return Rejection("wrong_type", f"event_id must be a string, not {type(event_id).__name__}")
    else:
        event_id = str(event_id)
        if event_id == "" or len(event_id) > settings.max_id_length:
            return Rejection("bad_event_id", "event_id is empty or too long")
    if key is not None and key != user_id.encode():
        # The key decides the partition, and so which worker holds the user's state.
        detail = f"record key {key[:64]!r} differs from user_id {user_id[:64]!r}"
        return Rejection("key_mismatch", detail)
    if key is None:
        return Rejection(
            "key_mismatch", "the record has no key; purchases must be keyed by user_id"
        )
    return Purchase(event_id=event_id, user_id=user_id, item_id=item_id, ts=ts, position=position)
