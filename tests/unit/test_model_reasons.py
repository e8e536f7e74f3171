"""Feature-level explanations name the purchases a score rests on (issue 15: 3)."""

from __future__ import annotations

import numpy as np
import torch

from model import kernels
from model.data import Vocab
from model.network import ModelConfig
from model.serving import FEATURE_REASONS, FeatureMemory, Scorer
from tests.unit.test_model_shared import fit, scorer_of


def _hand_made(add_b: list[float]) -> Scorer:
    """Four items, two slots, D = 2, no erase. Item "a" writes slot 0 only, "b" slot 1
    only (β large: one-hot attention); "c" and "d" read slot 1 and 0 respectively. Each
    add vector a = tanh(b_a) (add.weight 0) points where ``add_b`` says."""
    q = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    config = ModelConfig("feature", num_users=1, num_items=4, dim=2, slots=2, alpha=1.0, beta=50.0)
    weights = {
        "item_emb.weight": q,
        "user_emb.weight": torch.zeros(2, 2),
        "features": torch.eye(2),
        "erase.weight": torch.zeros(2, 2),
        "erase.bias": torch.full((2,), -30.0),  # σ(-30): nothing erased
        "add.weight": torch.zeros(2, 2),
        "add.bias": torch.tensor(add_b),
        "memory0": torch.zeros(2, 2),
    }
    popularity = np.array([0.0, 1.0, 1.0, 1.0, 1.0])
    return Scorer(config, "hand", Vocab(["u"]), Vocab("abcd"), weights, popularity)


def test_because_names_the_purchase_that_wrote_the_slot_the_item_reads() -> None:
    scorer = _hand_made([1.0, 1.0])  # both purchases add (0.76, 0.76) to their own slot
    history = ["a", "b"]
    memory = scorer.memory_from_history(history)
    [recs] = scorer.score_many(["u"], [memory], [set(history)], k=2, histories=[history])
    because = {rec.item_id: [r.item_id for r in rec.because] for rec in recs}
    assert because["c"][0] == "b"  # c reads slot 1, which only b wrote
    assert because["d"][0] == "a"
    assert all(len(rec.because) <= FEATURE_REASONS for rec in recs)
    # Without histories the old explanation (the item's memory slots) is kept.
    [plain] = scorer.score_many(["u"], [memory], [set(history)], k=2)
    assert all(r.item_id.startswith("slot:") for rec in plain for r in rec.because)


def test_a_later_erase_moves_the_credit_to_the_later_purchase() -> None:
    scorer = _hand_made([1.0, 1.0])
    # Everything erased: "a" then "a" again wipes the first write, the second keeps it.
    scorer._erase_np[:] = 1.0
    parts = kernels.purchase_contributions(
        scorer._z_np[[1, 1]],
        scorer._erase_np[[1, 1]],
        scorer._add_np[[1, 1]],
        scorer._z_np[[4]],
        scorer._q_np[[4]],
    )  # [2, 1]
    assert abs(parts[0, 0]) < 1e-6 and parts[1, 0] > 0.5


def test_parts_sum_to_the_memory_term_of_the_logit() -> None:
    scorer = scorer_of(fit("feature"))
    history = ["1", "2", "3", "1", "5"]
    index = scorer.items.indices(history)
    top = scorer.items.indices(["4", "6", "7"])
    parts = kernels.purchase_contributions(
        scorer._z_np[index],
        scorer._erase_np[index],
        scorer._add_np[index],
        scorer._z_np[top],
        scorer._q_np[top],
    )  # [T, C]
    written = scorer.memory_from_history(history)
    assert isinstance(written, FeatureMemory)
    memory = written.slots  # [K, D]
    kept = np.prod(1.0 - scorer._z_np[index][:, :, None] * scorer._erase_np[index][:, None, :], 0)
    initial = scorer._memory0 * kept  # m⁰'s part, decayed by every erase
    read = np.einsum("ck,kd,cd->c", scorer._z_np[top], memory - initial, scorer._q_np[top])
    np.testing.assert_allclose(parts.sum(axis=0), read, rtol=1e-4, atol=1e-5)


def test_feature_reasons_are_purchases_with_shares_and_ignore_unknown_items() -> None:
    scorer = scorer_of(fit("feature"))
    history = ["1", "no-such-item", "2", "3"]
    memory = scorer.memory_from_history(history)
    [recs] = scorer.score_many(["u0"], [memory], [set(history)], k=4, histories=[history])
    for rec in recs:
        names = [r.item_id for r in rec.because]
        assert names and set(names) <= {"1", "2", "3"} and len(names) == len(set(names))
        weights = [r.weight for r in rec.because]
        assert weights == sorted(weights, reverse=True) and sum(map(abs, weights)) <= 1 + 1e-6
    # Two-stage and exact give the same reasons for the same items.
    [two] = scorer.score_many(
        ["u0"],
        [memory],
        [set(history)],
        k=4,
        mode="two-stage",
        candidates=8,
        histories=[history],
    )
    by_item = {rec.item_id: rec.because for rec in recs}
    assert all(rec.because == by_item[rec.item_id] for rec in two if rec.item_id in by_item)
