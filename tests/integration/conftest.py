"""Models for the worker integration tests: trained by `rum train` on a synthetic log."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

ITEMS = 60
USERS = 40


def _write_log(path: Path) -> Path:
    rng = random.Random(7)
    lines = ["user_id,item_id,timestamp"]
    for user in range(USERS):
        start = rng.randrange(ITEMS)
        for step in range(12):
            item = (start + step * (1 + user % 3)) % ITEMS
            lines.append(f"u{user},{item},{1_500_000_000 + 100 * step + user}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _train(out: Path, log: Path, variant: str) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "stream.cli",
        "train",
        "--data",
        str(log),
        "--variant",
        variant,
        "--out",
        str(out),
        "--all",
        "--epochs",
        "3",
        "--dim",
        "16",
        "--threads",
        "1",
        "--quiet",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"training the test model failed:\n{result.stdout}\n{result.stderr}")
    return out


@pytest.fixture(scope="session")
def synthetic_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_log(tmp_path_factory.mktemp("log") / "events.csv")


@pytest.fixture(scope="session")
def feature_model(tmp_path_factory: pytest.TempPathFactory, synthetic_log: Path) -> Path:
    return _train(tmp_path_factory.mktemp("models") / "feature", synthetic_log, "feature")


@pytest.fixture(scope="session")
def item_model(tmp_path_factory: pytest.TempPathFactory, synthetic_log: Path) -> Path:
    return _train(tmp_path_factory.mktemp("models") / "item", synthetic_log, "item")
