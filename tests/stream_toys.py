"""Small models and events for the stream tests (no Kafka, no shared data)."""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
import torch

from model.data import Vocab
from model.network import ModelConfig, build
from model.serving import Scorer
from stream.events import Position
from stream.processing import Record
from stream.settings import Settings

ITEMS = [str(i) for i in range(30)]  # item "0" is a real item
USERS = [f"u{i}" for i in range(8)]


def tiny_scorer(variant: Literal["item", "feature"], seed: int = 0, version: str = "v1") -> Scorer:
    torch.manual_seed(seed)
    slots = 3 if variant == "item" else 4
    config = ModelConfig(
        variant=variant,
        num_users=len(USERS),
        num_items=len(ITEMS),
        dim=8,
        slots=slots,
        alpha=0.5,
        beta=1.0,
        init_std=0.5,
    )
    net = build(config)
    popularity = np.concatenate([[0.0], np.arange(len(ITEMS), 0, -1, dtype=np.float64)])
    return Scorer.from_network(net, Vocab(USERS), Vocab(ITEMS), popularity, version=version)


def record(
    payload: Any,
    *,
    key: bytes | str | None = "auto",
    offset: int = 0,
    partition: int = 0,
    headers: list[tuple[str, bytes]] | None = None,
    raw: bytes | None = None,
    topic: str = "purchases",
) -> Record:
    if key == "auto":
        key = str(payload.get("user_id")).encode() if isinstance(payload, dict) else b"u0"
    value = raw if raw is not None else json.dumps(payload).encode()
    assert key is None or isinstance(key, bytes)
    return Record(
        key=key,
        value=value,
        headers=headers or [],
        position=Position(topic, partition, offset),
        timestamp_ms=1_000_000,
    )


def settings(**changes: Any) -> Settings:
    return Settings(**changes)
