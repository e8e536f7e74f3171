"""``rum demo``: the whole product in one command, on a laptop, in about a minute and a half.

1. a broker: ``RUM_BROKER`` when set, else the embedded Tansu broker (memory only);
2. a small item-level RUM model trained on the bundled MovieLens latest-small log;
3. a worker (``rum worker``) in its own process, data directory and web port;
4. a replay (the same code as ``rum replay``) of the recent history of a few users;
5. the recommendations, read from the output topic as they arrive and printed with
   titles: the user, their last purchases, the top-k and what each is ``because`` of.

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
from collections import defaultdict
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
TITLE_WIDTH = 38


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


FULL = Plan(users=40, events_per_user=30, epochs=3, rate=60.0, shown=8)
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
        help="folder with events.csv (user_id,item_id,timestamp) and items.csv (id,title,...)",
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


def load_titles(folder: Path) -> dict[str, str]:
    """item id -> title from ``items.csv`` (first column the id, a ``title`` column)."""
    path = folder / "items.csv"
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        title_at = header.index("title") if "title" in header else 1
        return {row[0]: row[title_at] for row in reader if len(row) > title_at}


def write_replay_log(events_csv: Path, out: Path, users: int, per_user: int) -> tuple[int, int]:
    """The last ``per_user`` events of ``users`` users (evenly spread over the user ids).

    Written as a CSV log in time order; returns (users, events) written.
    """
    log = read_log(events_csv)
    by_user: dict[str, list[LogRow]] = defaultdict(list)
    for row in log.rows:
        by_user[row.user_id].append(row)
    eligible = sorted((u for u, rows in by_user.items() if len(rows) >= per_user), key=_id_order)
    if not eligible:
        msg = f"{events_csv}: no user has {per_user} events; lower --events-per-user"
        raise DemoError(msg)
    step = max(1, len(eligible) // users)
    chosen = eligible[::step][:users]
    rows = sorted((r for u in chosen for r in by_user[u][-per_user:]), key=lambda r: r.ts)
    with out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp"])
        for row in rows:
            writer.writerow([row.user_id, row.item_id, int(row.ts)])
    return len(chosen), len(rows)


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


def train_model(events_csv: Path, out: Path, epochs: int, log_path: Path) -> str:
    """``rum train`` in a child process (its own session: Ctrl-C is ours to pass on)."""
    cmd = [
        sys.executable,
        "-m",
        "stream.cli",
        "train",
        "--data",
        str(events_csv),
        "--variant",
        "item",
        "--all",
        "--epochs",
        str(epochs),
        "--columns",
        "user_id,item_id,timestamp",
        "--threads",
        "2",
        "--quiet",
        "--out",
        str(out),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, cwd=REPO, start_new_session=True
        )
        try:
            stdout, _ = proc.communicate()
        finally:
            _stop_process(proc, timeout_s=5)
    if proc.returncode != 0:
        msg = f"training failed (exit {proc.returncode}); its log ends:\n{_tail(log_path)}"
        raise DemoError(msg)
    lines = [line for line in stdout.decode().splitlines() if line.startswith("{")]
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

    titles: dict[str, str]
    sent_by_user: dict[str, list[tuple[str, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )  # user -> [(event_id, item_id)] in send order
    sent_at: dict[str, float] = field(default_factory=dict)  # event_id -> monotonic time
    answered: set[str] = field(default_factory=set)
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
        self.users_answered.add(str(message.get("user_id")))
        for event_id in message.get("event_ids", []):
            if event_id in self.sent_at and event_id not in self.answered:
                self.answered.add(event_id)
                self.latencies_ms.append((now - self.sent_at[event_id]) * 1000)

    def title(self, item_id: str) -> str:
        text = self.titles.get(item_id, f"item {item_id}")
        return text if len(text) <= TITLE_WIDTH else text[: TITLE_WIDTH - 1] + "…"

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
        for rank, item in enumerate(message.get("items", [])[:TOP_K], start=1):
            because = ", ".join(
                f"{self.title(str(r['item_id']))} {float(r['weight']):.2f}"
                for r in item.get("because", [])[:2]
            )
            reason = f"  ← because {because}" if because else "  (popular)"
            lines.append(
                f"   {rank}. {self.title(str(item['item_id'])):<{TITLE_WIDTH}} "
                f"{float(item['score']):6.2f}{reason}"
            )
        self.shown += 1
        return "\n".join(lines)

    def latency_line(self) -> str:
        if not self.latencies_ms:
            return "no event was answered"
        ordered = sorted(self.latencies_ms)
        p50 = ordered[len(ordered) // 2]
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        return f"event → recommendation latency p50 {p50:.0f} ms, p95 {p95:.0f} ms"


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
    return 0


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
    # 1. broker
    if args.broker:
        bootstrap = kafka_bootstrap(args.broker)
        started.external_bootstrap = bootstrap
        step(f"using the broker at {bootstrap} (RUM_BROKER)")
    else:
        from deploy.kafka import harness

        started.broker_dir = workdir / "broker"
        try:
            info = harness.start(started.broker_dir, embedded=True, timeout_s=60)
        except harness.KafkaHarnessError as exc:
            raise DemoError(f"the embedded broker did not start: {exc}") from exc
        bootstrap = info.bootstrap
        step(f"embedded broker ({info.version}, memory only, pid {info.pid}) on {bootstrap}")

    # 2. model
    step(f"training item-level RUM on {events_csv} ({plan.epochs} epoch(s), all events) …")
    version = train_model(events_csv, workdir / "model", plan.epochs, workdir / "train.log")
    step(f"model {version} ready")

    # 3. worker
    port = _free_port()
    topics = {
        "RUM_TOPIC_PURCHASES": f"{started.topics_prefix}.purchases",
        "RUM_TOPIC_RECOMMENDATIONS": f"{started.topics_prefix}.recommendations",
        "RUM_TOPIC_DLQ": f"{started.topics_prefix}.purchases.dlq",
    }
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
    worker_log = workdir / "worker.log"
    with worker_log.open("wb") as log:
        started.worker = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    step(
        f"worker started (pid {started.worker.pid}, http://127.0.0.1:{port}); waiting until ready …"
    )
    wait_for_worker(started.worker, port, worker_log, timeout_s=120)
    step("worker ready")

    # 4. replay, on a thread; 5. show what comes back, on this one
    replay_csv = workdir / "demo-events.csv"
    users, events = write_replay_log(events_csv, replay_csv, plan.users, plan.events_per_user)
    replay_log = read_log(replay_csv)
    board = Board(titles=load_titles(data))
    started.consumer = _consumer(bootstrap, topics["RUM_TOPIC_RECOMMENDATIONS"])
    pace = f"{plan.rate:.0f} events/s" if plan.rate else "full speed"
    step(
        f"replaying {events} events of {users} users into {topics['RUM_TOPIC_PURCHASES']} ({pace})"
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
    return board


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
