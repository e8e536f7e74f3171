"""The ``rum`` command line: one entry point, a subcommand per job.

Only the chosen subcommand's module is imported and only its options are built, so
``rum --help``, ``rum kafka ...``, ``rum replay`` and ``rum models list`` start
without importing torch. A subcommand that talks to Kafka has its broker address
checked first (:mod:`stream.brokers`): a malformed or unreachable broker is one
line on stderr and exit status 2, within seconds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from model.options import add_flag, add_option

Handler = Callable[[argparse.Namespace], int]
BrokerOf = Callable[[argparse.Namespace], str | None]

DESCRIPTION = (
    "RUM stream: fresh, explained recommendations from a Kafka stream of purchases "
    "(Faust workers, RUM user-memory models). Every option can also be set in the "
    "environment; 'rum COMMAND --help' names each variable, and the command line wins."
)
EPILOG = "A local broker: rum kafka start (then export the RUM_BROKER line it prints)."


# --- rum kafka start | stop | status ---------------------------------------------------------


def _kafka_start(args: argparse.Namespace) -> int:
    from deploy.kafka import harness

    data_dir = Path(args.data_dir)
    running, answers = harness.status(data_dir)
    if running is not None and answers:
        print(f"{running.kind} Kafka {running.version} already running from {running.data_dir}")
        print(f"export RUM_BROKER=kafka://{running.bootstrap}")
        return 0
    try:
        port, note = harness.pick_port(args.port)
    except harness.KafkaHarnessError as exc:  # the --port asked for is taken: a user error
        print(f"rum kafka start: {exc}", file=sys.stderr)
        return 2
    try:
        info = harness.start(data_dir, port, embedded=args.embedded)
    except harness.KafkaHarnessError as exc:
        print(f"rum kafka start: {exc}", file=sys.stderr)
        return 1
    if note:
        print(note)
    print(f"{info.kind} Kafka {info.version} running (pid {info.pid}, data {info.data_dir})")
    print(f"export RUM_BROKER=kafka://{info.bootstrap}")
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
    print(f"export RUM_BROKER=kafka://{info.bootstrap}")
    return 0 if answers else 1


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    from deploy.kafka.harness import DEFAULT_DATA_DIR

    add_option(
        parser,
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        help="broker data directory",
        env="RUM_KAFKA_DATA_DIR",
    )


def _add_kafka_options(kafka: argparse.ArgumentParser) -> None:
    actions = kafka.add_subparsers(dest="action", required=True)
    text = "start a local broker; prints the export RUM_BROKER=... line to use"
    start = actions.add_parser(
        "start",
        help=text,
        description=(
            "Start a single-node Apache Kafka (or, with --embedded, the in-memory Tansu "
            "broker) on 127.0.0.1, on port 9092 (what RUM_BROKER defaults to) when it is "
            "free, else on a free port; the last line is the export RUM_BROKER=... to use."
        ),
    )
    add_option(
        start,
        "--port",
        type=int,
        default=None,
        help="port (9092 when free, else a free one)",
        env="RUM_KAFKA_PORT",
    )
    _add_data_dir(start)
    add_flag(
        start,
        "--embedded",
        help="run the embedded Tansu broker (memory only; demo use)",
        env="RUM_KAFKA_EMBEDDED",
    )
    start.set_defaults(handler=_kafka_start)
    for name, handler, text in (
        ("stop", _kafka_stop, "stop the broker of a data directory"),
        ("status", _kafka_status, "say whether the broker answers"),
    ):
        sub = actions.add_parser(name, help=text, description=text)
        _add_data_dir(sub)
        sub.set_defaults(handler=handler)


def _kafka(args: argparse.Namespace) -> int:
    handler: Handler = args.handler
    return handler(args)


# --- the other subcommands: each imports its module only when chosen -------------------------


def _add_worker_options(parser: argparse.ArgumentParser) -> None:
    from stream.worker import add_worker_options

    add_worker_options(parser)


def _worker(args: argparse.Namespace) -> int:
    from stream.worker import worker_main

    return worker_main(args)


def _add_trainer_options(parser: argparse.ArgumentParser) -> None:
    from stream.trainer import add_trainer_options

    add_trainer_options(parser)


def _trainer(args: argparse.Namespace) -> int:
    from stream.trainer import trainer_main

    return trainer_main(args)


def _add_models_options(parser: argparse.ArgumentParser) -> None:
    from stream.models import add_models_options

    add_models_options(parser)


def _models(args: argparse.Namespace) -> int:
    from stream.models import models_main

    return models_main(args)


def _add_evaluate_stream_options(parser: argparse.ArgumentParser) -> None:
    from stream.prequential import add_evaluate_stream_options

    add_evaluate_stream_options(parser)


def _evaluate_stream(args: argparse.Namespace) -> int:
    from stream.prequential import evaluate_stream_main

    return evaluate_stream_main(args)


def _add_replay_options(parser: argparse.ArgumentParser) -> None:
    from stream.replay import add_replay_options

    add_replay_options(parser)


def _replay(args: argparse.Namespace) -> int:
    from stream.replay import replay_main

    return replay_main(args)


def _add_demo_options(parser: argparse.ArgumentParser) -> None:
    from stream.demo import add_demo_options

    add_demo_options(parser)


def _demo(args: argparse.Namespace) -> int:
    from stream.demo import demo_main

    return demo_main(args)


def _add_settings_table_options(parser: argparse.ArgumentParser) -> None:
    from stream.readme import add_settings_table_options

    add_settings_table_options(parser)


def _settings_table(args: argparse.Namespace) -> int:
    from stream.readme import settings_table_main

    return settings_table_main(args)


def _add_bench_options(parser: argparse.ArgumentParser) -> None:
    from stream.bench import add_bench_options

    add_bench_options(parser)


def _bench(args: argparse.Namespace) -> int:
    from stream.bench import bench_main

    return bench_main(args)


# --- which broker a command talks to (checked before it runs) --------------------------------


def _settings_broker(args: argparse.Namespace) -> str:
    """``--broker``, else ``RUM_BROKER``, else the default: the worker settings' broker."""
    from stream.settings import Settings

    return Settings.from_env(broker=args.broker).broker


