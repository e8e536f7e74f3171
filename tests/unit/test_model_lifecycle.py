"""The trainer's guard and schedule, announcements, the model store, and the worker's swap."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from model.artifact import (
    ArtifactError,
    find_in_store,
    new_store_entry,
    resolve_model_dir,
    save_artifact,
    store_entries,
)
from model.data import Vocab
from model.network import build
from stream.app import create_app, runtime_of
from stream.models import (
    Announcement,
    AnnouncementError,
    artifact_path,
    artifact_uri,
    check_scorer,
    load_announced,
)
from stream.settings import Settings
from stream.trainer import TrainerState, cycle_due, judge, load_state, save_state
from tests.stream_toys import ITEMS, USERS, tiny_scorer

# --- the publish guard -----------------------------------------------------------------------


def test_guard_publishes_a_better_or_equal_version() -> None:
    current = {"hr@10": 0.30, "ndcg@10": 0.15}
    assert judge(current, {"hr@10": 0.31, "ndcg@10": 0.16}, 0.0).publish
    assert judge(current, dict(current), 0.0).publish


def test_guard_tolerates_a_small_drop_only() -> None:
    current = {"hr@10": 0.30, "ndcg@10": 0.15}
    within = judge(current, {"hr@10": 0.296, "ndcg@10": 0.146}, 0.005)
    assert within.publish, within.reason
    worse = judge(current, {"hr@10": 0.31, "ndcg@10": 0.14}, 0.005)
    assert not worse.publish
    assert "ndcg@10 0.1400 < current 0.1500" in worse.reason and "hr@10" not in worse.reason


# --- the schedule ---------------------------------------------------------------------------


def test_cycle_due_by_events_and_by_minutes(tmp_path: Path) -> None:
    state = TrainerState(offsets={0: 100, 1: 50}, last_cycle_at=1000.0)
    by_events = Settings(trainer_every_min=0, trainer_every_events=20)
    assert not cycle_due(state, {0: 110, 1: 59}, by_events, now=10**6)  # 19 new
    assert cycle_due(state, {0: 110, 1: 60}, by_events, now=1001.0)  # 20 new
    by_minutes = Settings(trainer_every_min=5, trainer_every_events=0)
    assert not cycle_due(state, {0: 101, 1: 50}, by_minutes, now=1000.0 + 299)
    assert cycle_due(state, {0: 101, 1: 50}, by_minutes, now=1000.0 + 300)
    assert not cycle_due(state, {0: 100, 1: 50}, by_minutes, now=10**6)  # nothing new
    assert cycle_due(TrainerState(), {0: 1}, by_minutes, now=1.0)  # first start
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state
    (tmp_path / "trainer-state.json").write_text("{not json")
    assert load_state(tmp_path) == TrainerState()


# --- announcements and the store ------------------------------------------------------------


def test_announcement_round_trip_and_garbage() -> None:
    announcement = Announcement("rum-item-abc", "file:///models/x", 12.5, {"heldout_hr@10": 0.5})
    again = Announcement.from_bytes(announcement.to_bytes(), offset=7)
    assert again.version == "rum-item-abc" and again.offset == 7
    assert again.metrics == {"heldout_hr@10": 0.5} and again.created_at == 12.5
    assert set(json.loads(announcement.to_bytes())) >= {"version", "uri", "created_at", "metrics"}
    with pytest.raises(AnnouncementError, match="offset 3"):
        Announcement.from_bytes(b'{"uri": "x"}', offset=3)
    with pytest.raises(AnnouncementError):
        Announcement.from_bytes(b"\xff")


def _save(path: Path, seed: int = 0) -> str:
    scorer = tiny_scorer("feature", seed=seed)
    net = build(scorer.config)
    import torch

    torch.manual_seed(seed)
    net = build(scorer.config)
    return save_artifact(
        path, net, Vocab(USERS), Vocab(ITEMS), np.ones(len(ITEMS) + 1), {"seed": seed}, {}
    )


def test_store_names_sort_newest_last_even_when_the_clock_goes_back(tmp_path: Path) -> None:
    store = tmp_path / "store"
    seed_version = _save(store / "seed", seed=0)
    first = new_store_entry(store, "v-a", now=2_000_000_000.0)
    v1 = _save(first, seed=1)
    second = new_store_entry(store, "v-b", now=1_000_000_000.0)  # clock went back
    v2 = _save(second, seed=2)
    os.utime(store / "seed" / "config.json", (3e9, 3e9))  # a seed copied later: still older
    assert second.name > first.name
    assert [e.name for e in store_entries(store)][-2:] == [first.name, second.name]
    assert resolve_model_dir(store) == second
    assert find_in_store(store, v1) == first and find_in_store(store, "nope") is None
    assert find_in_store(store, seed_version) == store / "seed"
    assert v2 != v1
    # The announcement's path may differ on this machine: the store's entry of that name wins.
    moved = artifact_uri(tmp_path / "elsewhere" / first.name)
    assert artifact_path(moved, str(store)) == first


def test_load_announced_refuses_truncated_and_mismatched_artifacts(tmp_path: Path) -> None:
    version = _save(tmp_path / "good")
    assert (
        load_announced(Announcement(version, artifact_uri(tmp_path / "good"), 0.0)).version
        == version
    )
    with pytest.raises(ArtifactError, match="announcement says"):
        load_announced(Announcement("rum-feature-other", artifact_uri(tmp_path / "good"), 0.0))
    shutil.copytree(tmp_path / "good", tmp_path / "cut")
    weights = tmp_path / "cut" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="safetensors"):
        load_announced(Announcement(version, artifact_uri(tmp_path / "cut"), 0.0))


def test_check_scorer_refuses_nan_weights() -> None:
    scorer = tiny_scorer("item")
    scorer._q[1:] = float("nan")
    with pytest.raises(ArtifactError, match="NaN"):
        check_scorer(scorer)


# --- the swap in a worker (no Kafka) ------------------------------------------------------------


def test_swap_lands_between_batches_and_a_bad_artifact_is_refused(tmp_path: Path) -> None:
    version = _save(tmp_path / "v2", seed=5)
    shutil.copytree(tmp_path / "v2", tmp_path / "cut")
    (tmp_path / "cut" / "weights.safetensors").write_bytes(b"truncated")

    def purchase(step: int) -> bytes:
        event = {"user_id": "u1", "item_id": str(step), "ts": 5 + step, "event_id": f"a{step}"}
        return json.dumps(event).encode()

    async def scenario() -> tuple[list[dict], list[bool], str, str]:
        first = tiny_scorer("feature", version="v1")
        app = create_app(Settings(app_id="swap-test"), first, store="memory://")
        runtime = runtime_of(app)
        messages: list[dict] = []

        async def capture(key, value, headers):
            messages.append(json.loads(value))

        async def covered(count: int) -> None:
            for _ in range(200):
                if sum(len(m["event_ids"]) for m in messages) >= count:
                    return
                await asyncio.sleep(0.05)

        runtime.send_recommendation = capture
        good = Announcement(version, artifact_uri(tmp_path / "v2"), 0)
        bad = Announcement("x", artifact_uri(tmp_path / "cut"), 0)
        agent = app.agents["rum-purchases"]
        async with agent.test_context() as agent_t:
            for step in range(3):
                await agent_t.put(purchase(step), key=b"u1")
            await covered(3)
            adopted = [await runtime.adopt(good), await runtime.adopt(bad)]
            for step in range(3, 5):
                await agent_t.put(purchase(step), key=b"u1")
            await covered(5)
        refused = runtime.refused or {}
        return messages, adopted, runtime.scorer.version, str(refused.get("error"))

    messages, adopted, serving, refusal = asyncio.run(scenario())
    assert adopted == [True, False]
    assert serving == version
    assert "safetensors" in refusal
    versions = [(m["event_ids"], m["model_version"]) for m in messages]
    assert [v for _ids, v in versions] == sorted(
        (v for _ids, v in versions), key=lambda v: v != "v1"
    )  # v1 first, then the new version, never back
    assert versions[0][1] == "v1" and versions[-1][1] == version
    assert [e for ids, _v in versions for e in ids] == [f"a{i}" for i in range(5)]
    # The memory written by v1 was rebuilt from the history under the new version.
    from model.serving import Scorer

    new = Scorer.load(tmp_path / "v2")
    history = [str(i) for i in range(5)]
    offline = new.score_many(["u1"], [new.memory_from_history(history)], [set(history)], 10)[0]
    last = messages[-1]["items"]
    assert [i["item_id"] for i in last] == [r.item_id for r in offline]
    assert [i["score"] for i in last] == pytest.approx([r.score for r in offline], abs=1e-6)
