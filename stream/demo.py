"""``rum demo``: the whole product in one command, on a laptop, in about a minute.

1. a broker: ``RUM_BROKER`` when set, else the embedded Tansu broker (memory only);
2. a small item-level RUM model trained, with progress, on the bundled MovieLens
   latest-small log *minus the events the demo replays* (the stream brings the model
   events it never saw);
3. a worker (``rum worker``) in its own process, data directory and web port;
4. a replay (the same code as ``rum replay``) of the recent history of a few users,
   among them the two whose tastes differ most (genre profiles of their histories);
5. the recommendations, read from the output topic as they arrive and printed with
   titles; then the two users' lists side by side, then one purchase of the first
   user and their list before and after it, with what it is ``because`` of;
6. the three commands that do the same with one's own log.

Every list shown is a message the worker published on the recommendations topic
(and the after-purchase list is checked against ``GET /recommendations``).
Everything the demo starts is stopped again on the way out, also on Ctrl-C or
SIGTERM; the run's topics are named per run, and deleted again on a broker the
demo did not start. The exit status is non-zero when no recommendation came back
(or not every replayed event was answered), so CI can run ``rum demo --short``.

The embedded broker does not complete kafka-python *group* joins, so the demo
reads the output topic with a manually assigned consumer.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from model.options import add_option
from stream.replay import (
    LogRow,
    ReplaySummary,
    add_switch,
    kafka_bootstrap,
    make_producer,
    read_log,
    send_rows,
)

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "deploy" / "demo-data" / "ml-latest-small"
TOP_K = 5
LIVE_K = 3  # items per block while the replay runs
TITLE_WIDTH = 38
COLUMN = 46  # width of one column of the side-by-side views
# A sampled softmax over 20 negatives with the memory at full weight (alpha 1) ranks by
# what a user bought, not by what everyone bought: the paper's BCE with one negative
# gives every user much the same popular films after a few epochs (issue 17).
TRAIN_OPTIONS = (
    *("--variant", "item", "--dim", "32", "--alpha", "1.0", "--l2", "1e-2", "--lr", "5e-3"),
    *("--loss", "sampled-softmax", "--negatives", "20"),
)


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where its log is."""


@dataclass(frozen=True)
class Plan:
    """How big a run is: the full demo, or ``--short`` for CI."""

    users: int
    events_per_user: int
    epochs: int
    rate: float | None  # replayed events per second; None = as fast as possible
    shown: int  # recommendation blocks printed while the replay runs
    answer_timeout_s: float = 90.0


FULL = Plan(users=40, events_per_user=30, epochs=3, rate=150.0, shown=3)
SHORT = Plan(users=8, events_per_user=8, epochs=1, rate=None, shown=3)


def add_demo_options(parser: argparse.ArgumentParser) -> None:
    add_option(
        parser,
        "--broker",
        default=None,
        help="use this broker (kafka://host:port); unset: start the embedded one",
        env="RUM_BROKER",
    )
    add_switch(parser, "--short", "RUM_DEMO_SHORT", "a short run for CI: fewer events, 1 epoch")
    add_option(
        parser,
        "--data",
        default=str(DEMO_DATA),
        help="folder with events.csv (user_id,item_id,timestamp) and items.csv (id,title,genres)",
        env="RUM_DEMO_DATA",
    )
    add_option(
        parser, "--users", type=int, default=None, help="users to replay", env="RUM_DEMO_USERS"
    )
    add_option(
        parser,
        "--events-per-user",
        type=int,
        default=None,
        help="recent events replayed per user",
        env="RUM_DEMO_EVENTS_PER_USER",
    )
    add_option(
        parser, "--epochs", type=int, default=None, help="training epochs", env="RUM_DEMO_EPOCHS"
    )


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Catalogue:
    """Titles and genres of the items, from ``items.csv`` (first column the id)."""

    titles: dict[str, str]
    genres: dict[str, tuple[str, ...]]


