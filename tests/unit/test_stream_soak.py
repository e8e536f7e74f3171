"""The soak's levelling figure: peaks of the two halves, not two point samples."""

from __future__ import annotations

from stream.soak import _peak_growth_pct


def _samples(values: list[int]) -> list[dict[str, int]]:
    return [{"rocksdb_bytes": v} for v in values]


def test_a_sawtooth_that_stays_in_its_band_does_not_read_as_growth() -> None:
    # flush/compaction teeth between 20 and 60: the last sample on a top, the middle at a foot
    teeth = [30, 60, 20, 55, 25, 60, 20, 58, 20, 59]
    assert _peak_growth_pct(_samples(teeth), "rocksdb_bytes") == 0.0


def test_real_growth_is_reported() -> None:
    assert _peak_growth_pct(_samples([10, 20, 30, 40]), "rocksdb_bytes") == 100.0
    assert _peak_growth_pct(_samples([]), "rocksdb_bytes") == 0.0
