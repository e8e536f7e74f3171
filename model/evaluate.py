"""The evaluator: one code path for RUM, α = 0 and most-popular, over the three protocols.

Anything with the :class:`Ranker` methods can be evaluated; :class:`model.serving.Scorer`
is one, :class:`PopularityRanker` another. The prequential protocol ranks
through ``score_many`` — the call the stream makes — so a replay through Kafka
reproduces its figures.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Collection, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch
from tqdm import tqdm

from model import metrics
from model.data import PAD, EventLog, Vocab
from model.serving import Memory, Recommendation, id_ranks
from model.splits import Case, Replay, Split

DEFAULT_KS = (5, 10, 20)
PAPER_K = 5


class Ranker(Protocol):
    items: Vocab

    def memory_from_history(self, item_ids: Sequence[str]) -> Any: ...

    def write_one(self, memory: Any, item_id: str) -> Any: ...

    def empty_memory(self) -> Any: ...

    def logits_many(self, user_ids: Sequence[str], memories: Sequence[Any]) -> torch.Tensor: ...

    def score_many(
        self,
        user_ids: Sequence[str],
        memories: Sequence[Any],
        exclude: Sequence[Collection[str]],
        k: int,
        mode: Literal["exact", "two-stage"] = "exact",
        candidates: int = 200,
    ) -> list[list[Recommendation]]: ...


class PopularityRanker:
    """Most-popular baseline with the ranker interface; memories are ignored."""

    def __init__(self, log: EventLog) -> None:
        self.items = Vocab(dict.fromkeys(log.item_ids))
        counts = np.bincount(self.items.indices(log.item_ids), minlength=self.items.size + 1)
        self.counts = counts.astype(np.float64)  # [N+1]
        self.counts[PAD] = 0.0
        logits = torch.from_numpy(np.log(self.counts + 1.0))
        logits[PAD] = -math.inf
        self._logits = logits  # [N+1]

    def empty_memory(self) -> Memory:
        return ()

    def memory_from_history(self, item_ids: Sequence[str]) -> Memory:
        return ()

    def write_one(self, memory: Memory, item_id: str) -> Memory:
        return memory

    def logits_many(self, user_ids: Sequence[str], memories: Sequence[Any]) -> torch.Tensor:
        return self._logits[None, :].repeat(len(user_ids), 1)  # [B, N+1]

    def score_many(
        self,
        user_ids: Sequence[str],
        memories: Sequence[Any],
        exclude: Sequence[Collection[str]],
        k: int,
        mode: Literal["exact", "two-stage"] = "exact",
        candidates: int = 200,
    ) -> list[list[Recommendation]]:
        order = np.lexsort((id_ranks(self.items)[1:], -self.counts[1:])) + 1  # ties: by id
        total = max(self.counts.sum(), 1.0)
        out = []
        for seen in exclude:
            recs: list[Recommendation] = []
            for index in order:
                item = self.items.raw(int(index))
                if item in seen:
                    continue
                recs.append(Recommendation(item, float(self.counts[index] / total), ()))
                if len(recs) == k:
                    break
            out.append(recs)
        return out


def progress_bar(total: int, what: str, progress: bool) -> tqdm[Any]:
    """A bar on stderr for a long evaluation (``rum evaluate``, each validation pass)."""
    return tqdm(
        total=total,
        desc=f"evaluating {what}",
        unit=what,
        disable=not progress,
        leave=False,
        file=sys.stderr,
        mininterval=0.5,
    )


def _masked_logits(ranker: Ranker, cases: Sequence[Case]) -> torch.Tensor:
    """Logits [B, N+1] for cases with each case's history excluded (-inf)."""
    memories = [ranker.memory_from_history(case.history) for case in cases]
    logits = ranker.logits_many([case.user_id for case in cases], memories)
    rows: list[int] = []
    cols: list[int] = []
    for row, case in enumerate(cases):
        index = ranker.items.indices(list(case.history))
        index = index[index != PAD]
        rows.extend([row] * len(index))
        cols.extend(index.tolist())
    logits[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = -math.inf
    return logits


def case_ranks(
    ranker: Ranker, cases: Sequence[Case], batch: int = 256, progress: bool = False
) -> list[float]:
    """Pessimistic rank of each case's single target over all items (inf if unrankable)."""
    ranks: list[float] = []
    with torch.no_grad(), progress_bar(len(cases), "cases", progress) as bar:
        for start in range(0, len(cases), batch):
            chunk = cases[start : start + batch]
            logits = _masked_logits(ranker, chunk)  # [B, N+1]
            targets = torch.from_numpy(ranker.items.indices([c.targets[0] for c in chunk]))
            chunk_ranks = metrics.pessimistic_ranks(logits, targets)  # [B]
            chunk_ranks[targets == PAD] = math.inf  # item never seen in training: a miss
            ranks.extend(chunk_ranks.tolist())
            bar.update(len(chunk))
    return ranks


def evaluate_single(
    ranker: Ranker, cases: Sequence[Case], ks: Sequence[int] = DEFAULT_KS, progress: bool = False
) -> dict[str, float]:
    """Leave-one-out style metrics (one relevant item per case)."""
    return metrics.single_target_metrics(case_ranks(ranker, cases, progress=progress), ks)


def evaluate_sets(
    ranker: Ranker,
    cases: Sequence[Case],
    k: int = PAPER_K,
    batch: int = 256,
    progress: bool = False,
) -> dict[str, float]:
    """Paper protocol: top-k over all items minus training items against the relevant set."""
    rows: list[dict[str, float]] = []
    with torch.no_grad(), progress_bar(len(cases), "cases", progress) as bar:
        for start in range(0, len(cases), batch):
            chunk = cases[start : start + batch]
            logits = _masked_logits(ranker, chunk)
            _, top = torch.topk(logits, k, dim=1)  # [B, k]
            for case, top_row in zip(chunk, top.tolist(), strict=True):
                names = [ranker.items.raw(i) for i in top_row if i != PAD]
                rows.append(metrics.set_metrics(names, case.targets, k))
            bar.update(len(chunk))
    return metrics.mean_metrics(rows)


def evaluate_replay(
    ranker: Ranker,
    replay: Replay,
    ks: Sequence[int] = DEFAULT_KS,
    mode: Literal["exact", "two-stage"] = "exact",
    candidates: int = 200,
    batch: int = 256,
    progress: bool = False,
) -> dict[str, float]:
    """Test-then-train: rank each scored event with ``score_many`` before writing it.

    Events are processed in global order; a batch holds consecutive events of
    distinct users, so batching gives the same result as one event at a time.
    """
    log = replay.log
    scored = replay.scored()  # [E]
    memories: dict[str, Any] = {}
    seen: dict[str, set[str]] = {}
    k_max = max(ks)
    positions: list[int | None] = []

    def apply(user: str, item: str) -> None:
        memory = memories.get(user)
        if memory is None:
            memory = ranker.empty_memory()
        memories[user] = ranker.write_one(memory, item)
        seen.setdefault(user, set()).add(item)

    pending: list[tuple[str, str]] = []
    pending_users: set[str] = set()

    def flush() -> None:
        users = [u for u, _ in pending]
        mems = [memories[u] if u in memories else ranker.empty_memory() for u in users]
        recs = ranker.score_many(
            users, mems, [seen.get(u, set()) for u in users], k_max, mode, candidates
        )
        for (user, item), shown in zip(pending, recs, strict=True):
            ids = [r.item_id for r in shown]
            positions.append(ids.index(item) + 1 if item in ids else None)
            apply(user, item)
        pending.clear()
        pending_users.clear()

    with progress_bar(len(scored), "events", progress) as bar:
        for user, item, is_scored in zip(log.user_ids, log.item_ids, scored, strict=True):
            bar.update()
            if not is_scored:
                apply(user, item)
                continue
            if len(pending) >= batch or user in pending_users:
                flush()
            pending.append((user, item))
            pending_users.add(user)
        if pending:
            flush()
    return metrics.topk_metrics(positions, ks)


def evaluate_part(
    ranker: Ranker,
    part: list[Case] | Replay,
    protocol: str,
    ks: Sequence[int] = DEFAULT_KS,
    mode: Literal["exact", "two-stage"] = "exact",
    progress: bool = False,
) -> dict[str, float]:
    """Metrics of one split part under ``protocol`` (paper test = set metrics at 5)."""
    if isinstance(part, Replay):
        return evaluate_replay(ranker, part, ks, mode, progress=progress)
    if protocol == "paper" and any(len(c.targets) != 1 for c in part):
        return evaluate_sets(ranker, part, progress=progress)
    return evaluate_single(ranker, part, ks, progress=progress)


def evaluate_split_test(
    ranker: Ranker,
    split: Split,
    ks: Sequence[int] = DEFAULT_KS,
    mode: Literal["exact", "two-stage"] = "exact",
    progress: bool = False,
) -> dict[str, float]:
    if split.protocol == "paper":
        assert isinstance(split.test, list)
        return evaluate_sets(ranker, split.test, progress=progress)
    return evaluate_part(ranker, split.test, split.protocol, ks, mode, progress)
