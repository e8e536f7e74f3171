"""Subscribe to the recommendations the RUM workers publish.

Run it as ``python deploy/examples/subscriber.py 127.0.0.1:9092 recommendations``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Generator
from typing import Any

from kafka import KafkaConsumer


def recommendations(
    bootstrap: str,
    topic: str = "recommendations",
    group: str = "my-service",
    idle_ms: float = float("inf"),
) -> Generator[dict[str, Any], None, None]:
    """Yield each message: {"user_id", "items": [{"item_id", "score", "because"}], ...}."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,  # copies of your service in one group share the partitions
        auto_offset_reset="earliest",  # a new group starts from the oldest message kept
        consumer_timeout_ms=idle_ms,  # stop after this long without a message
    )
    try:
        for record in consumer:
            yield json.loads(record.value)
    finally:
        consumer.close()


if __name__ == "__main__":
    bootstrap = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"
    topic = sys.argv[2] if len(sys.argv) > 2 else "recommendations"
    for message in recommendations(bootstrap, topic):
        top = ", ".join(item["item_id"] for item in message["items"][:5])
        print(f"user {message['user_id']}: {top} (model {message['model_version']})")
