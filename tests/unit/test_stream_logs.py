"""The log configuration: one JSON line per record, structlog's or the stdlib's, at its level."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from aiokafka.errors import GroupAuthorizationFailedError, GroupCoordinatorNotAvailableError

from stream.logs import configure_logging, get_logger


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    out = io.StringIO()
    configure_logging("info", stream=out)
    try:
        yield out
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()


def _lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_stdlib_and_structlog_records_are_json_lines_with_their_own_level(
    stream: io.StringIO,
) -> None:
    logging.getLogger("faust.worker").warning("[^Worker]: %s\n+table+\n| row |", "Ready")
    logging.getLogger("aiokafka").debug("below the level: not written")
    get_logger("rum.worker").info("worker_starting", partitions=4)
    lines = _lines(stream)  # one JSON object per line, the multi-line text included
    assert [(line["level"], line["logger"]) for line in lines] == [
        ("warning", "faust.worker"),
        ("info", "rum.worker"),
    ]
    assert lines[0]["event"] == "[^Worker]: Ready\n+table+\n| row |"
    assert lines[1]["event"] == "worker_starting" and lines[1]["partitions"] == 4
    assert all(line["timestamp"].endswith("Z") for line in lines)


def test_a_retried_coordinator_lookup_is_info_and_a_fatal_one_stays_an_error(
    stream: io.StringIO,
) -> None:
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    message = "Group Coordinator Request failed: %s"
    coordinator.error(message, GroupCoordinatorNotAvailableError())  # every fresh start
    coordinator.error(message, GroupAuthorizationFailedError("g"))  # not retried
    levels = [line["level"] for line in _lines(stream)]
    assert levels == ["info", "error"]