def load_catalogue(folder: Path) -> Catalogue:
    """``items.csv``: the id first, a ``title`` column, optionally a ``genres`` column
    (``|``-separated as in MovieLens latest, or space-separated as in ml-100k)."""
    path = folder / "items.csv"
    if not path.is_file():
        return Catalogue({}, {})
    titles: dict[str, str] = {}
    genres: dict[str, tuple[str, ...]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        title_at = header.index("title") if "title" in header else 1
        genres_at = header.index("genres") if "genres" in header else None
        for row in reader:
            if len(row) <= title_at:
                continue
            titles[row[0]] = row[title_at]
            if genres_at is not None and len(row) > genres_at:
                raw = row[genres_at]
                genres[row[0]] = tuple(raw.split("|") if "|" in raw else raw.split())
    return Catalogue(titles, genres)


@dataclass(frozen=True)
class Cast:
    """Who the demo replays: ``pair`` (the two most different tastes) among ``users``."""

    users: list[str]
    pair: tuple[str, str]
    replayed: dict[str, list[LogRow]]  # user -> their last events, in time order


def _profile(rows: list[LogRow], catalogue: Catalogue) -> Counter[str]:
    """Genre counts of a user's events (each item its own 'genre' when none are known)."""
    counts: Counter[str] = Counter()
    for row in rows:
        counts.update(catalogue.genres.get(row.item_id) or (f"item:{row.item_id}",))
    return counts


def most_different_pair(profiles: dict[str, Counter[str]]) -> tuple[str, str]:
    """The two users whose profiles have the lowest cosine similarity (ties: lowest ids)."""
    import numpy as np

    users = sorted(profiles, key=_id_order)
    features = sorted({g for counts in profiles.values() for g in counts})
    column = {g: j for j, g in enumerate(features)}
    vectors = np.zeros((len(users), len(features)))  # [U, G]
    for i, user in enumerate(users):
        for genre, count in profiles[user].items():
            vectors[i, column[genre]] = count
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = vectors @ vectors.T  # [U, U]
    similarity[np.tril_indices(len(users))] = np.inf  # each pair once, never a user with itself
    first, second = np.unravel_index(int(np.argmin(similarity)), similarity.shape)
    return users[int(first)], users[int(second)]


def choose_cast(log_rows: list[LogRow], catalogue: Catalogue, users: int, per_user: int) -> Cast:
    """The two most different users plus others evenly spread over the user ids."""
    by_user: dict[str, list[LogRow]] = defaultdict(list)
    for row in log_rows:
        by_user[row.user_id].append(row)
    eligible = sorted((u for u, rows in by_user.items() if len(rows) >= per_user), key=_id_order)
    if len(eligible) < 2:
        msg = f"fewer than two users have {per_user} events; lower --events-per-user"
        raise DemoError(msg)
    recent = {u: by_user[u][-per_user:] for u in eligible}
    pair = most_different_pair({u: _profile(rows, catalogue) for u, rows in recent.items()})
    others = [u for u in eligible if u not in pair]
    step = max(1, len(others) // max(1, users - 2))
    chosen = sorted([*pair, *others[::step][: max(0, users - 2)]], key=_id_order)
    return Cast(chosen, pair, {u: recent[u] for u in chosen})


def write_logs(log_rows: list[LogRow], cast: Cast, train_csv: Path, replay_csv: Path) -> int:
    """The training log (every event but the replayed ones) and the replay log (time order).

    Returns the number of events replayed.
    """
    replayed = {row.event_id for rows in cast.replayed.values() for row in rows}
    header = ["user_id", "item_id", "timestamp"]
    with train_csv.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in log_rows:
            if row.event_id not in replayed:
                writer.writerow([row.user_id, row.item_id, _ts_text(row.ts)])
    rows = sorted((r for rs in cast.replayed.values() for r in rs), key=lambda r: (r.ts, r.line))
    with replay_csv.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.user_id, row.item_id, _ts_text(row.ts)])
    return len(rows)


def _ts_text(ts: float) -> str:
    return str(int(ts)) if ts.is_integer() else repr(ts)


def pick_purchase(cast: Cast, other_list: dict[str, Any]) -> str:
    """What the first user of the pair buys: the first item the worker recommends to the
    other user that the first has not bought (a film typical of the other taste, and well
    known to the model; a film bought once in the log would move little)."""
    first, second = cast.pair
    owned = {row.item_id for row in cast.replayed[first]}
    for item in item_ids(other_list):
        if item not in owned:
            return item
    msg = f"every item recommended to user {second} was bought by user {first}"
    raise DemoError(msg)


