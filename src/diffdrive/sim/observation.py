"""Observations: Waymax's frame transforms and the papers' ego-frame policy features.

* :class:`ObjectPose2D` and the ``transform_*`` functions follow Waymax: ``p_local =
  R(-yaw0) (p - xy0)``; yaws are shifted, not wrapped.
* :func:`sdc_observation_from_state` is Waymax's SDC observation (trajectory window,
  top-k roadgraph, traffic lights) in the SDC frame.
* :func:`policy_features` is what the APG / AWM / DSS policies consume at one step, as
  fixed-size arrays: other agents, the k nearest roadgraph points (direction and one-hot
  type), traffic lights, ego speed and route conditioning. Scaling follows the papers'
  code: positions / 100, speeds / 50.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from diffdrive.sim.datatypes import (
    NUM_ROAD_TYPES,
    Array,
    ObjectMetadata,
    RoadgraphPoints,
    SimulatorState,
    TrafficLights,
    Trajectory,
    filter_topk_roadgraph_points,
    select_by_onehot,
)

POSITION_SCALE = 100.0
SPEED_SCALE = 50.0
NUM_TRAFFIC_LIGHT_STATES = 9


@struct.dataclass
class ObjectPose2D:
    """A 2-D frame: ``matrix`` ``(..., 3, 3)`` maps global to local homogeneous xy."""

    matrix: Array
    delta_yaw: Array
    valid: Array

    @classmethod
    def from_center_and_yaw(cls, xy: Array, yaw: Array, valid: Array | None = None) -> ObjectPose2D:
        """Frame centred at ``xy`` ``(..., 2)`` with heading ``yaw`` ``(...)``."""
        c, s = jnp.cos(yaw), jnp.sin(yaw)
        tx = -(c * xy[..., 0] + s * xy[..., 1])
        ty = -(-s * xy[..., 0] + c * xy[..., 1])
        zero, one = jnp.zeros_like(c), jnp.ones_like(c)
        matrix = jnp.stack(
            [
                jnp.stack([c, s, tx], -1),
                jnp.stack([-s, c, ty], -1),
                jnp.stack([zero, zero, one], -1),
            ],
            axis=-2,
        )
        valid = jnp.ones_like(c, bool) if valid is None else valid
        return cls(matrix=matrix, delta_yaw=-yaw, valid=valid)

    def apply_xy(self, x: Array, y: Array) -> tuple[Array, Array]:
        """Transforms points whose fields have shape ``(...,) + extra``; pose is ``(...)``."""
        m = self.matrix
        extra = x.ndim - m.ndim + 2
        m = m.reshape(m.shape[:-2] + (1,) * extra + (3, 3))
        return (
            m[..., 0, 0] * x + m[..., 0, 1] * y + m[..., 0, 2],
            m[..., 1, 0] * x + m[..., 1, 1] * y + m[..., 1, 2],
        )

    def rotate(self, vx: Array, vy: Array) -> tuple[Array, Array]:
        m = self.matrix
        extra = vx.ndim - m.ndim + 2
        m = m.reshape(m.shape[:-2] + (1,) * extra + (3, 3))
        return m[..., 0, 0] * vx + m[..., 0, 1] * vy, m[..., 1, 0] * vx + m[..., 1, 1] * vy

    def _expand(self, a: Array, target_ndim: int) -> Array:
        return a.reshape(a.shape + (1,) * (target_ndim - a.ndim))


def transform_trajectory(traj: Trajectory, pose: ObjectPose2D) -> Trajectory:
    """Trajectory fields ``(..., N[, T])`` into the frame ``pose`` ``(...)``."""
    x, y = pose.apply_xy(traj.x, traj.y)
    vx, vy = pose.rotate(traj.vel_x, traj.vel_y)
    dyaw = pose._expand(pose.delta_yaw, traj.yaw.ndim)
    valid = traj.valid & pose._expand(pose.valid, traj.valid.ndim)
    return traj.replace(x=x, y=y, vel_x=vx, vel_y=vy, yaw=traj.yaw + dyaw, valid=valid)


def transform_roadgraph_points(rg: RoadgraphPoints, pose: ObjectPose2D) -> RoadgraphPoints:
    x, y = pose.apply_xy(rg.x, rg.y)
    dx, dy = pose.rotate(rg.dir_x, rg.dir_y)
    valid = rg.valid & pose._expand(pose.valid, rg.valid.ndim)
    return rg.replace(x=x, y=y, dir_x=dx, dir_y=dy, valid=valid)


def transform_traffic_lights(tl: TrafficLights, pose: ObjectPose2D) -> TrafficLights:
    x, y = pose.apply_xy(tl.x, tl.y)
    return tl.replace(x=x, y=y)


@struct.dataclass
class Observation:
    """Waymax-style observation for ``O`` observers.

    Shapes: ``trajectory`` ``(..., O, N, T_obs)``; ``roadgraph_static_points`` ``(..., O, k)``;
    ``traffic_lights`` ``(..., O, 16, T_obs)``; ``pose2d`` ``(..., O)``; ``metadata``
    ``(..., O, N)``; ``is_ego`` ``(..., O, N)``.
    """

    trajectory: Trajectory
    pose2d: ObjectPose2D
    metadata: ObjectMetadata
    roadgraph_static_points: RoadgraphPoints
    traffic_lights: TrafficLights
    is_ego: Array


def _window(a: Array, t: Array, size: int) -> Array:
    start = jnp.maximum(t - size + 1, 0)
    return jax.lax.dynamic_slice_in_dim(a, start, size, axis=-1)


def sdc_observation_from_state(
    state: SimulatorState, obs_num_steps: int = 1, roadgraph_top_k: int = 1000
) -> Observation:
    """Waymax's SDC observation in the SDC frame, one observer ``O = 1``.

    ``timestep`` must be a scalar (as after ``reset``).
    """
    t = state.timestep
    traj = jax.tree.map(lambda a: _window(a, t, obs_num_steps), state.sim_trajectory)
    tl = jax.tree.map(lambda a: _window(a, t, obs_num_steps), state.log_traffic_light)
    sdc = state.object_metadata.is_sdc
    current = state.sim_trajectory.at(t)
    sdc_xy = jnp.stack([select_by_onehot(current.x, sdc), select_by_onehot(current.y, sdc)], -1)
    sdc_yaw = select_by_onehot(current.yaw, sdc)
    pose = ObjectPose2D.from_center_and_yaw(sdc_xy, sdc_yaw)
    rg = filter_topk_roadgraph_points(state.roadgraph_points, sdc_xy, roadgraph_top_k)
    add_observer = lambda tree: jax.tree.map(lambda a: a[..., None, :], tree)
    add_observer2 = lambda tree: jax.tree.map(lambda a: a[..., None, :, :], tree)
    return Observation(
        trajectory=add_observer2(transform_trajectory(traj, pose)),
        pose2d=ObjectPose2D(
            matrix=pose.matrix[..., None, :, :],
            delta_yaw=pose.delta_yaw[..., None],
            valid=pose.valid[..., None],
        ),
        metadata=add_observer(state.object_metadata),
        roadgraph_static_points=add_observer(transform_roadgraph_points(rg, pose)),
        traffic_lights=add_observer2(transform_traffic_lights(tl, pose)),
        is_ego=sdc[..., None, :],
    )


# --------------------------------------------------------------------------------------
# Policy features
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Attributes:
    roadgraph_top_k: nearest roadgraph points kept (2000 in the papers).
    max_agents: other agents kept, nearest first (all when None).
    route: ``none``, ``heading`` (unit vector to the log ``heading_radius`` m ahead) or
      ``waypoint`` (the last valid logged SDC position).
    heading_radius: metres ahead for the heading target.
    """

    roadgraph_top_k: int = 2000
    max_agents: int | None = None
    route: str = "heading"
    heading_radius: float = 10.0


