"""A small collision/offroad classifier for DSS's classifier-guided planning (Eq. 2-3).

The classifier ``p_phi(c | s), p_phi(o | s)`` sees one agent (the ego) at one step: its
speed and size, the ``num_agents`` nearest other agents and the ``num_road_points`` nearest
road-edge samples, all in the ego's frame (:func:`event_features`). Per-agent and per-point
MLPs are max-pooled (PointNet style) and fused with the ego's features into two logits.

The features are smooth functions of the ego's pose (the nearest-k selection only picks
*which* neighbours are read), so at test time the probabilities are differentiated through
the features and the simulator's dynamics back to the ego's actions while the weights stay
frozen. Besides raw relative poses each neighbour carries a clearance (centre distance
minus both half-diagonals) and each road-edge sample the signed distance of the ego's
centre to its edge line; both make the decision boundary easy to learn from few samples.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from diffdrive.sim.datatypes import Array, RoadgraphPoints, Trajectory, is_road_edge

DISTANCE_SCALE = 10.0  # m per feature unit
SPEED_SCALE = 20.0  # m/s per feature unit
EVENTS = ("collision", "offroad")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Attributes:
    num_agents: nearest other agents read.
    num_road_points: nearest road-edge samples read.
    width: hidden width of every MLP.
    """

    num_agents: int = 8
    num_road_points: int = 32
    width: int = 64

    def __post_init__(self):
        if min(self.num_agents, self.num_road_points, self.width) < 1:
            raise ValueError("ClassifierConfig: all sizes must be >= 1")


AGENT_FEATURES = 10
ROAD_FEATURES = 6
EGO_FEATURES = 3


def _ego_frame(x, y, ex, ey, cos, sin):
    dx, dy = x - ex, y - ey
    return cos * dx + sin * dy, -sin * dx + cos * dy


def event_features(
    scene: Trajectory, is_sdc: Array, roadgraph: RoadgraphPoints, config: ClassifierConfig
) -> dict[str, Array]:
    """The classifier's inputs for the ego of ``scene``.

    Args:
      scene: every agent at one step ``(..., N)``.
      is_sdc: ``(..., N)`` one-hot of the ego.
      roadgraph: ``(..., P)`` map points (broadcastable to the scene's batch shape).
      config: :class:`ClassifierConfig`.

    Returns:
      ``ego`` ``(..., 3)`` speed, length, width; ``agents`` ``(..., A, 10)`` and
      ``agents_valid`` ``(..., A)``; ``road`` ``(..., R, 6)`` and ``road_valid`` ``(..., R)``.
    """
    sel = lambda a: jnp.sum(a * is_sdc.astype(a.dtype), axis=-1)
    ex, ey, eyaw = sel(scene.x), sel(scene.y), sel(scene.yaw)
    evx, evy = sel(scene.vel_x), sel(scene.vel_y)
    el, ew = sel(scene.length), sel(scene.width)
    cos, sin = jnp.cos(eyaw), jnp.sin(eyaw)
    e = lambda a: a[..., None]

    # Other agents, nearest first.
    ax, ay = _ego_frame(scene.x, scene.y, e(ex), e(ey), e(cos), e(sin))
    ryaw = scene.yaw - e(eyaw)
    rvx = e(cos) * (scene.vel_x - e(evx)) + e(sin) * (scene.vel_y - e(evy))
    rvy = -e(sin) * (scene.vel_x - e(evx)) + e(cos) * (scene.vel_y - e(evy))
    dist = jnp.sqrt(ax**2 + ay**2 + 1e-6)
    reach = 0.5 * (jnp.sqrt(scene.length**2 + scene.width**2) + e(jnp.sqrt(el**2 + ew**2)))
    clearance = dist - reach
    others = scene.valid & ~is_sdc
    agents = jnp.stack(
        [
            ax / DISTANCE_SCALE,
            ay / DISTANCE_SCALE,
            jnp.cos(ryaw),
            jnp.sin(ryaw),
            rvx / SPEED_SCALE,
            rvy / SPEED_SCALE,
            scene.length / DISTANCE_SCALE,
            scene.width / DISTANCE_SCALE,
            jnp.tanh(clearance / 2.0),
            others.astype(ax.dtype),
        ],
        -1,
    )
    k = min(config.num_agents, scene.x.shape[-1])
    _, idx = jax.lax.top_k(-jnp.where(others, jax.lax.stop_gradient(dist), jnp.inf), k)
    agents = jnp.take_along_axis(agents, idx[..., None], axis=-2)
    agents_valid = jnp.take_along_axis(others, idx, axis=-1)
    agents = jnp.where(agents_valid[..., None], agents, 0.0)

    # Road-edge samples, nearest first (selected before the features are built).
    rg = roadgraph
    edge = rg.valid & is_road_edge(rg.types)
    r = min(config.num_road_points, rg.x.shape[-1])
    pdist = jnp.sqrt((rg.x - e(ex)) ** 2 + (rg.y - e(ey)) ** 2 + 1e-6)
    masked = jnp.where(edge, jax.lax.stop_gradient(pdist), jnp.inf)
    _, ridx = jax.lax.top_k(-masked, r)
    take = lambda a: jnp.take_along_axis(jnp.broadcast_to(a, masked.shape), ridx, axis=-1)
    road_valid = take(edge)
    px, py = _ego_frame(take(rg.x), take(rg.y), e(ex), e(ey), e(cos), e(sin))
    rdx, rdy = take(rg.dir_x), take(rg.dir_y)
    pdx = e(cos) * rdx + e(sin) * rdy
    pdy = -e(sin) * rdx + e(cos) * rdy
    norm = jnp.sqrt(pdx**2 + pdy**2 + 1e-12)
    pdx, pdy = pdx / norm, pdy / norm
    # Signed distance of the ego's centre to the edge line (positive: right of the edge,
    # Waymax's offroad side).
    signed = (0.0 - px) * pdy - (0.0 - py) * pdx
    road = jnp.stack(
        [
            px / DISTANCE_SCALE,
            py / DISTANCE_SCALE,
            pdx,
            pdy,
            jnp.tanh(signed / 2.0),
            road_valid.astype(px.dtype),
        ],
        -1,
    )
    road = jnp.where(road_valid[..., None], road, 0.0)

    speed = jnp.sqrt(evx**2 + evy**2 + 1e-6)
    ego = jnp.stack([speed / SPEED_SCALE, el / DISTANCE_SCALE, ew / DISTANCE_SCALE], -1)
    return {
        "ego": ego,
        "agents": agents,
        "agents_valid": agents_valid,
        "road": road,
        "road_valid": road_valid,
    }


