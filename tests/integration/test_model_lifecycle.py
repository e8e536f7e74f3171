"""Model versions against Apache Kafka: the trainer publishes, running workers swap without
losing or repeating an event, a worse model is kept out, a broken artifact is refused,
an earlier version can be promoted back."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch

from model.artifact import load_artifact, new_store_entry, save_artifact, weights_version
from model.serving import Scorer
from stream.models import Announcement, announce, artifact_uri, read_announcements
from stream.settings import Settings
from tests.integration.worker_harness import (
    Deployment,
    http_json,
    http_text,
    produce,
    recommendations_covering,
    wait_healthy,
)
from tests.kafka_tools import REPO, WorkerProcess, create_topics

pytestmark = pytest.mark.kafka

NEW_ITEMS = [f"n{i}" for i in range(5)]


def _deployment(kafka_bootstrap: str, store: Path, tmp_path: Path, **env: str) -> Deployment:
    name = f"rum-{uuid.uuid4().hex[:8]}"
    return Deployment(
        bootstrap=kafka_bootstrap,
        name=name,
        model_dir=store,
        root=tmp_path,
        extra_env={"RUM_TOPIC_MODELS": f"{name}.models", **env},
    )


def _settings(deployment: Deployment) -> Settings:
    return Settings(
        broker=f"kafka://{deployment.bootstrap}",
        model_dir=str(deployment.model_dir),
        topic_purchases=deployment.purchases,
        topic_models=deployment.extra_env["RUM_TOPIC_MODELS"],
    )


def _seed_store(model: Path, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(model, store / "seed")
    return store


def _rum(deployment: Deployment, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "RUM_BROKER": f"kafka://{deployment.bootstrap}",
        "RUM_MODEL_DIR": str(deployment.model_dir),
        "RUM_TOPIC_PURCHASES": deployment.purchases,
        "RUM_TOPIC_MODELS": deployment.extra_env["RUM_TOPIC_MODELS"],
        "RUM_TRAINER_DATA_DIR": str(deployment.root / "trainer"),
        "RUM_TRAINER_THREADS": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *argv],
        env={**os.environ, **environment},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _trainer_once(deployment: Deployment, *argv: str, **env: str) -> dict[str, Any]:
    result = _rum(deployment, "trainer", "--once", *argv, **env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def _wait_version(worker: WorkerProcess, version: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        _status, body = http_json(worker, "/health")
        if body.get("model_version") == version:
            return body
        time.sleep(0.3)
    raise AssertionError(f"worker still serves {body.get('model_version')}:\n{worker.log_tail()}")


def _event(user: int, step: int, item: str, prefix: str) -> dict[str, Any]:
    return {
        "event_id": f"{prefix}-{user}-{step}",
        "user_id": f"u{user}",
        "item_id": item,
        "ts": 1_600_000_000 + step * 60 + user,
    }


def test_hot_swap_while_streaming_loses_and_repeats_nothing(
    kafka_bootstrap: str, feature_model: Path, tmp_path: Path
) -> None:
    store = _seed_store(feature_model, tmp_path)
    deployment = _deployment(kafka_bootstrap, store, tmp_path, RUM_MICRO_BATCH="16")
    v1 = Scorer.load(feature_model).version
    users = 20
    rng = random.Random(3)
    # Phase A: what the trainer will learn from; new items appear next to known ones.
    phase_a = [
        _event(u, s, NEW_ITEMS[(u + s) % 5] if s in (1, 3) else str(rng.randrange(60)), "a")
        for s in range(5)
        for u in range(users)
    ]
    produced: list[dict[str, Any]] = list(phase_a)
    stop = threading.Event()

    def stream() -> None:
        # Phase B: one event per user every 0.4 s while the trainer runs and after the swap.
        step = 5
        while not stop.is_set() and step < 45:
            chunk = [
                _event(u, step, rng.choice([*NEW_ITEMS, *map(str, range(60))]), "b")
                for u in range(users)
            ]
            produce(kafka_bootstrap, deployment.purchases, chunk)
            produced.extend(chunk)
            step += 1
            time.sleep(0.4)

    worker = deployment.worker("w1").start()
    try:
        wait_healthy(worker)
        assert http_json(worker, "/health")[1]["model_version"] == v1
        produce(kafka_bootstrap, deployment.purchases, phase_a)
        recommendations_covering(
            kafka_bootstrap, deployment.recommendations, {e["event_id"] for e in phase_a}
        )
        producer = threading.Thread(target=stream, daemon=True)
        producer.start()
        summary = _trainer_once(
            deployment,
            RUM_TRAINER_TOLERANCE="1.0",  # this test is about the swap; the guard has its own
            RUM_TRAINER_EPOCHS="5",
            RUM_TRAINER_LR="0.01",
        )
        assert summary["published"], summary
        v2 = summary["new_version"]
        _wait_version(worker, v2)
        time.sleep(2.0)  # keep streaming across the swap
        stop.set()
        producer.join(timeout=30)
        assert not producer.is_alive()
        messages = recommendations_covering(
            kafka_bootstrap, deployment.recommendations, {e["event_id"] for e in produced}
        )
        histories: dict[str, list[str]] = defaultdict(list)
        for event in produced:
            histories[event["user_id"]].append(event["item_id"])
        states = {}
        for user in histories:
            status, states[user] = http_json(worker, f"/recommendations/{user}?k=10")
            assert status == 200
        metrics = http_text(worker, "/metrics")
        # Roll back: the seed version was never announced, promote finds it in the store.
        listing = _rum(deployment, "models", "list", "--json")
        promoted = _rum(deployment, "models", "promote", v1)
        assert promoted.returncode == 0, promoted.stderr
        _wait_version(worker, v1)
        marker = _event(0, 99, "1", "marker")
        produce(kafka_bootstrap, deployment.purchases, [marker])
        after_rollback = recommendations_covering(
            kafka_bootstrap, deployment.recommendations, {marker["event_id"]}
        )
        assert worker.alive(), worker.log_tail()
    finally:
        stop.set()
        deployment.stop_all()

    assert summary["window_events"] >= len(phase_a)
    assert summary["new_items"] == len(NEW_ITEMS)
    assert summary["current_version"] == v1
    # No event lost or applied twice: every user's count is what was produced.
    for user, history in histories.items():
        assert states[user]["events_applied"] == len(history), user
        assert states[user]["history"] == history[-50:], user
    covered = [e for m in messages for e in m["event_ids"]]
    assert sorted(covered) == sorted(e["event_id"] for e in produced)  # each exactly once
    # The version switches once, between two batches, and never goes back.
    ordered = sorted(messages, key=lambda m: m["generated_at"])
    versions = [m["model_version"] for m in ordered]
    switch = versions.index(v2)
    assert set(versions[:switch]) == {v1} and set(versions[switch:]) == {v2}
    # The stream kept flowing across the swap: phase B was answered by both versions.
    assert any(e.startswith("b-") for m in ordered[:switch] for e in m["event_ids"])
    assert any(e.startswith("b-") for m in ordered[switch:] for e in m["event_ids"])
    # After the swap, scores are the new version's for the same history (memories rebuilt).
    new = Scorer.load(Path(summary["uri"].removeprefix("file://")))
    assert new.version == v2 and all(new.knows_item(i) for i in NEW_ITEMS)
    last: dict[str, dict] = {}
    for message in messages:
        last[message["user_id"]] = message
    for user, history in histories.items():
        assert last[user]["model_version"] == v2
        memory = new.memory_from_history(history)
        offline = new.score_many([user], [memory], [set(history)], 10)[0]
        assert [i["item_id"] for i in last[user]["items"]] == [r.item_id for r in offline], user
        for got, want in zip(last[user]["items"], offline, strict=True):
            assert got["score"] == pytest.approx(want.score, abs=1e-5)
    # Items first seen after v1 are recommended by v2 (v1 could not embed them).
    recommended_new = {
        i["item_id"] for m in messages if m["model_version"] == v2 for i in m["items"]
    } & set(NEW_ITEMS)
    assert recommended_new
    assert not {
        i["item_id"] for m in messages if m["model_version"] == v1 for i in m["items"]
    } & set(NEW_ITEMS)
    assert f'rum_model_loaded{{variant="feature",version="{v2}"}} 1.0' in metrics
    assert 'rum_model_announcements_total{outcome="swapped"} 1.0' in metrics
    # Rollback took effect from the next batch.
    rolled_back = next(m for m in after_rollback if marker["event_id"] in m["event_ids"])
    assert rolled_back["model_version"] == v1
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert [(r["version"], r["current"]) for r in rows] == [(v2, True), (v1, False)]


def _shuffled_log(source: Path, out: Path) -> Path:
    lines = source.read_text().splitlines()
    header, rows = lines[0], [line.split(",") for line in lines[1:]]
    items = [row[1] for row in rows]
    random.Random(11).shuffle(items)
    out.write_text(
        "\n".join([header, *(f"{r[0]},{i},{r[2]}" for r, i in zip(rows, items, strict=True))])
        + "\n"
    )
    return out


def test_a_worse_model_is_not_published(
    kafka_bootstrap: str, feature_model: Path, synthetic_log: Path, tmp_path: Path
) -> None:
    store = _seed_store(feature_model, tmp_path)
    deployment = _deployment(kafka_bootstrap, store, tmp_path)
    create_topics(kafka_bootstrap, [deployment.purchases], partitions=4)
    rows = [line.split(",") for line in synthetic_log.read_text().splitlines()[1:]]
    events = [
        {"event_id": f"s{n}", "user_id": u, "item_id": i, "ts": int(t)}
        for n, (u, i, t) in enumerate(rows)
    ]
    produce(kafka_bootstrap, deployment.purchases, events)
    shuffled = tmp_path / "shuffled"
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "train",
            "--data",
            str(_shuffled_log(synthetic_log, tmp_path / "shuffled.csv")),
            "--variant",
            "feature",
            "--out",
            str(shuffled),
            "--all",
            "--epochs",
            "3",
            "--dim",
            "16",
            "--threads",
            "1",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert trained.returncode == 0, trained.stderr
    summary = _trainer_once(deployment, "--candidate", str(shuffled))
    assert not summary["published"]
    assert "worse on the held-out tail" in summary["reason"]
    assert summary["heldout_users"] == 40 and summary["window_events"] == len(events)
    assert summary["new_metrics"]["ndcg@10"] < summary["current_metrics"]["ndcg@10"]
    assert [p.name for p in store.iterdir()] == ["seed"]  # nothing written
    assert read_announcements(_settings(deployment)) == []  # nothing announced


def _perturbed_copy(model: Path, store: Path, scale: float) -> str:
    art = load_artifact(model)
    net = art.network()
    with torch.no_grad():
        net.item_emb.weight[1:] += scale * torch.randn_like(net.item_emb.weight[1:])
    weights = {name: t.detach().contiguous() for name, t in net.state_dict().items()}
    version = weights_version(net.config.variant, weights)
    save_artifact(
        new_store_entry(store, version), net, art.users, art.items, art.popularity, {}, {}
    )
    return version


def test_a_truncated_artifact_is_refused_and_a_later_worker_starts_on_the_current_version(
    kafka_bootstrap: str, feature_model: Path, tmp_path: Path
) -> None:
    store = _seed_store(feature_model, tmp_path)
    v1 = Scorer.load(feature_model).version
    v2 = _perturbed_copy(feature_model, store, 0.3)  # the store's newest
    deployment = _deployment(kafka_bootstrap, store, tmp_path)
    settings = _settings(deployment)
    # The current version is the announced one, not the store's newest.
    promoted = _rum(deployment, "models", "promote", v1)
    assert promoted.returncode == 0, promoted.stderr
    broken = store / "20990101T000000.000000Z-rum-feature-broken"
    shutil.copytree(feature_model, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "version": "rum-feature-broken"}))
    weights = broken / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    refused_promote = _rum(deployment, "models", "promote", "rum-feature-broken")
    worker = deployment.worker("w1").start()
    try:
        wait_healthy(worker)
        started_on = http_json(worker, "/health")[1]["model_version"]
        # A truncated artifact announced behind the CLI's back: refused, v1 keeps serving.
        announce(settings, Announcement("rum-feature-broken", artifact_uri(broken), time.time()))
        deadline = time.monotonic() + 60
        health: dict = {}
        while time.monotonic() < deadline and not health.get("model_refused"):
            health = http_json(worker, "/health")[1]
            time.sleep(0.3)
        events = [_event(u, s, str((u + s) % 60), "t") for s in range(3) for u in range(5)]
        produce(kafka_bootstrap, deployment.purchases, events)
        served = recommendations_covering(
            kafka_bootstrap, deployment.recommendations, {e["event_id"] for e in events}
        )
        status, state = http_json(worker, "/recommendations/u1?k=5")
        # Promoting a good version after the refusal is picked up.
        promoted_v2 = _rum(deployment, "models", "promote", v2)
        _wait_version(worker, v2)
        metrics = http_text(worker, "/metrics")
        assert worker.alive(), worker.log_tail()
        log = worker.log_tail(200_000)
    finally:
        deployment.stop_all()
    assert started_on == v1
    assert refused_promote.returncode == 1 and "safetensors" in refused_promote.stderr
    assert health["model_version"] == v1
    assert health["model_refused"]["version"] == "rum-feature-broken"
    assert "safetensors" in health["model_refused"]["error"]
    assert {m["model_version"] for m in served} == {v1}
    assert status == 200 and state["events_applied"] == 3 and state["model_version"] == v1
    assert promoted_v2.returncode == 0, promoted_v2.stderr
    refusals = [
        json.loads(line[line.index("{") :])
        for line in log.splitlines()
        if '"model_refused"' in line
    ]
    assert refusals and refusals[0]["keeping"] == v1 and refusals[0]["level"] == "error"
    assert 'rum_model_announcements_total{outcome="refused"} 1.0' in metrics
