"""Warm start: vocabulary growth keeps every existing row, the held-out tail, fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.data import Vocab, from_rows
from model.finetune import fine_tune, grow, heldout_tail
from model.network import ModelConfig, build
from model.serving import Scorer
from model.training import TrainConfig
from tests.unit.model_toys import chain_log


def _net(variant: str, users: int = 4, items: int = 6):
    torch.manual_seed(3)
    config = ModelConfig(variant=variant, num_users=users, num_items=items, dim=8, slots=3)  # type: ignore[arg-type]
    return build(config)


@pytest.mark.parametrize("variant", ["item", "feature"])
def test_grow_keeps_existing_rows_and_appends_new_ones(variant: str) -> None:
    net = _net(variant)
    weights = {name: t.clone() for name, t in net.state_dict().items()}
    users = Vocab([f"u{i}" for i in range(4)])
    items = Vocab([str(i) for i in range(6)])
    grown = grow(net.config, weights, users, items, ["u2", "new-u", "u9"], ["5", "x", "y"], seed=1)
    assert (grown.new_users, grown.new_items) == (2, 2)
    assert grown.users.to_list() == [*users.to_list(), "new-u", "u9"]
    assert grown.items.to_list() == [*items.to_list(), "x", "y"]
    assert grown.net.config.num_users == 6 and grown.net.config.num_items == 8
    state = grown.net.state_dict()
    for name, old in weights.items():
        if name in ("user_emb.weight", "item_emb.weight"):
            assert torch.equal(state[name][: old.shape[0]], old), name  # bit for bit
            fresh = state[name][old.shape[0] :]
            assert fresh.shape[0] == 2 and torch.all(fresh.abs().sum(dim=1) > 0), name
            assert torch.all(state[name][0] == 0), name  # padding stays zero
        else:
            assert torch.equal(state[name], old), name
    for name, old in net.state_dict().items():
        assert torch.equal(old, weights[name])  # the input is not mutated


@pytest.mark.parametrize("variant", ["item", "feature"])
def test_grown_model_scores_known_items_as_before(variant: str) -> None:
    net = _net(variant)
    users = Vocab([f"u{i}" for i in range(4)])
    items = Vocab([str(i) for i in range(6)])
    popularity = np.arange(7, dtype=np.float64)
    before = Scorer.from_network(net, users, items, popularity)
    grown = grow(net.config, net.state_dict(), users, items, ["u7"], ["x", "y", "z"])
    after = Scorer.from_network(grown.net, grown.users, grown.items, np.zeros(10))
    history = ["1", "4", "2"]
    old = before.logits_many(["u1"], [before.memory_from_history(history)])
    new = after.logits_many(["u1"], [after.memory_from_history(history)])
    assert torch.allclose(new[:, :7], old, atol=1e-6)  # columns 0..6 are the same items


def test_heldout_tail_holds_out_each_users_last_event() -> None:
    log = from_rows(
        ["a", "b", "a", "c", "a", "b"],
        ["1", "2", "3", "4", "5", "6"],
        ["1", "2", "3", "4", "5", "6"],
    )
    fit, cases = heldout_tail(log)
    assert sorted((c.user_id, c.history, c.targets) for c in cases) == [
        ("a", ("1", "3"), ("5",)),
        ("b", ("2",), ("6",)),
    ]
    assert list(fit.item_ids) == ["1", "2", "3", "4"]  # c has one event: fitted only


@pytest.mark.parametrize("variant", ["item", "feature"])
def test_fine_tune_learns_the_new_items(variant: str) -> None:
    log = chain_log(users=16, items=12, length=8)
    fit, cases = heldout_tail(log)
    # The current model knows nothing of this log: every user and item is new.
    net = _net(variant, users=1, items=1)
    grown = grow(
        net.config, net.state_dict(), Vocab(["old"]), Vocab(["old"]), fit.user_ids, fit.item_ids
    )
    cfg = TrainConfig(epochs=15, lr=0.02, progress=False, batch_size=32, negatives=2)
    before = Scorer.from_network(grown.net, grown.users, grown.items, np.ones(grown.items.size + 1))
    from model.evaluate import evaluate_single

    hr_before = evaluate_single(before, cases, (3,))["hr@3"]
    tuned = fine_tune(grown.net, grown.users, grown.items, fit, cfg, log=lambda _line: None)
    after = Scorer.from_network(tuned.net, grown.users, grown.items, tuned.popularity)
    hr_after = evaluate_single(after, cases, (3,))["hr@3"]
    assert len(tuned.history) == 15
    assert tuned.history[-1]["loss"] < tuned.history[0]["loss"]
    assert hr_after > hr_before
    assert tuned.popularity[grown.items.index("old")] == 0  # counts come from the fitted events
    assert tuned.popularity.sum() == len(fit)
