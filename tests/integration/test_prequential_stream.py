"""Protocol 3 through Kafka: the figures from the recommendations topic of a worker
emitting one recommendation per event equal the offline evaluator's."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from model.serving import Scorer
from stream.prequential import evaluate_topic
from tests.integration.worker_harness import Deployment, wait_healthy

pytestmark = pytest.mark.kafka


def _rum(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"rum {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.parametrize("variant", ["feature", "item"])
def test_topic_prequential_equals_offline(
    variant: str, kafka_bootstrap: str, synthetic_log: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    _rum(
        "train",
        "--data",
        str(synthetic_log),
        "--variant",
        variant,
        "--protocol",
        "prequential",
        "--out",
        str(model),
        "--epochs",
        "3",
        "--dim",
        "16",
        "--threads",
        "1",
        "--quiet",
    )
    offline = json.loads(
        _rum(
            "evaluate",
            "--model",
            str(model),
            "--data",
            str(synthetic_log),
            "--protocol",
            "prequential",
            "--k",
            "10",
            "--json",
        )
    )
    deployment = Deployment(
        bootstrap=kafka_bootstrap,
        name=f"preq-{uuid.uuid4().hex[:8]}",
        model_dir=model,
        root=tmp_path,
        extra_env={"RUM_EMIT": "event", "RUM_HISTORY": "500", "RUM_SCORING": "exact"},
    )
    worker = deployment.worker("w").start()
    try:
        wait_healthy(worker)
        _rum(
            "replay",
            str(synthetic_log),
            "--broker",
            kafka_bootstrap,
            "--topic",
            deployment.purchases,
            "--no-progress",
        )
        streamed = evaluate_topic(
            kafka_bootstrap,
            deployment.recommendations,
            str(synthetic_log),
            Scorer.load(model),
            k=10,
            timeout_s=180,
        )
        assert worker.alive(), worker.log_tail()
    finally:
        deployment.stop_all()
    assert streamed["events_ranked"] > 20
    assert offline["hr@10"] > 0  # something to compare: the model does hit
    # Bit for bit: the same ranks in the same order, whatever the worker's batches.
    assert streamed["hr@10"] == offline["hr@10"]
    assert streamed["ndcg@10"] == offline["ndcg@10"]
