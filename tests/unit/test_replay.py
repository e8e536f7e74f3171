"""``rum replay`` without a broker: parsing, bad rows with line numbers, ids, selection, pacing."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pytest

from model.data import DataError
from stream import replay
from stream.cli import main
from stream.replay import (
    content_prefix,
    parse_speed,
    parse_time,
    read_log,
    select,
    send_rows,
)


class FakeFuture:
    def __init__(self, fail: Exception | None) -> None:
        self.fail = fail

    def add_callback(self, callback: Any) -> FakeFuture:
        if self.fail is None:
            callback(None)
        return self

    def add_errback(self, errback: Any) -> FakeFuture:
        if self.fail is not None:
            errback(self.fail)
        return self


class FakeProducer:
    """Records what is sent; fails the rows whose user is in ``fail_users``."""

    def __init__(self, fail_users: frozenset[str] = frozenset()) -> None:
        self.sent: list[tuple[str, bytes, dict[str, Any], list[tuple[str, bytes]]]] = []
        self.fail_users = fail_users
        self.flushed = False
        self.closed = False

    def send(self, topic: str, *, key: bytes, value: bytes, headers: list) -> FakeFuture:
        self.sent.append((topic, key, json.loads(value), headers))
        failed = key.decode() in self.fail_users
        return FakeFuture(RuntimeError("broker said no") if failed else None)

    def flush(self) -> None:
        self.flushed = True

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


MIXED = (
    "user_id,item_id,timestamp\n"  # line 1
    "u1,i1,300\n"  # 2
    "u2,i2,100\n"  # 3
    "u1,,200\n"  # 4: empty item
    "u3,i3,not-a-time\n"  # 5: bad timestamp
    "u2,i4,100\n"  # 6: ties line 3, must stay after it
    "u4,i5\n"  # 7: too few fields
    "\n"  # 8: blank, not a row
    "u5,i6,2016-10-16T00:00:00Z\n"  # 9: ISO-8601
    "u6,i7,-5\n"  # 10: before 1970
)


def test_bad_rows_are_reported_with_their_line_numbers(tmp_path: Path) -> None:
    log = read_log(write(tmp_path / "log.csv", MIXED))
    assert [(b.line, b.reason.split(" ")[0]) for b in log.bad] == [
        (4, "item"),
        (5, "timestamp"),
        (7, "2"),
        (10, "timestamp"),
    ]
    assert "empty" in log.bad[0].reason
    assert "not-a-time" in log.bad[1].reason
    assert "header has 3" in log.bad[2].reason


def test_rows_are_in_stable_time_order_with_file_order_on_ties(tmp_path: Path) -> None:
    log = read_log(write(tmp_path / "log.csv", MIXED))
    assert [(r.line, r.user_id, r.item_id) for r in log.rows] == [
        (3, "u2", "i2"),
        (6, "u2", "i4"),
        (2, "u1", "i1"),
        (9, "u5", "i6"),
    ]
    assert log.rows[-1].ts == 1476576000.0


def test_event_ids_come_from_the_content_and_the_line(tmp_path: Path) -> None:
    first = read_log(write(tmp_path / "a.csv", MIXED))
    again = read_log(write(tmp_path / "renamed.csv", MIXED))
    assert [r.event_id for r in first.rows] == [r.event_id for r in again.rows]
    prefix = content_prefix(MIXED.encode())
    assert first.rows[0].event_id == f"{prefix}:3"
    edited = read_log(write(tmp_path / "b.csv", MIXED.replace("u1,i1", "u1,i9")))
    assert edited.rows[0].event_id != first.rows[0].event_id
    named = read_log(tmp_path / "a.csv", id_prefix="orders-2016")
    assert [r.event_id for r in named.rows] == [f"orders-2016:{r.line}" for r in first.rows]


def test_payload_follows_the_input_schema(tmp_path: Path) -> None:
    log = read_log(write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,i,12.5\nu,j,13\n"))
    assert log.rows[0].payload() == {
        "event_id": log.rows[0].event_id,
        "user_id": "u",
        "item_id": "i",
        "ts": 12.5,
    }
    assert log.rows[1].payload()["ts"] == 13
    assert isinstance(log.rows[1].payload()["ts"], int)


def test_tsv_with_a_column_mapping(tmp_path: Path) -> None:
    text = "ts\tcustomer\tproduct\textra\n5\tc1\tp1\tx\n4\tc2\tp2\ty\n"
    log = read_log(write(tmp_path / "log.tsv", text), columns=("customer", "product", "ts"))
    assert [(r.user_id, r.item_id, r.ts, r.line) for r in log.rows] == [
        ("c2", "p2", 4.0, 3),
        ("c1", "p1", 5.0, 2),
    ]
    assert log.bad == []


def test_missing_columns_stop_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--columns"):
        read_log(write(tmp_path / "log.csv", "user,item,time\nu,i,1\n"))


def test_json_lines_bad_rows_have_line_numbers(tmp_path: Path) -> None:
    lines = [
        json.dumps({"user_id": "u1", "item_id": "i1", "timestamp": 2}),
        "{not json",
        json.dumps([1, 2, 3]),
        json.dumps({"user_id": "u2", "timestamp": 3}),
        "",
        json.dumps({"user_id": 7, "item_id": 8, "timestamp": "1970-01-01T00:00:01+00:00"}),
        json.dumps({"user_id": None, "item_id": "i", "timestamp": 1}),
    ]
    log = read_log(write(tmp_path / "log.jsonl", "\n".join(lines) + "\n"))
    assert [(b.line, b.reason.split(" ")[0]) for b in log.bad] == [
        (2, "not"),
        (3, "a"),
        (4, "missing"),
        (7, "user"),
    ]
    assert [(r.line, r.user_id, r.item_id, r.ts) for r in log.rows] == [
        (6, "7", "8", 1.0),
        (1, "u1", "i1", 2.0),
    ]


def test_select_applies_time_bounds_and_limit(tmp_path: Path) -> None:
    body = "".join(f"u{i},i{i},{t}\n" for i, t in enumerate([10, 20, 30, 40, 50]))
    log = read_log(write(tmp_path / "log.csv", "user_id,item_id,timestamp\n" + body))
    chosen, skipped = select(log.rows, from_ts=20, to_ts=50)
    assert [r.ts for r in chosen] == [20, 30, 40]  # from inclusive, to exclusive
    assert skipped == 2
    chosen, skipped = select(log.rows, from_ts=20, limit=2)
    assert [r.ts for r in chosen] == [20, 30]
    assert skipped == 3


def test_speed_and_time_parsing() -> None:
    assert parse_speed("max") is None
    assert parse_speed("60x") == 60.0
    assert parse_speed("1") == 1.0
    for bad in ("0x", "-2x", "fast"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_speed(bad)
    assert parse_time("2016-10-16") == 1476576000.0  # no zone: UTC
    assert parse_time("1476576000") == 1476576000.0
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_send_rows_keys_by_user_in_time_order(tmp_path: Path) -> None:
    log = read_log(write(tmp_path / "log.csv", MIXED))
    producer = FakeProducer()
    summary = send_rows(producer, "purchases", log.rows, progress=False)
    assert [(key, value["item_id"]) for _t, key, value, _h in producer.sent] == [
        (b"u2", "i2"),
        (b"u2", "i4"),
        (b"u1", "i1"),
        (b"u5", "i6"),
    ]
    assert all(h == [("content-type", b"application/json")] for *_x, h in producer.sent)
    assert producer.flushed
    assert (summary.sent, summary.undelivered) == (4, 0)


def test_speed_paces_by_event_time_and_max_rate_caps(tmp_path: Path) -> None:
    body = "".join(f"u,i{t},{t}\n" for t in (0, 1, 2))
    log = read_log(write(tmp_path / "log.csv", "user_id,item_id,timestamp\n" + body))
    started = time.monotonic()
    send_rows(FakeProducer(), "t", log.rows, speed=10.0, progress=False)  # 2 s of log at 10x
    assert time.monotonic() - started >= 0.19
    started = time.monotonic()
    send_rows(FakeProducer(), "t", log.rows, max_rate=20.0, progress=False)  # 3 events at 20/s
    assert time.monotonic() - started >= 0.09


def test_rum_replay_reports_bad_rows_and_a_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "log.csv", MIXED)
    producer = FakeProducer(fail_users=frozenset({"u5"}))
    monkeypatch.setattr(replay, "make_producer", lambda bootstrap: producer)
    bad_rows = tmp_path / "bad.tsv"
    code = main(
        [
            "replay",
            str(path),
            "--to",
            "1000",
            "--no-progress",
            "--bad-rows",
            str(bad_rows),
            "--topic",
            "orders",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1  # malformed and undelivered rows fail the run
    for line in (4, 5, 7, 10):
        assert f"{path}:{line}: skipped malformed row" in err
    assert "sent 3, skipped 1, failed 4 (4 malformed, 0 not acknowledged" in err
    assert bad_rows.read_text().splitlines()[0].startswith("4\t")
    assert len(bad_rows.read_text().splitlines()) == 4
    assert {topic for topic, *_rest in producer.sent} == {"orders"}
    assert producer.closed
    code = main(["replay", str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert "sent 3, skipped 0, failed 5 (4 malformed, 1 not acknowledged" in err
    assert "line 9: not delivered" in err


def test_rum_replay_clean_log_exits_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,i,1\nv,j,2\n")
    monkeypatch.setattr(replay, "make_producer", lambda bootstrap: FakeProducer())
    assert main(["replay", str(path), "--no-progress"]) == 0
    assert "sent 2, skipped 0, failed 0" in capsys.readouterr().err


def test_rum_replay_options_have_their_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from stream.cli import build_parser

    monkeypatch.setenv("RUM_REPLAY_SPEED", "60x")
    monkeypatch.setenv("RUM_REPLAY_LIMIT", "7")
    monkeypatch.setenv("RUM_REPLAY_COLUMNS", "a,b,c")
    args = build_parser().parse_args(["replay", "x.csv"])
    assert (args.speed, args.limit, args.columns) == ("60x", 7, ("a", "b", "c"))
