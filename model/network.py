"""Item-level and feature-level RUM as torch modules: parameters plus :mod:`model.kernels`.

Indices: items ``1..N`` and users ``1..U``; row 0 of both embedding tables is
padding/unknown and stays exactly zero (``padding_idx``), so an unknown user has
p*_u = 0 and a padded memory slot is never a real item.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import nn

from model import kernels

Variant = Literal["item", "feature"]


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; saved beside the weights."""

    variant: Variant
    num_users: int
    num_items: int
    dim: int = 64
    slots: int = 5
    alpha: float = 0.2
    beta: float = 1.0
    init_std: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


class RUM(nn.Module):
    """Shared parts: p*_u, q_i, and the MERGE/PREDICT of both variants."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.user_emb = nn.Embedding(config.num_users + 1, config.dim, padding_idx=0)
        self.item_emb = nn.Embedding(config.num_items + 1, config.dim, padding_idx=0)
        nn.init.normal_(self.user_emb.weight, std=config.init_std)
        nn.init.normal_(self.item_emb.weight, std=config.init_std)
        with torch.no_grad():
            self.user_emb.weight[0].zero_()
            self.item_emb.weight[0].zero_()


class ItemRUM(RUM):
    """Item-level RUM: the memory is the window of the last K item indices (0 = empty slot)."""

    def logits(
        self, users: torch.Tensor, window: torch.Tensor, cands: torch.Tensor
    ) -> torch.Tensor:
        """users [B], window [B, K] item indices (0 = empty), cands [B, C] -> logits [B, C]."""
        cfg = self.config
        p = self.user_emb(users)  # [B, D]
        mem_q = self.item_emb(window)  # [B, K, D]
        cand_q = self.item_emb(cands)  # [B, C, D]
        return kernels.item_logits(p, cand_q, mem_q, window > 0, cfg.alpha, cfg.beta)

    def logits_all(self, users: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """users [B], window [B, K] -> logits over all item rows [B, N+1] (row 0 = padding)."""
        cfg = self.config
        p = self.user_emb(users)  # [B, D]
        mem_q = self.item_emb(window)  # [B, K, D]
        return kernels.item_logits_all(
            p, self.item_emb.weight, mem_q, window > 0, cfg.alpha, cfg.beta
        )


class FeatureRUM(RUM):
    """Feature-level RUM: global features F, per-user memory [K, D] written with erase/add."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        k, d = config.slots, config.dim
        self.features = nn.Parameter(torch.randn(k, d) * config.init_std)  # F [K, D]
        self.erase = nn.Linear(d, d)  # E, b_e
        self.add = nn.Linear(d, d)  # A, b_a
        self.memory0 = nn.Parameter(torch.randn(k, d) * config.init_std)  # M_0 [K, D]

    def initial_memory(self, batch: int) -> torch.Tensor:
        """M_0 repeated for ``batch`` users: [B, K, D]."""
        return self.memory0[None].expand(batch, -1, -1)

    def attention(self, items: torch.Tensor) -> torch.Tensor:
        """z over features for item indices [...] -> [..., K]."""
        return kernels.feature_attention(self.item_emb(items), self.features, self.config.beta)

    def write(
        self, memory: torch.Tensor, items: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        """WRITE items [B] into memory [B, K, D] where ``active`` [B] (bool); others unchanged."""
        q = self.item_emb(items)  # [B, D]
        z = kernels.feature_attention(q, self.features, self.config.beta)  # [B, K]
        erase, add = kernels.erase_add(
            q, self.erase.weight, self.erase.bias, self.add.weight, self.add.bias
        )
        written = kernels.feature_write(memory, z, erase, add)  # [B, K, D]
        return torch.where(active[:, None, None], written, memory)

    def logits(
        self, users: torch.Tensor, memory: torch.Tensor, cands: torch.Tensor
    ) -> torch.Tensor:
        """users [B], memory [B, K, D], cands [B, C] -> logits [B, C]."""
        p = self.user_emb(users)  # [B, D]
        cand_q = self.item_emb(cands)  # [B, C, D]
        cand_z = kernels.feature_attention(cand_q, self.features, self.config.beta)  # [B, C, K]
        return kernels.feature_logits(p, cand_q, cand_z, memory, self.config.alpha)

    def logits_all(self, users: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """users [B], memory [B, K, D] -> logits over all item rows [B, N+1]."""
        q_all = self.item_emb.weight  # [N+1, D]
        z_all = kernels.feature_attention(q_all, self.features, self.config.beta)  # [N+1, K]
        return kernels.feature_logits_all(
            self.user_emb(users), q_all, z_all, memory, self.config.alpha
        )


def build(config: ModelConfig) -> ItemRUM | FeatureRUM:
    if config.variant == "item":
        return ItemRUM(config)
    if config.variant == "feature":
        return FeatureRUM(config)
    msg = f"unknown variant {config.variant!r}; expected 'item' or 'feature'"
    raise ValueError(msg)
