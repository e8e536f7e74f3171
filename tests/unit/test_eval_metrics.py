"""Metrics against hand-worked rankings, and the evaluator's protocol details."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from model import evaluate as ev
from model import metrics
from model.data import Vocab, from_rows
from model.serving import Scorer
from model.splits import Case, Replay
from model.training import TrainConfig, train
from tests.unit.model_toys import chain_log


def test_ties_count_against_the_model() -> None:
    scores = torch.tensor([[0.5, 0.5, 0.9, 0.1], [0.3, -math.inf, 0.2, 0.1]])
    ranks = metrics.pessimistic_ranks(scores, torch.tensor([0, 0]))
    assert ranks.tolist() == [3.0, 1.0]  # item 1 ties with the true item 0 and ranks above it
    excluded = metrics.pessimistic_ranks(scores, torch.tensor([1, 1]))
    assert math.isinf(float(excluded[1]))


def test_single_target_metrics_by_hand() -> None:
    got = metrics.single_target_metrics([1.0, 3.0, math.inf, 6.0], ks=(5,))
    assert got["hr@5"] == pytest.approx(2 / 4)
    assert got["ndcg@5"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / 4)  # (1 + 0.5) / 4
    assert got["mrr@5"] == pytest.approx((1.0 + 1.0 / 3.0) / 4)


def test_paper_ndcg_uses_the_ideal_dcg_of_the_relevant_count() -> None:
    # Mistake: dividing by a fixed ideal DCG whatever the number of relevant items.
    got = metrics.set_metrics(["a", "x", "b", "y", "z"], {"a", "b"}, k=5)
    ideal_two = 1.0 + 1.0 / math.log2(3)
    assert got["ndcg@5"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / ideal_two)
    assert got["precision@5"] == pytest.approx(0.4) and got["recall@5"] == pytest.approx(1.0)
    assert got["f1@5"] == pytest.approx(2 * 0.4 * 1.0 / 1.4) and got["hr@5"] == 1.0
    one = metrics.set_metrics(["x", "a", "y", "z", "w"], {"a"}, k=5)
    assert one["ndcg@5"] == pytest.approx(1.0 / math.log2(3))  # ideal DCG of one item is 1
    many = metrics.set_metrics(["a", "b", "c", "d", "e"], set("abcdefgh"), k=5)
    assert many["ndcg@5"] == pytest.approx(1.0)  # ideal capped at k positions


class FixedRanker(ev.PopularityRanker):
    """Scores fixed per item (by name) to check the evaluator's exclusion and ranking."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.items = Vocab(scores)
        self._logits = torch.tensor([-math.inf, *scores.values()])

    def logits_many(self, user_ids: Sequence[str], memories: Sequence[object]) -> torch.Tensor:
        return self._logits[None, :].repeat(len(user_ids), 1)


def test_evaluator_excludes_history_and_misses_unknown_items() -> None:
    ranker = FixedRanker({"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.7})
    cases = [
        Case("u", ("a",), ("c",)),  # a excluded; b above, d ties -> rank 3
        Case("u", ("a", "b", "d"), ("c",)),  # only c left -> rank 1
        Case("u", (), ("new",)),  # never seen in training -> miss
        Case("u", ("c",), ("c",)),  # repeat of a seen item -> excluded -> miss
    ]
    assert ev.case_ranks(ranker, cases) == [3.0, 1.0, math.inf, math.inf]


def test_prequential_replay_batched_equals_one_by_one_and_matches_scorer() -> None:
    log = chain_log(users=10, items=15, length=8)
    before = log.subset(log.timestamps < 1050)
    result = train(
        before,
        TrainConfig(variant="feature", dim=8, slots=3, epochs=2, seed=1, progress=False),
        None,
        log=lambda _: None,
    )
    scorer = Scorer.from_network(result.net, result.users, result.items, result.popularity)
    replay = Replay(log, 1050)
    batched = ev.evaluate_replay(scorer, replay, ks=(1, 5), batch=64)
    single = ev.evaluate_replay(scorer, replay, ks=(1, 5), batch=1)
    assert batched == single and batched["cases"] == float(replay.scored().sum())
    # By hand through the serving calls the stream makes, one event at a time.
    memories: dict[str, object] = {}
    seen: dict[str, set[str]] = {}
    hits = 0
    for user, item, ts in zip(log.user_ids, log.item_ids, log.timestamps, strict=True):
        memory = memories.get(user, scorer.empty_memory())
        if ts >= 1050:
            recs = scorer.score_many([user], [memory], [seen.get(user, set())], k=5)  # type: ignore[list-item]
            hits += item in {r.item_id for r in recs[0]}
        memories[user] = scorer.write_one(memory, item)  # type: ignore[arg-type]
        seen.setdefault(user, set()).add(item)
    assert batched["hr@5"] == pytest.approx(hits / batched["cases"])


def test_popularity_baseline_counts_training_events() -> None:
    log = from_rows(["u", "v", "w", "u"], ["a", "b", "b", "c"], ["1", "2", "3", "4"])
    pop = ev.PopularityRanker(log)
    recs = pop.score_many(["x"], [()], [{"c"}], k=2)[0]
    assert [r.item_id for r in recs] == ["b", "a"]
    assert ev.case_ranks(pop, [Case("x", (), ("a",))]) == [3.0]  # a ties with c: counted against
