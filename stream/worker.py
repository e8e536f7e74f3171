"""``rum worker``: settings from the environment, model loaded, topics checked, Faust run."""

from __future__ import annotations

import argparse
import dataclasses
import socket
import sys
from pathlib import Path

from model.artifact import ArtifactError, resolve_model_dir
from model.options import add_option
from model.serving import Scorer
from stream.logs import configure_logging, get_logger
from stream.settings import Settings, SettingsError

log = get_logger("rum.worker")


def load_scorer(settings: Settings) -> Scorer:
    """The newest artifact of ``RUM_MODEL_DIR`` (without asking Kafka)."""
    if not settings.model_dir:
        msg = "RUM_MODEL_DIR is not set: point it at a model artifact (rum train --out DIR)"
        raise ArtifactError(msg)
    return Scorer.load(resolve_model_dir(settings.model_dir))


# RUM_WEB_HOST values that the worker replaces by this machine's own name or address:
# each replica of a compose service (or pod) then announces an address of its own.
HOSTNAME = "@hostname"
HOST_IP = "@ip"


class AnnouncedHostError(ValueError):
    """RUM_WEB_HOST=@ip, and this machine's host name does not resolve to an address."""


def announced_host(web_host: str) -> str:
    """The host name other workers reach this one at, for ``RUM_WEB_HOST``.

    ``@hostname`` is this machine's host name (a container's is its own id, which
    other containers of the compose project resolve), ``@ip`` the address that
    name resolves to (a container's address on its network); anything else is
    used as it is.
    """
    if web_host == HOSTNAME:
        return socket.gethostname()
    if web_host == HOST_IP:
        name = socket.gethostname()
        try:
            return socket.gethostbyname(name)
        except OSError as exc:
            msg = f"RUM_WEB_HOST=@ip: this host's name {name!r} does not resolve ({exc})"
            raise AnnouncedHostError(msg) from exc
    return web_host


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
    try:
        settings = dataclasses.replace(settings, web_host=announced_host(settings.web_host))
    except AnnouncedHostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    from stream.topics import TopicLayoutError, ensure_topics

    try:
        ensure_topics(settings)
    except TopicLayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from stream.models import initial_scorer

    try:
        # The current announcement on the models topic wins over the store's newest.
        scorer, source = initial_scorer(settings)
    except ArtifactError as exc:
        log.error("model_not_loaded", error=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from faust.worker import Worker

    from stream.app import create_app
    from stream.processing import prepare_scorer

    prepare_scorer(scorer, settings)  # before the first batch, not during it
    from stream.tuning import raise_producer_buffer

    app = create_app(settings, scorer)
    log.info(
        "worker_starting",
        app_id=settings.app_id,
        broker=settings.broker,
        model_version=scorer.version,
        model_source=source,
        variant=scorer.variant,
        items=scorer.num_items,
        partitions=settings.partitions,
        web_port=settings.web_port,
        announced=f"{settings.web_host}:{settings.web_port}",
        data_dir=settings.data_dir,
    )
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    raise_producer_buffer(app, settings)
    # The logging configured above stays: mode's own setup would add its text handler
    # and print stdout (our JSON lines included) under a [WARNING] prefix.
    worker = Worker(
        app,
        loglevel=settings.log_level,
        quiet=True,
        override_logging=False,
        redirect_stdouts=False,
    )
    # Faust's terminal spinner lowers the root logger to DEBUG so that it can animate on
    # every record: each debug call in aiokafka then builds a LogRecord (about 5% of the
    # event loop in `rum bench stream`). A worker logs JSON, not a spinner.
    worker.spinner = None
    worker.execute_from_commandline()
    return 0
