"""``rum replay PATH``: send a historical event log to the purchases topic, in time order.

Reading and sending are separate steps so that both can be tested and reused
(the demo replays through the same code):

- :func:`read_log` parses a CSV, TSV or JSON Lines file into :class:`LogRow`
  values in **stable** timestamp order (file order on ties, as
  ``model.data`` does) and collects every malformed row with its line number
  as a :class:`BadRow`; a bad row never stops the read and is never dropped
  without a word.
- :func:`select` applies the ``--from``/``--to`` time bounds and ``--limit``.
- :func:`send_rows` produces each row, keyed by ``user_id``, paced by
  ``--speed`` (a multiple of real time, or ``max``), and counts what the broker
  acknowledged.

Every row carries an ``event_id`` derived from the file and the row's line
number (``<prefix>:<line>``; the prefix is a hash of the file's content unless
``--id-prefix`` names one), so replaying the same file again produces the same
ids and the workers' duplicate filter leaves every memory unchanged.

``model.data.load_events`` is not reused for the parsing: it stops at the first
bad row and keeps no line numbers, and replay needs both. It shares that
module's defaults (column names, delimiter and format detection).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model.data import DEFAULT_COLUMNS, DataError
from model.options import add_option
from stream.brokers import BrokerError, bootstrap_servers, probe

JSONL_SUFFIXES = {".jsonl", ".ndjson"}
TSV_SUFFIXES = {".tsv", ".tab"}
BAD_ROWS_SHOWN = 20  # on the terminal; --bad-rows FILE receives every one


@dataclass(frozen=True)
class LogRow:
    """One event of the file, with the line it came from."""

    line: int  # 1-based line number in the file
    user_id: str
    item_id: str
    ts: float  # unix seconds
    event_id: str

    def payload(self) -> dict[str, Any]:
        """The purchases topic's JSON value (``stream.events`` schema)."""
        ts: float | int = int(self.ts) if self.ts.is_integer() else self.ts
        return {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "ts": ts,
        }


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str


@dataclass(frozen=True)
class ParsedLog:
    """Good rows in stable time order, bad rows in file order."""

    path: Path
    id_prefix: str
    rows: list[LogRow]
    bad: list[BadRow]


@dataclass
class ReplaySummary:
    """What a replay did. ``failed`` = malformed rows + rows the broker did not acknowledge."""

    sent: int = 0
    skipped: int = 0  # outside --from/--to or beyond --limit
    malformed: int = 0
    undelivered: int = 0
    undelivered_lines: list[int] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def failed(self) -> int:
        return self.malformed + self.undelivered

    def line(self) -> str:
        rate = self.sent / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"sent {self.sent}, skipped {self.skipped}, failed {self.failed} "
            f"({self.malformed} malformed, {self.undelivered} not acknowledged by the broker) "
            f"in {self.seconds:.1f} s ({rate:.0f} events/s)"
        )
        return text + (" — interrupted" if self.interrupted else "")


# ---------------------------------------------------------------------------- reading


def parse_columns(raw: str) -> tuple[str, str, str]:
    parts = tuple(p.strip() for p in raw.split(","))
    if len(parts) != 3 or not all(parts):
        msg = f"--columns needs three comma-separated names (user,item,timestamp), got {raw!r}"
        raise argparse.ArgumentTypeError(msg)
    return parts[0], parts[1], parts[2]


