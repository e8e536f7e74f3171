"""A user's scores are a function of that user alone: bit-identical whatever the batch,
its order, its size and the thread count; equal scores are ordered by item id."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import pytest
import torch

from model.data import Vocab
from model.network import ModelConfig, build
from model.serving import Memory, Recommendation, Scorer

ITEMS = 3000  # large enough that the products run on BLAS's blocked kernels
USERS = 48


def scorer_of(variant: Literal["item", "feature"], items: list[str] | None = None) -> Scorer:
    torch.manual_seed(3)
    item_ids = items or [f"i{n}" for n in range(ITEMS)]
    config = ModelConfig(
        variant=variant,
        num_users=USERS,
        num_items=len(item_ids),
        dim=32,
        slots=5 if variant == "item" else 8,
        alpha=1.0,
        init_std=0.3,
    )
    users = Vocab(f"u{n}" for n in range(USERS))
    popularity = np.concatenate([[0.0], np.ones(len(item_ids))])
    return Scorer.from_network(build(config), users, Vocab(item_ids), popularity)


def memories_of(scorer: Scorer) -> dict[str, Memory]:
    rng = random.Random(5)
    return {
        f"u{n}": scorer.memory_from_history([f"i{rng.randrange(ITEMS)}" for _ in range(7)])
        for n in range(USERS)
    }


@contextmanager
def threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ranked(
    scorer: Scorer,
    memories: dict[str, Memory],
    batches: list[list[str]],
    mode: Literal["exact", "two-stage"],
) -> dict[str, list[Recommendation]]:
    out: dict[str, list[Recommendation]] = {}
    for users in batches:
        recs = scorer.score_many(
            users, [memories[u] for u in users], [frozenset()] * len(users), 10, mode, 100
        )
        out.update(zip(users, recs, strict=True))
    return out


@pytest.mark.parametrize("mode", ["exact", "two-stage"])
@pytest.mark.parametrize("variant", ["item", "feature"])
def test_scores_do_not_depend_on_the_batch(variant, mode) -> None:
    scorer = scorer_of(variant)
    scorer.prepare(mode)
    memories = memories_of(scorer)
    users = list(memories)
    whole = ranked(scorer, memories, [users], mode)
    alone = ranked(scorer, memories, [[u] for u in users], mode)
    rng = random.Random(1)
    shuffled = rng.sample(users, len(users))
    cuts = [0, 1, 3, 6, 13, 14, 30, len(users)]
    with threads(2):
        batches = [shuffled[a:b] for a, b in itertools.pairwise(cuts)]
        mixed = ranked(scorer, memories, batches, mode)
    # Recommendations compare scores and `because` weights as exact floats.
    assert alone == whole
    assert mixed == whole


@pytest.mark.parametrize("variant", ["item", "feature"])
def test_logits_of_a_row_are_bit_identical_alone_and_in_a_batch(variant) -> None:
    scorer = scorer_of(variant)
    memories = memories_of(scorer)
    users = list(memories)
    batch = scorer.logits_many(users, [memories[u] for u in users])
    for row in (0, 5, len(users) - 1):
        alone = scorer.logits_many([users[row]], [memories[users[row]]])
        assert torch.equal(alone[0], batch[row])


@pytest.mark.parametrize("mode", ["exact", "two-stage"])
@pytest.mark.parametrize("variant", ["item", "feature"])
def test_equal_scores_are_ordered_by_item_id(variant, mode) -> None:
    # The vocabulary lists the ids out of order, so index order is not id order.
    items = [f"i{n:02d}" for n in range(40)]
    vocab = Vocab(items[20:] + items[:20])
    torch.manual_seed(3)
    config = ModelConfig(variant=variant, num_users=2, num_items=40, dim=8, slots=4)
    net = build(config)
    group = ["i02", "i07", "i10", "i19", "i25", "i31"]
    with torch.no_grad():  # six items with one embedding score the same for everyone
        for item in group:
            net.item_emb.weight[vocab.index(item)] = net.item_emb.weight[vocab.index("i10")]
    scorer = Scorer.from_network(net, Vocab(["u0", "u1"]), vocab, np.ones(41))
    scorer.prepare(mode)
    logits = scorer.logits_many(["u1"], [scorer.empty_memory()])[0]
    tied = float(logits[vocab.index("i10")])
    assert {float(logits[vocab.index(i)]) for i in group} == {tied}
    # Exclude whatever scores above the group, so the group straddles the cut at k = 3.
    above = frozenset(vocab.raw(n) for n in range(1, 41) if float(logits[n]) > tied)
    [recs] = scorer.score_many(["u1"], [scorer.empty_memory()], [above], 3, mode, 40)
    assert [r.item_id for r in recs] == group[:3]


def test_popular_fallback_orders_equal_counts_by_item_id() -> None:
    items = ["c", "a", "d", "b"]
    config = ModelConfig(variant="item", num_users=1, num_items=4, dim=4)
    popularity = np.array([0.0, 1.0, 2.0, 2.0, 1.0])  # a and d twice, c and b once
    scorer = Scorer.from_network(build(config), Vocab(["u"]), Vocab(items), popularity)
    assert [r.item_id for r in scorer.popular(4, ())] == ["a", "d", "b", "c"]
