"""The three evaluation protocols of MODEL.md as splits of one :class:`EventLog`.

A split names the events a model may fit (``fit``), the part used for model
selection (``valid``) and the part reported (``test``). Ranked parts come in
two shapes:

- a list of :class:`Case` (leave-one-out and paper protocol): the user's
  memory is built from ``history`` (oldest first), items in ``history`` are
  excluded from the ranking, and ``targets`` are the relevant items;
- a :class:`Replay` (prequential): the whole log is replayed in global time
  order; events at or after ``start`` are ranked before they are written.

Choices MODEL.md leaves open, fixed here:

- paper protocol validation: the model fits the first 70% of each user's
  events minus that part's last event, which is the validation target (users
  with fewer than 3 events in the 70% only train);
- prequential: T = the 80th percentile of timestamps (events with
  timestamp < T are before T); validation = the last 10% of events before T
  (timestamp >= the 90th percentile of those), replayed the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from model.data import EventLog

Protocol = Literal["loo", "paper", "prequential"]
PROTOCOLS: tuple[Protocol, ...] = ("loo", "paper", "prequential")


@dataclass(frozen=True)
class Case:
    """One user's ranking question: memory from ``history``; ``targets`` are relevant."""

    user_id: str
    history: tuple[str, ...]
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Replay:
    """Replay ``log`` in order; events with timestamp >= ``start`` are ranked, then written."""

    log: EventLog
    start: int | float

    def scored(self) -> np.ndarray:
        """Boolean mask [E] of the events that are ranked."""
        return np.asarray(self.log.timestamps >= self.start)


@dataclass(frozen=True)
class Split:
    protocol: Protocol
    fit: EventLog
    valid: list[Case] | Replay
    test: list[Case] | Replay


def _per_user_positions(log: EventLog) -> dict[str, list[int]]:
    """Row positions of each user's events, in log (stable time) order."""
    out: dict[str, list[int]] = {}
    for pos, user in enumerate(log.user_ids):
        out.setdefault(user, []).append(pos)
    return out


def loo_split(log: EventLog) -> Split:
    """Leave-one-out: last = test, second-last = validation, rest = fit (users < 3: fit only)."""
    items = log.item_ids
    fit_mask = np.ones(len(log), dtype=bool)
    valid: list[Case] = []
    test: list[Case] = []
    for user, positions in _per_user_positions(log).items():
        if len(positions) < 3:
            continue
        fit_mask[positions[-2:]] = False
        history = tuple(items[positions[:-2]])
        valid.append(Case(user, history, (items[positions[-2]],)))
        test.append(Case(user, (*history, items[positions[-2]]), (items[positions[-1]],)))
    return Split("loo", log.subset(fit_mask), valid, test)


def paper_split(log: EventLog, train_fraction: float = 0.7) -> Split:
    """Per user: first 70% train (its last event validates), last 30% test as one relevant set."""
    items = log.item_ids
    fit_mask = np.zeros(len(log), dtype=bool)
    valid: list[Case] = []
    test: list[Case] = []
    for user, positions in _per_user_positions(log).items():
        n_train = max(1, math.floor(len(positions) * train_fraction))
        train_pos = positions[:n_train]
        test_pos = positions[n_train:]
        if len(train_pos) >= 3:
            fit_mask[train_pos[:-1]] = True
            valid.append(Case(user, tuple(items[train_pos[:-1]]), (items[train_pos[-1]],)))
        else:
            fit_mask[train_pos] = True
        if test_pos:
            test.append(Case(user, tuple(items[train_pos]), tuple(dict.fromkeys(items[test_pos]))))
    return Split("paper", log.subset(fit_mask), valid, test)


def prequential_split(log: EventLog, quantile: float = 0.8, valid_fraction: float = 0.1) -> Split:
    """Global time T at the ``quantile`` of timestamps; validation = last 10% of events before T."""
    start = _quantile_time(log.timestamps, quantile)
    before = log.subset(log.timestamps < start)
    valid_start = _quantile_time(before.timestamps, 1.0 - valid_fraction)
    fit = before.subset(before.timestamps < valid_start)
    return Split("prequential", fit, Replay(before, valid_start), Replay(log, start))


def _quantile_time(timestamps: np.ndarray, quantile: float) -> int | float:
    value = np.quantile(timestamps, quantile, method="lower")
    return int(value) if np.issubdtype(timestamps.dtype, np.integer) else float(value)


def make_split(log: EventLog, protocol: Protocol) -> Split:
    if protocol == "loo":
        return loo_split(log)
    if protocol == "paper":
        return paper_split(log)
    if protocol == "prequential":
        return prequential_split(log)
    msg = f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}"
    raise ValueError(msg)
