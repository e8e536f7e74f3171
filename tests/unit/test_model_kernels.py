"""Each RUM equation of MODEL.md against numbers worked out by hand (and the known mistakes)."""

from __future__ import annotations

import math

import numpy as np
import torch

from model import kernels
from model.network import FeatureRUM, ItemRUM, ModelConfig


def t(x: object) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def test_masked_softmax_gives_masked_slots_no_weight_and_empty_rows_zero() -> None:
    z = kernels.masked_softmax(
        t([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]), torch.tensor([[1, 1, 0], [0, 0, 0]]).bool()
    )
    e = math.exp(1.0)
    np.testing.assert_allclose(z[0].numpy(), [1 / (1 + e), e / (1 + e), 0.0], rtol=1e-6)
    np.testing.assert_allclose(z[1].numpy(), [0.0, 0.0, 0.0])


def test_item_read_by_hand() -> None:
    # Memory m1 = (1, 0), m2 = (0, 1); candidate q = (2, 0); β = 1.
    # w = (2, 0); z = (e²/(e²+1), 1/(e²+1)); p^m = z1 m1 + z2 m2.
    mem = t([[[1.0, 0.0], [0.0, 1.0]]])
    q = t([[[2.0, 0.0]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    z1 = math.exp(2) / (math.exp(2) + 1)
    w, z = kernels.item_attention(q, mem, mask, beta=1.0)
    np.testing.assert_allclose(w[0, 0].numpy(), [2.0, 0.0])
    np.testing.assert_allclose(z[0, 0].numpy(), [z1, 1 - z1], rtol=1e-6)
    read = kernels.item_read(q, mem, mask, beta=1.0)
    np.testing.assert_allclose(read[0, 0].numpy(), [z1, 1 - z1], rtol=1e-6)
    # MERGE + PREDICT: (p + α p^m)ᵀ q with p = (0.5, 1), α = 0.2 -> 2 (0.5 + 0.2 z1)
    logit = kernels.item_logits(t([[0.5, 1.0]]), q, mem, mask, alpha=0.2, beta=1.0)
    assert math.isclose(float(logit[0, 0]), 2 * (0.5 + 0.2 * z1), rel_tol=1e-6)


def test_item_attention_is_not_a_softmax_over_a_size_one_axis() -> None:
    # Mistake: softmax over an axis of size 1 makes every weight 1 (mean pooling in disguise).
    mem = t([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    q = t([[[3.0, 0.0], [0.0, 1.0]]])
    _, z = kernels.item_attention(q, mem, torch.ones(1, 3, dtype=torch.bool), beta=1.0)
    np.testing.assert_allclose(z.sum(-1).numpy(), [[1.0, 1.0]], rtol=1e-6)
    assert float(z.max()) < 1.0
    assert not torch.allclose(z[0, 0], z[0, 1])  # weights depend on the candidate (query)


def test_item_read_sums_weighted_slots_and_masks_empty_ones() -> None:
    # Mistake: averaging instead of summing shrinks the read (and α) by K.
    mem = t([[[1.0, 2.0], [0.0, 0.0]]])  # one occupied slot, one empty
    mask = torch.tensor([[True, False]])
    read = kernels.item_read(t([[[0.3, -0.7]]]), mem, mask, beta=1.0)
    np.testing.assert_allclose(read[0, 0].numpy(), [1.0, 2.0], rtol=1e-6)  # mean would give half
    same = t([[[1.0, 2.0], [1.0, 2.0]]])
    read = kernels.item_read(t([[[0.3, -0.7]]]), same, torch.ones(1, 2, dtype=torch.bool), 1.0)
    np.testing.assert_allclose(read[0, 0].numpy(), [1.0, 2.0], rtol=1e-6)


def test_empty_item_memory_reads_zero() -> None:
    logit = kernels.item_logits(
        t([[1.0, 2.0]]), t([[[3.0, 1.0]]]), t([[[9.0, 9.0]]]), torch.tensor([[False]]), 0.5, 1.0
    )
    assert math.isclose(float(logit[0, 0]), 5.0, rel_tol=1e-6)  # p·q only


def test_feature_attention_and_read_by_hand() -> None:
    # F = {(1,0), (0,1)}, q = (1, 2), β = 2: z = softmax(2, 4) over the two features.
    z = kernels.feature_attention(t([1.0, 2.0]), t([[1.0, 0.0], [0.0, 1.0]]), beta=2.0)
    z0 = math.exp(2) / (math.exp(2) + math.exp(4))
    np.testing.assert_allclose(z.numpy(), [z0, 1 - z0], rtol=1e-6)
    memory = t([[[1.0, 0.0], [0.0, 3.0]]])
    read = kernels.feature_read(z[None, None, :], memory)
    np.testing.assert_allclose(read[0, 0].numpy(), [z0, 3 * (1 - z0)], rtol=1e-6)


def test_feature_write_erase_then_add_by_hand() -> None:
    # D = 1, K = 2. q = 1, E = 2, b_e = 0, A = 1, b_a = 0.5; z_j = (0.25, 0.75).
    erase, add = kernels.erase_add(t([[1.0]]), t([[2.0]]), t([0.0]), t([[1.0]]), t([0.5]))
    e = 1 / (1 + math.exp(-2.0))
    a = math.tanh(1.5)
    assert math.isclose(float(erase), e, rel_tol=1e-6)
    assert math.isclose(float(add), a, rel_tol=1e-6)
    memory = t([[[4.0], [-2.0]]])
    new = kernels.feature_write(memory, t([[0.25, 0.75]]), erase, add)
    expected = [4.0 * (1 - 0.25 * e) + 0.25 * a, -2.0 * (1 - 0.75 * e) + 0.75 * a]
    np.testing.assert_allclose(new[0, :, 0].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(memory[0, :, 0].numpy(), [4.0, -2.0])  # input untouched


def test_full_catalogue_logits_equal_candidate_logits() -> None:
    torch.manual_seed(0)
    for variant in ("item", "feature"):
        cfg = ModelConfig(
            variant=variant, num_users=3, num_items=7, dim=4, slots=3, alpha=0.3, beta=1.5
        )
        net = ItemRUM(cfg) if variant == "item" else FeatureRUM(cfg)
        users = torch.tensor([1, 2, 0])
        cands = torch.arange(1, 8).repeat(3, 1)  # [3, 7]
        if isinstance(net, ItemRUM):
            window = torch.tensor([[0, 2, 5], [1, 3, 4], [0, 0, 0]])
            full = net.logits_all(users, window)[:, 1:]
            part = net.logits(users, window, cands)
        else:
            memory = torch.randn(3, 3, 4)
            full = net.logits_all(users, memory)[:, 1:]
            part = net.logits(users, memory, cands)
        torch.testing.assert_close(full, part, rtol=1e-5, atol=1e-6)


def test_numpy_candidate_kernels_equal_the_torch_kernels() -> None:
    rng = np.random.default_rng(3)
    b, c, k, d, n = 4, 6, 3, 5, 9
    q_all = rng.standard_normal((n, d)).astype(np.float32)
    cands = rng.integers(0, n, (b, c))
    p = rng.standard_normal((b, d)).astype(np.float32)
    # Item level: rows with 0, 1 and 3 occupied slots.
    mem_q = rng.standard_normal((b, k, d)).astype(np.float32)
    mask = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1]], dtype=bool)
    got = kernels.item_candidate_logits_np(p, mem_q, mask, q_all, cands, 0.3, 1.7)
    want = kernels.item_logits(
        t(p), t(q_all[cands]), t(mem_q), torch.from_numpy(mask), alpha=0.3, beta=1.7
    )
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    # Feature level.
    z_all = kernels.feature_attention(t(q_all), t(rng.standard_normal((k, d))), 1.0).numpy()
    memory = rng.standard_normal((b, k, d)).astype(np.float32)
    rows = np.concatenate([p[:, None, :], 0.4 * memory], axis=1)
    z1_all = np.concatenate([np.ones((n, 1), np.float32), z_all], axis=1)
    got = kernels.feature_candidate_logits_np(rows, q_all, z1_all, cands)
    want = kernels.feature_logits(t(p), t(q_all[cands]), t(z_all[cands]), t(memory), alpha=0.4)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


def test_top_k_rows_best_first_with_ties_to_the_lower_column() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.9, -np.inf], [3.0, 2.0, 1.0, 0.0, 4.0]])
    np.testing.assert_array_equal(kernels.top_k_rows_np(scores, 3), [[1, 3, 2], [4, 0, 1]])
    np.testing.assert_array_equal(kernels.top_k_rows_np(scores, 9)[0], [1, 3, 2, 0, 4])