def parse_time(raw: str | float | int) -> float:
    """Unix seconds, or ISO-8601 (a date or a date and time; no zone means UTC)."""
    if isinstance(raw, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(raw, int | float):
        value = float(raw)
    else:
        text = raw.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError as exc:
                msg = f"{text[:40]!r} is neither unix seconds nor ISO-8601"
                raise ValueError(msg) from exc
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            value = parsed.timestamp()
    if not math.isfinite(value) or value < 0:
        msg = f"{raw!r} is not a time after 1970"
        raise ValueError(msg)
    return value


def _time_option(raw: str) -> float:
    try:
        return parse_time(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _delimiter(raw: str) -> str:
    value = {"\\t": "\t", "tab": "\t"}.get(raw, raw)
    if len(value) != 1:
        msg = f"--delimiter takes one character (or \\t / tab), got {raw!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def parse_speed(raw: str) -> float | None:
    """``max`` -> None (no pacing); ``60x`` or ``60`` -> 60.0 (times real time)."""
    text = raw.strip().lower()
    if text == "max":
        return None
    try:
        speed = float(text.removesuffix("x"))
    except ValueError as exc:
        msg = f"--speed takes a multiple of real time such as 1x or 60x, or max; got {raw!r}"
        raise argparse.ArgumentTypeError(msg) from exc
    if not math.isfinite(speed) or speed <= 0:
        msg = f"--speed must be positive, got {raw!r}"
        raise argparse.ArgumentTypeError(msg)
    return speed


def content_prefix(data: bytes) -> str:
    """The default event-id prefix: the file's content, so a renamed copy gives the same ids."""
    return hashlib.sha256(data).hexdigest()[:16]


def _check_row(user: Any, item: Any, ts: Any) -> tuple[str, str, float] | str:
    """The cleaned row, or why it is malformed."""
    for name, value in (("user", user), ("item", item)):
        if value is None or isinstance(value, bool | dict | list):
            return f"{name} id is missing or not a string/number"
        if str(value).strip() == "":
            return f"{name} id is empty"
    if ts is None or (isinstance(ts, str) and ts.strip() == ""):
        return "timestamp is empty"
    try:
        seconds = parse_time(ts)
    except ValueError as exc:
        return f"timestamp {exc}"
    return str(user).strip(), str(item).strip(), seconds


def _jsonl_rows(text: str, columns: Sequence[str]) -> Iterator[tuple[int, Any, Any, Any] | BadRow]:
    user_col, item_col, time_col = columns
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield BadRow(line_no, f"not valid JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            yield BadRow(line_no, f"a JSON {type(row).__name__}, not an object")
            continue
        missing = [c for c in columns if c not in row]
        if missing:
            yield BadRow(line_no, f"missing field(s) {missing}")
            continue
        yield line_no, row[user_col], row[item_col], row[time_col]


def _csv_rows(
    text: str, columns: Sequence[str], delimiter: str | None, path: Path
) -> Iterator[tuple[int, Any, Any, Any] | BadRow]:
    header_line = text.split("\n", 1)[0]
    if delimiter is None:
        delimiter = "\t" if path.suffix in TSV_SUFFIXES or "\t" in header_line else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in columns if c not in header]
    if missing:
        msg = (
            f"{path}: the header {header} lacks the column(s) {missing}; name the user, item "
            "and timestamp columns with --columns user,item,timestamp"
        )
        raise DataError(msg)
    positions = [header.index(c) for c in columns]
    line_no = reader.line_num
    for row in reader:
        first_line = line_no + 1  # where this row starts (a quoted field may span lines)
        line_no = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            yield BadRow(first_line, f"{len(row)} fields, the header has {len(header)}")
            continue
        user_pos, item_pos, time_pos = positions
        yield first_line, row[user_pos], row[item_pos], row[time_pos]


def read_log(
    path: str | Path,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    delimiter: str | None = None,
    id_prefix: str | None = None,
) -> ParsedLog:
    """Parse ``path`` (CSV, TSV, or JSON Lines for ``.jsonl``/``.ndjson``).

    Raises :class:`model.data.DataError` only when the file as a whole cannot be
    read (missing, not UTF-8, header without the columns); a bad row becomes a
    :class:`BadRow` and the rest of the file is still read.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"event log {path} does not exist or is not a file"
        raise DataError(msg)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        msg = f"{path}: not UTF-8 text (byte {exc.start}); convert it first (iconv -t utf-8)"
        raise DataError(msg) from exc
    prefix = id_prefix or content_prefix(data)
    raw_rows = (
        _jsonl_rows(text, columns)
        if path.suffix in JSONL_SUFFIXES
        else _csv_rows(text, columns, delimiter, path)
    )
    rows: list[LogRow] = []
    bad: list[BadRow] = []
    for raw in raw_rows:
        if isinstance(raw, BadRow):
            bad.append(raw)
            continue
        line_no, user, item, ts = raw
        checked = _check_row(user, item, ts)
        if isinstance(checked, str):
            bad.append(BadRow(line_no, checked))
            continue
        user_id, item_id, seconds = checked
        rows.append(LogRow(line_no, user_id, item_id, seconds, f"{prefix}:{line_no}"))
    rows.sort(key=lambda row: row.ts)  # list.sort is stable: file order on ties
    return ParsedLog(path=path, id_prefix=prefix, rows=rows, bad=bad)


def select(
    rows: Sequence[LogRow],
    from_ts: float | None = None,
    to_ts: float | None = None,
    limit: int | None = None,
) -> tuple[list[LogRow], int]:
    """Rows with ``from_ts <= ts < to_ts``, at most ``limit`` of them; and the count left out."""
    chosen = [
        row
        for row in rows
        if (from_ts is None or row.ts >= from_ts) and (to_ts is None or row.ts < to_ts)
    ]
    if limit is not None:
        chosen = chosen[:limit]
    return chosen, len(rows) - len(chosen)


# ---------------------------------------------------------------------------- sending


def kafka_bootstrap(broker: str) -> str:
    """``kafka://a:1;b:2`` (the worker's RUM_BROKER form) or ``a:1,b:2`` -> ``a:1,b:2``.

    Raises :class:`stream.brokers.BrokerError` for a malformed address.
    """
    return bootstrap_servers(broker)


def make_producer(bootstrap: str) -> Any:
    """A producer for ``bootstrap``; ``BrokerError`` within seconds when no server answers."""
    from kafka import KafkaProducer

    probe(bootstrap)

    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="rum-replay",
        acks="all",
        linger_ms=20,
        retries=5,
        # One request in flight per connection: a retried batch cannot overtake the
        # next one, so a user's events reach its partition in time order.
        max_in_flight_requests_per_connection=1,
    )


def send_rows(
    producer: Any,
    topic: str,
    rows: Sequence[LogRow],
    *,
    speed: float | None = None,
    max_rate: float | None = None,
    progress: bool = True,
    stop: threading.Event | None = None,
    on_sent: Callable[[LogRow], None] | None = None,
) -> ReplaySummary:
    """Produce ``rows`` in order, keyed by ``user_id``; return once the broker answered for all.

    ``speed`` None sends as fast as the producer takes them; otherwise the gap
    between two events' timestamps is waited for, divided by ``speed``.
    ``max_rate`` caps the events sent per second (spares a busy cluster).
    ``stop`` ends the replay early (Ctrl-C, the demo's shutdown); what was sent
    is still flushed and counted.
    """
    from tqdm import tqdm

    summary = ReplaySummary()
    lock = threading.Lock()
    acknowledged = [0]

    def delivered(_metadata: Any) -> None:
        with lock:
            acknowledged[0] += 1

    def lost(row: LogRow) -> Callable[[Exception], None]:
        def errback(exc: Exception) -> None:
            with lock:
                summary.undelivered += 1
                summary.undelivered_lines.append(row.line)
            print(f"line {row.line}: not delivered: {exc!r}", file=sys.stderr)

        return errback

    stop = stop or threading.Event()
    started = time.monotonic()
    first_ts = rows[0].ts if rows else 0.0
    bar = tqdm(total=len(rows), unit="ev", desc=f"replay → {topic}", disable=not progress)
    try:
        for index, row in enumerate(rows):
            due = started
            if speed is not None:
                due = max(due, started + (row.ts - first_ts) / speed)
            if max_rate is not None:
                due = max(due, started + index / max_rate)
            wait = due - time.monotonic()
            if stop.wait(wait) if wait > 0 else stop.is_set():
                summary.interrupted = True
                break
            future = producer.send(
                topic,
                key=row.user_id.encode(),
                value=json.dumps(row.payload()).encode(),
                headers=[("content-type", b"application/json")],
            )
            future.add_callback(delivered)
            future.add_errback(lost(row))
            if on_sent is not None:
                on_sent(row)
            bar.update(1)
    except KeyboardInterrupt:
        # Ctrl-C: stop sending, but still flush and count what went out.
        summary.interrupted = True
    finally:
        bar.close()
    producer.flush()
    summary.sent = acknowledged[0]
    summary.seconds = time.monotonic() - started
    return summary


# ---------------------------------------------------------------------------- command line


def add_switch(parser: argparse.ArgumentParser, flag: str, env: str, help: str) -> None:
    """A boolean switch with a chosen variable (``model.options.add_flag`` derives its own)."""
    default = os.environ.get(env, "").strip().lower() in {"1", "true", "yes", "on"}
    parser.add_argument(flag, action="store_true", default=default, help=f"{help} [env: {env}]")


def add_replay_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="event log: CSV, TSV, or JSON Lines (.jsonl/.ndjson)")
    add_option(
        parser,
        "--broker",
        default="kafka://127.0.0.1:9092",
        help="Kafka URL, the workers' form (kafka://host:port) or host:port",
        env="RUM_BROKER",
    )
    add_option(
        parser,
        "--topic",
        default="purchases",
        help="topic to send to (the workers' input topic)",
        env="RUM_TOPIC_PURCHASES",
    )
    add_option(
        parser,
        "--columns",
        type=parse_columns,
        default=",".join(DEFAULT_COLUMNS),
        help="user,item,timestamp column names (CSV/TSV header, JSON Lines fields)",
        env="RUM_REPLAY_COLUMNS",
    )
    add_option(
        parser,
        "--delimiter",
        type=_delimiter,
        default=None,
        help="CSV delimiter (default: tab for .tsv/.tab or a tab in the header, else comma)",
        env="RUM_REPLAY_DELIMITER",
    )
    add_option(
        parser,
        "--speed",
        default="max",
        help="1x = real time, 60x = a minute of the log per second, max = no pacing",
        env="RUM_REPLAY_SPEED",
    )
    add_option(
        parser,
        "--from",
        type=_time_option,
        default=None,
        help="first event time to send, inclusive (unix seconds or ISO-8601, UTC if no zone)",
        env="RUM_REPLAY_FROM",
    )
    add_option(
        parser,
        "--to",
        type=_time_option,
        default=None,
        help="event time to stop at, exclusive (unix seconds or ISO-8601, UTC if no zone)",
        env="RUM_REPLAY_TO",
    )
    add_option(
        parser,
        "--limit",
        type=int,
        default=None,
        help="send at most this many events (after --from/--to)",
        env="RUM_REPLAY_LIMIT",
    )
    add_option(
        parser,
        "--id-prefix",
        default=None,
        help=(
            "event_id prefix (ids are PREFIX:LINE); default: a hash of the file's content. "
            "Name one for a log that grows by appending, so earlier lines keep their ids"
        ),
        env="RUM_REPLAY_ID_PREFIX",
    )
    add_option(
        parser,
        "--bad-rows",
        default=None,
        help="also write every malformed row (line<TAB>reason) to this file",
        env="RUM_REPLAY_BAD_ROWS",
    )
    add_option(
        parser,
        "--max-rate",
        type=float,
        default=None,
        help="send at most this many events per second (on top of --speed)",
        env="RUM_REPLAY_MAX_RATE",
    )
    add_switch(parser, "--no-progress", "RUM_REPLAY_NO_PROGRESS", "no progress bar")


def report_bad_rows(log: ParsedLog, out_path: str | None = None) -> None:
    """Every bad row goes to ``out_path`` when given; the first few go to stderr regardless."""
    for bad in log.bad[:BAD_ROWS_SHOWN]:
        print(f"{log.path}:{bad.line}: skipped malformed row: {bad.reason}", file=sys.stderr)
    rest = len(log.bad) - BAD_ROWS_SHOWN
    if rest > 0:
        lines = ", ".join(str(b.line) for b in log.bad[BAD_ROWS_SHOWN : BAD_ROWS_SHOWN + 10])
        hint = "; --bad-rows FILE lists them all" if out_path is None else f"; all in {out_path}"
        print(f"... and {rest} more malformed rows (lines {lines}, ...){hint}", file=sys.stderr)
    if out_path is not None:
        with open(out_path, "w", encoding="utf-8") as handle:
            for bad in log.bad:
                handle.write(f"{bad.line}\t{bad.reason}\n")


def replay_main(args: argparse.Namespace) -> int:
    """Exit status 0 when every row was sent; 1 when any row was malformed or undelivered."""
    for flag, value in (("--limit", args.limit), ("--max-rate", args.max_rate)):
        if value is not None and value <= 0:
            print(f"rum replay: {flag} must be positive, got {value}", file=sys.stderr)
            return 2
    try:
        bootstrap = kafka_bootstrap(args.broker)
        speed = parse_speed(args.speed)
        log = read_log(args.path, args.columns, args.delimiter, args.id_prefix)
    except (argparse.ArgumentTypeError, DataError, BrokerError) as exc:
        print(f"rum replay: {exc}", file=sys.stderr)
        return 2
    report_bad_rows(log, args.bad_rows)
    # `from` is a keyword, so argparse's attribute is only reachable through getattr.
    rows, skipped = select(log.rows, getattr(args, "from"), args.to, args.limit)
    print(
        f"rum replay: {len(log.rows) + len(log.bad)} rows in {log.path}, "
        f"{len(rows)} to send to {args.topic} (event ids {log.id_prefix}:LINE)",
        file=sys.stderr,
    )
    from kafka.errors import KafkaError

    stop = threading.Event()
    try:
        producer = make_producer(bootstrap)
    except BrokerError as exc:
        print(f"rum replay: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:
        print(f"rum replay: cannot reach the broker {args.broker}: {exc!r}", file=sys.stderr)
        return 2
    try:
        summary = send_rows(
            producer,
            args.topic,
            rows,
            speed=speed,
            max_rate=args.max_rate,
            progress=not args.no_progress,
            stop=stop,
        )
    finally:
        producer.close(timeout=10)
    summary.skipped = skipped
    summary.malformed = len(log.bad)
    print(f"rum replay: {summary.line()}", file=sys.stderr)
    if summary.interrupted:
        return 130
    return 1 if summary.failed else 0
