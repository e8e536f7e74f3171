"""The one place that reads and writes model artifacts.

An artifact is a directory:

- ``weights.safetensors``: every network tensor plus ``popularity`` (training counts
  per item row);
- ``config.json``: ``format_version``, ``version``, the :class:`ModelConfig` fields
  and the training settings;
- ``vocab.json``: ``{"users": [...], "items": [...]}`` raw ids in index order
  (index = position + 1);
- ``metrics.json``: training history and the validation figures.

Loading never unpickles (safetensors + JSON only). Saving is atomic: the
directory is written under a temporary name beside the target and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.data import Vocab

if TYPE_CHECKING:
    # torch is imported where weights are read or written: listing a store
    # (`rum models list`) needs none of it.
    import torch

    from model.network import FeatureRUM, ItemRUM, ModelConfig

FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
VOCAB = "vocab.json"
METRICS = "metrics.json"


class ArtifactError(Exception):
    """A model artifact is missing, corrupt or from an incompatible format.

    Operator action: retrain with ``rum train ... --out DIR`` (or point to the
    right directory); the message names the file and what was wrong.
    """


@dataclass(frozen=True)
class Artifact:
    config: ModelConfig
    version: str
    users: Vocab
    items: Vocab
    weights: dict[str, torch.Tensor]
    popularity: np.ndarray  # [N+1] float64, [0] = 0
    settings: dict[str, Any]
    metrics: dict[str, Any]

    def network(self) -> ItemRUM | FeatureRUM:
        """The torch module with these weights (CPU, eval mode)."""
        from model.network import build

        net = build(self.config)
        net.load_state_dict(self.weights)
        net.eval()
        return net


def weights_version(variant: str, weights: dict[str, torch.Tensor]) -> str:
    """A content hash of the weights: the same training gives the same version string."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].detach().cpu().contiguous().numpy().tobytes())
    return f"rum-{variant}-{digest.hexdigest()[:12]}"


def save_artifact(
    out_dir: str | Path,
    net: ItemRUM | FeatureRUM,
    users: Vocab,
    items: Vocab,
    popularity: np.ndarray,
    settings: dict[str, Any],
    metrics: dict[str, Any],
) -> str:
    """Write the artifact atomically to ``out_dir`` (replacing it); returns the version string."""
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    weights = {name: t.detach().cpu().contiguous() for name, t in net.state_dict().items()}
    version = weights_version(net.config.variant, weights)
    tensors = dict(weights)
    tensors["popularity"] = torch.from_numpy(np.asarray(popularity, dtype=np.float64))
    config = {
        "format_version": FORMAT_VERSION,
        "version": version,
        **net.config.to_dict(),
        "training": settings,
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS))
        _write_json(tmp / CONFIG, config)
        _write_json(tmp / VOCAB, {"users": users.to_list(), "items": items.to_list()})
        _write_json(tmp / METRICS, metrics)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return version


