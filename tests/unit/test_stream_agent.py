"""The Faust agent itself, with faust's test_context() and an in-memory store."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import cast

import faust

from stream.app import (
    create_app,
    health_report,
    liveness_report,
    recommendation_body,
    runtime_of,
)
from stream.settings import Settings
from stream.state import new_state
from tests.stream_toys import tiny_scorer


def test_agent_applies_scores_and_dead_letters() -> None:
    async def scenario() -> tuple[list, list, dict]:
        scorer = tiny_scorer("item")
        app = create_app(Settings(app_id="agent-test"), scorer, store="memory://")
        recommendations: list = []
        dead: list = []

        async def capture_recommendation(key, value, headers):
            recommendations.append((key, json.loads(value)))

        async def capture_dead_letter(key, value, headers):
            dead.append((key, value, dict(headers)))

        runtime_of(app).send_recommendation = capture_recommendation
        runtime_of(app).send_dead_letter = capture_dead_letter
        agent = app.agents["rum-purchases"]
        async with agent.test_context() as agent_t:
            for item in ("1", "2"):
                payload = {"user_id": "u3", "item_id": item, "ts": 5, "event_id": f"e{item}"}
                await agent_t.put(json.dumps(payload).encode(), key=b"u3")
            await agent_t.put(b'{"user_id": 12', key=b"u3")
            await agent_t.put(
                json.dumps({"user_id": "u3", "item_id": "1", "ts": 5, "event_id": "e1"}).encode(),
                key=b"u3",
            )
            for _ in range(100):
                covered = sum(len(r[1]["event_ids"]) for r in recommendations)
                if covered >= 3 and dead:
                    break
                await asyncio.sleep(0.05)
        table = cast(faust.Table, app.tables["user-state"])
        from stream.state import decode_state

        state = decode_state(table[b"u3"], scorer)
        return recommendations, dead, {"history": state.history, "applied": state.applied}

    recommendations, dead, state = asyncio.run(scenario())
    # However the micro-batches fell, every event is covered once, in order.
    assert [e for r in recommendations for e in r[1]["event_ids"]] == ["e1", "e2", "e1"]
    assert all(key == b"u3" for key, _ in recommendations)
    assert len(dead) == 1 and dead[0][2]["rum-reason"] == b"undecodable"
    assert dead[0][2]["rum-source-topic"]
    # The duplicate e1 was answered but not applied again.
    assert state == {"history": ("1", "2"), "applied": 2}


def test_health_is_ready_with_an_empty_assignment_and_not_while_rebalancing() -> None:
    runtime = runtime_of(create_app(Settings(app_id="health-test"), tiny_scorer("item")))
    # A third worker over four partitions can be left with none (2, 2, 0): ready.
    ok, body = health_report(assigned=0, recovered=True, rebalancing=False, runtime=runtime)
    assert ok and body["status"] == "ok" and body["assigned_partitions"] == 0
    assert body["model_variant"] == "item"
    ok, body = health_report(assigned=3, recovered=True, rebalancing=True, runtime=runtime)
    assert not ok and body["status"] == "starting" and body["rebalancing"]
    ok, _ = health_report(assigned=3, recovered=False, rebalancing=False, runtime=runtime)
    assert not ok


def test_liveness_is_up_whatever_the_readiness() -> None:
    runtime = runtime_of(create_app(Settings(app_id="live-test"), tiny_scorer("item")))
    ready, _ = health_report(assigned=3, recovered=False, rebalancing=True, runtime=runtime)
    assert not ready  # /health/ready answers 503 ...
    assert liveness_report(runtime) == {"status": "alive", "model_version": "v1"}  # ... live 200


def test_an_answer_without_state_is_marked_cold_start() -> None:
    scorer = tiny_scorer("item")
    ranked = scorer.score_many(["u1"], [scorer.empty_memory()], [frozenset()], 3)[0]
    cold = recommendation_body("u1", ranked, scorer.version, None)
    assert cold["cold_start"] is True and cold["events_applied"] == 0 and cold["history"] == []
    state = dataclasses.replace(new_state(scorer), history=("4", "7"), applied=2)
    warm = recommendation_body("u1", ranked, scorer.version, state)
    assert warm["cold_start"] is False and warm["events_applied"] == 2
    assert warm["history"] == ["4", "7"] and len(warm["items"]) == 3
    assert (
        set(cold)
        == set(warm)
        == {
            "user_id",
            "items",
            "model_version",
            "history",
            "events_applied",
            "cold_start",
            "generated_at",
        }
    )
