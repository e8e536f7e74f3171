"""The ``rum`` command line: one entry point, a subcommand per job.

Every option also reads ``RUM_<OPTION>`` from the environment (``--help`` names
the variable); the command line wins.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from model.options import add_flag, add_option

Handler = Callable[[argparse.Namespace], int]


def _kafka_start(args: argparse.Namespace) -> int:
    from deploy.kafka import harness

    try:
        info = harness.start(Path(args.data_dir), args.port, embedded=args.embedded)
    except harness.KafkaHarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{info.kind} Kafka {info.version} running (pid {info.pid}, data {info.data_dir})")
    print(info.bootstrap)
    return 0


def _kafka_stop(args: argparse.Namespace) -> int:
    from deploy.kafka import harness

    stopped = harness.stop(Path(args.data_dir))
    print("stopped" if stopped else f"no broker was running from {args.data_dir}")
    return 0


def _kafka_status(args: argparse.Namespace) -> int:
    from deploy.kafka import harness

    info, answers = harness.status(Path(args.data_dir))
    if info is None:
        print(f"no broker recorded in {args.data_dir}")
        return 1
    state = "answering" if answers else "not answering"
    print(f"{info.kind} Kafka {info.version}, pid {info.pid}, {state}")
    print(info.bootstrap)
    return 0 if answers else 1


def _add_kafka(commands: argparse._SubParsersAction) -> None:
    from deploy.kafka.harness import DEFAULT_DATA_DIR

    kafka = commands.add_parser("kafka", help="run a local broker (Apache Kafka, or embedded)")
    actions = kafka.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="start a broker; prints host:port last")
    add_option(
        start,
        "--port",
        type=int,
        default=None,
        help="port (a free one if unset)",
        env="RUM_KAFKA_PORT",
    )
    add_option(
        start,
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        help="broker data directory",
        env="RUM_KAFKA_DATA_DIR",
    )
    add_flag(start, "--embedded", help="run the embedded Tansu broker (memory only; demo use)")
    start.set_defaults(handler=_kafka_start)
    for name, handler, text in (
        ("stop", _kafka_stop, "stop the broker of a data directory"),
        ("status", _kafka_status, "say whether the broker answers"),
    ):
        sub = actions.add_parser(name, help=text)
        add_option(
            sub,
            "--data-dir",
            default=str(DEFAULT_DATA_DIR),
            help="broker data directory",
            env="RUM_KAFKA_DATA_DIR",
        )
        sub.set_defaults(handler=handler)


# Subcommands whose options are parsed by their own module (they own many options).
DELEGATED: dict[str, tuple[str, str, str]] = {
    "train": ("model.cli", "train_main", "train a RUM model on an event log"),
    "evaluate": ("model.cli", "evaluate_main", "evaluate a model (loo, paper, prequential)"),
}


def _evaluate_stream(args: argparse.Namespace) -> int:
    from stream.prequential import evaluate_stream_main

    return evaluate_stream_main(args)


def _worker(args: argparse.Namespace) -> int:
    from stream.worker import worker_main

    return worker_main(args)


def _trainer(args: argparse.Namespace) -> int:
    from stream.trainer import trainer_main

    return trainer_main(args)


def _models(args: argparse.Namespace) -> int:
    from stream.models import models_main

    return models_main(args)


def _replay(args: argparse.Namespace) -> int:
    from stream.replay import replay_main

    return replay_main(args)


def _demo(args: argparse.Namespace) -> int:
    from stream.demo import demo_main

    return demo_main(args)


def _settings_table(args: argparse.Namespace) -> int:
    from stream.readme import settings_table_main

    return settings_table_main(args)


def _bench(args: argparse.Namespace) -> int:
    from stream.bench import bench_main

    return bench_main(args)


def _add_replay_demo_docs(commands: argparse._SubParsersAction) -> None:
    from stream.demo import add_demo_options
    from stream.readme import add_settings_table_options
    from stream.replay import add_replay_options

    replay = commands.add_parser("replay", help="replay an event log (CSV/TSV/JSONL) into Kafka")
    add_replay_options(replay)
    replay.set_defaults(handler=_replay)
    demo = commands.add_parser("demo", help="train, stream and show recommendations live")
    add_demo_options(demo)
    demo.set_defaults(handler=_demo)
    table = commands.add_parser("settings-table", help="print (or write into README) the settings")
    add_settings_table_options(table)
    table.set_defaults(handler=_settings_table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rum", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_kafka(commands)
    from stream.prequential import add_evaluate_stream_options
    from stream.worker import add_worker_options

    evaluate_stream = commands.add_parser(
        "evaluate-stream",
        help="prequential HR/NDCG measured from the recommendations topic (RUM_EMIT=event)",
    )
    add_evaluate_stream_options(evaluate_stream)
    evaluate_stream.set_defaults(handler=_evaluate_stream)
    worker = commands.add_parser("worker", help="run a streaming worker (Faust)")
    add_worker_options(worker)
    worker.set_defaults(handler=_worker)
    from stream.models import add_models_options
    from stream.trainer import add_trainer_options

    trainer = commands.add_parser(
        "trainer", help="fine-tune from the purchases topic and publish new versions (guarded)"
    )
    add_trainer_options(trainer)
    trainer.set_defaults(handler=_trainer)
    models = commands.add_parser("models", help="list model versions, promote one (rollback)")
    add_models_options(models)
    models.set_defaults(handler=_models)
    _add_replay_demo_docs(commands)
    from stream.bench import add_bench_options

    bench = commands.add_parser("bench", help="measure the figures of BENCHMARKS.md")
    add_bench_options(bench)
    bench.set_defaults(handler=_bench)
    for name, (_module, _function, text) in DELEGATED.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        import importlib

        module_name, function_name, _text = DELEGATED[argv[0]]
        function: Callable[[list[str]], int] = getattr(
            importlib.import_module(module_name), function_name
        )
        return function(argv[1:])
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
