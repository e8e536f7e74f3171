"""Training: selection on validation only, negatives, and the train/evaluate commands end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.artifact import load_artifact
from model.cli import evaluate_main, train_main
from model.data import EventLog, from_rows
from model.training import NegativeSampler, TrainConfig, train
from tests.unit.model_toys import chain_log, write_csv


def test_best_epoch_is_the_best_validation_epoch_and_its_weights_are_kept() -> None:
    # Mistake: picking the best epoch on the test set. The trainer only sees a validator.
    scores = iter([0.1, 0.5, 0.2, 0.3, 0.1])
    snapshots: list[torch.Tensor] = []

    def validate(net, users, items, popularity):
        snapshots.append(net.item_emb.weight.detach().clone())
        return {"ndcg@10": next(scores), "hr@10": 0.0}

    cfg = TrainConfig(variant="item", dim=4, slots=2, epochs=5, patience=3, progress=False)
    result = train(chain_log(), cfg, validate, log=lambda _: None)
    assert result.best_epoch == 2 and len(result.history) == 5
    assert torch.equal(result.net.item_emb.weight, snapshots[1])


def _with_other_test_items(log: EventLog) -> EventLog:
    """The same log with every user's last (test) event replaced by another item."""
    items = log.item_ids.copy()
    last = {u: i for i, u in enumerate(log.user_ids)}
    for pos in last.values():
        items[pos] = "elsewhere"
    return from_rows(log.user_ids, items, log.timestamps)


@pytest.mark.parametrize("variant", ["item", "feature"])
def test_training_never_reads_the_test_split(variant: str, tmp_path: Path) -> None:
    log = chain_log()
    args = [
        "--variant",
        variant,
        "--epochs",
        "3",
        "--dim",
        "8",
        "--slots",
        "3",
        "--quiet",
        "--seed",
        "3",
        "--threads",
        "2",
    ]
    for name, data in [("a", log), ("b", _with_other_test_items(log))]:
        write_csv(tmp_path / f"{name}.csv", data)
        assert (
            train_main(
                ["--data", str(tmp_path / f"{name}.csv"), "--out", str(tmp_path / name), *args]
            )
            == 0
        )
    a, b = load_artifact(tmp_path / "a"), load_artifact(tmp_path / "b")
    assert a.version == b.version  # identical weights: validation and fit saw the same events
    assert [r["valid_ndcg@10"] for r in a.metrics["history"]] == [
        r["valid_ndcg@10"] for r in b.metrics["history"]
    ]


def test_negatives_avoid_the_users_items() -> None:
    seqs = {1: np.array([1, 2, 3]), 2: np.array([4])}
    sampler = NegativeSampler(seqs, num_items=5, rng=np.random.default_rng(0))
    negs = sampler.sample(np.array([1, 1, 2]), count=50)
    assert set(negs[0]) <= {4, 5} and set(negs[1]) <= {4, 5} and 4 not in set(negs[2])
    assert negs.min() >= 1 and negs.max() <= 5  # never the padding row 0


def test_evaluate_command_prints_flat_json_and_writes_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_csv(tmp_path / "log.csv", chain_log())
    for name, alpha in [("m", "0.2"), ("m0", "0")]:
        assert (
            train_main(
                [
                    "--data",
                    str(data),
                    "--out",
                    str(tmp_path / name),
                    "--variant",
                    "item",
                    "--epochs",
                    "2",
                    "--dim",
                    "8",
                    "--alpha",
                    alpha,
                    "--quiet",
                ]
            )
            == 0
        )
    capsys.readouterr()
    assert (
        evaluate_main(
            [
                "--model",
                str(tmp_path / "m"),
                "--data",
                str(data),
                "--json",
                "--report",
                str(tmp_path / "report"),
                "--alphas",
                "0,0.2",
                "--sweep-models",
                f"{tmp_path / 'm0'},{tmp_path / 'm'}",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert {"hr@5", "hr@10", "hr@20", "ndcg@10", "mrr@10"} <= set(out)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "α sweep" in report and (tmp_path / "report" / "alpha_trained.png").exists()
    assert (
        evaluate_main(["--data", str(data), "--json", "--protocol", "paper", "--baseline", "pop"])
        == 0
    )
    paper = json.loads(capsys.readouterr().out)
    assert {"precision@5", "recall@5", "f1@5", "hr@5", "ndcg@5"} <= set(paper)
    with pytest.raises(SystemExit, match="--alpha 0"):
        evaluate_main(["--model", str(tmp_path / "m"), "--data", str(data), "--baseline", "alpha0"])
    assert (
        evaluate_main(
            [
                "--model",
                str(tmp_path / "m0"),
                "--data",
                str(data),
                "--json",
                "--baseline",
                "alpha0",
                "--protocol",
                "prequential",
            ]
        )
        == 0
    )
    assert "hr@10" in json.loads(capsys.readouterr().out)


def test_interrupt_keeps_the_best_epoch_so_far() -> None:
    scores = iter([0.2, 0.4])

    def validate(net, users, items, popularity):
        score = next(scores, None)
        if score is None:
            raise KeyboardInterrupt
        return {"ndcg@10": score, "hr@10": 0.0}

    cfg = TrainConfig(variant="feature", dim=4, slots=2, epochs=10, progress=False)
    result = train(chain_log(), cfg, validate, log=lambda _: None)
    assert result.best_epoch == 2 and len(result.history) == 2
