"""``rum bench``: the figures of BENCHMARKS.md, measured through Apache Kafka and real workers.

Subcommands (each prints one flat JSON object: machine facts, configuration,
every figure; ``--out FILE`` appends it as a JSON line, ``--report DIR``
writes Markdown with plots):

- ``stream``: W1 (amazon-beauty replay, model trained on the leave-one-out
  training split) or W2 (synthetic 100k items / 200k users / 1M events, Zipf,
  random unit-norm embeddings saved as a real artifact). Every event is
  produced to the input topic first, in global time order; then the naive
  Faust baseline (``stream.bench_naive``) and one RUM worker each consume the
  whole topic under their own consumer group, run after run, side by side.
- ``latency``: a running worker fed at a steady rate; per event, the Kafka
  timestamp of its recommendation minus the Kafka timestamp of the event.
- ``scoring``: the exact kernel against a plain matrix multiply of the same
  shape (the compute bound), and two-stage recall@10 against exact.
- ``train``: seconds per epoch, feature-level, L = 50, 2 threads.
- ``recovery``: SIGKILL a worker holding every W1 user, restart it (same data
  directory, then an empty one), seconds until it processes again.
- ``state``: encoded bytes per user (both variants), worker RSS after W1.

Clock of ``stream`` (from the output records' Kafka timestamps, so nothing is
timed by this process): a worker's throughput is the events its recommendations
cover after its first micro-batch, divided by the time from the last record of
that first batch to the last record of all. Start-up, group join and the first
batch are excluded alike for the worker and the baseline (whose "batch" is one
event).

Speed is shown by running this command, never by a timed test.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from model.options import add_flag, add_option

REPO = Path(__file__).resolve().parents[1]
DEFAULT_W1 = REPO.parent / "shared" / "data" / "amazon-beauty" / "events.csv"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rum-bench"
PARTITIONS = 4
TARGETS = {
    "w1_feature_two_stage_events_per_s": 10_000,
    "w1_ratio": 4.0,
    "recall_at_10": 0.99,
    "compute_bound_fraction": 0.8,
    "w1_item_two_stage_events_per_s": 10_000,
    "w2_events_per_s": 5_000,
    "p50_ms": 20.0,
    "p99_ms": 50.0,
    "recovery_s": 30.0,
    "feature_state_bytes": 6 * 1024,
    "item_state_bytes": 1024,
    "worker_rss_mb": 1536.0,
    "train_seconds_per_epoch": 46.0,
}

Figures = dict[str, Any]


class BenchError(RuntimeError):
    """A benchmark could not run; the message says what failed and where its log is."""


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- machine


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=10
        )
        return out.stdout.strip()
    except OSError:
        return ""


def machine_facts() -> Figures:
    import torch

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "host": platform.node(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count() or 1,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_1m_start": round(os.getloadavg()[0], 2),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def worker_settings_facts() -> Figures:
    """The worker settings in effect (the workers inherit this environment)."""
    from stream.settings import Settings

    s = Settings.from_env()
    return {
        "micro_batch": s.batch_size,
        "micro_batch_wait_s": s.batch_wait_s,
        "torch_threads": s.torch_threads,
        "candidates": s.candidates,
        "emit": s.emit,
        "partitions": PARTITIONS,
    }


# ----------------------------------------------------------------------------- Kafka


@contextlib.contextmanager
def kafka_broker(bootstrap: str | None, work: Path) -> Iterator[str]:
    """The given broker, or an Apache Kafka started for this run and stopped afterwards."""
    if bootstrap:
        yield bootstrap
        return
    from deploy.kafka import harness

    data_dir = work / "kafka"
    say(f"starting Apache Kafka in {data_dir}")
    info = harness.start(data_dir)
    try:
        yield info.bootstrap
    finally:
        harness.stop(data_dir)


def create_topic(bootstrap: str, name: str, partitions: int = PARTITIONS) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="rum-bench")
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: str
    item_id: str
    ts: float

    def value(self) -> bytes:
        ts: float | int = int(self.ts) if float(self.ts).is_integer() else self.ts
        return json.dumps(
            {"event_id": self.event_id, "user_id": self.user_id, "item_id": self.item_id, "ts": ts}
        ).encode()


def produce(
    bootstrap: str,
    topic: str,
    events: Sequence[Event],
    rate: float | None = None,
) -> float:
    """Send ``events`` in order (keyed by user), as fast as possible or at ``rate`` per second.

    Returns the seconds it took. One request in flight per connection keeps each
    partition in the given order.
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="rum-bench",
        acks=1,
        linger_ms=0 if rate else 50,
        batch_size=16_384 if rate else 512 * 1024,
        max_in_flight_requests_per_connection=1,
    )
    headers = [("content-type", b"application/json")]
    started = time.monotonic()
    try:
        for index, event in enumerate(events):
            if rate:
                wait = started + index / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            producer.send(topic, key=event.user_id.encode(), value=event.value(), headers=headers)
        producer.flush()
    finally:
        producer.close()
    return time.monotonic() - started


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        ids = consumer.partitions_for_topic(topic) or set()
        parts = [TopicPartition(topic, p) for p in sorted(ids)]
        return {tp.partition: off for tp, off in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def read_records(
    bootstrap: str,
    topic: str,
    start: dict[int, int] | None = None,
    timeout_s: float = 300.0,
    ends: dict[int, int] | None = None,
) -> list[tuple[int, bytes]]:
    """Every record of ``topic`` from ``start`` (default: the beginning) up to ``ends``
    (default: its current end), as (Kafka timestamp in ms, value)."""
    from kafka import KafkaConsumer, TopicPartition

    ends = ends if ends is not None else end_offsets(bootstrap, topic)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    out: list[tuple[int, bytes]] = []
    try:
        parts = [TopicPartition(topic, p) for p in ends]
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, (start or {}).get(tp.partition, 0))
        left = {
            tp.partition for tp in parts if ends[tp.partition] > (start or {}).get(tp.partition, 0)
        }
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500, max_records=50_000).items():
                for record in records:
                    if record.offset < ends[tp.partition]:
                        out.append((record.timestamp, record.value))
                if consumer.position(tp) >= ends[tp.partition]:
                    left.discard(tp.partition)
        if left:
            msg = f"{topic}: partitions {sorted(left)} not read to their end in {timeout_s:.0f} s"
            raise BenchError(msg)
    finally:
        consumer.close()
    return out


