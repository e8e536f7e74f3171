"""Warm-starting a published model on new events: grow the vocabularies, fine-tune, hold out.

The trainer (``stream.trainer``) calls three functions, in this order:

- :func:`heldout_tail` splits a training window into the events to fit and, per
  user, the last event as a ranking question (the held-out tail that decides
  whether the new version may replace the current one);
- :func:`grow` returns a network whose vocabularies are the current ones plus
  the new users and items of the window, appended at the end: every existing
  row keeps its index and its values (a memory of raw ids, or an explanation,
  means the same in both versions), new rows are initialised exactly as a
  fresh model initialises them (N(0, init_std), padding row zero);
- :func:`fine_tune` runs a few epochs of the same loss as :mod:`model.training`
  from those weights.

Nothing here reads Kafka or files; the caller owns artifacts and threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from model.data import EventLog, Vocab, sequences
from model.network import FeatureRUM, ItemRUM, ModelConfig, build
from model.splits import Case
from model.training import (
    NegativeSampler,
    TrainConfig,
    _epoch_feature,
    _epoch_item,
    item_windows,
)

EMBEDDINGS = {"user_emb.weight": "users", "item_emb.weight": "items"}


@dataclass(frozen=True)
class Grown:
    net: ItemRUM | FeatureRUM
    users: Vocab
    items: Vocab
    new_users: int
    new_items: int


@dataclass(frozen=True)
class FineTuned:
    net: ItemRUM | FeatureRUM
    popularity: np.ndarray  # [N+1] float64, counts in the fitted events, [0] = 0
    history: list[dict[str, float]]


def _extended(vocab: Vocab, ids: Iterable[str]) -> Vocab:
    grown = Vocab(vocab.to_list())
    for raw in ids:
        grown.add(str(raw))
    return grown


def grow(
    config: ModelConfig,
    weights: dict[str, torch.Tensor],
    users: Vocab,
    items: Vocab,
    user_ids: Iterable[str],
    item_ids: Iterable[str],
    seed: int = 0,
) -> Grown:
    """A copy of the network with ``user_ids``/``item_ids`` not yet known appended.

    ``weights`` are left untouched; existing rows are copied bit for bit.
    """
    new_users = _extended(users, user_ids)
    new_items = _extended(items, item_ids)
    grown_config = replace(config, num_users=new_users.size, num_items=new_items.size)
    torch.manual_seed(seed)
    net = build(grown_config)  # new rows: the fresh model's initialisation
    state = net.state_dict()
    with torch.no_grad():
        for name, tensor in weights.items():
            if name not in state:
                msg = f"weight {name!r} is not part of a {config.variant}-level network"
                raise ValueError(msg)
            if name in EMBEDDINGS:
                rows = tensor.shape[0]  # old U+1 or N+1
                state[name][:rows] = tensor.to(state[name].dtype)
            else:
                state[name].copy_(tensor)
    net.load_state_dict(state)
    net.eval()
    return Grown(
        net=net,
        users=new_users,
        items=new_items,
        new_users=new_users.size - users.size,
        new_items=new_items.size - items.size,
    )


def heldout_tail(log: EventLog) -> tuple[EventLog, list[Case]]:
    """Per user with at least two events: the last one is held out, the rest is fitted.

    Returns (events to fit, one :class:`Case` per such user: history = the user's
    earlier events in the window, target = the held-out item). Users with a single
    event are fitted only.
    """
    positions: dict[str, list[int]] = {}
    for pos, user in enumerate(log.user_ids):
        positions.setdefault(str(user), []).append(pos)
    fit_mask = np.ones(len(log), dtype=bool)
    cases: list[Case] = []
    items = log.item_ids
    for user, rows in positions.items():
        if len(rows) < 2:
            continue
        fit_mask[rows[-1]] = False
        history = tuple(str(i) for i in items[rows[:-1]])
        cases.append(Case(user, history, (str(items[rows[-1]]),)))
    return log.subset(fit_mask), cases


def fine_tune(
    net: ItemRUM | FeatureRUM,
    users: Vocab,
    items: Vocab,
    fit: EventLog,
    cfg: TrainConfig,
    log: Callable[[str], None] = print,
) -> FineTuned:
    """``cfg.epochs`` epochs over ``fit`` starting from ``net``'s weights (trained in place).

    ``users``/``items`` must already hold every id of ``fit`` (see :func:`grow`).
    Only ``epochs``, ``lr``, ``batch_size``, ``negatives``, ``loss``, ``max_len``, ``l2``,
    ``seed``, ``device`` and ``progress`` of ``cfg`` are read; the shape comes from ``net``.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    seqs = sequences(fit, users, items)
    popularity = np.bincount(items.indices(fit.item_ids), minlength=items.size + 1).astype(
        np.float64
    )
    popularity[0] = 0.0
    # The epoch functions read the memory size from the config: use the network's own.
    cfg = replace(cfg, slots=net.config.slots, variant=net.config.variant)
    net.to(cfg.device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sampler = NegativeSampler(seqs, items.size, rng)
    samples = item_windows(seqs, cfg.slots) if isinstance(net, ItemRUM) and seqs else ()
    n_steps = sum(len(s) for s in seqs.values())
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        if not seqs:
            break
        net.train()
        began = time.perf_counter()
        with tqdm(
            total=n_steps, desc=f"fine-tune {epoch}", unit="ev", disable=not cfg.progress
        ) as bar:
            if isinstance(net, ItemRUM):
                loss = _epoch_item(net, opt, samples, sampler, cfg, rng, bar)
            else:
                loss = _epoch_feature(net, opt, seqs, sampler, cfg, rng, bar)
        seconds = time.perf_counter() - began
        history.append({"epoch": epoch, "loss": loss, "seconds": seconds})
        log(f"fine-tune epoch {epoch}: loss {loss:.4f} ({seconds:.1f}s, {n_steps} events)")
    net.eval()
    net.cpu()
    return FineTuned(net=net, popularity=popularity, history=history)
