"""Session fixtures: a real Apache Kafka broker and unique topic names.

The broker is started once per test session by ``deploy/kafka`` (Maven-fetched
jars, KRaft single node on 127.0.0.1). If it cannot start, every test that needs
it errors with the broker's own message: the integration tests never skip.
``RUM_TEST_BOOTSTRAP=host:port`` points the tests at a broker that is already
running instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.kafka import harness

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("RUM_TEST_BOOTSTRAP")
    if given:
        if not harness.broker_answers(given):
            pytest.fail(f"RUM_TEST_BOOTSTRAP={given} does not answer metadata requests")
        yield given
        return
    data_dir = tmp_path_factory.mktemp("kafka")
    try:
        info = harness.start(data_dir)
    except harness.KafkaHarnessError as exc:
        pytest.fail(f"Apache Kafka could not be started for the integration tests: {exc}")
    try:
        yield info.bootstrap
    finally:
        harness.stop(data_dir)


@pytest.fixture
def unique_topic() -> Callable[[str], str]:
    """``unique_topic("purchases")`` -> ``purchases-3f2a9c1d``: no test sees another's data."""
    suffix = uuid.uuid4().hex[:8]

    def name(base: str) -> str:
        return f"{base}-{suffix}"

    return name


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared data folder is missing: expected {SHARED_DATA}")
    return SHARED_DATA
