"""Per-modality scene encoders fused into one feature vector.

Inputs are the ego-frame arrays of :func:`diffdrive.sim.observation.policy_features`:
``agents`` ``(..., N, 9)`` (valid flag last), ``roadgraph`` ``(..., k, 25)`` (xy, dir,
20-way type one-hot, valid), ``traffic_lights`` ``(..., L, 12)`` (valid last), ``ego``
``(..., 3)`` and ``route`` ``(..., 2)``. Set encoders are masked max-pools, so padded
entries (valid flag 0) never change the output and any set size works.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffdrive.models.config import ModelConfig
from diffdrive.models.transformer import AgentTransformer
from diffdrive.sim.datatypes import NUM_ROAD_TYPES, Array

_NEG = -1e9


def masked_max(x: Array, mask: Array, axis: int = -2) -> Array:
    """Max over ``axis`` of the entries where ``mask``; zeros where none is valid.

    Args:
      x: ``(..., M, D)`` values.
      mask: ``(..., M)`` bool.
      axis: the set axis (``-2``).

    Returns:
      ``(..., D)``.
    """
    m = jnp.expand_dims(mask, -1)
    pooled = jnp.max(jnp.where(m, x, _NEG), axis=axis)
    return jnp.where(jnp.any(m, axis=axis), pooled, 0.0)


class MLP(nn.Module):
    """Dense layers with ReLU between them (and after the last if ``activate_final``)."""

    widths: Sequence[int]
    activate_final: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i, w in enumerate(self.widths):
            x = nn.Dense(w)(x)
            if i < len(self.widths) - 1 or self.activate_final:
                x = nn.relu(x)
        return x


class SetEncoder(nn.Module):
    """Per-element MLP and masked max-pool; the validity flag is the last feature.

    ``(..., M, F)`` -> ``(..., widths[-1])``.
    """

    widths: Sequence[int]

    @nn.compact
    def __call__(self, x: Array) -> Array:
        mask = x[..., -1] > 0.5
        return masked_max(MLP(self.widths)(x), mask)


class RoadgraphEncoder(nn.Module):
    """PointNet-style: per-point MLP, max-pool per road type, flatten, Dense.

    ``(..., k, 25)`` -> ``(..., out_width)``; types with no valid point pool to zeros.
    """

    point_widths: Sequence[int]
    out_width: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        valid = x[..., -1] > 0.5
        types = x[..., 4 : 4 + NUM_ROAD_TYPES] > 0.5  # (..., k, 20)
        h = MLP(self.point_widths)(x)  # (..., k, W)
        per_type = types & valid[..., None]  # (..., k, 20)
        pooled = jnp.max(jnp.where(per_type[..., None], h[..., None, :], _NEG), axis=-3)
        pooled = jnp.where(jnp.any(per_type, axis=-2)[..., None], pooled, 0.0)  # (..., 20, W)
        flat = pooled.reshape(pooled.shape[:-2] + (-1,))
        return nn.relu(nn.Dense(self.out_width)(flat))


class AgentEncoder(nn.Module):
    """Other agents ``(..., N, 9)`` -> ``(..., D)``: MLP + max-pool, or the transformer."""

    config: ModelConfig

    @nn.compact
    def __call__(self, agents: Array) -> Array:
        cfg = self.config
        if cfg.agent_encoder == "transformer":
            return AgentTransformer(
                width=cfg.transformer_width,
                num_layers=cfg.transformer_layers,
                num_heads=cfg.transformer_heads,
                num_queries=cfg.transformer_queries,
                out_width=cfg.agent_widths[-1],
            )(agents, agents[..., -1] > 0.5)
        return SetEncoder(cfg.agent_widths)(agents)


class SceneEncoder(nn.Module):
    """Encodes each modality, LayerNorms each, concatenates, then 2 x Dense(fusion_width).

    Args (of ``__call__``):
      features: the dict of :func:`~diffdrive.sim.observation.policy_features`, batch
        shape ``(...)``.

    Returns:
      ``(..., fusion_width)``.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, features: dict[str, Array]) -> Array:
        cfg = self.config
        parts = [
            AgentEncoder(cfg, name="agents")(features["agents"]),
            RoadgraphEncoder(cfg.roadgraph_point_widths, cfg.roadgraph_width, name="roadgraph")(
                features["roadgraph"]
            ),
            SetEncoder(cfg.traffic_light_widths, name="traffic_lights")(features["traffic_lights"]),
            nn.relu(nn.Dense(cfg.ego_width, name="ego")(features["ego"])),
            nn.relu(nn.Dense(cfg.route_width, name="route")(features["route"])),
        ]
        x = jnp.concatenate([nn.LayerNorm()(p) for p in parts], axis=-1)
        x = nn.relu(nn.Dense(cfg.fusion_width)(x))
        return nn.relu(nn.Dense(cfg.fusion_width)(x))
