"""The RUM equations as pure tensor functions, shared by training, evaluation and serving.

Every function here is one line of MODEL.md; nothing holds state. Training
calls them with gradients, the evaluator and :mod:`model.serving` call them
under ``torch.no_grad``, so the same history gives the same score everywhere.

Shapes: B users (or training steps), C candidate items, N items (the full
catalogue including the padding row 0), K memory slots, D embedding size.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to ``mask``; rows with no True give all zeros.

    Masked entries take no weight at all (not a tiny one), so an empty slot of
    the item-level memory never contributes to READ.
    """
    neg_inf = torch.finfo(logits.dtype).min
    filled = logits.masked_fill(~mask, neg_inf)
    top = filled.max(dim=-1, keepdim=True).values  # [..., 1]
    exp = torch.exp(filled - top) * mask  # [..., K]
    total = exp.sum(dim=-1, keepdim=True)  # [..., 1]
    return exp / total.clamp_min(torch.finfo(logits.dtype).tiny)


# --- batch-invariant products -------------------------------------------------------

ROW_BLOCK = 16  # rows of every scoring product are padded to a multiple of this


def pad_rows(x: torch.Tensor) -> torch.Tensor:
    """x [B, ...] with zero rows appended up to a multiple of :data:`ROW_BLOCK` (at least one).

    BLAS kernels choose their code path by the number of rows of a product: with MKL
    on the reference CPU a product of 1-3 rows (up to 11 with two threads) rounds
    differently from the same row inside a larger product, so a user's scores would
    depend in their last bits on who shared the micro-batch. From 16 rows on, every
    row measured came out bit-identical whatever the other rows, its position and the
    thread count, so padding keeps a user's scores a function of that user alone.
    ``tests/unit/test_model_determinism.py`` checks the property on this machine.
    """
    rows = x.shape[0]
    padded = max(1, -(-rows // ROW_BLOCK)) * ROW_BLOCK
    if padded == rows:
        return x
    return torch.cat([x, x.new_zeros((padded - rows, *x.shape[1:]))])


# --- item-level -----------------------------------------------------------------


def item_attention(
    cand_q: torch.Tensor, mem_q: torch.Tensor, mem_mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """w_k = q_iᵀ m_k and z_k = softmax over occupied slots of β w_k.

    cand_q [B, C, D], mem_q [B, K, D], mem_mask [B, K] -> (w [B, C, K], z [B, C, K]).
    """
    w = torch.einsum("bcd,bkd->bck", cand_q, mem_q)  # [B, C, K]
    z = masked_softmax(beta * w, mem_mask[:, None, :].expand_as(w))  # [B, C, K]
    return w, z


def item_read(
    cand_q: torch.Tensor, mem_q: torch.Tensor, mem_mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """p^m = Σ_k z_k m_k (a sum, not a mean), per candidate: [B, C, D]."""
    _, z = item_attention(cand_q, mem_q, mem_mask, beta)
    return torch.einsum("bck,bkd->bcd", z, mem_q)  # [B, C, D]


def item_logits(
    p: torch.Tensor,
    cand_q: torch.Tensor,
    mem_q: torch.Tensor,
    mem_mask: torch.Tensor,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """Logit (p*_u + α p^m(i))ᵀ q_i for candidates: p [B, D], cand_q [B, C, D] -> [B, C].

    Uses (Σ_k z_k m_k)ᵀ q_i = Σ_k z_k w_k, so the read vector is never materialised.
    """
    w, z = item_attention(cand_q, mem_q, mem_mask, beta)  # [B, C, K] each
    intrinsic = torch.einsum("bd,bcd->bc", p, cand_q)  # [B, C]
    return intrinsic + alpha * (z * w).sum(dim=-1)


def item_logits_all(
    p: torch.Tensor,
    q_all: torch.Tensor,
    mem_q: torch.Tensor,
    mem_mask: torch.Tensor,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """Logits of every item for B users: p [B, D], q_all [N, D], mem_q [B, K, D] -> [B, N].

    Same function as :func:`item_logits`, laid out for speed: the slot axis stays in
    the middle ([B, K, N]) and torch's fused softmax runs over it. A user with no
    stored item gets one "occupied" all-zero slot, whose w is 0, so the read is 0.
    """
    empty = ~mem_mask.any(dim=1)  # [B]
    mask = mem_mask.clone()
    mask[empty, 0] = True
    mem = mem_q * mask[:, :, None]  # [B, K, D]; zero rows in unoccupied slots
    w = mem @ q_all.T  # [B, K, N]
    z = torch.softmax((beta * w).masked_fill(~mask[:, :, None], -math.inf), dim=1)  # [B, K, N]
    return p @ q_all.T + alpha * (z * w).sum(dim=1)  # [B, N]


# --- feature-level --------------------------------------------------------------


def feature_attention(q: torch.Tensor, features: torch.Tensor, beta: float) -> torch.Tensor:
    """z_ik = softmax over the K features of β q_iᵀ f_k: q [..., D], features [K, D] -> [..., K]."""
    return torch.softmax(beta * (q @ features.T), dim=-1)


def feature_read(z: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """p^m = Σ_k z_ik m_k: z [B, C, K], memory [B, K, D] -> [B, C, D]."""
    return torch.einsum("bck,bkd->bcd", z, memory)


def erase_add(
    q: torch.Tensor,
    erase_w: torch.Tensor,
    erase_b: torch.Tensor,
    add_w: torch.Tensor,
    add_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """e = σ(E q + b_e), a = tanh(A q + b_a): q [..., D] -> ([..., D], [..., D])."""
    erase = torch.sigmoid(q @ erase_w.T + erase_b)
    add = torch.tanh(q @ add_w.T + add_b)
    return erase, add


def feature_write(
    memory: torch.Tensor, z_j: torch.Tensor, erase: torch.Tensor, add: torch.Tensor
) -> torch.Tensor:
    """WRITE of item j: m_k ← m_k ⊙ (1 − z_jk e), then m_k ← m_k + z_jk a.

    memory [B, K, D], z_j [B, K], erase [B, D], add [B, D] -> new memory [B, K, D].
    """
    gate = z_j[:, :, None]  # [B, K, 1]
    return memory * (1.0 - gate * erase[:, None, :]) + gate * add[:, None, :]


def feature_logits(
    p: torch.Tensor, cand_q: torch.Tensor, cand_z: torch.Tensor, memory: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Logits of candidates: p [B, D], cand_q [B, C, D], cand_z [B, C, K], memory [B, K, D].

    Returns [B, C].
    """
    user = p[:, None, :] + alpha * feature_read(cand_z, memory)  # [B, C, D]
    return (user * cand_q).sum(dim=-1)


def feature_logits_all(
    p: torch.Tensor, q_all: torch.Tensor, z_all: torch.Tensor, memory: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Logits of every item: p [B, D], q_all [N, D], z_all [N, K], memory [B, K, D] -> [B, N].

    s_bn = p_b·q_n + α Σ_k z_nk (m_bk·q_n); see :func:`feature_item_table`.
    """
    return feature_user_rows(p, memory, alpha) @ feature_item_table(q_all, z_all).T


def feature_item_table(q_all: torch.Tensor, z_all: torch.Tensor) -> torch.Tensor:
    """Per item n the row [q_n, z_n1 q_n, ..., z_nK q_n]: [N, D + K·D], precomputed per version.

    Σ_k z_nk (m_bk·q_n) = Σ_{k,d} m_bkd (z_nk q_nd), so exact scoring of all items
    is a single [B, D + K·D] x [D + K·D, N] product: 2·N·(K+1)·D flops per user.
    """
    n = q_all.shape[0]
    outer = (z_all[:, :, None] * q_all[:, None, :]).reshape(n, -1)  # [N, K·D]
    return torch.cat([q_all, outer], dim=1)  # [N, D + K·D]


def feature_user_rows(p: torch.Tensor, memory: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per user the row [p*_u, α m_1, ..., α m_K]: p [B, D], memory [B, K, D] -> [B, D + K·D]."""
    return torch.cat([p, alpha * memory.reshape(memory.shape[0], -1)], dim=1)


# --- serving: candidate re-rank in numpy --------------------------------------------
#
# The exact re-rank of two-stage scoring gathers C candidate rows per user; numpy's
# ``take`` and batched ``matmul`` do that about 4x faster than torch's indexing and
# einsum at serving sizes (C = 200, K = 20, D = 64). Same equations, regrouped; the
# unit tests hold them equal to the torch kernels above.


def item_candidate_logits_np(
    p: np.ndarray,
    mem_q: np.ndarray,
    mem_mask: np.ndarray,
    q_all: np.ndarray,
    cands: np.ndarray,
    alpha: float,
    beta: float,
) -> np.ndarray:
    """:func:`item_logits` for candidate rows: p [B, D], mem_q [B, K, D], mem_mask [B, K],
    q_all [N, D], cands [B, C] -> [B, C]."""
    cand_q = np.take(q_all, cands, axis=0)  # [B, C, D]
    w = np.matmul(cand_q, mem_q.transpose(0, 2, 1))  # [B, C, K]
    mask = mem_mask[:, None, :]  # [B, 1, K]
    scaled = np.where(mask, beta * w, -np.inf)  # [B, C, K]
    top = scaled.max(axis=-1, keepdims=True)  # [B, C, 1]; -inf where no slot is occupied
    top = np.where(np.isfinite(top), top, 0.0)
    exp = np.exp(scaled - top) * mask  # [B, C, K]
    z = exp / np.maximum(exp.sum(axis=-1, keepdims=True), np.finfo(np.float32).tiny)
    intrinsic = np.matmul(cand_q, p[:, :, None])[:, :, 0]  # [B, C]
    return (intrinsic + alpha * (z * w).sum(axis=-1)).astype(np.float32, copy=False)


def feature_candidate_logits_np(
    rows: np.ndarray, q_all: np.ndarray, z1_all: np.ndarray, cands: np.ndarray
) -> np.ndarray:
    """:func:`feature_logits` for candidate rows, regrouped as Σ_j z1_cj (rows_bj · q_c).

    rows [B, 1+K, D] = [p*_u, α m_1, ..., α m_K]; q_all [N, D]; z1_all [N, 1+K] =
    [1, z_n1, ..., z_nK]; cands [B, C] -> [B, C]. The j = 0 term is p*_uᵀ q_c, the
    others α z_ck (m_kᵀ q_c).
    """
    cand_q = np.take(q_all, cands, axis=0)  # [B, C, D]
    dots = np.matmul(cand_q, rows.transpose(0, 2, 1))  # [B, C, 1+K]
    return np.einsum("bcj,bcj->bc", dots, np.take(z1_all, cands, axis=0))  # [B, C]


def top_k_rows_np(scores: np.ndarray, k: int, tie_key: np.ndarray | None = None) -> np.ndarray:
    """Column indices of each row's k largest scores, best first: [B, C] -> [B, k].

    Equal scores are ordered by ``tie_key`` [B, C] (smaller first; default: the
    column), also where a tie straddles the k-th place, so the result is a
    function of the row alone.
    """
    count = scores.shape[1]
    k = min(k, count)
    key = np.broadcast_to(np.arange(count), scores.shape) if tie_key is None else tie_key
    if k < count:
        picked = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # [B, k], unordered
        kth = np.take_along_axis(scores, picked, axis=1).min(axis=1, keepdims=True)  # [B, 1]
        for row in np.flatnonzero((scores >= kth).sum(axis=1) > k):
            # A tie at the cut: argpartition chose among the tied columns arbitrarily.
            picked[row] = np.lexsort((key[row], -scores[row]))[:k]
    else:
        picked = np.broadcast_to(np.arange(count), scores.shape).copy()
    order = np.lexsort(
        (np.take_along_axis(key, picked, axis=1), -np.take_along_axis(scores, picked, axis=1)),
        axis=1,
    )
    return np.take_along_axis(picked, order, axis=1)


def top_k_by_score_then_key(
    logits: torch.Tensor, k: int, tie_key: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns of each row of logits [B, N] as (values [B, k], columns [B, k]).

    Ordered by score, then by ``tie_key`` [N] (smaller first). ``torch.topk`` does the
    selection over the whole catalogue; rows where equal scores straddle the k-th
    place (rare with real embeddings) are re-selected exactly, so which of the tied
    items is shown never depends on the kernel's internal order.
    """
    values, columns = torch.topk(logits, k, dim=1)  # [B, k] each
    top_values, top_columns = values.numpy().copy(), columns.numpy().copy()
    kth = values[:, -1:]  # [B, 1]
    for row in torch.nonzero((logits >= kth).sum(dim=1) > k).flatten().tolist():
        tied = torch.nonzero(logits[row] >= kth[row]).flatten().numpy()  # [>k]
        row_values = logits[row, tied].numpy()
        best = np.lexsort((tie_key[tied], -row_values))[:k]
        top_values[row], top_columns[row] = row_values[best], tied[best]
    order = np.lexsort((tie_key[top_columns], -top_values), axis=1)  # [B, k]
    return np.take_along_axis(top_values, order, axis=1), np.take_along_axis(
        top_columns, order, axis=1
    )