class _SetEncoder(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x: Array, valid: Array) -> Array:
        h = nn.relu(nn.Dense(self.width)(x))
        h = nn.relu(nn.Dense(self.width)(h))
        h = jnp.where(valid[..., None], h, -1e9)
        pooled = jnp.max(h, axis=-2)
        return jnp.where(jnp.any(valid, -1, keepdims=True), pooled, 0.0)


class EventClassifier(nn.Module):
    """Features of :func:`event_features` ``(...)`` -> logits ``(..., 2)`` (collision, offroad)."""

    config: ClassifierConfig

    @nn.compact
    def __call__(self, features: dict[str, Array]) -> Array:
        w = self.config.width
        agents = _SetEncoder(w, name="agents")(features["agents"], features["agents_valid"])
        road = _SetEncoder(w, name="road")(features["road"], features["road_valid"])
        ego = nn.relu(nn.Dense(w, name="ego")(features["ego"]))
        h = jnp.concatenate([ego, agents, road], -1)
        h = nn.relu(nn.Dense(w)(h))
        h = nn.relu(nn.Dense(w)(h))
        return nn.Dense(len(EVENTS), name="logits")(h)


def dummy_features(config: ClassifierConfig) -> dict[str, Array]:
    return {
        "ego": jnp.zeros((1, EGO_FEATURES)),
        "agents": jnp.zeros((1, config.num_agents, AGENT_FEATURES)),
        "agents_valid": jnp.zeros((1, config.num_agents), bool),
        "road": jnp.zeros((1, config.num_road_points, ROAD_FEATURES)),
        "road_valid": jnp.zeros((1, config.num_road_points), bool),
    }


def init_params(config: ClassifierConfig, key: Array) -> Any:
    return EventClassifier(config).init(key, dummy_features(config))


@struct.dataclass
class EventClassifierBundle:
    """A frozen classifier for planning: parameters, config and the Eq. 3 weights.

    ``loss_weights`` (collision, offroad) weigh the probabilities in the planning loss.
    """

    params: Any
    config: ClassifierConfig = struct.field(pytree_node=False)
    loss_weights: tuple[float, float] = struct.field(pytree_node=False, default=(1.0, 1.0))


def event_logits(
    bundle: EventClassifierBundle, scene: Trajectory, is_sdc: Array, roadgraph: RoadgraphPoints
) -> Array:
    """``(..., 2)`` logits of collision and offroad for the ego of ``scene`` ``(..., N)``."""
    feats = event_features(scene, is_sdc, roadgraph, bundle.config)
    return EventClassifier(bundle.config).apply(bundle.params, feats)


def event_probabilities(
    bundle: EventClassifierBundle, scene: Trajectory, is_sdc: Array, roadgraph: RoadgraphPoints
) -> Array:
    """``(..., 2)`` probabilities of collision and offroad (weights frozen)."""
    params = jax.lax.stop_gradient(bundle.params)
    return jax.nn.sigmoid(event_logits(bundle.replace(params=params), scene, is_sdc, roadgraph))
