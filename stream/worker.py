"""``rum worker``: settings from the environment, model loaded, topics checked, Faust run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.artifact import CONFIG, ArtifactError
from model.options import add_option
from model.serving import Scorer
from stream.logs import configure_logging, get_logger
from stream.settings import Settings, SettingsError

log = get_logger("rum.worker")


def resolve_model_dir(path: str | Path) -> Path:
    """An artifact directory as it is, or the newest artifact in a model store.

    A store is a directory of artifact directories; "newest" is the latest
    modification time of their config file (publishing writes it last, atomically).
    """
    root = Path(path)
    if (root / CONFIG).is_file():
        return root
    if not root.is_dir():
        msg = f"RUM_MODEL_DIR={root} does not exist; train a model with `rum train --out {root}`"
        raise ArtifactError(msg)
    candidates = [
        child
        for child in root.iterdir()
        if not child.name.startswith(".") and (child / CONFIG).is_file()
    ]
    if not candidates:
        msg = f"RUM_MODEL_DIR={root} holds no model artifact (no */{CONFIG}); train one first"
        raise ArtifactError(msg)
    return max(candidates, key=lambda child: ((child / CONFIG).stat().st_mtime, child.name))


def load_scorer(settings: Settings) -> Scorer:
    if not settings.model_dir:
        msg = "RUM_MODEL_DIR is not set: point it at a model artifact (rum train --out DIR)"
        raise ArtifactError(msg)
    return Scorer.load(resolve_model_dir(settings.model_dir))


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--broker", help="Kafka URL", env="RUM_BROKER")
    add_option(parser, "--model-dir", help="model artifact or store", env="RUM_MODEL_DIR")
    add_option(parser, "--data-dir", help="worker data directory", env="RUM_DATA_DIR")
    add_option(parser, "--web-port", type=int, help="HTTP port", env="RUM_WEB_PORT")
    parser.epilog = "Every other setting is read from its RUM_* variable (see the README's table)."


def worker_main(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(
            broker=args.broker,
            model_dir=args.model_dir,
            data_dir=args.data_dir,
            web_port=args.web_port,
        )
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        scorer = load_scorer(settings)
    except ArtifactError as exc:
        log.error("model_not_loaded", error=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from stream.topics import TopicLayoutError, ensure_topics

    try:
        ensure_topics(settings)
    except TopicLayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from faust.worker import Worker

    from stream.app import create_app

    app = create_app(settings, scorer)
    log.info(
        "worker_starting",
        app_id=settings.app_id,
        broker=settings.broker,
        model_version=scorer.version,
        variant=scorer.variant,
        items=scorer.num_items,
        partitions=settings.partitions,
        web_port=settings.web_port,
        data_dir=settings.data_dir,
    )
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    worker = Worker(app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
    return 0