AGENT_FEATURES = ("x", "y", "cos_yaw", "sin_yaw", "vel_x", "vel_y", "length", "width", "valid")
ROADGRAPH_FEATURES = 2 + 2 + NUM_ROAD_TYPES + 1
TRAFFIC_LIGHT_FEATURES = 2 + NUM_TRAFFIC_LIGHT_STATES + 1


def policy_features(
    current: Trajectory,
    metadata: ObjectMetadata,
    roadgraph: RoadgraphPoints,
    traffic_lights: TrafficLights,
    log: Trajectory,
    timestep: Array,
    config: FeatureConfig = FeatureConfig(),
    ego: Array | None = None,
) -> dict[str, Array]:
    """Ego-frame features of the SDC (or of ``ego``) at one step, fixed-size, zero where invalid.

    Args:
      current: simulated step ``(..., N)``.
      metadata: ``(..., N)``.
      roadgraph: ``(..., P)``.
      traffic_lights: ``(..., 16, T)`` (the step ``timestep`` is read).
      log: ``(..., N, T)`` (route conditioning reads the SDC's logged future).
      timestep: scalar current step.
      config: :class:`FeatureConfig`.
      ego: ``(..., N)`` one-hot bool mask of the observing object (default
        ``metadata.is_sdc``); its own logged future gives the route conditioning.

    Returns:
      ``agents`` ``(..., N', 9)`` other agents (the ego excluded by masking) with features
      :data:`AGENT_FEATURES`; ``roadgraph`` ``(..., k, 25)`` xy, dir, one-hot type, valid;
      ``traffic_lights`` ``(..., 16, 12)`` xy, one-hot state, valid; ``ego`` ``(..., 3)``
      speed, vel_x, vel_y in the ego frame; ``route`` ``(..., 2)``.
    """
    sdc = metadata.is_sdc if ego is None else jnp.broadcast_to(ego, current.x.shape)
    ex, ey = select_by_onehot(current.x, sdc), select_by_onehot(current.y, sdc)
    eyaw = select_by_onehot(current.yaw, sdc)
    pose = ObjectPose2D.from_center_and_yaw(jnp.stack([ex, ey], -1), eyaw)

    local = transform_trajectory(current, pose)
    others_valid = local.valid & ~sdc
    agents = jnp.stack(
        [
            local.x / POSITION_SCALE,
            local.y / POSITION_SCALE,
            jnp.cos(local.yaw),
            jnp.sin(local.yaw),
            local.vel_x / SPEED_SCALE,
            local.vel_y / SPEED_SCALE,
            local.length / 10.0,
            local.width / 10.0,
            others_valid.astype(jnp.float32),
        ],
        axis=-1,
    )
    agents = jnp.where(others_valid[..., None], agents, 0.0)
    if config.max_agents is not None and config.max_agents < agents.shape[-2]:
        dist = jnp.where(others_valid, local.x**2 + local.y**2, jnp.inf)
        _, idx = jax.lax.top_k(-dist, config.max_agents)
        agents = jnp.take_along_axis(agents, idx[..., None], axis=-2)

    rg = filter_topk_roadgraph_points(roadgraph, jnp.stack([ex, ey], -1), config.roadgraph_top_k)
    rg = transform_roadgraph_points(rg, pose)
    one_hot = jax.nn.one_hot(jnp.clip(rg.types, 0, NUM_ROAD_TYPES - 1), NUM_ROAD_TYPES)
    road = jnp.concatenate(
        [
            jnp.stack([rg.x / POSITION_SCALE, rg.y / POSITION_SCALE, rg.dir_x, rg.dir_y], -1),
            one_hot,
            rg.valid[..., None].astype(jnp.float32),
        ],
        axis=-1,
    )
    road = jnp.where(rg.valid[..., None], road, 0.0)

    tl = transform_traffic_lights(traffic_lights.at(timestep), pose)
    tl_state = jax.nn.one_hot(
        jnp.clip(tl.state, 0, NUM_TRAFFIC_LIGHT_STATES - 1), NUM_TRAFFIC_LIGHT_STATES
    )
    lights = jnp.concatenate(
        [
            jnp.stack([tl.x / POSITION_SCALE, tl.y / POSITION_SCALE], -1),
            tl_state,
            tl.valid[..., None].astype(jnp.float32),
        ],
        axis=-1,
    )
    lights = jnp.where(tl.valid[..., None], lights, 0.0)

    evx, evy = pose.rotate(
        select_by_onehot(current.vel_x, sdc), select_by_onehot(current.vel_y, sdc)
    )
    speed = jnp.sqrt(evx**2 + evy**2 + 1e-12)
    ego = jnp.stack([speed, evx, evy], -1) / SPEED_SCALE

    route = route_conditioning(log, sdc, timestep, pose, config)
    return {
        "agents": agents,
        "roadgraph": road,
        "traffic_lights": lights,
        "ego": ego,
        "route": route,
    }


