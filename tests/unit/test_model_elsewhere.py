"""An announced model a worker cannot use on its own host is refused, and the worker says why.

Announcements carry ``file://`` paths (issue 17: 10): a worker on another host than the
trainer reads the artifact only through a shared filesystem. A path that does not exist
there, or weights that do not hash to the announced version (a copy cut short or
altered), must leave the current version serving, with one ``model_refused`` line, the
refusal on ``/health`` and the ``refused`` counter up.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
import torch
from safetensors.torch import load_file, save_file

from model.artifact import ArtifactError, save_artifact
from model.data import Vocab
from model.network import build
from stream.app import create_app, runtime_of
from stream.models import Announcement, artifact_uri, load_announced
from stream.settings import Settings
from tests.stream_toys import ITEMS, USERS, tiny_scorer

ELSEWHERE = "file:///srv/other-host/rum-models/20990101T000000.000000Z-rum-feature-0123456789ab"


def _save(path: Path, seed: int = 0) -> str:
    torch.manual_seed(seed)
    net = build(tiny_scorer("feature", seed=seed).config)
    return save_artifact(path, net, Vocab(USERS), Vocab(ITEMS), np.ones(len(ITEMS) + 1), {}, {})


def test_a_path_missing_on_this_host_is_refused_naming_the_shared_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(ArtifactError) as refused:
        load_announced(Announcement("rum-feature-0123456789ab", ELSEWHERE, 0.0), str(store))
    message = str(refused.value)
    assert ELSEWHERE in message
    assert "not on this host" in message
    assert str(store / "20990101T000000.000000Z-rum-feature-0123456789ab") in message
    assert "shared filesystem" in message


def test_weights_that_do_not_hash_to_the_announced_version_are_refused(tmp_path: Path) -> None:
    version = _save(tmp_path / "good")
    assert load_announced(Announcement(version, artifact_uri(tmp_path / "good"), 0.0)).version
    weights = tmp_path / "good" / "weights.safetensors"
    tensors = load_file(str(weights))
    tensors["item_emb.weight"][1, 0] += 0.5  # same shapes, same config: only the bytes differ
    save_file(tensors, str(weights))
    with pytest.raises(ArtifactError, match=f"do not hash to {version}"):
        load_announced(Announcement(version, artifact_uri(tmp_path / "good"), 0.0))


def test_a_worker_keeps_serving_when_the_announced_path_is_not_on_its_host(
    tmp_path: Path,
) -> None:
    Outcome = tuple[bool, str, dict[str, Any] | None, list[MutableMapping[str, Any]], str]

    async def scenario() -> Outcome:
        app = create_app(
            Settings(app_id="elsewhere-test", model_dir=str(tmp_path)),
            tiny_scorer("feature", version="v1"),
            store="memory://",
        )
        runtime = runtime_of(app)
        with structlog.testing.capture_logs() as logs:
            adopted = await runtime.adopt(
                Announcement("rum-feature-0123456789ab", ELSEWHERE, 0.0, offset=7)
            )
        metrics = runtime.metrics.render().decode()
        return adopted, runtime.scorer.version, runtime.refused, logs, metrics

    adopted, serving, refused, logs, metrics = asyncio.run(scenario())
    assert adopted is False
    assert serving == "v1"
    assert refused is not None and refused["uri"] == ELSEWHERE and refused["offset"] == 7
    assert "not on this host" in refused["error"]
    lines = [entry for entry in logs if entry["event"] == "model_refused"]
    assert len(lines) == 1, logs
    assert lines[0]["keeping"] == "v1" and lines[0]["log_level"] == "error"
    assert "not on this host" in lines[0]["error"] and lines[0]["offset"] == 7
    assert 'rum_model_announcements_total{outcome="refused"} 1.0' in metrics
