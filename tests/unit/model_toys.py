"""Tiny synthetic logs and helpers for the model tests (no shared data needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.data import EventLog, from_rows

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def chain_log(users: int = 12, items: int = 15, length: int = 7, seed: int = 0) -> EventLog:
    """Each user walks a chain i -> i+1 (mod items) from a random start; ids are strings.

    Item ids start at "0" so that a real item is literally called 0.
    """
    rng = np.random.default_rng(seed)
    rows_u, rows_i, rows_t = [], [], []
    for u in range(users):
        start = int(rng.integers(items))
        for step in range(length):
            rows_u.append(f"u{u}")
            rows_i.append(str((start + step) % items))
            rows_t.append(str(1000 + 10 * step + u))
    return from_rows(rows_u, rows_i, rows_t)


def write_csv(path: Path, log: EventLog) -> Path:
    lines = ["user_id,item_id,timestamp"]
    rows = zip(log.user_ids, log.item_ids, log.timestamps, strict=True)
    lines += [f"{u},{i},{t}" for u, i, t in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