def policy_features_per_agent(
    current: Trajectory,
    metadata: ObjectMetadata,
    roadgraph: RoadgraphPoints,
    traffic_lights: TrafficLights,
    log: Trajectory,
    timestep: Array,
    config: FeatureConfig = FeatureConfig(),
    egos: Array | None = None,
) -> dict[str, Array]:
    """:func:`policy_features` of several observers at once, each in its own ego frame.

    Args:
      current, metadata, roadgraph, traffic_lights, log, timestep, config: as in
        :func:`policy_features`, batch shape ``(...)`` and ``N`` objects.
      egos: ``(..., M, N)`` bool, one one-hot row per observer (default: every object
        slot, ``M = N``, row ``i`` observing as object ``i``). Rows may be all False
        (padding observers); their features are then those of an observer at the origin.

    Returns:
      The dict of :func:`policy_features` with an observer axis after the batch axes:
      ``agents`` ``(..., M, N', 9)``, ``roadgraph`` ``(..., M, k, 25)``,
      ``traffic_lights`` ``(..., M, 16, 12)``, ``ego`` ``(..., M, 3)``, ``route``
      ``(..., M, 2)``.
    """
    batch_ndim = current.x.ndim - 1
    n = current.x.shape[-1]
    if egos is None:
        egos = jnp.broadcast_to(jnp.eye(n, dtype=bool), current.x.shape[:-1] + (n, n))
    if egos.shape[-1] != n or egos.ndim != batch_ndim + 2:
        raise ValueError(
            f"policy_features_per_agent: egos must be (..., M, {n}) with batch shape "
            f"{current.x.shape[:-1]}, got {egos.shape}"
        )

    def one(ego: Array) -> dict[str, Array]:
        return policy_features(
            current, metadata, roadgraph, traffic_lights, log, timestep, config, ego=ego
        )

    return jax.vmap(one, in_axes=batch_ndim, out_axes=batch_ndim)(egos)


