"""``rum replay`` against Apache Kafka and a real worker: replaying a log twice changes nothing.

The same worker also feeds the README's subscriber example, which must read a
real recommendation back.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.examples.subscriber import recommendations
from stream.cli import main
from tests.kafka_tools import WorkerProcess, read_topic, web_port

USERS = 5
EVENTS_PER_USER = 6
ITEMS = 12


def _write_log(path: Path) -> Path:
    lines = ["user_id,item_id,timestamp"]
    for step in range(EVENTS_PER_USER):
        for user in range(USERS):
            item = (user * 3 + step * (1 + user % 2)) % ITEMS
            lines.append(f"u{user},i{item},{1_600_000_000 + 10 * step + user}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def log_and_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("replay")
    log = _write_log(root / "events.csv")
    model = root / "model"
    cmd = [
        sys.executable,
        "-m",
        "stream.cli",
        "train",
        "--data",
        str(log),
        "--variant",
        "item",
        "--all",
        "--epochs",
        "1",
        "--dim",
        "8",
        "--threads",
        "1",
        "--quiet",
        "--out",
        str(model),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"training failed:\n{result.stdout}\n{result.stderr}"
    return log, model


def _get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (urllib.error.URLError, OSError):
        return 0, None


def _wait_healthy(worker: WorkerProcess, port: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.alive(), f"the worker exited:\n{worker.log_tail()}"
        if _get(port, "/health")[0] == 200:
            return
        time.sleep(0.5)
    pytest.fail(f"the worker was not healthy within {timeout_s:.0f} s:\n{worker.log_tail()}")


def _covered(records: list[Any]) -> list[str]:
    return [event_id for r in records for event_id in json.loads(r.value)["event_ids"]]


def _states(port: int) -> dict[str, dict[str, Any]]:
    states = {}
    for user in range(USERS):
        status, body = _get(port, f"/recommendations/u{user}?k=5")
        assert status == 200, body
        states[f"u{user}"] = {
            "events_applied": body["events_applied"],
            "history": body["history"],
            "items": [(item["item_id"], round(item["score"], 6)) for item in body["items"]],
        }
    return states


@contextlib.contextmanager
def _worker(
    bootstrap: str, model: Path, topics: dict[str, str], app_id: str, tmp_path: Path
) -> Iterator[tuple[WorkerProcess, int]]:
    port = web_port()
    env = {
        **topics,
        "RUM_BROKER": f"kafka://{bootstrap}",
        "RUM_APP_ID": app_id,
        "RUM_MODEL_DIR": str(model),
        "RUM_DATA_DIR": str(tmp_path / "worker"),
        "RUM_WEB_PORT": str(port),
        "RUM_PARTITIONS": "2",
        "RUM_LOG_LEVEL": "warning",
    }
    worker = WorkerProcess(["-m", "stream.cli", "worker"], env, tmp_path / "worker.log").start()
    try:
        _wait_healthy(worker, port)
        yield worker, port
    finally:
        worker.stop()


def test_replaying_a_log_twice_leaves_every_memory_unchanged(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    log_and_model: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    log, model = log_and_model
    topics = {
        "RUM_TOPIC_PURCHASES": unique_topic("purchases"),
        "RUM_TOPIC_RECOMMENDATIONS": unique_topic("recommendations"),
        "RUM_TOPIC_DLQ": unique_topic("purchases.dlq"),
    }
    total = USERS * EVENTS_PER_USER
    replay = [
        "replay",
        str(log),
        "--broker",
        f"kafka://{kafka_bootstrap}",
        "--topic",
        topics["RUM_TOPIC_PURCHASES"],
        "--no-progress",
    ]
    out_topic = topics["RUM_TOPIC_RECOMMENDATIONS"]
    with _worker(kafka_bootstrap, model, topics, unique_topic("replay-app"), tmp_path) as (
        worker,
        port,
    ):
        assert main(replay) == 0
        first = read_topic(
            kafka_bootstrap, out_topic, until=lambda r: len(set(_covered(r))) >= total
        )
        first_ids = set(_covered(first))
        assert len(first_ids) == total
        before = _states(port)
        assert all(s["events_applied"] == EVENTS_PER_USER for s in before.values()), before
        assert all(len(s["history"]) == EVENTS_PER_USER for s in before.values())

        assert main(replay) == 0
        # Duplicates are answered too (at-least-once output), so the second pass shows up
        # as every event id covered a second time.
        both = read_topic(kafka_bootstrap, out_topic, until=lambda r: len(_covered(r)) >= 2 * total)
        assert set(_covered(both)) == first_ids  # the same ids: derived from file and line
        after = _states(port)
        assert after == before
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            status, metrics = response.status, response.read().decode()
        assert status == 200
        assert f"rum_duplicates_total {float(total)}" in metrics
        assert worker.alive(), worker.log_tail()

        # The README's subscriber example reads a real recommendation from the same topic.
        with contextlib.closing(
            recommendations(
                kafka_bootstrap, out_topic, group=unique_topic("subscriber"), idle_ms=60_000
            )
        ) as messages:
            message = next(messages)
        assert message["user_id"] in before
        assert message["event_ids"] and set(message["event_ids"]) <= first_ids
        assert 0 < len(message["items"]) <= 10  # RUM_TOPK's default, seen items excluded
        assert {"item_id", "score", "because"} <= set(message["items"][0])
