"""A worker on a host that cannot see an announced model keeps serving its version (issue 17: 10).

Announcements carry ``file://`` paths on the trainer's host. Here a version is
announced whose path exists on no host this worker can read: the worker must keep
scoring with the version it has, and say why once, in its log, on ``/health`` and in
``/metrics``.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from model.serving import Scorer
from stream.models import Announcement, announce
from stream.settings import Settings
from tests.integration.worker_harness import (
    Deployment,
    http_json,
    http_text,
    produce,
    recommendations_covering,
    synthetic_events,
    wait_healthy,
)

pytestmark = pytest.mark.kafka

ELSEWHERE_VERSION = "rum-item-0123456789ab"
ELSEWHERE = f"file:///srv/trainer-host/rum-models/20990101T000000.000000Z-{ELSEWHERE_VERSION}"


def test_an_announced_path_missing_on_this_host_leaves_the_old_version_serving(
    kafka_bootstrap: str, item_model: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(item_model, store / "seed")
    current = Scorer.load(item_model).version
    name = f"rum-{uuid.uuid4().hex[:8]}"
    deployment = Deployment(
        bootstrap=kafka_bootstrap,
        name=name,
        model_dir=store,
        root=tmp_path,
        extra_env={"RUM_TOPIC_MODELS": f"{name}.models"},
    )
    settings = Settings(
        broker=f"kafka://{kafka_bootstrap}",
        model_dir=str(store),
        topic_purchases=deployment.purchases,
        topic_models=f"{name}.models",
    )
    worker = deployment.worker("w1").start()
    try:
        wait_healthy(worker)
        announce(settings, Announcement(ELSEWHERE_VERSION, ELSEWHERE, time.time()))
        deadline = time.monotonic() + 60
        health: dict = {}
        while time.monotonic() < deadline and not health.get("model_refused"):
            health = http_json(worker, "/health")[1]
            time.sleep(0.3)
        events = synthetic_events(users=5, per_user=3, items=40, prefix="after-refusal")
        produce(kafka_bootstrap, deployment.purchases, events)
        served = recommendations_covering(
            kafka_bootstrap, deployment.recommendations, {e["event_id"] for e in events}
        )
        status, answer = http_json(worker, "/recommendations/u1?k=5")
        metrics = http_text(worker, "/metrics")
        alive = worker.alive()
        log = worker.log_tail(200_000)
    finally:
        deployment.stop_all()
    assert alive, log
    assert health["model_version"] == current
    refused = health["model_refused"]
    assert refused["version"] == ELSEWHERE_VERSION and refused["uri"] == ELSEWHERE
    assert "not on this host" in refused["error"] and "shared filesystem" in refused["error"]
    assert {m["model_version"] for m in served} == {current}
    assert status == 200 and answer["model_version"] == current and answer["items"]
    assert 'rum_model_announcements_total{outcome="refused"} 1.0' in metrics
    assert f'rum_model_loaded{{variant="item",version="{current}"}} 1.0' in metrics
    refusals = [
        json.loads(line[line.index("{") :])
        for line in log.splitlines()
        if '"model_refused"' in line
    ]
    assert len(refusals) == 1, refusals
    assert refusals[0]["level"] == "error" and refusals[0]["keeping"] == current
    assert "not on this host" in refusals[0]["error"]
