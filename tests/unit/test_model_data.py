"""Loading logs, stable time order, vocabularies, and the three protocol splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.data import DataError, Vocab, load_events
from model.splits import loo_split, paper_split, prequential_split
from tests.unit.model_toys import SHARED_DATA


def test_csv_sorts_stably_and_keeps_integer_timestamps(tmp_path: Path) -> None:
    big = 1_700_000_000_123_456_789  # not representable in float64: must stay an integer
    path = tmp_path / "log.csv"
    path.write_text(
        f"user_id,item_id,timestamp\na,x,{big}\nb,y,5\na,z,5\nb,w,{big}\na,v,5\n",
        encoding="utf-8",
    )
    log = load_events(path)
    assert log.timestamps.dtype == np.int64
    assert log.timestamps.tolist() == [5, 5, 5, big, big]
    assert log.item_ids.tolist() == ["y", "z", "v", "x", "w"]  # ties keep file order


def test_tsv_and_jsonl_with_column_mapping(tmp_path: Path) -> None:
    tsv = tmp_path / "log.tsv"
    tsv.write_text("ts\tuser\titem\n2\tu\tb\n1\tu\ta\n", encoding="utf-8")
    log = load_events(tsv, columns=("user", "item", "ts"))
    assert log.item_ids.tolist() == ["a", "b"]
    jsonl = tmp_path / "log.jsonl"
    rows = [{"u": 1, "i": 7, "t": 3.0}, {"u": 1, "i": 8, "t": 2.0}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    log = load_events(jsonl, columns=("u", "i", "t"))
    assert log.item_ids.tolist() == ["8", "7"] and log.timestamps.dtype == np.int64
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['user_id', 'item_id'.*--columns"):
        load_events(tsv)


def test_vocab_reserves_zero_and_grows() -> None:
    vocab = Vocab(["0", "a"])
    assert vocab.index("0") == 1 and vocab.index("a") == 2 and vocab.index("new") == 0
    assert vocab.add("new") == 3 and vocab.size == 3
    assert vocab.indices(["a", "zzz"]).tolist() == [2, 0]
    assert Vocab.from_list(vocab.to_list()).to_list() == ["0", "a", "new"]
    with pytest.raises(IndexError):
        vocab.raw(0)


def _log(tmp_path: Path, rows: list[tuple[str, str, int]]):
    path = tmp_path / "l.csv"
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    return load_events(path)


def test_leave_one_out_split(tmp_path: Path) -> None:
    log = _log(
        tmp_path,
        [("a", "1", 1), ("a", "2", 2), ("b", "1", 2), ("a", "3", 2), ("a", "4", 9), ("b", "5", 3)],
    )
    split = loo_split(log)
    assert isinstance(split.valid, list) and isinstance(split.test, list)
    assert [(c.user_id, c.history, c.targets) for c in split.valid] == [("a", ("1", "2"), ("3",))]
    assert [(c.user_id, c.history, c.targets) for c in split.test] == [
        ("a", ("1", "2", "3"), ("4",))
    ]
    assert sorted(zip(split.fit.user_ids, split.fit.item_ids, strict=True)) == [
        ("a", "1"),
        ("a", "2"),
        ("b", "1"),
        ("b", "5"),
    ]  # b has < 3 events: train only


def test_paper_split(tmp_path: Path) -> None:
    log = _log(tmp_path, [("a", str(i), i) for i in range(10)])
    split = paper_split(log)
    assert isinstance(split.test, list) and isinstance(split.valid, list)
    assert split.test[0].history == tuple(str(i) for i in range(7))
    assert split.test[0].targets == ("7", "8", "9")
    assert split.valid[0].targets == ("6",) and split.fit.item_ids.tolist() == list("012345")


def test_prequential_split(tmp_path: Path) -> None:
    log = _log(tmp_path, [("u" + str(i % 3), str(i), i) for i in range(100)])
    split = prequential_split(log)
    assert split.test.start == 79  # type: ignore[union-attr]
    assert int(split.fit.timestamps.max()) < split.valid.start < split.test.start  # type: ignore[union-attr]
    assert len(split.fit) == 70  # 79 events before T; validation from the 90th percentile (70)


@pytest.mark.skipif(not (SHARED_DATA / "ml-100k" / "events.csv").exists(), reason="no shared data")
def test_ml100k_loads_with_integer_timestamps() -> None:
    log = load_events(SHARED_DATA / "ml-100k" / "events.csv")
    assert len(log) == 100_000 and log.timestamps.dtype == np.int64
    assert np.all(np.diff(log.timestamps) >= 0)
    test = loo_split(log).test
    assert isinstance(test, list) and len(test) == 943