def _write_json(path: Path, obj: object) -> None:
    with path.open("w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True)
        handle.write("\n")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        msg = f"model artifact file {path} is missing; retrain with `rum train --out {path.parent}`"
        raise ArtifactError(msg)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"model artifact file {path} is not valid JSON ({exc}); the artifact is corrupt"
        raise ArtifactError(msg) from exc


def load_artifact(artifact_dir: str | Path) -> Artifact:
    """Read and check an artifact; raises :class:`ArtifactError` naming the culprit."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from model.network import ModelConfig, build

    root = Path(artifact_dir)
    if not root.is_dir():
        msg = (
            f"model artifact directory {root} does not exist; "
            f"train one with `rum train --out {root}`"
        )
        raise ArtifactError(msg)
    raw_config = _read_json(root / CONFIG)
    if not isinstance(raw_config, dict):
        msg = f"{root / CONFIG}: expected a JSON object"
        raise ArtifactError(msg)
    found = raw_config.get("format_version")
    if found != FORMAT_VERSION:
        msg = (
            f"{root / CONFIG}: format_version {found!r} is not supported "
            f"(this code reads {FORMAT_VERSION}); retrain the model with this version"
        )
        raise ArtifactError(msg)
    try:
        config = ModelConfig.from_dict(raw_config)
        version = str(raw_config["version"])
    except (TypeError, KeyError) as exc:
        msg = f"{root / CONFIG}: incomplete model config ({exc!r})"
        raise ArtifactError(msg) from exc
    vocab = _read_json(root / VOCAB)
    try:
        users = Vocab.from_list([str(u) for u in vocab["users"]])
        items = Vocab.from_list([str(i) for i in vocab["items"]])
    except (TypeError, KeyError, ValueError) as exc:
        msg = f"{root / VOCAB}: expected {{'users': [...], 'items': [...]}} of distinct ids ({exc})"
        raise ArtifactError(msg) from exc
    if (users.size, items.size) != (config.num_users, config.num_items):
        msg = (
            f"{root}: vocabularies hold {users.size} users / {items.size} items but the config "
            f"says {config.num_users} / {config.num_items}; the artifact is inconsistent"
        )
        raise ArtifactError(msg)
    weights_path = root / WEIGHTS
    if not weights_path.is_file():
        msg = f"model artifact file {weights_path} is missing; the artifact is incomplete"
        raise ArtifactError(msg)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        msg = f"{weights_path}: cannot read safetensors ({exc}); the artifact is corrupt"
        raise ArtifactError(msg) from exc
    popularity = tensors.pop("popularity", None)
    if popularity is None or popularity.shape != (config.num_items + 1,):
        msg = f"{weights_path}: missing or mis-shaped 'popularity' tensor"
        raise ArtifactError(msg)
    expected = {name: t.shape for name, t in build(config).state_dict().items()}
    got = {name: t.shape for name, t in tensors.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))
        wrong = sorted(n for n in set(expected) & set(got) if expected[n] != got[n])
        msg = (
            f"{weights_path}: weights do not match the config (missing {missing}, "
            f"wrong shape {wrong}, unexpected {sorted(set(got) - set(expected))})"
        )
        raise ArtifactError(msg)
    metrics_path = root / METRICS
    metrics = _read_json(metrics_path) if metrics_path.exists() else {}
    return Artifact(
        config=config,
        version=version,
        users=users,
        items=items,
        weights=tensors,
        popularity=popularity.numpy(),
        settings=dict(raw_config.get("training", {})),
        metrics=metrics,
    )


# --- model stores ---------------------------------------------------------------------
#
# A model store is a directory of artifact directories. The trainer names each
# published version ``<UTC time>-<version>`` (``20250101T120000.000000Z-rum-feature-…``),
# strictly later than every name already there, so "newest" is the name order and
# survives copies that reset modification times. Other entries (``rum train --out
# STORE/seed``) sort before every published one, by their config file's modification
# time: a hand-placed artifact becomes current through ``rum models promote``.

STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"
_STAMP_LENGTH = len("20250101T120000.000000Z")


def _stamp_time(name: str) -> float | None:
    from datetime import UTC, datetime

    try:
        stamp = datetime.strptime(name[:_STAMP_LENGTH], STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return stamp.timestamp()


def _entry_order(entry: Path) -> tuple[bool, float, str]:
    stamped = _stamp_time(entry.name)
    if stamped is not None:
        return (True, stamped, entry.name)
    return (False, (entry / CONFIG).stat().st_mtime, entry.name)


def store_entries(store: str | Path) -> list[Path]:
    """The artifact directories of a store, oldest first (hidden temporaries excluded)."""
    root = Path(store)
    if not root.is_dir():
        return []
    entries = [
        child
        for child in root.iterdir()
        if not child.name.startswith(".") and (child / CONFIG).is_file()
    ]
    return sorted(entries, key=_entry_order)


def resolve_model_dir(path: str | Path) -> Path:
    """An artifact directory as it is, or the newest artifact in a model store."""
    root = Path(path)
    if (root / CONFIG).is_file():
        return root
    if not root.is_dir():
        msg = f"model directory {root} does not exist; train a model with `rum train --out {root}`"
        raise ArtifactError(msg)
    entries = store_entries(root)
    if not entries:
        msg = f"model store {root} holds no model artifact (no */{CONFIG}); train one first"
        raise ArtifactError(msg)
    return entries[-1]


def artifact_version(artifact_dir: str | Path) -> str | None:
    """The version string in an artifact's config, or None when it cannot be read."""
    try:
        raw = json.loads((Path(artifact_dir) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    version = raw.get("version") if isinstance(raw, dict) else None
    return str(version) if version is not None else None


def find_in_store(store: str | Path, version: str) -> Path | None:
    """The newest artifact of ``store`` whose config names ``version``."""
    for entry in reversed(store_entries(store)):
        if artifact_version(entry) == version:
            return entry
    return None


def new_store_entry(store: str | Path, version: str, now: float | None = None) -> Path:
    """Where to publish ``version``: ``STORE/<UTC time>-<version>``, later than every entry."""
    import time
    from datetime import UTC, datetime

    root = Path(store)
    moment = time.time() if now is None else now
    stamped = [t for t in (_stamp_time(e.name) for e in store_entries(root)) if t is not None]
    if stamped and moment <= max(stamped):
        moment = max(stamped) + 1e-6  # the clock went back: stay in order
    stamp = datetime.fromtimestamp(moment, tz=UTC).strftime(STAMP_FORMAT)
    return root / f"{stamp}-{version}"
