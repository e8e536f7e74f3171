"""Creating and checking the worker's topics with kafka-python before Faust starts."""

from __future__ import annotations

import contextlib

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from stream.settings import Settings

MODELS_CONFIG = {"cleanup.policy": "compact"}


class TopicLayoutError(RuntimeError):
    """An existing topic has a partition count the deployment cannot use; the message says
    which topic and what to set ``RUM_PARTITIONS`` to (or how to recreate the topic)."""


def ensure_topics(settings: Settings, replication: int = 1) -> None:
    """Create the input, output, dead-letter and models topics if missing; check the input's
    partitions.

    The state table is co-partitioned with ``purchases``, so their counts must match.
    """
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="rum-admin")
    try:
        wanted = [
            settings.topic_purchases,
            settings.topic_recommendations,
            settings.topic_dlq,
        ]
        existing = set(admin.list_topics())
        for name in wanted:
            if name not in existing:
                # Another worker may create it first.
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([NewTopic(name, settings.partitions, replication)])
        if settings.topic_models not in existing:
            # One partition, compacted: the last record is the current model version.
            models = NewTopic(settings.topic_models, 1, replication, topic_configs=MODELS_CONFIG)
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([models])
        described = admin.describe_topics([settings.topic_purchases])
        partitions = len(described[0]["partitions"]) if described else 0
        if partitions and partitions != settings.partitions:
            msg = (
                f"topic {settings.topic_purchases!r} has {partitions} partitions but "
                f"RUM_PARTITIONS={settings.partitions}; set RUM_PARTITIONS={partitions} "
                "(the state table must be co-partitioned with the input)"
            )
            raise TopicLayoutError(msg)
    finally:
        admin.close()
