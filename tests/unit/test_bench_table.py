"""rum bench table: medians over runs, per figure, against BENCHMARKS.md's targets."""

from __future__ import annotations

from typing import Any

from stream.bench import figure_table


def test_medians_over_every_run_and_targets_met_or_not() -> None:
    w1 = {"bench": "stream", "workload": "w1", "variant": "feature", "scoring": "two-stage"}
    rows: list[dict[str, Any]] = [
        {**w1, "git_commit": "a", "events_per_s_runs": [3000.0, 1000.0], "ratio_runs": [2.0]},
        {**w1, "git_commit": "b", "events_per_s_runs": [2000.0], "ratio_runs": [5.0, 4.5]},
        {**w1, "quick": True, "events_per_s_runs": [99_999.0]},  # smoke runs do not count
        {"bench": "latency", "workload": "w1", "p50_ms": 12.0, "p99_ms": 80.0},
        {"bench": "latency", "workload": "w1", "p50_ms": 18.0, "p99_ms": 40.0},
        {"bench": "latency", "workload": "w1", "p50_ms": 30.0, "p99_ms": 45.0},
        {
            "bench": "train",
            "loss": "bce",
            "negatives": 1,
            "batch_size": 256,
            "seconds_per_epoch": 5,
        },
        {
            "bench": "train",
            "loss": "sampled-softmax",
            "negatives": 100,
            "batch_size": 64,
            "seconds_per_epoch": 50.0,
        },
    ]
    table = {line.split(" | ")[0].lstrip("| "): line for line in figure_table(rows).splitlines()}
    assert "| 2000 | 3 | 1000 – 3000 | no |" in table["W1 feature-level two-stage, events/s"]
    assert "| 4.5 | 3 |" in table["W1 ratio to the naive baseline (same run)"]
    assert table["W1 ratio to the naive baseline (same run)"].endswith("| yes |")
    assert table["latency p50 at 1,000 events/s, ms"].endswith("| 18 | 3 | 12 – 30 | yes |")
    assert table["latency p99 at 1,000 events/s, ms"].endswith("| 45 | 3 | 40 – 80 | yes |")
    assert "not measured" in table["W2 two-stage, events/s"]
    # each training configuration is its own row: the 100-negative epoch is not the default's
    assert "| 5 | 1 |" in table["training epoch (feature-level, L=50, 2 threads), s"]
    assert table["training epoch, sampled softmax, 100 negatives, batch 64, s"].endswith(
        "| 50 | 1 | 50 – 50 | no |"
    )
    assert "Commits of the runs: a, b." in figure_table(rows)
