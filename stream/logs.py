"""One JSON log stream on stdout, configured once at the edge (``rum`` commands).

The project's structlog events and every standard-library record (Faust, mode,
aiokafka) go through one handler and come out as one JSON object per line with
the record's own level: ``{"event", "level", "logger", "timestamp", ...}``. A
Faust line's text (tables included) is the ``event`` string, newlines escaped.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import structlog

# aiokafka logs each retry of a group-coordinator lookup at ERROR; against a broker
# that is still loading its offsets topic (every fresh start) the first lookup fails
# with "[Error 15] GroupCoordinatorNotAvailableError" and the retry succeeds.
_RETRIED_COORDINATOR_LOOKUP = "Group Coordinator Request failed"


class DemoteRetriedErrors(logging.Filter):
    """Record retriable group-coordinator failures at INFO: aiokafka retries them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno >= logging.ERROR
            and isinstance(record.msg, str)
            and record.msg.startswith(_RETRIED_COORDINATOR_LOOKUP)
            and any(getattr(arg, "retriable", False) for arg in _args(record))
        ):
            record.levelno = logging.INFO
            record.levelname = "INFO"
        return True


def _args(record: logging.LogRecord) -> tuple[Any, ...]:
    args = record.args
    if isinstance(args, tuple):
        return args
    return (args,) if args is not None else ()


def _level(level: str) -> int:
    numeric = logging.getLevelName(level.upper())
    return numeric if isinstance(numeric, int) else logging.INFO


def json_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A handler that writes each record, structlog's or the stdlib's, as one JSON line."""
    stamped: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=stamped,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=repr),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    handler.addFilter(DemoteRetriedErrors())
    return handler


def configure_logging(level: str = "info", stream: IO[str] | None = None) -> None:
    """Route structlog and the standard library's root logger to one JSON handler."""
    numeric = _level(level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers[:] = [json_handler(stream)]
    root.setLevel(numeric)
    # kafka-python (topic checks, model lookup) logs every connection step at INFO.
    logging.getLogger("kafka").setLevel(max(numeric, logging.WARNING))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
