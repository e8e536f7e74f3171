"""Fitting RUM: the paper's sampled-negative binary cross-entropy (or a softmax option),
early stopping on validation NDCG@10.

- Item-level: the memory at step t is the window v_{t-K}..v_{t-1}, so every step
  of every user is an independent sample, shuffled and batched.
- Feature-level: users are batched (bucketed by length, padding masked), the
  memory starts at M_0 and is written step by step; gradients flow through the
  WRITEs over chunks of L steps (truncated BPTT). The memory carried into the
  next chunk is detached, so every training event is used and the memory at
  each step is exactly the one serving would hold for that history.
- Negatives: ``negatives`` per positive, uniform over items the user has not
  interacted with in the fitted events (rejection sampling).
- Losses (``TrainConfig.loss``); the model and its scores are the same for all three:
  ``bce`` (the paper's, the reference): -log σ(s+) - Σ log(1 - σ(s-)) over the
  positive and ``negatives`` sampled negatives; ``sampled-softmax``: the
  cross-entropy of the positive against the same sampled negatives,
  -log(e^{s+} / (e^{s+} + Σ e^{s-})); ``softmax``: the cross-entropy of the
  positive against every item of the catalogue (no sampling; exact all-item
  logits, the ones the evaluator ranks).
- L2: λ times the squared norms of the embedding rows a batch touches (users
  and candidate items; the positives only for ``softmax``) and of the dense
  feature-level parameters.

Model selection reads the validation part only; the test part never reaches
this module.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from model.data import EventLog, Vocab, build_vocabs, sequences
from model.network import FeatureRUM, ItemRUM, ModelConfig, Variant, build

Loss = Literal["bce", "sampled-softmax", "softmax"]
LOSSES: tuple[Loss, ...] = ("bce", "sampled-softmax", "softmax")


@dataclass(frozen=True)
class TrainConfig:
    variant: Variant = "feature"
    dim: int = 64
    slots: int = 20
    alpha: float = 0.2
    beta: float = 1.0
    init_std: float = 0.1
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    l2: float = 0.0
    negatives: int = 1
    loss: Loss = "bce"
    max_len: int = 50
    patience: int = 3
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    net: ItemRUM | FeatureRUM
    users: Vocab
    items: Vocab
    popularity: np.ndarray  # [N+1]
    history: list[dict[str, float]]
    best_epoch: int
    best_valid: dict[str, float]


Validator = Callable[[ItemRUM | FeatureRUM, Vocab, Vocab, np.ndarray], dict[str, float]]


class NegativeSampler:
    """Uniform negatives excluding the items each user interacted with (rejection sampling)."""

    def __init__(
        self, seqs: dict[int, np.ndarray], num_items: int, rng: np.random.Generator
    ) -> None:
        self.num_items = num_items
        self.rng = rng
        keys = [u * (num_items + 1) + np.unique(s) for u, s in seqs.items()]
        self._keys = np.sort(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)

    def _is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * (self.num_items + 1) + items
        pos = np.searchsorted(self._keys, keys)
        pos = np.minimum(pos, len(self._keys) - 1)
        return self._keys[pos] == keys if len(self._keys) else np.zeros_like(keys, dtype=bool)

    def sample(self, users: np.ndarray, count: int) -> np.ndarray:
        """users [S] -> negatives [S, count] item indices in 1..N."""
        users_rep = np.repeat(users[:, None], count, axis=1)  # [S, n]
        negs = self.rng.integers(1, self.num_items + 1, size=users_rep.shape)
        for _ in range(20):  # a user who bought most of the catalogue may keep a few collisions
            bad = self._is_positive(users_rep, negs)
            if not bad.any():
                break
            negs[bad] = self.rng.integers(1, self.num_items + 1, size=int(bad.sum()))
        return negs


def _masked_mean(per_step: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_step.mean()
    return (per_step * mask).sum() / mask.sum().clamp_min(1)


def bce_loss(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """logits [..., 1 + n] (positive first) -> mean over steps of -log σ(s+) - Σ log(1 - σ(s-))."""
    per_step = F.softplus(-logits[..., 0]) + F.softplus(logits[..., 1:]).sum(dim=-1)  # [...]
    return _masked_mean(per_step, mask)


def sampled_softmax_loss(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """logits [..., 1 + n] (positive first) -> mean over steps of -log softmax(logits)[0]."""
    per_step = torch.logsumexp(logits, dim=-1) - logits[..., 0]  # [...]
    return _masked_mean(per_step, mask)


def softmax_loss(
    logits_all: torch.Tensor, positives: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """logits_all [S, N+1] (column 0 = padding, left out), positives [S] in 1..N.

    Mean over steps of -log softmax over the N items, at the positive.
    """
    real = logits_all[:, 1:]  # [S, N]
    positive = logits_all.gather(1, positives[:, None])[:, 0]  # [S]
    per_step = torch.logsumexp(real, dim=-1) - positive  # [S]
    return _masked_mean(per_step, mask)


def sampled_loss(loss: Loss, logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The loss of candidate logits [..., 1 + n] (positive first) for the sampled losses."""
    if loss == "bce":
        return bce_loss(logits, mask)
    if loss == "sampled-softmax":
        return sampled_softmax_loss(logits, mask)
    msg = f"loss {loss!r} does not take sampled candidates; expected 'bce' or 'sampled-softmax'"
    raise ValueError(msg)


