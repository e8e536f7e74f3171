"""Interaction logs: loading, stable time order, and id vocabularies.

An :class:`EventLog` holds one row per event as parallel numpy arrays of raw
string ids and integer timestamps, already in **stable** timestamp order: rows
with equal timestamps keep their order in the file (several sources are
day-granular, so ties are common and decide the leave-one-out split).
Timestamps stay ``int64`` whenever every value is integral; a float32 column
would silently reorder events (see BENCHMARKS.md).

A :class:`Vocab` maps raw string ids to dense indices. Index 0 is reserved for
padding and for "unknown", so real ids are ``1..len(vocab)`` and no real item
can ever be mistaken for padding (one of the known mistakes in MODEL.md).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAD = 0

DEFAULT_COLUMNS = ("user_id", "item_id", "timestamp")


class DataError(ValueError):
    """The event log cannot be read as (user, item, timestamp) rows; the message says why."""


class Vocab:
    """Raw string id <-> index, ``1..size``; index 0 is padding/unknown. Can grow."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._index: dict[str, int] = {}
        self._ids: list[str] = [""]  # position 0 = padding
        for raw in ids:
            self.add(raw)

    def add(self, raw: str) -> int:
        """Index of ``raw``, adding it at the end if new."""
        index = self._index.get(raw)
        if index is None:
            index = len(self._ids)
            self._index[raw] = index
            self._ids.append(raw)
        return index

    def index(self, raw: str) -> int:
        """Index of ``raw``, or 0 (padding) when unknown."""
        return self._index.get(raw, PAD)

    def indices(self, raws: Sequence[str] | np.ndarray) -> np.ndarray:
        """int64 indices of many raw ids, 0 for unknown ones."""
        get = self._index.get
        return np.fromiter((get(r, PAD) for r in raws), dtype=np.int64, count=len(raws))

    def __contains__(self, raw: object) -> bool:
        return raw in self._index

    def raw(self, index: int) -> str:
        if index <= 0 or index >= len(self._ids):
            msg = f"index {index} is not a real id (valid: 1..{self.size})"
            raise IndexError(msg)
        return self._ids[index]

    @property
    def size(self) -> int:
        """Number of real ids (excluding padding)."""
        return len(self._ids) - 1

    def __len__(self) -> int:
        return self.size

    def to_list(self) -> list[str]:
        """Raw ids in index order (index 1 first)."""
        return self._ids[1:]

    @classmethod
    def from_list(cls, ids: Sequence[str]) -> Vocab:
        vocab = cls(ids)
        if vocab.size != len(ids):
            msg = f"vocabulary has duplicate ids ({len(ids)} entries, {vocab.size} distinct)"
            raise DataError(msg)
        return vocab


@dataclass(frozen=True)
class EventLog:
    """Events in stable timestamp order; arrays are aligned, length = number of events."""

    user_ids: np.ndarray  # [E] object (str)
    item_ids: np.ndarray  # [E] object (str)
    timestamps: np.ndarray  # [E] int64 (float64 only if the file has fractional times)

    def __len__(self) -> int:
        return len(self.user_ids)

    def subset(self, mask: np.ndarray) -> EventLog:
        return EventLog(self.user_ids[mask], self.item_ids[mask], self.timestamps[mask])


def _parse_timestamps(values: list[str], source: str) -> np.ndarray:
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        pass
    try:
        floats = np.array([float(v) for v in values], dtype=np.float64)
    except ValueError as exc:
        msg = f"{source}: timestamp column holds a value that is not a number ({exc})"
        raise DataError(msg) from exc
    if np.all(np.floor(floats) == floats):
        return floats.astype(np.int64)
    return floats


