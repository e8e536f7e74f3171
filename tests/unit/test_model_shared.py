"""The same checks over both RUM variants (river's shared-checks habit)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from model import evaluate as ev
from model.artifact import ArtifactError, save_artifact
from model.network import FeatureRUM, ItemRUM
from model.serving import FeatureMemory, Scorer
from model.splits import Case, loo_split
from model.training import TrainConfig, TrainResult, train
from tests.unit.model_toys import chain_log

VARIANTS = ["item", "feature"]


def quick_config(variant: str, **overrides: object) -> TrainConfig:
    base = dict(
        variant=variant,
        dim=8,
        slots=3,
        epochs=3,
        batch_size=16,
        lr=0.01,
        negatives=2,
        max_len=4,
        seed=7,
        progress=False,
    )
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def fit(variant: str, **overrides: object) -> TrainResult:
    split = loo_split(chain_log())
    return train(split.fit, quick_config(variant, **overrides), None, log=lambda _: None)


def scorer_of(result: TrainResult) -> Scorer:
    return Scorer.from_network(result.net, result.users, result.items, result.popularity)


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_seed_same_model_and_other_seed_differs(variant: str) -> None:
    a, b = fit(variant), fit(variant)
    for name, tensor in a.net.state_dict().items():
        assert torch.equal(tensor, b.net.state_dict()[name]), name
    c = fit(variant, seed=8)
    assert not torch.equal(a.net.item_emb.weight, c.net.item_emb.weight)


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_round_trip_gives_identical_scores(variant: str, tmp_path: Path) -> None:
    result = fit(variant)
    version = save_artifact(
        tmp_path / "m", result.net, result.users, result.items, result.popularity, {}, {}
    )
    loaded = Scorer.load(tmp_path / "m")
    assert loaded.version == version and loaded.variant == variant
    here = scorer_of(result)
    users = ["u0", "u3", "nobody"]
    memories = [here.memory_from_history(h) for h in (["1", "2"], ["5", "6", "7", "8"], [])]
    assert torch.equal(here.logits_many(users, memories), loaded.logits_many(users, memories))
    # Saving again replaces the directory atomically and yields the same version.
    assert (
        save_artifact(
            tmp_path / "m", result.net, result.users, result.items, result.popularity, {}, {}
        )
        == version
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_inputs_are_not_mutated(variant: str) -> None:
    split = loo_split(chain_log())
    fit_items = split.fit.item_ids.copy()
    result = train(split.fit, quick_config(variant), None, log=lambda _: None)
    assert np.array_equal(split.fit.item_ids, fit_items)
    scorer = scorer_of(result)
    memory = scorer.memory_from_history(["1", "2", "3"])
    before = copy.deepcopy(memory)
    after = scorer.write_one(memory, "4")
    assert memory == before and after != memory
    exclude = [{"1", "2"}]
    scorer.score_many(["u1"], [memory], exclude, k=3)
    assert exclude == [{"1", "2"}] and memory == before
    if isinstance(memory, FeatureMemory):
        with pytest.raises(ValueError):
            memory.slots[0, 0] = 1.0  # the array is read-only


def _training_time_logits(result: TrainResult, user: str, history: list[str]) -> torch.Tensor:
    """Logits over all items from the network, with the memory built as training builds it."""
    net = result.net
    u = torch.tensor([result.users.index(user)])
    items = torch.from_numpy(result.items.indices(history))
    with torch.no_grad():
        if isinstance(net, ItemRUM):
            k = net.config.slots
            window = torch.zeros(1, k, dtype=torch.long)
            last = items[-k:]
            window[0, k - len(last) :] = last  # training windows are left-padded
            return net.logits_all(u, window)[0, 1:]
        assert isinstance(net, FeatureRUM)
        memory = net.initial_memory(1)
        for item in items:
            memory = net.write(memory, item[None], torch.tensor([True]))
        return net.logits_all(u, memory)[0, 1:]


@pytest.mark.parametrize("variant", VARIANTS)
def test_serving_scores_equal_training_scores(variant: str) -> None:
    result = fit(variant)
    scorer = scorer_of(result)
    for user, history in [("u0", ["3", "4", "5", "6", "7"]), ("u5", ["9"]), ("u2", [])]:
        memory = scorer.memory_from_history(history)
        serving = scorer.logits_many([user], [memory])[0, 1:]
        torch.testing.assert_close(
            serving, _training_time_logits(result, user, history), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("loss", ["bce", "sampled-softmax", "softmax"])
def test_overfits_a_toy_log_to_hit_rate_at_one(variant: str, loss: str) -> None:
    # The training loop can drive the loss down far enough to rank every user's last
    # (trained-on) item first among all items not seen before it, with every loss.
    log = chain_log(users=8, items=12, length=4)
    result = train(
        log,
        quick_config(variant, dim=16, epochs=60, lr=0.05, negatives=4, batch_size=8, loss=loss),
        None,
        log=lambda _: None,
    )
    cases = []
    for user in sorted(set(log.user_ids)):
        items = list(log.item_ids[log.user_ids == user])
        cases.append(Case(user, tuple(items[:-1]), (items[-1],)))
    assert ev.evaluate_single(scorer_of(result), cases, ks=(1,))["hr@1"] == 1.0


def test_erase_and_add_are_used_and_learn() -> None:
    # Mistake: erase/add parameters declared but never used.
    result = fit("feature", epochs=1)
    net = result.net
    assert isinstance(net, FeatureRUM)
    memory = net.initial_memory(2)
    written = net.write(memory, torch.tensor([1, 2]), torch.tensor([True, True]))
    assert not torch.allclose(written, memory)
    logits = net.logits(torch.tensor([1, 2]), written, torch.tensor([[3], [4]]))
    logits.sum().backward()
    for param in (
        net.erase.weight,
        net.erase.bias,
        net.add.weight,
        net.add.bias,
        net.memory0,
        net.features,
    ):
        assert param.grad is not None and float(param.grad.abs().sum()) > 0


def test_padding_index_is_not_a_real_item() -> None:
    # Mistake: padding with id 0 where 0 is a real item. Here the raw item "0" exists.
    result = fit("item")
    assert result.items.index("0") >= 1
    net = result.net
    assert isinstance(net, ItemRUM)
    window = torch.tensor([[0, 0, result.items.index("3")]])
    before = net.logits_all(torch.tensor([1]), window)
    with torch.no_grad():
        net.item_emb.weight[0] = 100.0  # padding row: must not matter
    after = net.logits_all(torch.tensor([1]), window)
    torch.testing.assert_close(before[:, 1:], after[:, 1:])


@pytest.mark.parametrize("variant", VARIANTS)
def test_serving_interface(variant: str) -> None:
    scorer = scorer_of(fit(variant))
    assert scorer.is_empty(scorer.empty_memory())
    assert scorer.write_one(scorer.empty_memory(), "no-such-item") == scorer.empty_memory()
    memory = scorer.memory_from_history(["1", "no-such-item", "2"])
    assert not scorer.is_empty(memory)
    assert scorer.decode_memory(scorer.encode_memory(memory)) == memory
    with pytest.raises(ValueError):
        scorer.decode_memory(b"short" if variant == "feature" else ["a"] * (scorer.slots + 1))
    recs = scorer.score_many(
        ["u0", "stranger", "stranger"],
        [memory, memory, scorer.empty_memory()],
        [{"3"}, set(), {"1"}],
        k=4,
    )
    assert [len(r) for r in recs] == [4, 4, 4]
    assert "3" not in {r.item_id for r in recs[0]}
    assert recs[2] == scorer.popular(4, {"1"}) and all(r.because == () for r in recs[2])
    assert all(r.because for r in recs[0])
    if variant == "item":
        assert {reason.item_id for reason in recs[0][0].because} == {"1", "2"}
        assert abs(sum(reason.weight for reason in recs[0][0].because) - 1.0) < 1e-5
    else:
        assert all(reason.item_id.startswith("slot:") for reason in recs[0][0].because)
    scores = [r.score for r in recs[0]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    # Two-stage with every item as a candidate is the exact ranking.
    two = scorer.score_many(
        ["u0"], [memory], [{"3"}], k=4, mode="two-stage", candidates=scorer.num_items - 1
    )
    assert [r.item_id for r in two[0]] == [r.item_id for r in recs[0]]


def test_loading_a_broken_artifact_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        Scorer.load(tmp_path / "missing")
    result = fit("item", epochs=1)
    save_artifact(tmp_path / "m", result.net, result.users, result.items, result.popularity, {}, {})
    (tmp_path / "m" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="safetensors"):
        Scorer.load(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text('{"format_version": 99}')
    with pytest.raises(ArtifactError, match="format_version"):
        Scorer.load(tmp_path / "m")


def test_prepare_computes_the_retrieval_basis_up_front_and_changes_no_score() -> None:
    scorer = scorer_of(fit("feature"))
    memory = scorer.memory_from_history(["1", "2"])
    assert scorer._basis is None  # computed on first use otherwise
    scorer.prepare("exact")
    assert scorer._basis is None
    scorer.prepare("two-stage")
    assert scorer._basis is not None
    after = scorer.score_many(["u0"], [memory], [set()], k=3, mode="two-stage", candidates=4)
    fresh = scorer_of(fit("feature"))
    before = fresh.score_many(["u0"], [memory], [set()], k=3, mode="two-stage", candidates=4)
    assert after == before