def route_conditioning(
    log: Trajectory, sdc: Array, timestep: Array, pose: ObjectPose2D, config: FeatureConfig
) -> Array:
    """``(..., 2)`` route signal in the ego frame (zeros for ``none``)."""
    lx = jnp.sum(log.x * sdc[..., None], axis=-2)
    ly = jnp.sum(log.y * sdc[..., None], axis=-2)
    lvalid = jnp.any(log.valid & sdc[..., None], axis=-2)
    steps = jnp.arange(log.x.shape[-1])
    if config.route == "none":
        return jnp.zeros(lx.shape[:-1] + (2,), jnp.float32)
    px, py = pose.apply_xy(lx, ly)
    if config.route == "waypoint":
        last = jnp.max(jnp.where(lvalid, steps, -1), axis=-1)
        take = lambda a: jnp.take_along_axis(a, jnp.maximum(last, 0)[..., None], -1)[..., 0]
        return jnp.where(
            (last >= 0)[..., None], jnp.stack([take(px), take(py)], -1) / POSITION_SCALE, 0.0
        )
    if config.route == "heading":
        ahead = (steps > timestep) & lvalid & (px**2 + py**2 >= config.heading_radius**2)
        first = jnp.argmax(ahead, axis=-1)
        found = jnp.any(ahead, axis=-1)
        last = jnp.max(jnp.where(lvalid, steps, 0), axis=-1)
        idx = jnp.where(found, first, last)
        take = lambda a: jnp.take_along_axis(a, idx[..., None], -1)[..., 0]
        vec = jnp.stack([take(px), take(py)], -1)
        norm = jnp.sqrt(jnp.sum(vec**2, -1, keepdims=True) + 1e-12)
        return jnp.where(norm > 1e-3, vec / norm, 0.0)
    raise ValueError(f"unknown route conditioning {config.route!r}; use none, heading or waypoint")