def from_rows(
    users: Sequence[str] | np.ndarray,
    items: Sequence[str] | np.ndarray,
    times: Sequence[str] | np.ndarray,
    source: str = "",
) -> EventLog:
    """Build an :class:`EventLog` from file-order rows, sorting stably by time."""
    timestamps = times if isinstance(times, np.ndarray) else _parse_timestamps(list(times), source)
    order = np.argsort(timestamps, kind="stable")  # ties keep file order
    user_arr = np.asarray(users, dtype=object)[order]
    item_arr = np.asarray(items, dtype=object)[order]
    return EventLog(user_arr, item_arr, timestamps[order])


def load_events(
    path: str | Path,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    delimiter: str | None = None,
) -> EventLog:
    """Read a CSV, TSV (``.tsv``/``.tab`` or tab in the header) or JSON Lines (``.jsonl``) log.

    ``columns`` names the user, item and timestamp fields in that order.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"event log {path} does not exist or is not a file"
        raise DataError(msg)
    user_col, item_col, time_col = columns
    users: list[str] = []
    items: list[str] = []
    times: list[str] = []
    if path.suffix in {".jsonl", ".ndjson"}:
        with path.open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    users.append(str(row[user_col]))
                    items.append(str(row[item_col]))
                    times.append(str(row[time_col]))
                except KeyError as exc:
                    msg = (
                        f"{path}:{line_no}: the object lacks the field {exc.args[0]!r}; name the "
                        "user, item and timestamp fields with --columns user,item,timestamp"
                    )
                    raise DataError(msg) from exc
                except (json.JSONDecodeError, TypeError) as exc:
                    msg = f"{path}:{line_no}: expected a JSON object with {list(columns)} ({exc!r})"
                    raise DataError(msg) from exc
    else:
        with path.open(encoding="utf-8", newline="") as handle:
            header_line = handle.readline()
            if delimiter is None:
                delimiter = "\t" if path.suffix in {".tsv", ".tab"} or "\t" in header_line else ","
            header = next(csv.reader([header_line], delimiter=delimiter))
            header = [h.strip() for h in header]
            missing = [c for c in columns if c not in header]
            if missing:
                msg = (
                    f"{path}: the header {header} lacks the column(s) {missing}; name the "
                    "user, item and timestamp columns with --columns user,item,timestamp"
                )
                raise DataError(msg)
            ui, ii, ti = (header.index(c) for c in columns)
            for line_no, row in enumerate(csv.reader(handle, delimiter=delimiter), start=2):
                if not row:
                    continue
                try:
                    users.append(row[ui].strip())
                    items.append(row[ii].strip())
                    times.append(row[ti].strip())
                except IndexError as exc:
                    msg = f"{path}:{line_no}: row has {len(row)} fields, header has {len(header)}"
                    raise DataError(msg) from exc
    if not users:
        msg = f"{path}: no events"
        raise DataError(msg)
    return from_rows(users, items, times, source=str(path))


def build_vocabs(log: EventLog) -> tuple[Vocab, Vocab]:
    """User and item vocabularies in order of first appearance in (time-sorted) ``log``."""
    return Vocab(dict.fromkeys(log.user_ids)), Vocab(dict.fromkeys(log.item_ids))


def sequences(log: EventLog, users: Vocab, items: Vocab) -> dict[int, np.ndarray]:
    """Per user index, its item indices in time order (unknown ids map to 0 and are dropped)."""
    user_idx = users.indices(log.user_ids)  # [E]
    item_idx = items.indices(log.item_ids)  # [E]
    keep = (user_idx > 0) & (item_idx > 0)
    user_idx, item_idx = user_idx[keep], item_idx[keep]
    order = np.argsort(user_idx, kind="stable")  # stable: time order inside each user
    user_sorted, item_sorted = user_idx[order], item_idx[order]
    bounds = np.flatnonzero(np.diff(user_sorted)) + 1
    out: dict[int, np.ndarray] = {}
    for chunk_u, chunk_i in zip(
        np.split(user_sorted, bounds), np.split(item_sorted, bounds), strict=True
    ):
        if len(chunk_u):
            out[int(chunk_u[0])] = chunk_i
    return out
