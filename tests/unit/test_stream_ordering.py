"""The offset guard admits each partition's records in order, once per generation."""

from __future__ import annotations

from stream.ordering import OffsetGuard, Verdict

TP = ("purchases", 0)


def test_in_order_records_are_handled_and_rereads_are_seen() -> None:
    guard = OffsetGuard()
    assert [guard.admit(TP, o, 1, None) for o in (0, 1, 2)] == [Verdict.HANDLE] * 3
    assert guard.admit(TP, 1, 1, None) is Verdict.SEEN  # read again after a seek
    assert guard.admit(TP, 3, 1, None) is Verdict.HANDLE


def test_a_gap_holds_records_back_until_the_missing_ones_come() -> None:
    guard = OffsetGuard()
    guard.admit(TP, 0, 1, None)
    assert guard.admit(TP, 5, 1, None) is Verdict.GAP
    assert guard.expected(TP) == 1
    assert guard.admit(TP, 6, 1, None) is Verdict.HELD  # behind the gap: no second seek
    assert [guard.admit(TP, o, 1, None) for o in range(1, 7)] == [Verdict.HANDLE] * 6


def test_a_gap_that_reappears_after_the_seek_is_a_hole_in_the_log() -> None:
    guard = OffsetGuard()
    assert guard.admit(TP, 40, 1, None) is Verdict.GAP  # log starts at 40 (retention)
    assert guard.admit(TP, 40, 1, None) is Verdict.HANDLE
    assert guard.admit(TP, 41, 1, None) is Verdict.HANDLE


def test_a_new_generation_starts_from_the_committed_offset() -> None:
    guard = OffsetGuard()
    for offset in range(10):
        guard.admit(TP, offset, 1, None)
    # Rebalanced: committed at 7, so 7.. are read again and handled (the dedupe ring
    # recognises events applied before).
    assert guard.admit(TP, 7, 2, 7) is Verdict.HANDLE
    assert guard.admit(TP, 2, 2, 7) is Verdict.SEEN
    assert guard.admit(TP, 9, 2, 7) is Verdict.GAP
    assert guard.admit(TP, 10, 2, 7) is Verdict.HELD


def test_commits_stop_at_the_first_record_not_handled() -> None:
    guard = OffsetGuard()
    assert guard.commit_limit(TP) is None
    for offset in range(3):
        guard.admit(TP, offset, 1, None)
    guard.admit(TP, 9, 1, None)  # held back behind a gap
    assert guard.commit_limit(TP) == 3


def test_without_trusting_a_missing_commit_the_first_record_is_the_baseline() -> None:
    guard = OffsetGuard(trust_missing_commit=False)
    assert guard.admit(TP, 21, 1, None) is Verdict.HANDLE
    assert guard.admit(TP, 23, 1, None) is Verdict.GAP
