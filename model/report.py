"""``rum evaluate --report DIR``: a Markdown page with the metrics, the training curve and α sweeps.

Two α sweeps are drawn when available:

- scoring-time: the evaluated model re-scored with other α values (cheap; the
  model was trained at its own α, so this shows how much the memory term
  contributes, not what training at that α would give);
- trained: one artifact per α passed with ``--sweep-models`` (the paper's figure).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from model import evaluate as ev
from model.artifact import load_artifact
from model.serving import Scorer
from model.splits import Split


def _headline_keys(split: Split) -> tuple[str, str]:
    return ("hr@5", "ndcg@5") if split.protocol == "paper" else ("hr@10", "ndcg@10")


def _scorer_with_alpha(model_dir: str, alpha: float) -> Scorer:
    art = load_artifact(model_dir)
    config = dataclasses.replace(art.config, alpha=alpha)
    return Scorer(config, art.version, art.users, art.items, art.weights, art.popularity)


def _sweep_plot(
    path: Path, title: str, points: list[tuple[float, dict[str, float]]], keys: tuple[str, str]
) -> None:
    points = sorted(points, key=lambda p: p[0])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key in keys:
        ax.plot([a for a, _ in points], [m[key] for _, m in points], marker="o", label=key)
    ax.set_xlabel("α")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _table(rows: list[tuple[str, dict[str, float]]], keys: Sequence[str]) -> list[str]:
    lines = ["| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, values in rows:
        lines.append(
            f"| {name} | " + " | ".join(f"{values.get(k, float('nan')):.4f}" for k in keys) + " |"
        )
    return lines


def write_report(
    out: Path,
    model_dir: str | None,
    split: Split,
    results: dict[str, Any],
    alphas: Sequence[float],
    sweep_models: Sequence[str],
    ks: Sequence[int],
    data: str,
) -> Path:
    """Write ``out/report.md`` and its PNG plots; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    keys = _headline_keys(split)
    metric_keys = [k for k in results if "@" in k]
    lines = [
        f"# RUM evaluation — protocol `{split.protocol}`",
        "",
        f"Data: `{data}`. Model: `{results.get('model')}`. Full ranking over all items, "
        "seen items excluded, ties counted against the model.",
        "",
        *_table([(str(results.get("model")), results)], metric_keys),
        "",
        "Most-popular through the same evaluator:",
        "",
        *_table(
            [("most-popular", ev.evaluate_split_test(ev.PopularityRanker(split.fit), split, ks))],
            metric_keys,
        ),
        "",
    ]
    if model_dir is not None:
        art = load_artifact(model_dir)
        history = art.metrics.get("history", [])
        if history and "valid_ndcg@10" in history[0]:
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.plot(
                [r["epoch"] for r in history], [r["valid_ndcg@10"] for r in history], marker="o"
            )
            ax.axvline(art.metrics.get("best_epoch", 0), color="grey", linestyle="--")
            ax.set_xlabel("epoch")
            ax.set_ylabel("validation NDCG@10")
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(out / "training.png", dpi=120)
            plt.close(fig)
            lines += ["## Training (validation only)", "", "![training](training.png)", ""]
        points = []
        for alpha in alphas:
            scorer = _scorer_with_alpha(model_dir, alpha)
            points.append((alpha, ev.evaluate_split_test(scorer, split, ks)))
        _sweep_plot(
            out / "alpha_scoring.png",
            f"α at scoring time (trained at α={art.config.alpha})",
            points,
            keys,
        )
        lines += [
            "## α sweep at scoring time",
            "",
            f"The model trained at α = {art.config.alpha}, re-scored with other α values.",
            "",
            "![alpha at scoring time](alpha_scoring.png)",
            "",
            *_table([(f"α={a}", m) for a, m in points], list(keys)),
            "",
        ]
    if sweep_models:
        trained = []
        for path in sweep_models:
            scorer = Scorer.load(path)
            trained.append((scorer.config.alpha, ev.evaluate_split_test(scorer, split, ks)))
        _sweep_plot(out / "alpha_trained.png", "α at training time", trained, keys)
        lines += [
            "## α sweep, one model trained per α (as in the paper)",
            "",
            "![alpha trained](alpha_trained.png)",
            "",
            *_table([(f"α={a}", m) for a, m in sorted(trained, key=lambda p: p[0])], list(keys)),
            "",
        ]
    page = out / "report.md"
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return page
