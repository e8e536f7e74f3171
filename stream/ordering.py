"""Per-partition order of the records the agent handles.

Around rebalances Faust can hand the agent a partition's records with a gap: it
dropped some it had fetched (queues cleared, records of an older generation
skipped) and the seek meant to read them again did not happen. Applying what
comes after the gap first would apply a user's purchases out of order, and the
ones in the gap later or never. The guard admits each partition's offsets in
sequence from the committed offset of the current generation; a record beyond a
gap is held back and the partition is sought back to the first missing offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Verdict(Enum):
    HANDLE = "handle"  # the next offset of its partition
    SEEN = "seen"  # handled already in this generation (read again after a seek)
    GAP = "gap"  # offsets before it are missing: read the partition again from `expected`
    HELD = "held"  # behind a gap already being read again: dropped, it will come again


@dataclass
class OffsetGuard:
    """The next offset to handle per (topic, partition), per consumer generation."""

    _next: dict[tuple[str, int], int] = field(default_factory=dict)
    _generation: dict[tuple[str, int], int] = field(default_factory=dict)
    _gap_at: dict[tuple[str, int], int] = field(default_factory=dict)
    # Exactly-once: a missing committed offset may only be unstable (a dead worker's
    # transaction still open), so the first record delivered is the baseline.
    trust_missing_commit: bool = True

    def admit(
        self, tp: tuple[str, int], offset: int, generation: int, committed: int | None
    ) -> Verdict:
        if self._generation.get(tp) != generation:
            # New assignment: Faust has sought the partition to its committed offset.
            self._generation[tp] = generation
            if committed is None and not self.trust_missing_commit:
                committed = offset
            self._next[tp] = committed or 0
            self._gap_at.pop(tp, None)
        expected = self._next[tp]
        if offset < expected:
            return Verdict.SEEN
        if offset > expected and self._gap_at.get(tp) != offset:
            if tp in self._gap_at:
                return Verdict.HELD  # the records of the old position, still arriving
            # First time this gap is seen: read again from the missing offset. If the
            # same record opens the gap again after that, the offsets before it are
            # not in the log (retention, compaction): go on from it.
            self._gap_at[tp] = offset
            return Verdict.GAP
        self._gap_at.pop(tp, None)
        self._next[tp] = offset + 1
        return Verdict.HANDLE

    def expected(self, tp: tuple[str, int]) -> int:
        return self._next[tp]

    def commit_limit(self, tp: tuple[str, int]) -> int | None:
        """The highest offset that may be committed for ``tp`` (None: no records yet).

        Faust commits every acked offset and treats a jump in offsets as compaction;
        records held back behind a gap are acked too. Committing past the first
        offset not yet handled would lose the held-back records if the worker died
        before reading them again.
        """
        return self._next.get(tp)
