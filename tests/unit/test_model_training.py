"""Training: selection on validation only, negatives, and the train/evaluate commands end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model.artifact import load_artifact
from model.cli import evaluate_main, train_main
from model.data import EventLog, from_rows
from model.training import (
    NegativeSampler,
    TrainConfig,
    bce_loss,
    sampled_loss,
    sampled_softmax_loss,
    softmax_loss,
    train,
)
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
    with pytest.raises(SystemExit) as refused:
        evaluate_main(["--model", str(tmp_path / "m"), "--data", str(data), "--baseline", "alpha0"])
    assert refused.value.code == 2 and "--alpha 0" in capsys.readouterr().err
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


def test_losses_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])  # positive first
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    bce = [
        -math.log(sig(2.0)) - math.log(1 - sig(0.0)) - math.log(1 - sig(-1.0)),
        -math.log(sig(0.5)) - math.log(1 - sig(1.5)) - math.log(1 - sig(0.0)),
    ]
    soft = [
        -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0 + math.exp(-1.0))),
        -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(1.5) + 1.0)),
    ]
    assert bce_loss(logits).item() == pytest.approx(sum(bce) / 2, rel=1e-6)
    assert sampled_softmax_loss(logits).item() == pytest.approx(sum(soft) / 2, rel=1e-6)
    mask = torch.tensor([0.0, 1.0])  # a padded step counts for nothing
    assert sampled_loss("sampled-softmax", logits, mask).item() == pytest.approx(soft[1])
    assert sampled_loss("bce", logits, mask).item() == pytest.approx(bce[1], rel=1e-6)
    with pytest.raises(ValueError, match="softmax"):
        sampled_loss("softmax", logits, None)


def test_full_softmax_loss_leaves_the_padding_row_out() -> None:
    # Column 0 is the padding row: a huge logit there must not change the loss.
    logits_all = torch.tensor([[50.0, 1.0, 2.0, 0.0], [-3.0, 0.0, 0.0, 3.0]])  # [S, N+1]
    positives = torch.tensor([2, 1])
    expected = [
        -math.log(math.exp(2.0) / (math.exp(1.0) + math.exp(2.0) + 1.0)),
        -math.log(1.0 / (1.0 + 1.0 + math.exp(3.0))),
    ]
    loss = softmax_loss(logits_all, positives)
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    masked = softmax_loss(logits_all, positives, torch.tensor([1.0, 0.0]))
    assert masked.item() == pytest.approx(expected[0], rel=1e-6)


@pytest.mark.parametrize("variant", ["item", "feature"])
@pytest.mark.parametrize("loss", ["sampled-softmax", "softmax"])
def test_each_loss_trains_and_differs_from_bce(variant: str, loss: str) -> None:
    base = dict(variant=variant, dim=8, slots=3, epochs=2, lr=0.02, negatives=3, progress=False)
    bce = train(chain_log(), TrainConfig(**base), None, log=lambda _: None)  # type: ignore[arg-type]
    other = train(
        chain_log(),
        TrainConfig(**base, loss=loss),  # type: ignore[arg-type]
        None,
        log=lambda _: None,
    )
    assert not torch.equal(bce.net.item_emb.weight, other.net.item_emb.weight)
    first, last = other.history[0]["loss"], other.history[-1]["loss"]
    assert last < first  # the new loss goes down


def test_loss_option_reaches_the_config_and_the_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_csv(tmp_path / "log.csv", chain_log())
    common = ["--data", str(data), "--variant", "feature", "--epochs", "1", "--dim", "4"]
    assert train_main([*common, "--out", str(tmp_path / "a"), "--loss", "softmax", "--quiet"]) == 0
    assert load_artifact(tmp_path / "a").settings["loss"] == "softmax"
    monkeypatch.setenv("RUM_TRAIN_LOSS", "sampled-softmax")
    assert train_main([*common, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert load_artifact(tmp_path / "b").settings["loss"] == "sampled-softmax"
    monkeypatch.delenv("RUM_TRAIN_LOSS")
    assert train_main([*common, "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert load_artifact(tmp_path / "c").settings["loss"] == "bce"  # the paper's, by default
    with pytest.raises(SystemExit):
        train_main([*common, "--out", str(tmp_path / "d"), "--loss", "hinge", "--quiet"])


def test_train_ends_with_validation_beside_most_popular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_csv(tmp_path / "log.csv", chain_log())
    common = ["--data", str(data), "--variant", "item", "--dim", "8", "--quiet"]
    assert train_main([*common, "--out", str(tmp_path / "m"), "--epochs", "2"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    line = next(x for x in captured.err.splitlines() if x.startswith("validation: "))
    assert f"most-popular hr@10 {result['valid_popular_hr@10']:.4f}" in line
    assert f"model hr@10 {result['valid_hr@10']:.4f}" in line
    assert 0.0 <= result["valid_popular_ndcg@10"] <= 1.0
    # --all has no validation part: nothing to compare, no line.
    assert train_main([*common, "--out", str(tmp_path / "a"), "--epochs", "1", "--all"]) == 0
    assert "validation: " not in capsys.readouterr().err


def test_against_popular_warns_only_when_the_model_does_not_beat_it() -> None:
    from model.cli import against_popular

    pop = {"hr@10": 0.0156, "ndcg@10": 0.0080}
    better = against_popular({"hr@10": 0.06, "ndcg@10": 0.035}, pop)
    worse = against_popular({"hr@10": 0.003, "ndcg@10": 0.0015}, pop)
    assert len(better) == 1 and "0.0350" in better[0] and "0.0080" in better[0]
    assert len(worse) == 2 and worse[1].startswith("warning: the model does not beat most-popular")
    assert against_popular({}, pop) == []


def test_evaluate_shows_progress_unless_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_csv(tmp_path / "log.csv", chain_log())
    argv = ["--data", str(data), "--baseline", "pop", "--json"]
    assert evaluate_main(argv) == 0
    shown = capsys.readouterr()
    assert "evaluating cases" in shown.err and "hr@10" in json.loads(shown.out)
    assert evaluate_main([*argv, "--quiet"]) == 0
    assert "evaluating" not in capsys.readouterr().err
