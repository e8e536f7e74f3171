"""Validation of purchase records: every kind of bad input gets its own reason."""

from __future__ import annotations

import json
import math

import msgpack
import pytest

from stream.events import Position, Purchase, Rejection, parse_purchase
from stream.settings import Settings

NOW = 1_700_000_000.0
POS = Position("purchases", 2, 41)
S = Settings()


def parse(value: bytes | None, key: bytes | None = b"u1", headers=None, timestamp_ms=5000):
    return parse_purchase(key, value, headers, POS, timestamp_ms, S, now=NOW)


def js(obj) -> bytes:
    return json.dumps(obj).encode()


def test_valid_json_event() -> None:
    got = parse(js({"event_id": "e1", "user_id": "u1", "item_id": "i9", "ts": 1234.5}))
    assert got == Purchase("e1", "u1", "i9", 1234.5, POS)


def test_msgpack_by_header_and_by_sniffing() -> None:
    packed = msgpack.packb({"user_id": "u1", "item_id": "i9", "ts": 10})
    by_header = parse(packed, headers=[("content-type", b"application/msgpack")])
    sniffed = parse(packed)
    assert isinstance(by_header, Purchase) and isinstance(sniffed, Purchase)
    assert by_header.item_id == sniffed.item_id == "i9"


def test_missing_event_id_is_derived_from_position() -> None:
    got = parse(js({"user_id": "u1", "item_id": "i9", "ts": 1}))
    assert isinstance(got, Purchase)
    assert got.event_id == "purchases/2/41"


def test_iso_timestamp_and_record_timestamp_fallback() -> None:
    iso = parse(js({"user_id": "u1", "item_id": "i", "ts": "2023-11-14T22:13:20Z"}))
    assert isinstance(iso, Purchase) and iso.ts == 1_700_000_000.0
    fallback = parse(js({"user_id": "u1", "item_id": "i"}), timestamp_ms=7500)
    assert isinstance(fallback, Purchase) and fallback.ts == 7.5


def test_integer_ids_are_read_as_strings() -> None:
    got = parse(js({"user_id": 1, "item_id": 7, "ts": 1}), key=b"1")
    assert isinstance(got, Purchase) and (got.user_id, got.item_id) == ("1", "7")


BAD = [
    ("undecodable", b"\xc1\xff not json"),
    ("undecodable", b'{"user_id": "u1", '),
    ("not_object", js([1, 2, 3])),
    ("not_object", js("just a string")),
    ("not_object", b"42"),  # valid JSON, not msgpack's integer 0x34 plus junk
    ("undecodable", b""),
    ("missing_user_id", js({"item_id": "i", "ts": 1})),
    ("missing_user_id", js({"user_id": "  ", "item_id": "i", "ts": 1})),
    ("missing_item_id", js({"user_id": "u1", "ts": 1})),
    ("missing_item_id", js({"user_id": "u1", "item_id": "", "ts": 1})),
    ("wrong_type", js({"user_id": ["u1"], "item_id": "i", "ts": 1})),
    ("wrong_type", js({"user_id": "u1", "item_id": {"x": 1}, "ts": 1})),
    ("wrong_type", js({"user_id": "u1", "item_id": "i", "ts": True})),
    ("wrong_type", js({"user_id": "u1", "item_id": "i", "ts": [1]})),
    ("wrong_type", js({"user_id": "u1", "item_id": True, "ts": 1})),
    ("id_too_long", js({"user_id": "u1", "item_id": "x" * 300, "ts": 1})),
    ("bad_timestamp", js({"user_id": "u1", "item_id": "i", "ts": "yesterday"})),
    ("bad_timestamp", b'{"user_id": "u1", "item_id": "i", "ts": NaN}'),
    ("bad_timestamp", b'{"user_id": "u1", "item_id": "i", "ts": Infinity}'),
    ("bad_timestamp", js({"user_id": "u1", "item_id": "i", "ts": -5})),
    ("future_timestamp", js({"user_id": "u1", "item_id": "i", "ts": NOW + 10 * 86400})),
    ("oversized", js({"user_id": "u1", "item_id": "i", "ts": 1, "pad": "x" * 20000})),
    ("empty_value", None),
]


@pytest.mark.parametrize(("reason", "value"), BAD)
def test_bad_input_is_rejected_with_its_reason(reason: str, value: bytes | None) -> None:
    got = parse(value)
    assert isinstance(got, Rejection), got
    assert got.reason == reason, got.detail
    assert got.detail


def test_unknown_content_type() -> None:
    got = parse(
        js({"user_id": "u1", "item_id": "i", "ts": 1}), headers=[("content-type", b"text/xml")]
    )
    assert isinstance(got, Rejection) and got.reason == "unknown_content_type"


def test_key_must_be_the_user_id() -> None:
    event = js({"user_id": "u1", "item_id": "i", "ts": 1})
    wrong = parse(event, key=b"u2")
    missing = parse(event, key=None)
    assert isinstance(wrong, Rejection) and wrong.reason == "key_mismatch"
    assert isinstance(missing, Rejection) and missing.reason == "key_mismatch"


def test_nan_never_passes_as_a_time() -> None:
    got = parse_purchase(
        b"u1", js({"user_id": "u1", "item_id": "i", "ts": 1.0}), None, POS, None, S
    )
    assert isinstance(got, Purchase) and math.isfinite(got.ts)
