"""Ranking metrics. Ranks are 1-based; ``inf`` means "not rankable" (unknown item), a miss.

Ties count against the model: the rank of the true item is 1 + the number of
other candidate items whose score is >= its score.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch


def pessimistic_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """scores [B, N] (excluded items already -inf), targets [B] column indices -> ranks [B] (float).

    A target whose own score is -inf (excluded or padding) gets rank inf.
    """
    true = scores.gather(1, targets[:, None])  # [B, 1]
    at_least = (scores >= true).sum(dim=1) - 1  # [B] others scoring >= true
    ranks = 1.0 + at_least.to(torch.float64)
    return torch.where(torch.isinf(true[:, 0]), torch.full_like(ranks, math.inf), ranks)


def single_target_metrics(ranks: Iterable[float], ks: Sequence[int]) -> dict[str, float]:
    """HR@k, NDCG@k = 1/log2(rank+1), MRR@k = 1/rank for one relevant item per case."""
    r = np.asarray(list(ranks), dtype=np.float64)
    out: dict[str, float] = {}
    n = max(len(r), 1)
    for k in ks:
        hit = r <= k
        out[f"hr@{k}"] = float(hit.sum() / n)
        out[f"ndcg@{k}"] = float((1.0 / np.log2(r[hit] + 1.0)).sum() / n)
        out[f"mrr@{k}"] = float((1.0 / r[hit]).sum() / n)
    out["cases"] = float(len(r))
    return out


def dcg(hits: Sequence[bool]) -> float:
    """Σ over positions i (1-based) of hit_i / log2(i + 1)."""
    return float(sum(1.0 / math.log2(i + 2) for i, h in enumerate(hits) if h))


def ideal_dcg(relevant: int, k: int) -> float:
    """DCG of a perfect top-k list when ``relevant`` items are relevant (not a fixed constant)."""
    return dcg([True] * min(relevant, k))


def set_metrics(top: Sequence[str], relevant: Iterable[str], k: int) -> dict[str, float]:
    """Paper-protocol metrics of one ranked list ``top`` against a set of relevant items."""
    rel = set(relevant)
    hits = [item in rel for item in top[:k]]
    n_hit = sum(hits)
    precision = n_hit / k
    recall = n_hit / len(rel) if rel else 0.0
    f1 = 2 * precision * recall / (precision + recall) if n_hit else 0.0
    ndcg = dcg(hits) / ideal_dcg(len(rel), k) if rel else 0.0
    return {
        f"precision@{k}": precision,
        f"recall@{k}": recall,
        f"f1@{k}": f1,
        f"hr@{k}": float(n_hit > 0),
        f"ndcg@{k}": ndcg,
    }


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {"cases": 0.0}
    out = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    out["cases"] = float(len(rows))
    return out


def topk_metrics(positions: Iterable[int | None], ks: Sequence[int]) -> dict[str, float]:
    """Metrics from the 1-based position of the true item in a shown top list (None = absent)."""
    return single_target_metrics((math.inf if p is None else float(p) for p in positions), ks)
