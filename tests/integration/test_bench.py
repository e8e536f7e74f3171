"""``rum bench`` runs end to end against Apache Kafka (small sizes) and reports its figures.

Only the shape and sanity of the JSON are asserted: speed is shown by running
``rum bench`` itself, never by a timed test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.kafka_tools import REPO


def bench(args: list[str], bootstrap: str, tmp: Path, results: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "stream.cli",
        "bench",
        *args,
        "--quick",
        "--json",
        "--bootstrap",
        bootstrap,
        "--cache-dir",
        str(tmp / "cache"),
        "--out",
        str(results),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr[-3000:]}"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line, got:\n{done.stdout}"
    figures: dict[str, Any] = json.loads(lines[0])
    for key in ("bench", "cpu_count", "load_1m_start", "git_commit", "micro_batch"):
        assert key in figures
    assert all(not isinstance(v, dict) for v in figures.values()), "the object must be flat"
    return figures


def test_bench_subcommands_report_sane_figures(kafka_bootstrap, tmp_path, shared_data):
    results = tmp_path / "results.jsonl"
    stream = bench(
        ["stream", "--workload", "w1", "--variant", "feature", "--scoring", "exact", "--floor",
         "--data", str(shared_data / "amazon-beauty" / "events.csv")],
        kafka_bootstrap,
        tmp_path,
        results,
    )  # fmt: skip
    assert stream["bench"] == "stream" and stream["workload"] == "w1"
    assert stream["events"] == 3000
    assert stream["events_per_s"] > 0 and stream["baseline_events_per_s"] > 0
    assert abs(stream["ratio"] - stream["events_per_s"] / stream["baseline_events_per_s"]) < 0.01
    assert 0 < stream["worker_rss_mb"] < 16_000
    assert stream["compute_bound_fraction"] > 0
    assert stream["floor_events_per_s"] > 0
    # Every figure of the three agents has its runs beside the median, one per repeat.
    for who in ("", "baseline_", "floor_"):
        assert len(stream[f"{who}events_per_s_runs"]) == stream["runs"], who
        # CPU per event counts from the first answers: the floor may answer all 3,000
        # before the first look, and then says null rather than 0.
        cpu, cpu_runs = stream[f"{who}cpu_us_per_event"], stream[f"{who}cpu_us_per_event_runs"]
        assert (cpu is None and cpu_runs == []) or (cpu > 0 and len(cpu_runs) == stream["runs"])
    assert stream["cpu_us_per_event"] > 0  # the RUM worker takes seconds over W1[:3000]
    assert (
        abs(stream["fraction_of_floor"] - stream["events_per_s"] / stream["floor_events_per_s"])
        < 0.01
    )

    latency = bench(
        ["latency", "--rate", "300", "--duration", "4", "--warmup-s", "0"],
        kafka_bootstrap,
        tmp_path,
        results,
    )
    assert latency["measured_events"] == 1200
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]

    scoring = bench(["scoring", "--workload", "w2"], kafka_bootstrap, tmp_path, results)
    assert scoring["items"] == 2000
    assert scoring["compute_bound_fraction"] > 0 and scoring["exact_users_per_s"] > 0
    assert 0.5 <= scoring["recall_at_10"] <= 1.0

    train = bench(["train", "--threads", "1"], kafka_bootstrap, tmp_path, results)
    assert train["seconds_per_epoch"] > 0 and train["fit_events"] > 0

    soak = bench(
        ["soak", "--duration", "10", "--users", "200", "--data",
         str(shared_data / "amazon-beauty" / "events.csv")],
        kafka_bootstrap,
        tmp_path,
        results,
    )  # fmt: skip
    assert soak["max_rate_measured"] > 0
    assert abs(soak["rate"] - soak["max_rate_measured"] / 2) <= 0.1  # half the measured maximum
    assert soak["events_sent"] >= 3000 and soak["events_lost"] == 0
    assert soak["state_duplicates"] == 0 and soak["rss_kb_max"] > 0

    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["bench"] for r in rows] == ["stream", "latency", "scoring", "train", "soak"]
    table = subprocess.run(
        [sys.executable, "-m", "stream.cli", "bench", "table", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # --quick runs never count as figures: every row is "not measured".
    assert table.count("not measured") == table.count("\n| ") > 10