def _id_order(raw: str) -> tuple[int, str]:
    return (int(raw), raw) if raw.isdigit() else (sys.maxsize, raw)


# ---------------------------------------------------------------------------- processes


def _signal_to_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM the process group (a clean Faust shutdown), SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


_EPOCH_DONE = re.compile(r"^epoch (\d+): loss (\S+) \((\S+)s\)")
_EPOCH_BAR = re.compile(r"^epoch (\d+):\s+(\d+)%")


@dataclass
class TrainingProgress:
    """Turns ``rum train``'s stderr (tqdm bars, epoch lines) into the demo's progress lines.

    On a terminal the current epoch's percentage is redrawn in place; elsewhere (CI, a
    pipe) only the finished epochs are printed.
    """

    epochs: int
    step: Any  # the demo's timestamped printer
    live: bool = field(default_factory=lambda: sys.stdout.isatty())
    pending: bytes = b""
    drawn: bool = False

    def feed(self, chunk: bytes) -> None:
        self.pending += chunk
        *pieces, self.pending = re.split(rb"[\r\n]", self.pending)
        for piece in pieces:
            self._line(piece.decode(errors="replace").strip())

    def _line(self, text: str) -> None:
        done = _EPOCH_DONE.match(text)
        if done:
            self._clear()
            epoch, loss, seconds = done.groups()
            self.step(f"  epoch {epoch}/{self.epochs} done: loss {loss}, {seconds} s")
            return
        bar = _EPOCH_BAR.match(text)
        if bar and self.live:
            epoch, percent = bar.groups()
            filled = int(percent) // 5
            sys.stdout.write(
                f"\r         epoch {epoch}/{self.epochs} [{'#' * filled}{'.' * (20 - filled)}] "
                f"{percent:>3}%"
            )
            sys.stdout.flush()
            self.drawn = True

    def _clear(self) -> None:
        if self.drawn:
            sys.stdout.write("\r" + " " * 60 + "\r")
            self.drawn = False


