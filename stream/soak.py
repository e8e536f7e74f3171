"""A bounded soak: one real worker, a steady input rate, resident memory, RocksDB size
and lag sampled as it runs, and every user's state checked at the end.

Used by the fault suite (a short run) and by ``rum bench soak`` (the long one).
Traffic goes only to the given broker (loopback in tests and benchmarks), and
the run stops by itself after ``duration_s``.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from deploy.kafka.harness import free_port


def _get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _rss_kb(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) if match else 0


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _applied(base: str) -> float:
    _status, body = _get(f"{base}/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("rum_events_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_soak(
    bootstrap: str,
    model_dir: Path,
    root: Path,
    *,
    duration_s: float,
    rate: float | None,
    users: int,
    items: int | list[str],
    sample_every_s: float = 3.0,
    calibrate_events: int = 20_000,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the soak and return its figures (``samples`` holds the time series).

    ``items`` is a catalogue size (ids ``"0"..``) or the item ids themselves. With
    ``rate=None`` the worker's maximum rate is measured first (``calibrate_events``
    produced at once, timed until all are applied) and the soak runs at half of it.
    """
    name = f"soak-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    data_dir = root / f"{name}-data"
    env = {
        **os.environ,
        "RUM_BROKER": f"kafka://{bootstrap}",
        "RUM_APP_ID": name,
        "RUM_MODEL_DIR": str(model_dir),
        "RUM_DATA_DIR": str(data_dir),
        "RUM_WEB_PORT": str(port),
        "RUM_TOPIC_PURCHASES": f"{name}.purchases",
        "RUM_TOPIC_RECOMMENDATIONS": f"{name}.recommendations",
        "RUM_TOPIC_DLQ": f"{name}.dlq",
        "RUM_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    base = f"http://127.0.0.1:{port}"
    with (root / f"{name}.log").open("ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while _get_status(f"{base}/health") != 200:
            if worker.poll() is not None or time.monotonic() > deadline:
                msg = f"the soak worker did not become healthy; see {root / f'{name}.log'}"
                raise RuntimeError(msg)
            time.sleep(0.5)
        return _drive(
            bootstrap,
            env["RUM_TOPIC_PURCHASES"],
            base,
            worker.pid,
            data_dir,
            duration_s=duration_s,
            rate=rate,
            users=users,
            item_ids=[str(i) for i in range(items)] if isinstance(items, int) else items,
            sample_every_s=sample_every_s,
            calibrate_events=calibrate_events,
        )
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()


def _get_status(url: str) -> int:
    try:
        return _get(url, timeout_s=2.0)[0]
    except OSError:
        return 0


def _drive(
    bootstrap: str,
    topic: str,
    base: str,
    pid: int,
    data_dir: Path,
    *,
    duration_s: float,
    rate: float | None,
    users: int,
    item_ids: list[str],
    sample_every_s: float,
    calibrate_events: int,
) -> dict[str, Any]:
    from kafka import KafkaProducer

    rng = random.Random(11)
    expected: Counter[str] = Counter()
    sent = 0
    samples: list[dict[str, Any]] = []
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")

    def send_one() -> None:
        nonlocal sent
        user = f"s{min(int(rng.paretovariate(1.2)) - 1, users - 1)}"
        event = {
            "event_id": f"soak-{sent}",
            "user_id": user,
            "item_id": rng.choice(item_ids),
            "ts": time.time(),
        }
        producer.send(topic, key=user.encode(), value=json.dumps(event).encode())
        expected[user] += 1
        sent += 1

    max_rate = None
    if rate is None:
        # The maximum rate, measured: a backlog produced at once, timed until applied.
        began = time.monotonic()
        for _ in range(calibrate_events):
            send_one()
        producer.flush()
        while _applied(base) < sent:
            if time.monotonic() - began > 600:
                raise RuntimeError("calibration: the worker did not apply its backlog in 600 s")
            time.sleep(0.2)
        max_rate = calibrate_events / (time.monotonic() - began)
        rate = max_rate / 2
    base_sent = sent
    stop = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not stop.wait(sample_every_s):
            processed = _applied(base)
            samples.append(
                {
                    "t_s": round(time.monotonic() - started, 1),
                    "rss_kb": _rss_kb(pid),
                    "rocksdb_bytes": _dir_bytes(data_dir),
                    "sent": sent,
                    "processed": processed,
                    "lag_s": round(max(0.0, sent - processed) / steady, 2),
                }
            )

    steady = rate
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        while (elapsed := time.monotonic() - started) < duration_s:
            due = base_sent + int(elapsed * steady)
            while sent < due:
                send_one()
            time.sleep(0.01)
        producer.flush()
    finally:
        producer.close()
    drain_deadline = time.monotonic() + 120
    while _applied(base) < sent and time.monotonic() < drain_deadline:
        time.sleep(0.5)
    stop.set()
    sampler.join()
    lost = duplicates = 0
    for user, count in expected.items():
        status, body = _get(f"{base}/recommendations/{user}?k=1")
        applied = json.loads(body)["events_applied"] if status == 200 else 0
        lost += max(0, count - applied)
        duplicates += max(0, applied - count)
    return {
        "duration_s": duration_s,
        "rate": round(steady, 1),
        "max_rate_measured": round(max_rate, 1) if max_rate else None,
        "events_sent": sent,
        "users": len(expected),
        "events_lost": lost,
        "state_duplicates": duplicates,
        "max_lag_s": max((s["lag_s"] for s in samples), default=0.0),
        "rss_kb_first": samples[0]["rss_kb"] if samples else 0,
        "rss_kb_last": samples[-1]["rss_kb"] if samples else 0,
        "rss_kb_max": max((s["rss_kb"] for s in samples), default=0),
        "rss_peak_growth_pct": _peak_growth_pct(samples, "rss_kb"),
        "rocksdb_bytes_first": samples[0]["rocksdb_bytes"] if samples else 0,
        "rocksdb_bytes_last": samples[-1]["rocksdb_bytes"] if samples else 0,
        "rocksdb_bytes_max": max((s["rocksdb_bytes"] for s in samples), default=0),
        "rocksdb_peak_growth_pct": _peak_growth_pct(samples, "rocksdb_bytes"),
        "samples": samples,
    }


def _peak_growth_pct(samples: list[dict[str, Any]], key: str) -> float:
    """How much the peak of ``key`` over the second half exceeds the first half's peak.

    Levelling off: near 0 (or below). Peaks, not two point samples: RocksDB's size is a
    sawtooth of memtable flushes and compactions, and a sample on a tooth's top against
    one at its foot reads as growth that is not there.
    """
    middle = len(samples) // 2
    first, second = samples[:middle], samples[middle:]
    if not first or not second:
        return 0.0
    before = max(s[key] for s in first)
    if not before:
        return 0.0
    return round(100.0 * (max(s[key] for s in second) - before) / before, 1)