# ----------------------------------------------------------------------------- workers


def _http(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Worker:
    """A worker process (``rum worker`` or the naive baseline) with its own group and data dir."""

    module: str  # "stream.cli" (with the "worker" argument) or "stream.bench_naive"
    env: dict[str, str]
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def start(self) -> Worker:
        argv = [sys.executable, "-m", self.module]
        if self.module == "stream.cli":
            argv.append("worker")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env={**os.environ, **self.env},
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.started_at = time.time()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise BenchError(f"worker exited (log {self.log_path}):\n{tail}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def rss_mb(self) -> float:
        if self.proc is None:
            return 0.0
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def cpu_s(self) -> float:
        """User + system CPU seconds of the worker process so far (all its threads)."""
        if self.proc is None:
            return 0.0
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return 0.0

    def metric(self, name: str) -> float:
        """Sum of a Prometheus counter over its labels (0 when the worker does not answer)."""
        try:
            status, body = _http(f"http://127.0.0.1:{self.port}/metrics")
        except OSError:
            return 0.0
        if status != 200:
            return 0.0
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and (line[len(name)] in "{ "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def healthy(self) -> bool:
        try:
            status, _ = _http(f"http://127.0.0.1:{self.port}/health")
        except OSError:
            return False
        return status == 200


@dataclass
class Deployment:
    """One input topic that several workers read, each under its own app id."""

    bootstrap: str
    work: Path
    name: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}")

    @property
    def purchases(self) -> str:
        return f"{self.name}.purchases"

    def worker(self, label: str, model_dir: Path | None, naive: bool = False, **env: str) -> Worker:
        from deploy.kafka.harness import free_port

        port = free_port()
        app_id = f"{self.name}-{label}"
        environment = {
            "RUM_BROKER": f"kafka://{self.bootstrap}",
            "RUM_APP_ID": app_id,
            "RUM_MODEL_DIR": str(model_dir or ""),
            "RUM_DATA_DIR": str(self.work / f"data-{label}"),
            "RUM_WEB_PORT": str(port),
            "RUM_PARTITIONS": str(PARTITIONS),
            "RUM_TOPIC_PURCHASES": self.purchases,
            "RUM_TOPIC_RECOMMENDATIONS": f"{app_id}.recommendations",
            "RUM_TOPIC_DLQ": f"{app_id}.dlq",
            "RUM_LOG_LEVEL": "warning",
            **env,
        }
        module = "stream.bench_naive" if naive else "stream.cli"
        return Worker(module, environment, self.work / f"{label}.log", port)


def output_topic(worker: Worker) -> str:
    return worker.env["RUM_TOPIC_RECOMMENDATIONS"]


def wait_until(
    condition: Callable[[], bool], worker: Worker, timeout_s: float, what: str, every_s: float = 0.5
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker.check_alive()
        if condition():
            return
        time.sleep(every_s)
    raise BenchError(f"{what}: not reached in {timeout_s:.0f} s (log {worker.log_path})")


# ----------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    name: str
    events: list[Event]
    model_dir: Path
    variant: str


def _file_key(path: Path, *parts: object) -> str:
    stat = path.stat()
    raw = "|".join(str(p) for p in (path.resolve(), stat.st_size, int(stat.st_mtime), *parts))
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def w1_events(path: Path, limit: int | None) -> list[Event]:
    from stream.replay import read_log

    parsed = read_log(path)
    rows = parsed.rows[:limit] if limit else parsed.rows
    return [Event(r.event_id, r.user_id, r.item_id, r.ts) for r in rows]


def w1_model(
    path: Path, variant: str, cache: Path, limit: int | None, epochs: int, threads: int = 2
) -> Path:
    """A model trained on W1's leave-one-out training split (cached by file, variant, size)."""
    import torch

    from model.artifact import save_artifact
    from model.data import load_events
    from model.splits import make_split
    from model.training import TrainConfig, seconds_per_epoch, train

    slots = 20 if variant == "feature" else 5
    out = cache / f"w1-{variant}-{_file_key(path, limit, epochs, slots)}"
    if (out / "config.json").is_file():
        return out
    log = load_events(path)
    if limit:
        log = log.subset(np.arange(len(log)) < limit)
    fit = make_split(log, "loo").fit
    say(f"training the W1 {variant}-level model ({epochs} epochs on {len(fit)} events)")
    torch.set_num_threads(threads)
    cfg = TrainConfig(
        variant="feature" if variant == "feature" else "item",
        slots=slots,
        epochs=epochs,
        max_len=50,
        progress=False,
    )
    result = train(fit, cfg, None, log=lambda line: say(line))
    save_artifact(
        out,
        result.net,
        result.users,
        result.items,
        result.popularity,
        {**cfg.to_dict(), "data": str(path), "protocol": "loo", "bench": "w1"},
        {"history": result.history, "seconds_per_epoch": seconds_per_epoch(result.history)},
    )
    return out


@dataclass(frozen=True)
class W2Size:
    items: int = 100_000
    users: int = 200_000
    events: int = 1_000_000
    zipf: float = 1.05
    seed: int = 0


def _zipf_choice(rng: np.random.Generator, n: int, size: int, s: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** s
    ranks = rng.choice(n, size=size, p=weights / weights.sum())
    return rng.permutation(n)[ranks]  # popularity not tied to the id order


def w2_events(size: W2Size) -> list[Event]:
    rng = np.random.default_rng(size.seed)
    items = _zipf_choice(rng, size.items, size.events, size.zipf)
    users = _zipf_choice(rng, size.users, size.events, size.zipf)
    base = 1_700_000_000
    return [
        Event(f"w2:{n}", f"u{u}", f"i{i}", float(base + n // 10))
        for n, (u, i) in enumerate(zip(users.tolist(), items.tolist(), strict=True))
    ]


def w2_model(size: W2Size, variant: str, cache: Path) -> Path:
    """Random unit-norm embeddings saved as a real artifact (speed does not depend on values)."""
    import torch

    from model.artifact import save_artifact
    from model.data import Vocab
    from model.network import ModelConfig, build

    slots = 20 if variant == "feature" else 5
    out = cache / f"w2-{variant}-{size.items}-{size.users}-{size.seed}"
    if (out / "config.json").is_file():
        return out
    say(f"writing the W2 {variant}-level artifact ({size.items} items, {size.users} users)")
    config = ModelConfig(
        variant="feature" if variant == "feature" else "item",
        num_users=size.users,
        num_items=size.items,
        dim=64,
        slots=slots,
    )
    torch.manual_seed(size.seed)
    net = build(config)
    with torch.no_grad():
        for emb in (net.user_emb.weight, net.item_emb.weight):
            emb.copy_(torch.nn.functional.normalize(torch.randn_like(emb), dim=1))
            emb[0] = 0.0
        features = getattr(net, "features", None)
        if features is not None:
            features.copy_(torch.nn.functional.normalize(torch.randn_like(features), dim=1))
    users = Vocab.from_list([f"u{n}" for n in range(size.users)])
    items = Vocab.from_list([f"i{n}" for n in range(size.items)])
    popularity = np.zeros(size.items + 1)
    popularity[1:] = 1.0 / np.arange(1, size.items + 1) ** size.zipf
    save_artifact(out, net, users, items, popularity, {"bench": "w2", **vars(size)}, {})
    return out


def load_workload(args: argparse.Namespace, variant: str) -> Workload:
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    if args.workload == "w2":
        size = W2Size(
            items=args.w2_items or (2_000 if args.quick else 100_000),
            users=args.w2_users or (1_000 if args.quick else 200_000),
            events=args.events or (3_000 if args.quick else 1_000_000),
        )
        return Workload("w2", w2_events(size), w2_model(size, variant, cache), variant)
    data = Path(args.data)
    limit = args.events or (3_000 if args.quick else None)
    model = (
        Path(args.model)
        if args.model and variant == args.variant
        else w1_model(data, variant, cache, limit, 1 if args.quick else args.train_epochs)
    )
    return Workload("w1", w1_events(data, limit), model, variant)


# ----------------------------------------------------------------------------- throughput


@dataclass
class RunResult:
    events: int
    events_per_s: float
    seconds: float
    messages: int
    rss_mb: float
    cpu_us_per_event: float | None = None


def _throughput(records: list[tuple[int, bytes]], rum: bool, expected: int) -> RunResult:
    """Events after the first batch over the time from that batch's last record to the last."""
    if not records:
        raise BenchError("no output records")
    rows = []
    for ts, value in records:
        message = json.loads(value)
        rows.append((ts, message.get("generated_at", ts) if rum else ts, len(message["event_ids"])))
    rows.sort()
    first_batch = min(r[1] for r in rows)
    in_first = [r for r in rows if r[1] == first_batch]
    start_ms = max(r[0] for r in in_first)
    end_ms = rows[-1][0]
    covered = sum(r[2] for r in rows)
    if covered < expected:
        raise BenchError(f"output covers {covered} events, {expected} were produced")
    counted = covered - sum(r[2] for r in in_first)
    seconds = max((end_ms - start_ms) / 1000, 1e-3)
    return RunResult(counted, counted / seconds, seconds, len(rows), 0.0)


Agent = Literal["rum", "naive", "floor"]
AGENT_NAMES = {"rum": "RUM worker", "naive": "naive baseline", "floor": "Faust floor"}


def run_worker_over(
    deployment: Deployment,
    label: str,
    model_dir: Path | None,
    expected: int,
    agent: Agent,
    timeout_s: float,
    **env: str,
) -> RunResult:
    """Start one worker over the whole topic, wait until it has answered every event."""
    if agent == "floor":
        env = {"RUM_BENCH_AGENT": "floor", **env}
    worker = deployment.worker(label, model_dir, naive=agent != "rum", **env)
    topic = output_topic(worker)
    create_topic(deployment.bootstrap, topic)
    kind = AGENT_NAMES[agent]
    say(f"{kind} {label}: consuming {expected} events")
    worker.start()
    try:
        if agent == "naive":

            def progress() -> float:
                return sum(end_offsets(deployment.bootstrap, topic).values())

        elif agent == "floor":
            read_to: dict[int, int] = {}
            answered = [0]

            def progress() -> float:  # one record per batch: count the events they list
                # Only the records since the last look: re-reading the whole topic every
                # second would take a growing share of the two cores the floor runs on.
                ends = end_offsets(deployment.bootstrap, topic)
                new = read_records(deployment.bootstrap, topic, read_to, ends=ends)
                answered[0] += sum(len(json.loads(v)["event_ids"]) for _t, v in new)
                read_to.update(ends)
                return answered[0]

        else:

            def progress() -> float:
                return worker.metric("rum_events_total")

        # CPU per event, from the first answered events to the last (start-up not counted):
        # looked for often until they come, then once a second.
        first: list[tuple[float, float]] = []

        def started() -> bool:
            cpu, count = worker.cpu_s(), progress()
            first[:] = [(count, cpu)]
            return count > 0

        wait_until(started, worker, timeout_s, f"{label} answering its first events", 0.1)
        wait_until(
            lambda: progress() >= expected,
            worker,
            timeout_s,
            f"{label} answering {expected} events",
            1.0,
        )
        cpu_end = worker.cpu_s()
        counted, cpu_first = first[0]
        # None when every event was answered before the first look (a tiny workload).
        cpu_us = (cpu_end - cpu_first) * 1e6 / (expected - counted) if expected > counted else None
        # The last messages may still sit in the producer's buffer: let it settle.
        before = -1
        while True:
            now = sum(end_offsets(deployment.bootstrap, topic).values())
            if now == before:
                break
            before = now
            time.sleep(1.0)
        rss = worker.rss_mb()
    finally:
        worker.stop()
    result = _throughput(read_records(deployment.bootstrap, topic), agent == "rum", expected)
    result.rss_mb = rss
    result.cpu_us_per_event = cpu_us
    cpu = f"{cpu_us:,.0f} µs of its CPU per event" if cpu_us is not None else "CPU not measured"
    say(f"{kind} {label}: {result.events_per_s:,.0f} events/s over {result.seconds:.1f} s, {cpu}")
    return result


def matmul_gflops(rows: int, inner: int, cols: int, threads: int, seconds: float = 1.0) -> float:
    """GFLOP/s of a plain float32 [rows, inner] x [inner, cols] product (median of repeats)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(rows, inner)
        b = torch.randn(cols, inner)
        (a @ b.T).sum()
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 3:
            began = time.perf_counter()
            a @ b.T
            times.append(time.perf_counter() - began)
        return 2.0 * rows * inner * cols / statistics.median(times) / 1e9
    finally:
        torch.set_num_threads(previous)


def _medians(prefix: str, runs: list[RunResult]) -> Figures:
    """Events/s and CPU µs per event of some runs: the median, and every run beside it
    (a run whose CPU was not measured is left out of that figure; none: null)."""
    figures: Figures = {}
    for name in ("events_per_s", "cpu_us_per_event"):
        values = [float(v) for v in (getattr(run, name) for run in runs) if v is not None]
        figures[f"{prefix}{name}"] = round(statistics.median(values), 1) if values else None
        figures[f"{prefix}{name}_runs"] = [round(v, 1) for v in values]
    return figures


def bench_stream(args: argparse.Namespace) -> Figures:
    work = Path(args.work_dir)
    workload = load_workload(args, args.variant)
    from model.serving import Scorer

    scorer = Scorer.load(workload.model_dir)
    figures: Figures = {
        "workload": workload.name,
        "variant": workload.variant,
        "scoring": args.scoring,
        "events": len(workload.events),
        "items": scorer.num_items,
        "users": len({e.user_id for e in workload.events}),
        "slots": scorer.slots,
        "dim": scorer.dim,
        "model_version": scorer.version,
    }
    timeout = 120.0 + len(workload.events) / 200
    with kafka_broker(args.bootstrap, work) as bootstrap:
        deployment = Deployment(bootstrap, work)
        create_topic(bootstrap, deployment.purchases)
        say(f"producing {len(workload.events)} events to {deployment.purchases}")
        produced_s = produce(bootstrap, deployment.purchases, workload.events)
        figures["produce_events_per_s"] = round(len(workload.events) / produced_s)
        rum: list[RunResult] = []
        naive: list[RunResult] = []
        floor: list[RunResult] = []
        ratios: list[float] = []
        expected = len(workload.events)
        for run in range(args.repeat):
            base = (
                None
                if args.no_baseline
                else run_worker_over(deployment, f"naive{run}", None, expected, "naive", timeout)
            )
            if args.floor:
                floor.append(
                    run_worker_over(deployment, f"floor{run}", None, expected, "floor", timeout)
                )
            mine = run_worker_over(
                deployment,
                f"rum{run}",
                workload.model_dir,
                expected,
                "rum",
                timeout,
                RUM_SCORING=args.scoring,
            )
            rum.append(mine)
            if base is not None:
                naive.append(base)
                ratios.append(mine.events_per_s / base.events_per_s)
    figures.update(
        {
            "runs": args.repeat,
            **_medians("", rum),
            **(
                {
                    **_medians("baseline_", naive),
                    "ratio": round(statistics.median(ratios), 3),
                    "ratio_runs": [round(r, 3) for r in ratios],
                }
                if naive
                else {}
            ),
            **(
                {
                    **_medians("floor_", floor),
                    "fraction_of_floor": round(
                        statistics.median(r.events_per_s for r in rum)
                        / statistics.median(r.events_per_s for r in floor),
                        3,
                    ),
                }
                if floor
                else {}
            ),
            "seconds_median": round(statistics.median(r.seconds for r in rum), 2),
            "messages_per_run": rum[-1].messages,
            "worker_rss_mb": round(max(r.rss_mb for r in rum), 1),
        }
    )
    if workload.variant == "feature" and args.scoring == "exact":
        # events/s x 2·N·K·D against a plain matmul of the exact kernel's shape, same run.
        threads = os.cpu_count() or 1
        inner = (scorer.slots + 1) * scorer.dim
        rate = matmul_gflops(512, inner, scorer.num_items + 1, threads)
        flops_per_user = 2.0 * scorer.num_items * scorer.slots * scorer.dim
        figures["matmul_gflops"] = round(rate, 2)
        figures["compute_bound_events_per_s"] = round(rate * 1e9 / flops_per_user, 1)
        figures["compute_bound_fraction"] = round(
            figures["events_per_s"] * flops_per_user / (rate * 1e9), 3
        )
    return figures


# ----------------------------------------------------------------------------- latency


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def bench_latency(args: argparse.Namespace) -> Figures:
    work = Path(args.work_dir)
    workload = load_workload(args, args.variant)
    duration = args.duration or (8.0 if args.quick else 60.0)
    count = min(len(workload.events), int(args.rate * duration))
    events = workload.events[:count]
    with kafka_broker(args.bootstrap, work) as bootstrap:
        deployment = Deployment(bootstrap, work)
        create_topic(bootstrap, deployment.purchases)
        worker = deployment.worker("latency", workload.model_dir, RUM_SCORING=args.scoring)
        topic = output_topic(worker)
        create_topic(bootstrap, topic)
        worker.start()
        try:
            wait_until(worker.healthy, worker, 180.0, "worker healthy")
            time.sleep(2.0)  # group settled, first fetch issued
            say(f"producing {count} events at {args.rate:.0f}/s")
            produce(bootstrap, deployment.purchases, events, rate=args.rate)
            wait_until(
                lambda: worker.metric("rum_events_total") >= count, worker, 120.0, "all answered"
            )
            time.sleep(1.0)
        finally:
            worker.stop()
        sent_at: dict[str, int] = {}
        for ts, value in read_records(bootstrap, deployment.purchases):
            sent_at[json.loads(value)["event_id"]] = ts
        latencies: list[float] = []
        warm_ms = min(sent_at.values()) + args.warmup_s * 1000 if sent_at else 0
        for ts, value in read_records(bootstrap, topic):
            for event_id in json.loads(value)["event_ids"]:
                if event_id in sent_at and sent_at[event_id] >= warm_ms:
                    latencies.append(ts - sent_at[event_id])
    figures: Figures = {
        "workload": workload.name,
        "variant": workload.variant,
        "scoring": args.scoring,
        "rate_events_per_s": args.rate,
        "duration_s": duration,
        "warmup_s": args.warmup_s,
        "events": count,
        "measured_events": len(latencies),
        "p50_ms": round(_percentile(latencies, 50), 2),
        "p90_ms": round(_percentile(latencies, 90), 2),
        "p99_ms": round(_percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2) if latencies else float("nan"),
    }
    figures["_latencies"] = latencies
    return figures


# ----------------------------------------------------------------------------- scoring


def _sample_memories(scorer: Any, events: Sequence[Event], users: int, seed: int) -> tuple:
    histories: dict[str, list[str]] = {}
    for event in events:
        histories.setdefault(event.user_id, []).append(event.item_id)
    chosen = sorted(histories)
    random.Random(seed).shuffle(chosen)
    chosen = chosen[:users]
    memories = [scorer.memory_from_history(histories[u][-50:]) for u in chosen]
    excludes = [frozenset(histories[u][-50:]) for u in chosen]
    return chosen, memories, excludes


def bench_scoring(args: argparse.Namespace) -> Figures:
    import torch

    from model.serving import Scorer

    workload = load_workload(args, args.variant)
    scorer = Scorer.load(workload.model_dir)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    sample = args.users or (256 if args.quick else 4096)
    users, memories, excludes = _sample_memories(scorer, workload.events, sample, 0)
    batch = min(args.batch, len(users))

    def rate(mode: Literal["exact", "two-stage"]) -> tuple[float, list[list[Any]]]:
        out: list[list[Any]] = []
        began = time.perf_counter()
        for start in range(0, len(users), batch):
            end = start + batch
            out.extend(
                scorer.score_many(
                    users[start:end], memories[start:end], excludes[start:end], 10, mode=mode
                )
            )
        return len(users) / (time.perf_counter() - began), out

    rate("exact")  # warm-up: first-use caches (retrieval basis) are not timed
    rate("two-stage")
    exact_rate, exact = rate("exact")
    two_rate, two = rate("two-stage")
    recalls = []
    for e, t in zip(exact, two, strict=True):
        truth = {r.item_id for r in e}
        if truth:
            recalls.append(len(truth & {r.item_id for r in t}) / len(truth))
    flops_per_user = 2.0 * scorer.num_items * scorer.slots * scorer.dim
    inner = (scorer.slots + 1) * scorer.dim if scorer.variant == "feature" else scorer.dim
    gflops = matmul_gflops(batch, inner, scorer.num_items + 1, threads)
    return {
        "workload": workload.name,
        "variant": workload.variant,
        "items": scorer.num_items,
        "slots": scorer.slots,
        "dim": scorer.dim,
        "threads": threads,
        "batch_users": batch,
        "sample_users": len(users),
        "exact_users_per_s": round(exact_rate, 1),
        "two_stage_users_per_s": round(two_rate, 1),
        "matmul_gflops": round(gflops, 2),
        "exact_gflops": round(exact_rate * flops_per_user / 1e9, 2),
        "compute_bound_users_per_s": round(gflops * 1e9 / flops_per_user, 1),
        "compute_bound_fraction": round(exact_rate * flops_per_user / (gflops * 1e9), 3),
        "recall_at_10": round(float(np.mean(recalls)), 4) if recalls else float("nan"),
        "recall_users": len(recalls),
    }


# ----------------------------------------------------------------------------- training


def bench_train(args: argparse.Namespace) -> Figures:
    import torch

    from model.data import load_events
    from model.splits import make_split
    from model.training import TrainConfig, seconds_per_epoch, train

    threads = args.threads or 2
    torch.set_num_threads(threads)
    log = load_events(Path(args.data))
    limit = args.events or (3_000 if args.quick else None)
    if limit:
        log = log.subset(np.arange(len(log)) < limit)
    fit = make_split(log, "loo").fit
    epochs = 1 if args.quick else args.train_epochs
    cfg = TrainConfig(
        variant="feature",
        slots=20,
        max_len=50,
        epochs=epochs,
        loss=args.loss,
        negatives=args.negatives,
        batch_size=args.train_batch,
        progress=False,
    )
    result = train(fit, cfg, None, log=lambda line: say(line))
    per_epoch = seconds_per_epoch(result.history)
    return {
        "workload": "w1" if not limit else f"w1[:{limit}]",
        "variant": "feature",
        "max_len": 50,
        "loss": cfg.loss,
        "negatives": cfg.negatives,
        "batch_size": cfg.batch_size,
        "threads": threads,
        "epochs": epochs,
        "fit_events": len(fit),
        "seconds_per_epoch": round(per_epoch, 2),
        "seconds_per_epoch_runs": [round(r["seconds"], 2) for r in result.history],
        "events_per_s": round(len(fit) / per_epoch, 1) if per_epoch else 0.0,
        "sasrec_epoch_s": 185.0,
        "fraction_of_sasrec": round(per_epoch / 185.0, 3),
    }


# ----------------------------------------------------------------------------- recovery


def bench_recovery(args: argparse.Namespace) -> Figures:
    work = Path(args.work_dir)
    workload = load_workload(args, args.variant)
    events = workload.events
    figures: Figures = {"workload": workload.name, "variant": workload.variant}
    with kafka_broker(args.bootstrap, work) as bootstrap:
        deployment = Deployment(bootstrap, work)
        create_topic(bootstrap, deployment.purchases)
        produce(bootstrap, deployment.purchases, events)
        data_dir = work / "data-recovery"
        first = deployment.worker("recovery", workload.model_dir, RUM_DATA_DIR=str(data_dir))
        topic = output_topic(first)
        create_topic(bootstrap, topic)
        first.start()
        wait_until(
            lambda: first.metric("rum_events_total") >= len(events),
            first,
            120.0 + len(events) / 200,
            "every event applied",
        )
        figures["users_in_state"] = len({e.user_id for e in events})
        time.sleep(2.0)
        for label, empty in (("same_dir", False), ("empty_dir", True)):
            first.kill()
            if empty:
                shutil.rmtree(data_dir, ignore_errors=True)
            probe = Event(f"probe-{label}", events[-1].user_id, events[-1].item_id, events[-1].ts)
            marks = end_offsets(bootstrap, topic)
            produce(bootstrap, deployment.purchases, [probe])
            restarted = deployment.worker(
                "recovery", workload.model_dir, RUM_DATA_DIR=str(data_dir)
            )
            restarted.start()
            began_ms = restarted.started_at * 1000

            def answered(probe_id: str = probe.event_id, since: dict[int, int] = marks) -> bool:
                ends = end_offsets(bootstrap, topic)
                if ends == since:
                    return False
                return any(
                    probe_id in json.loads(v)["event_ids"]
                    for _ts, v in read_records(bootstrap, topic, since)
                )

            wait_until(answered, restarted, 180.0, f"probe answered after restart ({label})")
            ts = [
                t
                for t, v in read_records(bootstrap, topic, marks)
                if probe.event_id in json.loads(v)["event_ids"]
            ]
            figures[f"recovery_{label}_s"] = round((min(ts) - began_ms) / 1000, 2)
            say(f"restart ({label}): processing again after {figures[f'recovery_{label}_s']} s")
            first = restarted
        first.stop()
    figures["recovery_s"] = figures["recovery_same_dir_s"]
    return figures


# ----------------------------------------------------------------------------- state


def bench_state(args: argparse.Namespace) -> Figures:
    from model.serving import Scorer
    from stream.events import Position, Purchase
    from stream.processing import limits_of
    from stream.settings import Settings
    from stream.state import apply_purchase, encode_state

    limits = limits_of(Settings.from_env())
    figures: Figures = {"workload": args.workload, "history": limits.history}
    for variant in ("item", "feature"):
        workload = load_workload(args, variant)
        scorer = Scorer.load(workload.model_dir)
        states: dict[str, Any] = {}
        where = Position("bench", 0, 0)
        for e in workload.events:
            purchase = Purchase(e.event_id, e.user_id, e.item_id, e.ts, where)
            states[e.user_id], _ = apply_purchase(states.get(e.user_id), purchase, scorer, limits)
        sizes = np.array([len(encode_state(s, scorer)) for s in states.values()])
        figures[f"{variant}_state_bytes_mean"] = round(float(sizes.mean()), 1)
        figures[f"{variant}_state_bytes_p99"] = round(float(np.percentile(sizes, 99)), 1)
        figures[f"{variant}_state_bytes_max"] = int(sizes.max())
        figures[f"{variant}_slots"] = scorer.slots
        figures["users"] = len(states)
        if variant == "feature":
            figures["dim"] = scorer.dim
    # Resident memory of a real worker after the whole of W1 (feature-level, two-stage).
    work = Path(args.work_dir)
    workload = load_workload(args, "feature")
    with kafka_broker(args.bootstrap, work) as bootstrap:
        deployment = Deployment(bootstrap, work)
        create_topic(bootstrap, deployment.purchases)
        produce(bootstrap, deployment.purchases, workload.events)
        worker = deployment.worker("state", workload.model_dir, RUM_SCORING="two-stage")
        create_topic(bootstrap, output_topic(worker))
        worker.start()
        try:
            wait_until(
                lambda: worker.metric("rum_events_total") >= len(workload.events),
                worker,
                120.0 + len(workload.events) / 200,
                "every event applied",
            )
            time.sleep(2.0)
            figures["worker_rss_mb"] = round(worker.rss_mb(), 1)
        finally:
            worker.stop()
    return figures


# ----------------------------------------------------------------------------- output


def write_report(report_dir: Path, figures: Figures, extra: Figures) -> Path:
    """Markdown with the figures and a plot per benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{figures['bench']}-{time.strftime('%Y%m%d-%H%M%S')}"
    plot = report_dir / f"{stem}.png"
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bench = figures["bench"]
    if bench == "stream":
        labels = ["naive baseline", f"RUM {figures['variant']} {figures['scoring']}"]
        values = [figures.get("baseline_events_per_s", 0.0), figures["events_per_s"]]
        ax.bar(labels, values, color=["grey", "tab:blue"])
        ax.set_ylabel("events/s")
        ax.set_title(f"{figures['workload']}: ratio {figures.get('ratio', 'not measured')}×")
    elif bench == "latency" and extra.get("_latencies"):
        data = np.sort(np.asarray(extra["_latencies"]))
        ax.plot(data, np.linspace(0, 1, len(data)))
        ax.set_xlabel("event → recommendation (ms, Kafka timestamps)")
        ax.set_ylabel("fraction of events")
        ax.set_xscale("log")
        ax.set_title(f"{figures['rate_events_per_s']:.0f} events/s: p50 {figures['p50_ms']} ms")
    elif bench == "soak" and extra.get("_samples"):
        samples = extra["_samples"]
        t = [x["t_s"] for x in samples]
        ax.plot(t, [x["rss_kb"] / 1024 for x in samples], label="worker RSS (MB)")
        ax.plot(t, [x["rocksdb_bytes"] / 2**20 for x in samples], label="RocksDB (MB)")
        ax.set_xlabel("seconds")
        ax2 = ax.twinx()
        ax2.plot(t, [x["lag_s"] for x in samples], color="tab:red", label="lag (s)")
        ax2.set_ylabel("lag (s)")
        ax.legend(loc="upper left")
    elif bench == "scoring":
        ax.bar(
            ["exact", "two-stage", "compute bound"],
            [
                figures["exact_users_per_s"],
                figures["two_stage_users_per_s"],
                figures["compute_bound_users_per_s"],
            ],
            color=["tab:blue", "tab:green", "grey"],
        )
        ax.set_ylabel("users/s")
    elif bench == "train":
        runs = figures["seconds_per_epoch_runs"]
        ax.bar([str(i + 1) for i in range(len(runs))], runs)
        ax.axhline(TARGETS["train_seconds_per_epoch"], color="red", label="target")
        ax.set_xlabel("epoch")
        ax.set_ylabel("seconds")
        ax.legend()
    else:
        keys = [k for k, v in figures.items() if k.endswith("_s") and isinstance(v, int | float)]
        ax.bar(keys or ["none"], [figures[k] for k in keys] or [0])
    fig.tight_layout()
    fig.savefig(plot)
    plt.close(fig)
    lines = [f"# rum bench {bench}", "", f"![{bench}]({plot.name})", "", "| figure | value |"]
    lines.append("|---|---|")
    lines += [f"| {key} | {value} |" for key, value in figures.items()]
    path = report_dir / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def bench_soak(args: argparse.Namespace) -> Figures:
    """A bounded soak at half the measured maximum rate (issue 8): memory, RocksDB, lag."""
    from model.serving import Scorer
    from stream.soak import run_soak

    work = Path(args.work_dir)
    workload = load_workload(args, args.variant)
    vocab = Scorer.load(workload.model_dir).items
    item_ids = [vocab.raw(i) for i in range(1, vocab.size + 1)]
    duration = args.duration or (30.0 if args.quick else 600.0)
    users = args.users or (500 if args.quick else 20_000)
    with kafka_broker(args.bootstrap, work) as bootstrap:
        say(f"soak: {duration:.0f} s, {users} users, rate {args.soak_rate or 'half the maximum'}")
        result = run_soak(
            bootstrap,
            workload.model_dir,
            work / "soak",
            duration_s=duration,
            rate=args.soak_rate,
            users=users,
            items=item_ids,
            sample_every_s=2.0 if args.quick else 10.0,
            calibrate_events=3_000 if args.quick else 20_000,
            extra_env={"RUM_SCORING": args.scoring},
        )
    samples = result.pop("samples")
    return {
        "workload": f"{workload.name} catalogue, synthetic Pareto users",
        "variant": workload.variant,
        **result,
        "_samples": samples,
    }


@dataclass(frozen=True)
class Figure:
    """One row of BENCHMARKS.md's table, read from the results of ``rum bench ... --out``."""

    label: str
    bench: str
    where: Mapping[str, str | int]
    key: str  # a figure of the JSON object; its "<key>_runs" list is used when present
    target: float | None = None
    better: Literal["higher", "lower"] = "higher"

    def values(self, rows: Sequence[Figures]) -> list[float]:
        out: list[float] = []
        for row in rows:
            if row.get("bench") != self.bench or row.get("quick"):
                continue
            if any(row.get(k) != v for k, v in self.where.items()):
                continue
            runs = row.get(f"{self.key}_runs")
            if isinstance(runs, list) and runs:
                out.extend(float(v) for v in runs)
            elif isinstance(row.get(self.key), int | float):
                out.append(float(row[self.key]))
        return out


W1F2 = {"workload": "w1", "variant": "feature", "scoring": "two-stage"}
TABLE = (
    Figure("W1 feature-level two-stage, events/s", "stream", W1F2, "events_per_s", 10_000),
    Figure("naive Faust baseline (same runs), events/s", "stream", W1F2, "baseline_events_per_s"),
    Figure("W1 ratio to the naive baseline (same run)", "stream", W1F2, "ratio", 4.0),
    Figure(
        "Faust floor, an agent that only acks (same runs), events/s",
        "stream",
        W1F2,
        "floor_events_per_s",
    ),
    Figure("W1 worker CPU per event, µs", "stream", W1F2, "cpu_us_per_event"),
    Figure("naive baseline CPU per event, µs", "stream", W1F2, "baseline_cpu_us_per_event"),
    Figure("Faust floor CPU per event, µs", "stream", W1F2, "floor_cpu_us_per_event"),
    Figure(
        "W1 two-stage recall@10 against exact", "scoring", {"workload": "w1"}, "recall_at_10", 0.99
    ),
    Figure(
        "W1 feature-level exact, events/s",
        "stream",
        {"workload": "w1", "variant": "feature", "scoring": "exact"},
        "events_per_s",
    ),
    Figure(
        "W1 feature-level exact, fraction of the compute bound",
        "stream",
        {"workload": "w1", "variant": "feature", "scoring": "exact"},
        "compute_bound_fraction",
        0.8,
    ),
    Figure(
        "scorer alone, exact: fraction of the compute bound",
        "scoring",
        {"workload": "w1", "variant": "feature"},
        "compute_bound_fraction",
        0.8,
    ),
    Figure(
        "W1 item-level two-stage, events/s",
        "stream",
        {"workload": "w1", "variant": "item", "scoring": "two-stage"},
        "events_per_s",
        10_000,
    ),
    Figure(
        "W2 two-stage, events/s",
        "stream",
        {"workload": "w2", "scoring": "two-stage"},
        "events_per_s",
        5_000,
    ),
    Figure(
        "W2 two-stage recall@10 against exact", "scoring", {"workload": "w2"}, "recall_at_10", 0.99
    ),
    Figure(
        "latency p50 at 1,000 events/s, ms", "latency", {"workload": "w1"}, "p50_ms", 20.0, "lower"
    ),
    Figure(
        "latency p99 at 1,000 events/s, ms", "latency", {"workload": "w1"}, "p99_ms", 50.0, "lower"
    ),
    Figure(
        "processing again after SIGKILL (same data dir), s",
        "recovery",
        {"workload": "w1"},
        "recovery_same_dir_s",
        30.0,
        "lower",
    ),
    Figure(
        "processing again after SIGKILL (empty data dir), s",
        "recovery",
        {"workload": "w1"},
        "recovery_empty_dir_s",
    ),
    Figure(
        "state per user, feature-level (mean), bytes",
        "state",
        {"workload": "w1"},
        "feature_state_bytes_mean",
        6 * 1024,
        "lower",
    ),
    Figure(
        "state per user, feature-level (max), bytes",
        "state",
        {"workload": "w1"},
        "feature_state_bytes_max",
    ),
    Figure(
        "state per user, item-level (mean), bytes",
        "state",
        {"workload": "w1"},
        "item_state_bytes_mean",
        1024,
        "lower",
    ),
    Figure(
        "worker RSS after W1, MB", "state", {"workload": "w1"}, "worker_rss_mb", 1536.0, "lower"
    ),
    Figure(
        "training epoch (feature-level, L=50, 2 threads), s",
        "train",
        {"loss": "bce", "negatives": 1},
        "seconds_per_epoch",
        46.0,
        "lower",
    ),
    Figure(
        "training epoch, sampled softmax, 100 negatives, batch 64, s",
        "train",
        {"loss": "sampled-softmax", "negatives": 100, "batch_size": 64},
        "seconds_per_epoch",
        46.0,
        "lower",
    ),
)


def figure_table(rows: Sequence[Figures]) -> str:
    """Markdown: every figure of BENCHMARKS.md, median (and range) over the runs found."""
    lines = [
        "| figure | target | median | runs | range | met |",
        "|---|---|---|---|---|---|",
    ]
    for figure in TABLE:
        values = figure.values(rows)
        target = (
            ""
            if figure.target is None
            else f"{'≥' if figure.better == 'higher' else '≤'} {figure.target:g}"
        )
        if not values:
            lines.append(f"| {figure.label} | {target} | not measured | 0 | | |")
            continue
        median = statistics.median(values)
        met = ""
        if figure.target is not None:
            ok = median >= figure.target if figure.better == "higher" else median <= figure.target
            met = "yes" if ok else "no"
        span = f"{min(values):g} – {max(values):g}"
        lines.append(f"| {figure.label} | {target} | {median:g} | {len(values)} | {span} | {met} |")
    commits = sorted(
        {str(r["git_commit"]) for r in rows if r.get("git_commit") and not r.get("quick")}
    )
    lines += ["", f"Commits of the runs: {', '.join(commits) or 'none'}."]
    return "\n".join(lines)


BENCHES: dict[str, tuple[Callable[[argparse.Namespace], Figures], str]] = {
    "stream": (bench_stream, "W1/W2 throughput through Kafka, with the naive baseline"),
    "latency": (bench_latency, "event → recommendation latency at a steady rate"),
    "scoring": (bench_scoring, "exact kernel vs compute bound; two-stage recall@10"),
    "train": (bench_train, "seconds per training epoch (feature-level, L=50)"),
    "recovery": (bench_recovery, "restart after SIGKILL with every W1 user in state"),
    "state": (bench_state, "encoded bytes per user; worker RSS after W1"),
    "soak": (bench_soak, "a 10-minute soak at half the measured maximum rate"),
}


def add_bench_options(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="bench", required=True)
    table = actions.add_parser(
        "table",
        help="the BENCHMARKS.md table from results files (medians over the runs)",
        description="Every figure against its target, from files that --out wrote.",
    )
    table.add_argument("results", nargs="+", help="JSON-lines files written by --out")
    table.set_defaults(bench_name="table")
    for name, (_function, text) in BENCHES.items():
        sub = actions.add_parser(name, help=text, description=text)
        add_flag(sub, "--json", help="print only the JSON object")
        add_option(sub, "--out", default=None, help="append the JSON object to this file")
        add_option(sub, "--report", default=None, help="write Markdown with plots to this folder")
        add_flag(sub, "--quick", help="a small version (seconds): for tests and smoke runs")
        add_option(
            sub,
            "--bootstrap",
            default=None,
            help="use this Kafka (host:port); default: start Apache Kafka for the run",
        )
        add_option(sub, "--work-dir", default=None, help="scratch folder (default: a temp dir)")
        add_option(sub, "--cache-dir", default=str(DEFAULT_CACHE), help="trained/synthetic models")
        add_option(sub, "--data", default=str(DEFAULT_W1), help="W1 event log")
        add_option(sub, "--model", default=None, help="W1 artifact to use instead of training one")
        add_option(sub, "--workload", choices=["w1", "w2"], default="w1", help="workload")
        add_option(
            sub, "--variant", choices=["item", "feature"], default="feature", help="RUM variant"
        )
        add_option(
            sub,
            "--scoring",
            choices=["exact", "two-stage"],
            default="two-stage",
            help="worker scoring mode",
        )
        add_option(sub, "--events", type=int, default=None, help="use only the first N events")
        add_option(sub, "--w2-items", type=int, default=None, help="W2 catalogue size")
        add_option(sub, "--w2-users", type=int, default=None, help="W2 users")
        add_option(sub, "--repeat", type=int, default=1, help="runs (medians are reported)")
        add_flag(
            sub,
            "--floor",
            help="stream: also run Faust's floor (an agent that only acks) in the same run",
        )
        add_flag(
            sub,
            "--no-baseline",
            help="stream: skip the naive Faust baseline (it is W1's yardstick; W2 needs none)",
        )
        add_option(sub, "--train-epochs", type=int, default=3, help="epochs of the W1 bench model")
        add_option(
            sub,
            "--loss",
            choices=["bce", "sampled-softmax", "softmax"],
            default="bce",
            help="train: training loss",
        )
        add_option(sub, "--negatives", type=int, default=1, help="train: negatives per positive")
        add_option(sub, "--train-batch", type=int, default=256, help="train: users per batch")
        add_option(sub, "--threads", type=int, default=None, help="torch threads (scoring, train)")
        add_option(sub, "--rate", type=float, default=1000.0, help="latency: events per second")
        add_option(
            sub,
            "--soak-rate",
            type=float,
            default=None,
            help="soak: events per second (default: half the measured maximum)",
        )
        add_option(
            sub, "--duration", type=float, default=None, help="latency, soak: seconds of input"
        )
        add_option(sub, "--warmup-s", type=float, default=2.0, help="latency: seconds not counted")
        add_option(sub, "--users", type=int, default=None, help="scoring, soak: users")
        add_option(sub, "--batch", type=int, default=512, help="scoring: users per call")
        sub.set_defaults(bench_name=name)


def bench_main(args: argparse.Namespace) -> int:
    if args.bench_name == "table":
        rows: list[Figures] = []
        for name in args.results:
            for number, line in enumerate(Path(name).read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    print(f"rum bench table: {name}:{number}: not JSON ({exc})", file=sys.stderr)
                    return 2
        print(figure_table(rows))
        return 0
    function, _text = BENCHES[args.bench_name]
    facts = machine_facts()
    own_work = args.work_dir is None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="rum-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    args.work_dir = str(work)
    try:
        figures = function(args)
    except BenchError as exc:
        print(f"rum bench {args.bench_name}: {exc}", file=sys.stderr)
        return 1
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    extra = {k: figures.pop(k) for k in [k for k in figures if k.startswith("_")]}
    result: Figures = {
        "bench": args.bench_name,
        "quick": bool(args.quick),
        **facts,
        **worker_settings_facts(),
        **figures,
        "load_1m_end": round(os.getloadavg()[0], 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    line = json.dumps(result)
    if args.out:
        with Path(args.out).open("a") as out:
            out.write(line + "\n")
    if args.report:
        say(f"report: {write_report(Path(args.report), result, extra)}")
    if args.json:
        print(line)
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0