def train_model(events_csv: Path, out: Path, epochs: int, workdir: Path, step: Any) -> str:
    """``rum train`` in a child process (its own session: Ctrl-C is ours to pass on)."""
    cmd = [
        sys.executable,
        "-m",
        "stream.cli",
        "train",
        "--data",
        str(events_csv),
        *TRAIN_OPTIONS,
        "--all",
        "--epochs",
        str(epochs),
        "--columns",
        "user_id,item_id,timestamp",
        # One thread: with two on a two-core machine that is busy with anything else,
        # torch's worker threads wait on each other and an epoch took 38 s instead of 3 s.
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    log_path, stdout_path = workdir / "train.log", workdir / "train.json"
    progress = TrainingProgress(epochs, step)
    with log_path.open("wb") as log, stdout_path.open("wb") as stdout:
        proc = subprocess.Popen(
            cmd, stdout=stdout, stderr=subprocess.PIPE, cwd=REPO, start_new_session=True
        )
        try:
            assert proc.stderr is not None
            while chunk := os.read(proc.stderr.fileno(), 4096):
                log.write(chunk)
                progress.feed(chunk)
            proc.wait()
        finally:
            progress._clear()
            _stop_process(proc, timeout_s=5)
    if proc.returncode != 0:
        msg = f"training failed (exit {proc.returncode}); its log ends:\n{_tail(log_path)}"
        raise DemoError(msg)
    lines = [x for x in stdout_path.read_text().splitlines() if x.startswith("{")]
    version: str = json.loads(lines[-1])["version"] if lines else "?"
    return version


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_for_worker(
    proc: subprocess.Popen[bytes], port: int, log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"the worker exited with code {proc.returncode}; its log ends:\n{_tail(log_path)}"
            raise DemoError(msg)
        if _health(port):
            return
        time.sleep(0.5)
    msg = f"the worker was not healthy within {timeout_s:.0f} s; see {log_path}"
    raise DemoError(msg)


# ---------------------------------------------------------------------------- showing


@dataclass
class Board:
    """What was sent and what came back; prints recommendation blocks."""

    catalogue: Catalogue
    sent_by_user: dict[str, list[tuple[str, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )  # user -> [(event_id, item_id)] in send order
    sent_at: dict[str, float] = field(default_factory=dict)  # event_id -> monotonic time
    answered: set[str] = field(default_factory=set)
    answer_of: dict[str, dict[str, Any]] = field(default_factory=dict)  # event_id -> message
    latest_by_user: dict[str, dict[str, Any]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    messages: int = 0
    users_answered: set[str] = field(default_factory=set)
    shown: int = 0

    def on_sent(self, row: LogRow) -> None:
        # Called on the replay thread; only appends and inserts, each atomic under the GIL.
        self.sent_at[row.event_id] = time.monotonic()
        self.sent_by_user[row.user_id].append((row.event_id, row.item_id))

    def receive(self, message: dict[str, Any]) -> None:
        now = time.monotonic()
        self.messages += 1
        user = str(message.get("user_id"))
        self.users_answered.add(user)
        self.latest_by_user[user] = message
        for event_id in message.get("event_ids", []):
            self.answer_of[event_id] = message
            if event_id in self.sent_at and event_id not in self.answered:
                self.answered.add(event_id)
                self.latencies_ms.append((now - self.sent_at[event_id]) * 1000)

    def title(self, item_id: str, width: int = TITLE_WIDTH) -> str:
        text = self.catalogue.titles.get(item_id, f"item {item_id}")
        return text if len(text) <= width else text[: width - 1] + "…"

    def block(self, message: dict[str, Any]) -> str:
        user = str(message["user_id"])
        history = self.sent_by_user.get(user, [])
        ids = [event_id for event_id, _item in history]
        last_event = (message.get("event_ids") or [None])[-1]
        upto = ids.index(last_event) + 1 if last_event in ids else len(ids)
        purchases = [item for _event_id, item in history[:upto]]
        recent = " · ".join(self.title(item) for item in purchases[-3:][::-1]) or "(none yet)"
        lines = [
            f"── user {user} · {upto} purchases replayed · model {message.get('model_version')}",
            f"   last purchases: {recent}",
        ]
        for rank, item in enumerate(message.get("items", [])[:LIVE_K], start=1):
            because = ", ".join(
                f"{self.title(str(r['item_id']))} {float(r['weight']):.2f}"
                for r in item.get("because", [])[:2]
            )
            reason = f"  ← because {because}" if because else "  (popular)"
            # No score column: a sampled-softmax model's sigmoid scores sit near 1.00 for
            # every top item; the order and the reasons say what the list rests on.
            lines.append(f"   {rank}. {self.title(str(item['item_id'])):<{TITLE_WIDTH}}{reason}")
        self.shown += 1
        return "\n".join(lines)

    def column(self, message: dict[str, Any]) -> list[str]:
        """A recommendation message as a column: per item its title, then its top reason."""
        lines: list[str] = []
        for rank, item in enumerate(message.get("items", [])[:TOP_K], start=1):
            lines.append(f"{rank}. {self.title(str(item['item_id']), COLUMN - 4)}")
            reasons = item.get("because", [])
            if reasons:
                top = reasons[0]
                name = self.title(str(top["item_id"]), COLUMN - 18)
                lines.append(f"   because {name} {float(top['weight']):.2f}")
            else:
                lines.append("   (popular)")
        return lines

    def latency_line(self) -> str:
        if not self.latencies_ms:
            return "no event was answered"
        ordered = sorted(self.latencies_ms)
        p50 = ordered[len(ordered) // 2]
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        return f"event → recommendation latency p50 {p50:.0f} ms, p95 {p95:.0f} ms"


def side_by_side(left: list[str], right: list[str]) -> str:
    """Two columns, the left one padded to :data:`COLUMN` characters."""
    rows = max(len(left), len(right))
    left = left + [""] * (rows - len(left))
    right = right + [""] * (rows - len(right))
    return "\n".join(f"   {a:<{COLUMN}}  {b}".rstrip() for a, b in zip(left, right, strict=True))


def taste(rows: list[LogRow], catalogue: Catalogue) -> str:
    """A user's three commonest genres in the replayed events ("Horror 28, Thriller 17")."""
    counts = Counter(g for row in rows for g in catalogue.genres.get(row.item_id, ()))
    return ", ".join(f"{g} {n}" for g, n in counts.most_common(3)) or "no genres known"


def item_ids(message: dict[str, Any]) -> list[str]:
    return [str(item["item_id"]) for item in message.get("items", [])]


def _consumer(bootstrap: str, topic: str, timeout_s: float = 30.0) -> Any:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    deadline = time.monotonic() + timeout_s
    partitions: set[int] | None = None
    while not partitions:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions and time.monotonic() > deadline:
            consumer.close()
            msg = f"the output topic {topic} did not appear within {timeout_s:.0f} s"
            raise DemoError(msg)
        if not partitions:
            time.sleep(0.3)
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)
    return consumer


# ---------------------------------------------------------------------------- the run


@dataclass
class Started:
    """Everything the demo started, so the way out can stop exactly that."""

    workdir: Path
    broker_dir: Path | None = None
    external_bootstrap: str | None = None
    topics_prefix: str = ""
    worker: subprocess.Popen[bytes] | None = None
    consumer: Any = None
    replay_stop: threading.Event = field(default_factory=threading.Event)
    replay_thread: threading.Thread | None = None
    stopped: list[str] = field(default_factory=list)


def _say(text: str) -> None:
    print(text, flush=True)


def _cleanup(started: Started) -> None:
    started.replay_stop.set()
    if started.replay_thread is not None:
        started.replay_thread.join(timeout=15)
    if started.consumer is not None:
        with contextlib.suppress(Exception):
            started.consumer.close()
    if started.worker is not None and started.worker.poll() is None:
        _stop_process(started.worker)
        started.stopped.append(f"worker (pid {started.worker.pid})")
    if started.broker_dir is not None:
        from deploy.kafka import harness

        info = harness.read_info(started.broker_dir)
        if harness.stop(started.broker_dir):
            started.stopped.append(f"embedded broker (pid {info.pid if info else '?'})")
    if started.external_bootstrap is not None and started.topics_prefix:
        _delete_topics(started.external_bootstrap, started.topics_prefix)
        started.stopped.append(f"topics {started.topics_prefix}*")
    shutil.rmtree(started.workdir, ignore_errors=True)


def _delete_topics(bootstrap: str, prefix: str) -> None:
    """Best effort: the demo's own topics (and Faust's changelogs) on a broker it borrowed."""
    from kafka import KafkaAdminClient

    with contextlib.suppress(Exception):
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="rum-demo")
        try:
            names = [t for t in admin.list_topics() if t.startswith(prefix)]
            if names:
                admin.delete_topics(names)
        finally:
            admin.close()


WHAT_NEXT = """\
Next: the same with your own log (a CSV with user_id,item_id,timestamp columns; name
other columns with --columns user,item,time; every option also reads RUM_<COMMAND>_<OPTION>).
With a broker on 127.0.0.1:9092 (`rum kafka start`, or export RUM_BROKER=kafka://host:port):
  rum train --data my-events.csv --all --variant item --loss sampled-softmax --negatives 20 \\
    --alpha 1 --l2 1e-2 --lr 5e-3 --dim 32 --epochs 7 --threads 1 --out models/first
  RUM_MODEL_DIR=models rum worker          # in a second terminal; HTTP on 127.0.0.1:6066
  rum replay my-events.csv --speed max     # recommendations arrive on the topic `recommendations`\
"""


def demo_main(args: argparse.Namespace) -> int:
    base = SHORT if args.short else FULL
    plan = Plan(
        users=args.users or base.users,
        events_per_user=args.events_per_user or base.events_per_user,
        epochs=args.epochs or base.epochs,
        rate=base.rate,
        shown=base.shown,
    )
    previous = signal.signal(signal.SIGTERM, _signal_to_interrupt)
    begun = time.monotonic()
    started = Started(workdir=Path(tempfile.mkdtemp(prefix="rum-demo-")))
    try:
        board = _run(args, plan, started, begun)
    except KeyboardInterrupt:
        _say("\ninterrupted: stopping what the demo started …")
        _cleanup(started)
        _say(f"stopped: {', '.join(started.stopped) or 'nothing was running'}")
        return 130
    except DemoError as exc:
        print(f"rum demo: {exc}", file=sys.stderr)
        _cleanup(started)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    _cleanup(started)
    _say(f"stopped: {', '.join(started.stopped)}")
    _say(f"demo finished in {time.monotonic() - begun:.0f} s")
    if board.messages == 0:
        print("rum demo: no recommendation arrived", file=sys.stderr)
        return 1
    if len(board.answered) < len(board.sent_at):
        missing = len(board.sent_at) - len(board.answered)
        print(f"rum demo: {missing} replayed events were never answered", file=sys.stderr)
        return 1
    _say("")
    _say(WHAT_NEXT)
    return 0


def _start_broker(args: argparse.Namespace, started: Started, step: Any) -> str:
    if args.broker:
        bootstrap = kafka_bootstrap(args.broker)
        started.external_bootstrap = bootstrap
        step(f"using the broker at {bootstrap} (RUM_BROKER)")
        return bootstrap
    from deploy.kafka import harness

    started.broker_dir = started.workdir / "broker"
    try:
        info = harness.start(started.broker_dir, embedded=True, timeout_s=60)
    except harness.KafkaHarnessError as exc:
        raise DemoError(f"the embedded broker did not start: {exc}") from exc
    step(f"embedded broker ({info.version}, memory only, pid {info.pid}) on {info.bootstrap}")
    return info.bootstrap


def _start_worker(started: Started, bootstrap: str, topics: dict[str, str], port: int) -> None:
    workdir = started.workdir
    env = {
        **os.environ,
        **topics,
        "RUM_BROKER": f"kafka://{bootstrap}",
        "RUM_APP_ID": started.topics_prefix,
        "RUM_MODEL_DIR": str(workdir / "model"),
        "RUM_DATA_DIR": str(workdir / "worker"),
        "RUM_WEB_PORT": str(port),
        "RUM_WEB_HOST": "127.0.0.1",
        "RUM_PARTITIONS": "2",
        "RUM_TOPK": str(TOP_K),
        "RUM_EMIT": "user",
        "RUM_LOG_LEVEL": "warning",
        # The embedded broker answers a group join only after half the session
        # timeout: 5 s with this one.
        "RUM_SESSION_TIMEOUT_S": "10",
    }
    with (workdir / "worker.log").open("wb") as log:
        started.worker = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _run(args: argparse.Namespace, plan: Plan, started: Started, begun: float) -> Board:
    data = Path(args.data)
    events_csv = data / "events.csv"
    if not events_csv.is_file():
        msg = f"no demo data: {events_csv} is missing (RUM_DEMO_DATA / --data names the folder)"
        raise DemoError(msg)
    workdir = started.workdir
    run_id = uuid.uuid4().hex[:8]
    started.topics_prefix = f"rum-demo-{run_id}"

    def step(text: str) -> None:
        _say(f"[{time.monotonic() - begun:5.1f}s] {text}")

    _say(
        "RUM stream demo: a broker, a model trained on MovieLens, a worker, a replay, and "
        "the recommendations as they arrive (Ctrl-C stops everything)"
    )
    bootstrap = _start_broker(args, started, step)

    # The cast: the two most different tastes among the replayed users; the model
    # never sees the events the demo replays.
    catalogue = load_catalogue(data)
    log_rows = read_log(events_csv).rows
    cast = choose_cast(log_rows, catalogue, plan.users, plan.events_per_user)
    train_csv, replay_csv = workdir / "train-events.csv", workdir / "demo-events.csv"
    events = write_logs(log_rows, cast, train_csv, replay_csv)
    step(
        f"training item-level RUM on {events_csv}: {len(log_rows) - events} events "
        f"(the {events} the demo replays held out), {plan.epochs} epoch(s) …"
    )
    version = train_model(train_csv, workdir / "model", plan.epochs, workdir, step)
    step(f"model {version} ready")

    port = _free_port()
    topics = {
        "RUM_TOPIC_PURCHASES": f"{started.topics_prefix}.purchases",
        "RUM_TOPIC_RECOMMENDATIONS": f"{started.topics_prefix}.recommendations",
        "RUM_TOPIC_DLQ": f"{started.topics_prefix}.purchases.dlq",
    }
    _start_worker(started, bootstrap, topics, port)
    assert started.worker is not None
    step(
        f"worker started (pid {started.worker.pid}, http://127.0.0.1:{port}); waiting until ready …"
    )
    wait_for_worker(started.worker, port, workdir / "worker.log", timeout_s=120)
    step("worker ready")

    # Replay on a thread; show what comes back on this one.
    replay_log = read_log(replay_csv)
    board = Board(catalogue=catalogue)
    started.consumer = _consumer(bootstrap, topics["RUM_TOPIC_RECOMMENDATIONS"])
    pace = f"{plan.rate:.0f} events/s" if plan.rate else "full speed"
    step(
        f"replaying {events} events of {len(cast.users)} users into "
        f"{topics['RUM_TOPIC_PURCHASES']} ({pace})"
    )
    outcome: list[ReplaySummary | BaseException] = []

    def replay() -> None:
        producer = make_producer(bootstrap)
        try:
            outcome.append(
                send_rows(
                    producer,
                    topics["RUM_TOPIC_PURCHASES"],
                    replay_log.rows,
                    max_rate=plan.rate,
                    progress=False,
                    stop=started.replay_stop,
                    on_sent=board.on_sent,
                )
            )
        except BaseException as exc:  # reported by the main thread
            outcome.append(exc)
        finally:
            producer.close(timeout=5)

    started.replay_thread = threading.Thread(target=replay, name="rum-demo-replay", daemon=True)
    started.replay_thread.start()
    _watch(board, plan, started, step)
    summary = outcome[0] if outcome else None
    if isinstance(summary, BaseException):
        raise DemoError(f"the replay failed: {summary!r}")
    if summary is not None:
        step(f"replay: {summary.line()}")
    step(
        f"{board.messages} recommendation messages for {len(board.users_answered)} users, "
        f"{len(board.answered)}/{len(board.sent_at)} replayed events answered; "
        f"{board.latency_line()}"
    )
    show_pair(board, cast, topics["RUM_TOPIC_RECOMMENDATIONS"])
    item = pick_purchase(cast, _latest(board, cast.pair[1]))
    before, after = purchase(board, cast, item, bootstrap, topics, started, step)
    show_purchase(board, cast, item, before, after, port)
    return board


def _latest(board: Board, user: str) -> dict[str, Any]:
    message = board.latest_by_user.get(user)
    if message is None:
        msg = f"no recommendation arrived for user {user}; see the worker log"
        raise DemoError(msg)
    return message


def show_pair(board: Board, cast: Cast, topic: str) -> None:
    """The two most different users' latest published lists, side by side."""
    first, second = cast.pair
    left, right = _latest(board, first), _latest(board, second)
    _say(f"── two users with different tastes: their lists as published on {topic}")
    heads = [
        [
            f"user {user} · {taste(cast.replayed[user], board.catalogue)}",
            f"last bought: {board.title(cast.replayed[user][-1].item_id, COLUMN - 13)}",
        ]
        for user in cast.pair
    ]
    _say(side_by_side(heads[0] + board.column(left), heads[1] + board.column(right)))
    common = set(item_ids(left)) & set(item_ids(right))
    _say(f"   {len(common)} of {TOP_K} items in common")


def purchase(
    board: Board,
    cast: Cast,
    item: str,
    bootstrap: str,
    topics: dict[str, str],
    started: Started,
    step: Any,
    timeout_s: float = 60.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send one purchase of the pair's first user; return their list before and after it."""
    user = cast.pair[0]
    before = _latest(board, user)
    row = LogRow(0, user, item, float(int(time.time())), f"{started.topics_prefix}:purchase")
    step(f"user {user} buys {board.title(item)}, the first recommendation of user {cast.pair[1]} …")
    producer = make_producer(bootstrap)
    try:
        send_rows(
            producer, topics["RUM_TOPIC_PURCHASES"], [row], progress=False, on_sent=board.on_sent
        )
    finally:
        producer.close(timeout=5)
    deadline = time.monotonic() + timeout_s
    assert started.worker is not None
    for message in _messages(started.consumer):
        if message is not None:
            board.receive(message)
        if row.event_id in board.answer_of:
            return before, board.answer_of[row.event_id]
        if started.worker.poll() is not None:
            msg = f"the worker exited with code {started.worker.returncode}"
            raise DemoError(msg)
        if time.monotonic() > deadline:
            msg = f"no recommendation answered the purchase within {timeout_s:.0f} s"
            raise DemoError(msg)
    raise AssertionError("unreachable: _messages never ends")


def show_purchase(
    board: Board,
    cast: Cast,
    item: str,
    before: dict[str, Any],
    after: dict[str, Any],
    port: int,
) -> None:
    """The user's list before and after the purchase, and the HTTP answer for comparison."""
    user = cast.pair[0]
    latency = board.latencies_ms[-1] if board.latencies_ms else float("nan")
    _say(
        f"── user {user} before and after buying {board.title(item)} (answered in {latency:.0f} ms)"
    )
    heads = (
        [f"before · model {before.get('model_version')}"],
        [f"after · model {after.get('model_version')}"],
    )
    _say(side_by_side(heads[0] + board.column(before), heads[1] + board.column(after)))
    new = [i for i in item_ids(after) if i not in item_ids(before)]
    led = sum(
        1
        for entry in after.get("items", [])
        if entry.get("because") and str(entry["because"][0]["item_id"]) == item
    )
    _say(
        f"   {len(new)} of {TOP_K} items are new; {board.title(item)} is the first reason "
        f"for {led} of {TOP_K}"
    )
    path = f"/recommendations/{user}?k={TOP_K}"
    answer = _http_json(port, path)
    if answer is None:
        _say(f"   GET {path} did not answer")
    elif item_ids(answer) == item_ids(after):
        _say(f"   GET http://127.0.0.1:{port}{path} answers the same {TOP_K} items")
    else:
        _say(f"   GET {path} answers {', '.join(board.title(i) for i in item_ids(answer))}")


def _http_json(port: int, path: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _watch(board: Board, plan: Plan, started: Started, step: Any) -> None:
    """Read recommendations until every replayed event is answered (or the time is up)."""
    interval = 2.0 if plan.rate else 0.5
    last_shown = 0.0
    latest: dict[str, Any] | None = None
    replay_done_at: float | None = None
    shown_users: list[str] = []
    assert started.replay_thread is not None and started.worker is not None
    for message in _messages(started.consumer):
        if message is not None:
            board.receive(message)
            user = str(message.get("user_id"))
            # Prefer a user not shown lately, so the blocks tell several stories.
            if latest is None or user not in shown_users[-3:]:
                latest = message
        now = time.monotonic()
        if latest is not None and board.shown < plan.shown and now - last_shown >= interval:
            _say(board.block(latest))
            shown_users.append(str(latest["user_id"]))
            latest, last_shown = None, now
        if started.worker.poll() is not None:
            msg = f"the worker exited with code {started.worker.returncode} during the replay"
            raise DemoError(msg)
        if replay_done_at is None and not started.replay_thread.is_alive():
            replay_done_at = now
        if replay_done_at is not None:
            if board.sent_at and len(board.answered) >= len(board.sent_at):
                if latest is not None:
                    _say(board.block(latest))
                return
            if now - replay_done_at > plan.answer_timeout_s:
                step(f"gave up waiting after {plan.answer_timeout_s:.0f} s")
                return


def _messages(consumer: Any) -> Iterator[dict[str, Any] | None]:
    """Decoded recommendation messages; ``None`` after each empty poll (a clock tick)."""
    while True:
        batches = consumer.poll(timeout_ms=200)
        if not batches:
            yield None
        for records in batches.values():
            for record in records:
                with contextlib.suppress(ValueError, TypeError):
                    yield json.loads(record.value)


def _free_port() -> int:
    from deploy.kafka.harness import free_port

    return free_port()
