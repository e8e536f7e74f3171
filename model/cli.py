"""``rum train`` and ``rum evaluate``: argument parsing at the edge, then plain function calls.

Every option is also an environment variable, ``RUM_TRAIN_<OPTION>`` or
``RUM_EVALUATE_<OPTION>`` (see :mod:`model.options`).

Baselines: ``--baseline pop`` ranks by training popularity through the same
evaluator (no ``--model`` needed). ``--baseline alpha0`` evaluates ``--model``
after checking that it was trained with ``--alpha 0`` (train it with the same
command as the RUM model plus ``--alpha 0``): "RUM with α = 0 trained the
same way" is then literally the same training code.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, cast

import numpy as np
import torch

from model import evaluate as ev
from model.artifact import ArtifactError, save_artifact
from model.data import DEFAULT_COLUMNS, DataError, EventLog, Vocab, load_events
from model.network import FeatureRUM, ItemRUM
from model.options import add_flag, add_option
from model.serving import Scorer
from model.splits import PROTOCOLS, Protocol, Split, make_split
from model.training import LOSSES, TrainConfig, Validator, seconds_per_epoch, train

DEFAULT_SLOTS = {"item": 5, "feature": 20}


def _columns(raw: str) -> tuple[str, str, str]:
    parts = tuple(p.strip() for p in raw.split(","))
    if len(parts) != 3 or not all(parts):
        msg = f"--columns needs three comma-separated names (user,item,timestamp), got {raw!r}"
        raise argparse.ArgumentTypeError(msg)
    user, item, time = parts
    return user, item, time


def _ks(raw: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(p) for p in raw.split(","))
    except ValueError as exc:
        msg = f"--k needs comma-separated positive integers such as 5,10,20, got {raw!r}"
        raise argparse.ArgumentTypeError(msg) from exc
    if not ks or min(ks) < 1:
        msg = f"--k values must be >= 1, got {raw!r}"
        raise argparse.ArgumentTypeError(msg)
    return ks


def _setup_torch(threads: int, seed: int | None = None) -> str:
    torch.set_num_threads(threads)
    if seed is not None:
        torch.manual_seed(seed)
    return "cuda" if torch.cuda.is_available() else "cpu"


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rum train", description="Train a RUM model.")
    add_option(parser, "--data", required=True, help="event log (CSV, TSV or JSON Lines)")
    add_option(
        parser, "--variant", choices=["item", "feature"], default="feature", help="RUM variant"
    )
    add_option(parser, "--out", required=True, help="artifact directory to write")
    add_option(
        parser,
        "--protocol",
        choices=list(PROTOCOLS),
        default="loo",
        help="fit only this protocol's training part, select on its validation part",
    )
    add_flag(
        parser, "--all", help="train on every event (deployment); fixed --epochs, no selection"
    )
    add_option(
        parser,
        "--columns",
        type=_columns,
        default=",".join(DEFAULT_COLUMNS),
        help="user,item,timestamp column names",
    )
    add_option(parser, "--epochs", type=int, default=30, help="maximum epochs")
    add_option(parser, "--dim", type=int, default=64, help="embedding size D")
    add_option(
        parser,
        "--slots",
        type=int,
        default=None,
        help="memory slots K (default 5 item-level, 20 feature-level)",
    )
    add_option(parser, "--alpha", type=float, default=0.2, help="memory weight α in MERGE")
    add_option(parser, "--beta", type=float, default=1.0, help="attention strength β")
    add_option(parser, "--negatives", type=int, default=1, help="sampled negatives per positive")
    add_option(
        parser,
        "--loss",
        choices=list(LOSSES),
        default="bce",
        help="bce (the paper's, sampled negatives), sampled-softmax (the same negatives), "
        "softmax (all items)",
    )
    add_option(parser, "--lr", type=float, default=1e-3, help="Adam learning rate")
    add_option(parser, "--l2", type=float, default=0.0, help="L2 weight λ")
    add_option(
        parser,
        "--batch-size",
        type=int,
        default=256,
        help="samples (item-level) or users (feature-level) per batch",
    )
    add_option(parser, "--max-len", type=int, default=50, help="BPTT length L (feature-level)")
    add_option(
        parser,
        "--patience",
        type=int,
        default=3,
        help="epochs without validation NDCG@10 gain before stopping",
    )
    add_option(parser, "--init-std", type=float, default=0.1, help="std of the initial weights")
    add_option(parser, "--seed", type=int, default=0, help="random seed")
    add_option(parser, "--threads", type=int, default=2, help="torch CPU threads")
    add_flag(parser, "--quiet", help="no progress bars")
    return parser


def _user_error(command: str, message: object) -> NoReturn:
    """One line on stderr and exit status 2, as ``rum replay`` does for a user error."""
    print(f"rum {command}: {message}", file=sys.stderr)
    raise SystemExit(2)


def _read_log(command: str, path: str, columns: Sequence[str]) -> EventLog:
    try:
        return load_events(path, columns)
    except DataError as exc:
        _user_error(command, exc)


def _validator(split: Split, progress: bool) -> Validator:
    def validate(
        net: ItemRUM | FeatureRUM, users: Vocab, items: Vocab, popularity: np.ndarray
    ) -> dict[str, float]:
        scorer = Scorer.from_network(net, users, items, popularity)
        return ev.evaluate_part(scorer, split.valid, split.protocol, (10,), progress=progress)

    return validate


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def train_main(argv: list[str]) -> int:
    args = train_parser().parse_args(argv)
    device = _setup_torch(args.threads, args.seed)
    log = _read_log("train", args.data, args.columns)
    protocol = cast(Protocol, args.protocol)
    split = make_split(log, protocol)
    fit = log if args.all else split.fit
    cfg = TrainConfig(
        variant=args.variant,
        dim=args.dim,
        slots=args.slots or DEFAULT_SLOTS[args.variant],
        alpha=args.alpha,
        beta=args.beta,
        init_std=args.init_std,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        l2=args.l2,
        negatives=args.negatives,
        loss=args.loss,
        max_len=args.max_len,
        patience=args.patience,
        seed=args.seed,
        device=device,
        progress=not args.quiet,
    )
    print(
        f"rum train: {len(fit)} events to fit ({'all' if args.all else protocol} split), "
        f"variant {cfg.variant}, device {device}, {args.threads} threads",
        file=sys.stderr,
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM keeps the best epoch too
    try:
        result = train(
            fit,
            cfg,
            None if args.all else _validator(split, cfg.progress),
            log=lambda line: print(line, file=sys.stderr),
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    settings = {
        **cfg.to_dict(),
        "data": str(Path(args.data).resolve()),
        "protocol": "all" if args.all else protocol,
        "columns": list(args.columns),
        "threads": args.threads,
    }
    train_metrics: dict[str, Any] = {
        "history": result.history,
        "best_epoch": result.best_epoch,
        "valid": result.best_valid,
        "seconds_per_epoch": seconds_per_epoch(result.history),
    }
    version = save_artifact(
        args.out, result.net, result.users, result.items, result.popularity, settings, train_metrics
    )
    popular = {} if args.all else _popular_valid(split, cfg.progress)
    for line in against_popular(result.best_valid, popular):
        print(line, file=sys.stderr)
    print(
        json.dumps(
            {
                "version": version,
                "out": args.out,
                "best_epoch": result.best_epoch,
                **{f"valid_{k}": v for k, v in result.best_valid.items()},
                **{f"valid_popular_{k}": v for k, v in popular.items()},
                "seconds_per_epoch": train_metrics["seconds_per_epoch"],
            }
        )
    )
    return 0


def _popular_valid(split: Split, progress: bool) -> dict[str, float]:
    """Most-popular (by the fit part) on the validation part the epochs were chosen on."""
    popular = ev.PopularityRanker(split.fit)
    return ev.evaluate_part(popular, split.valid, split.protocol, (10,), progress=progress)


def against_popular(model: dict[str, float], popular: dict[str, float]) -> list[str]:
    """The closing lines of ``rum train``: validation figures beside most-popular's, and a
    warning when the model does not beat it (a model worse than a popularity list)."""
    if not model or not popular:
        return []
    lines = [
        f"validation: model hr@10 {model['hr@10']:.4f} ndcg@10 {model['ndcg@10']:.4f};"
        f" most-popular hr@10 {popular['hr@10']:.4f} ndcg@10 {popular['ndcg@10']:.4f}"
    ]
    if model["ndcg@10"] <= popular["ndcg@10"]:
        lines.append(
            "warning: the model does not beat most-popular on validation ndcg@10;"
            " train longer (more --epochs) or keep the default loss and negatives"
        )
    return lines


def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rum evaluate", description="Evaluate a RUM model.")
    add_option(
        parser, "--model", default=None, help="artifact directory (not needed for --baseline pop)"
    )
    add_option(parser, "--data", required=True, help="event log (CSV, TSV or JSON Lines)")
    add_option(
        parser, "--protocol", choices=list(PROTOCOLS), default="loo", help="evaluation protocol"
    )
    add_option(
        parser,
        "--columns",
        type=_columns,
        default=",".join(DEFAULT_COLUMNS),
        help="user,item,timestamp column names",
    )
    add_option(parser, "--k", type=_ks, default="5,10,20", help="cut-offs for HR/NDCG/MRR")
    add_option(
        parser,
        "--baseline",
        choices=["pop", "alpha0"],
        default=None,
        help="pop: most-popular; alpha0: --model must be trained with --alpha 0",
    )
    add_option(
        parser,
        "--scoring",
        choices=["exact", "two-stage"],
        default="exact",
        help="scoring mode for the prequential replay",
    )
    add_option(parser, "--report", default=None, help="write a Markdown report with plots here")
    add_option(
        parser,
        "--alphas",
        default="0,0.1,0.2,0.3,0.5,1.0",
        help="α values for the report's scoring-time α sweep",
    )
    add_option(
        parser,
        "--sweep-models",
        default="",
        help="comma-separated artifacts trained with different --alpha, for the report",
    )
    add_option(parser, "--threads", type=int, default=2, help="torch CPU threads")
    add_flag(parser, "--json", help="print one flat JSON object of metrics")
    add_flag(parser, "--quiet", help="no progress bar (on stderr)")
    return parser


def _load_scorer(path: str) -> Scorer:
    try:
        return Scorer.load(path)
    except ArtifactError as exc:
        _user_error("evaluate", exc)


def evaluate_main(argv: list[str]) -> int:
    args = evaluate_parser().parse_args(argv)
    _setup_torch(args.threads)
    log = _read_log("evaluate", args.data, args.columns)
    split = make_split(log, cast(Protocol, args.protocol))
    ranker: ev.Ranker
    label: str
    if args.baseline == "pop":
        ranker, label = ev.PopularityRanker(split.fit), "most-popular"
    else:
        if args.model is None:
            _user_error("evaluate", "--model DIR is required (except with --baseline pop)")
        scorer = _load_scorer(args.model)
        if args.baseline == "alpha0" and scorer.config.alpha != 0.0:
            msg = (
                f"--baseline alpha0 needs a model trained with --alpha 0, but "
                f"{args.model} has alpha={scorer.config.alpha}; train one with the same "
                "command plus --alpha 0 and pass it as --model"
            )
            _user_error("evaluate", msg)
        ranker, label = scorer, ("alpha0" if args.baseline == "alpha0" else scorer.version)
    results = ev.evaluate_split_test(ranker, split, args.k, args.scoring, not args.quiet)
    flat: dict[str, Any] = {"model": label, "protocol": args.protocol, **results}
    if args.json:
        print(json.dumps(flat, sort_keys=True))
    else:
        for key, value in flat.items():
            print(f"{key:>14}: {value:.4f}" if isinstance(value, float) else f"{key:>14}: {value}")
    if args.report:
        from model.report import write_report

        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
        sweep = [m for m in args.sweep_models.split(",") if m.strip()]
        path = write_report(
            Path(args.report), args.model, split, flat, alphas, sweep, args.k, args.data
        )
        print(f"report written to {path}", file=sys.stderr)
    return 0
