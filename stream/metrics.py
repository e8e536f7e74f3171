"""Prometheus metrics of one worker (served at ``GET /metrics``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events = Counter("rum_events", "purchase records read", ["outcome"], registry=r)
        self.dead_letters = Counter(
            "rum_dead_letters", "records sent to the dead-letter topic", ["reason"], registry=r
        )
        self.duplicates = Counter("rum_duplicates", "events skipped as already applied", registry=r)
        self.unknown_items = Counter(
            "rum_unknown_items", "events whose item the model does not know", registry=r
        )
        self.recommendations = Counter(
            "rum_recommendations", "recommendation messages sent", registry=r
        )
        self.batch_size = Histogram(
            "rum_batch_size",
            "records per micro-batch",
            registry=r,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
        )
        self.scoring_seconds = Histogram(
            "rum_scoring_seconds",
            "seconds spent scoring one batch",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.lag_seconds = Histogram(
            "rum_event_to_recommendation_seconds",
            "Kafka timestamp of an event to the moment its recommendation is sent",
            registry=r,
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.resyncs = Counter(
            "rum_stream_resyncs",
            "repairs: input partitions sought back to their committed offset after Faust"
            " dropped records it had fetched",
            registry=r,
        )
        self.first_reads = Counter(
            "rum_stream_first_reads",
            "input partitions with no committed offset read from their start (a fresh"
            " deployment's first reading, not a repair)",
            registry=r,
        )
        self.model_info = Gauge(
            "rum_model_loaded", "1 for the model version in use", ["version", "variant"], registry=r
        )
        self.model_announcements = Counter(
            "rum_model_announcements",
            "model announcements acted on: swapped in, or refused (artifact unusable)",
            ["outcome"],
            registry=r,
        )

    def serving(self, version: str, variant: str, previous: tuple[str, str] | None) -> None:
        """Point ``rum_model_loaded`` at the version now in use."""
        if previous is not None and previous != (version, variant):
            self.model_info.remove(*previous)
        self.model_info.labels(version, variant).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