def _l2(net: ItemRUM | FeatureRUM, users: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    """Squared norms of the touched rows, per step, plus the dense parameters."""
    steps = max(users.numel(), 1)
    total = net.user_emb(users).pow(2).sum() + net.item_emb(cands).pow(2).sum()
    total = total / steps
    if isinstance(net, FeatureRUM):
        for param in (net.features, net.memory0, net.erase.weight, net.add.weight):
            total = total + param.pow(2).sum() / max(net.config.num_users, 1)
    return total


def item_windows(seqs: dict[int, np.ndarray], slots: int) -> tuple[np.ndarray, ...]:
    """Every training step of every user: users [S], windows [S, K] (0 = empty), positives [S]."""
    users, windows, positives = [], [], []
    for user, seq in seqs.items():
        padded = np.concatenate([np.zeros(slots, dtype=np.int64), seq])  # [K + n]
        win = np.lib.stride_tricks.sliding_window_view(padded, slots)[: len(seq)]  # [n, K]
        users.append(np.full(len(seq), user, dtype=np.int64))
        windows.append(win)
        positives.append(seq)
    return np.concatenate(users), np.concatenate(windows), np.concatenate(positives)


def _epoch_item(
    net: ItemRUM,
    opt: torch.optim.Optimizer,
    samples: tuple[np.ndarray, ...],
    sampler: NegativeSampler,
    cfg: TrainConfig,
    rng: np.random.Generator,
    bar: tqdm[Any] | None,
) -> float:
    users, windows, positives = samples
    order = rng.permutation(len(users))
    total, count = 0.0, 0
    dev = torch.device(cfg.device)
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        u = torch.from_numpy(users[idx]).to(dev)
        window = torch.from_numpy(windows[idx]).to(dev)  # [S, K]
        if cfg.loss == "softmax":
            cands = torch.from_numpy(positives[idx, None]).to(dev)  # [S, 1]
            loss = softmax_loss(net.logits_all(u, window), cands[:, 0])  # over [S, N+1]
        else:
            negs = sampler.sample(users[idx], cfg.negatives)  # [S, n]
            cands = torch.from_numpy(np.concatenate([positives[idx, None], negs], axis=1)).to(dev)
            logits = net.logits(u, window, cands)  # [S, 1+n]
            loss = sampled_loss(cfg.loss, logits, None)
        if cfg.l2 > 0:
            loss = loss + cfg.l2 * _l2(net, u, cands)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
        count += len(idx)
        if bar is not None:
            bar.update(len(idx))
    return total / max(count, 1)


def _feature_batches(
    seqs: dict[int, np.ndarray], batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """User indices bucketed by sequence length (little padding), batches in random order."""
    users = np.array(list(seqs), dtype=np.int64)
    lengths = np.array([len(seqs[u]) for u in users])
    users = users[rng.permutation(len(users))]
    lengths = np.array([len(seqs[u]) for u in users])
    users = users[np.argsort(lengths, kind="stable")]
    batches = [users[i : i + batch_size] for i in range(0, len(users), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _epoch_feature(
    net: FeatureRUM,
    opt: torch.optim.Optimizer,
    seqs: dict[int, np.ndarray],
    sampler: NegativeSampler,
    cfg: TrainConfig,
    rng: np.random.Generator,
    bar: tqdm[Any] | None,
) -> float:
    dev = torch.device(cfg.device)
    total, count = 0.0, 0
    for batch_users in _feature_batches(seqs, cfg.batch_size, rng):
        lengths = np.array([len(seqs[u]) for u in batch_users])
        steps = int(lengths.max())
        padded = np.zeros((len(batch_users), steps), dtype=np.int64)  # [B, T], 0 = padding
        for row, user in enumerate(batch_users):
            padded[row, : lengths[row]] = seqs[int(user)]
        seq = torch.from_numpy(padded).to(dev)
        active = seq > 0  # [B, T]
        users_t = torch.from_numpy(batch_users).to(dev)  # [B]
        memory = net.initial_memory(len(batch_users))  # [B, K, D]
        for c0 in range(0, steps, cfg.max_len):
            c1 = min(c0 + cfg.max_len, steps)
            states = []
            for t in range(c0, c1):
                states.append(memory)  # memory before v_t is written
                memory = net.write(memory, seq[:, t], active[:, t])
            chunk = torch.stack(states, dim=1)  # [B, Lc, K, D]
            b, lc, k, d = chunk.shape
            step_users = users_t.repeat_interleave(lc)  # [B*Lc]
            mask = active[:, c0:c1].reshape(-1).float()  # [B*Lc]
            if cfg.loss == "softmax":
                # Only the real steps: each costs a row of the [S, N+1] all-item logits.
                keep = mask > 0
                cands = seq[:, c0:c1].reshape(-1, 1)[keep]  # [S, 1]
                memory_s = chunk.reshape(b * lc, k, d)[keep]  # [S, K, D]
                logits_all = net.logits_all(step_users[keep], memory_s)  # [S, N+1]
                loss = softmax_loss(logits_all, cands[:, 0])
                mask, step_users = mask[keep], step_users[keep]
            else:
                negs = sampler.sample(np.repeat(batch_users, lc), cfg.negatives)  # [B*Lc, n]
                cands = torch.cat(
                    [seq[:, c0:c1].reshape(-1, 1), torch.from_numpy(negs).to(dev)], dim=1
                )  # [B*Lc, 1+n]
                memory_s = chunk.reshape(b * lc, k, d)  # [B*Lc, K, D]
                logits = net.logits(step_users, memory_s, cands)  # [B*Lc, 1+n]
                loss = sampled_loss(cfg.loss, logits, mask)
            if cfg.l2 > 0:
                keep = mask > 0
                loss = loss + cfg.l2 * _l2(net, step_users[keep], cands[keep])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            memory = memory.detach()  # truncated BPTT: the next chunk starts from this state
            n_steps = int(mask.sum())
            total += loss.item() * n_steps
            count += n_steps
            if bar is not None:
                bar.update(n_steps)
    return total / max(count, 1)


def train(
    fit: EventLog,
    cfg: TrainConfig,
    validate: Validator | None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Fit on ``fit``; after every epoch ``validate`` (validation part only) picks the best epoch.

    Without a validator the model trains for ``cfg.epochs`` and the last epoch is kept.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    users, items = build_vocabs(fit)
    seqs = sequences(fit, users, items)
    popularity = np.bincount(items.indices(fit.item_ids), minlength=items.size + 1).astype(
        np.float64
    )
    popularity[0] = 0.0
    config = ModelConfig(
        variant=cfg.variant,
        num_users=users.size,
        num_items=items.size,
        dim=cfg.dim,
        slots=cfg.slots,
        alpha=cfg.alpha,
        beta=cfg.beta,
        init_std=cfg.init_std,
    )
    net = build(config).to(cfg.device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sampler = NegativeSampler(seqs, items.size, rng)
    samples = item_windows(seqs, cfg.slots) if isinstance(net, ItemRUM) else ()
    n_steps = sum(len(s) for s in seqs.values())
    history: list[dict[str, float]] = []
    best_score, best_epoch, best_valid = -math.inf, 0, {}
    best_state = copy.deepcopy(net.state_dict())
    stale = 0
    try:
        for epoch in range(1, cfg.epochs + 1):
            net.train()
            began = time.perf_counter()
            with tqdm(
                total=n_steps,
                desc=f"epoch {epoch}",
                unit="ev",
                disable=not cfg.progress,
                leave=False,
            ) as bar:
                if isinstance(net, ItemRUM):
                    loss = _epoch_item(net, opt, samples, sampler, cfg, rng, bar)
                else:
                    loss = _epoch_feature(net, opt, seqs, sampler, cfg, rng, bar)
            seconds = time.perf_counter() - began
            row: dict[str, float] = {"epoch": epoch, "loss": loss, "seconds": seconds}
            net.eval()
            if validate is not None:
                began = time.perf_counter()
                valid = validate(net, users, items, popularity)
                row.update({f"valid_{k}": v for k, v in valid.items()})
                row["valid_seconds"] = time.perf_counter() - began
                score = valid["ndcg@10"]
                if score > best_score:
                    best_score, best_epoch, best_valid, stale = score, epoch, valid, 0
                    best_state = copy.deepcopy(net.state_dict())
                else:
                    stale += 1
                log(
                    f"epoch {epoch}: loss {loss:.4f} ({seconds:.1f}s) valid ndcg@10 {score:.4f} "
                    f"hr@10 {valid['hr@10']:.4f} (best epoch {best_epoch})"
                )
            else:
                best_epoch, best_state = epoch, copy.deepcopy(net.state_dict())
                log(f"epoch {epoch}: loss {loss:.4f} ({seconds:.1f}s)")
            history.append(row)
            if validate is not None and stale >= cfg.patience:
                log(f"early stop: no validation gain for {cfg.patience} epochs")
                break
    except KeyboardInterrupt:
        # Ctrl-C / SIGTERM: keep the best validated epoch so far rather than losing the run.
        log(f"interrupted after {len(history)} epochs; keeping the best epoch ({best_epoch})")
    net.load_state_dict(best_state)
    net.eval()
    net.cpu()
    return TrainResult(net, users, items, popularity, history, best_epoch, best_valid)


def seconds_per_epoch(history: Sequence[dict[str, float]]) -> float:
    return float(np.median([row["seconds"] for row in history])) if history else 0.0