def _option_broker(args: argparse.Namespace) -> str | None:
    broker: str | None = getattr(args, "broker", None)
    return broker


def _bench_broker(args: argparse.Namespace) -> str | None:
    bootstrap: str | None = getattr(args, "bootstrap", None)  # `rum bench table` has none
    return bootstrap


@dataclass(frozen=True)
class Command:
    help: str
    description: str
    add_options: Callable[[argparse.ArgumentParser], None]
    run: Handler
    # The broker the command talks to; None: it talks to no broker, or checks its own.
    broker: BrokerOf | None = None
    broker_option: str = "--broker"


COMMANDS: dict[str, Command] = {
    "kafka": Command(
        "run a local broker (Apache Kafka, or embedded)",
        "Start, stop or ask about a local single-node broker.",
        _add_kafka_options,
        _kafka,
    ),
    "worker": Command(
        "run a streaming worker (Faust)",
        "Run a streaming worker: read purchases from Kafka, update each user's memory, "
        "publish recommendations, and answer GET /recommendations/{user_id} over HTTP. "
        "Settings come from RUM_* variables (the README's table).",
        _add_worker_options,
        _worker,
        _settings_broker,
    ),
    "trainer": Command(
        "fine-tune from the purchases topic and publish new versions (guarded)",
        "Fine-tune the current model from the purchases topic on a schedule (or once, "
        "with --once) and publish a new version only when it does not score worse on "
        "the held-out tail; workers swap to it without a restart.",
        _add_trainer_options,
        _trainer,
        _settings_broker,
    ),
    "models": Command(
        "list model versions, promote one (rollback)",
        "List the model versions announced on the models topic (and in the store), or "
        "promote one to be current again (rollback).",
        _add_models_options,
        _models,
        _settings_broker,
    ),
    "evaluate-stream": Command(
        "prequential HR/NDCG measured from the recommendations topic (RUM_EMIT=event)",
        "Measure prequential HR/NDCG from what a worker with RUM_EMIT=event published "
        "for a replayed log.",
        _add_evaluate_stream_options,
        _evaluate_stream,
        _option_broker,
    ),
    "replay": Command(
        "replay an event log (CSV/TSV/JSONL) into Kafka",
        "Replay an event log (CSV, TSV or JSON Lines) into the input topic, keyed by user, "
        "in timestamp order.",
        _add_replay_options,
        _replay,
    ),
    "demo": Command(
        "train, stream and show recommendations live",
        "Train a small model on MovieLens, start a broker (or use RUM_BROKER) and a worker, "
        "replay users' purchases and show their recommendations as they arrive.",
        _add_demo_options,
        _demo,
        _option_broker,
    ),
    "settings-table": Command(
        "print (or write into README) the settings",
        "Print the table of worker settings (RUM_* variables), or write it into README.md.",
        _add_settings_table_options,
        _settings_table,
    ),
    "bench": Command(
        "measure throughput, latency, scoring, training, recovery, state size, soak",
        "Measure the product's figures through Apache Kafka and real workers.",
        _add_bench_options,
        _bench,
        _bench_broker,
        "--bootstrap",
    ),
}

# Subcommands whose options are parsed by their own module (they own many options).
DELEGATED: dict[str, tuple[str, str, str]] = {
    "train": ("model.cli", "train_main", "train a RUM model on an event log"),
    "evaluate": ("model.cli", "evaluate_main", "evaluate a model (loo, paper, prequential)"),
}


def build_parser(selected: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``rum`` parser; options are built for the ``selected`` commands only (None: all)."""
    parser = argparse.ArgumentParser(prog="rum", description=DESCRIPTION, epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.description)
        if selected is None or name in selected:
            command.add_options(sub)
    for name, (_module, _function, text) in DELEGATED.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def check_broker(command: Command, args: argparse.Namespace) -> str | None:
    """Why the command's broker cannot be used (one line), or None when it answers."""
    from stream.brokers import BrokerError, probe
    from stream.settings import SettingsError

    if command.broker is None:
        return None
    try:
        broker = command.broker(args)
        if broker:
            probe(broker, option=command.broker_option)
    except (BrokerError, SettingsError) as exc:
        return str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        import importlib

        module_name, function_name, _text = DELEGATED[argv[0]]
        function: Callable[[list[str]], int] = getattr(
            importlib.import_module(module_name), function_name
        )
        return function(argv[1:])
    args = build_parser(argv[:1]).parse_args(argv)
    command = COMMANDS[args.command]
    problem = check_broker(command, args)
    if problem is not None:
        print(f"rum {args.command}: {problem}", file=sys.stderr)
        return 2
    return command.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
