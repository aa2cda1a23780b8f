"""Metrics: Waymax's exact ones and the papers' differentiable surrogates.

Exact (Waymax semantics, spec section 5): :func:`log_divergence`, :func:`overlap`,
:func:`offroad`, :func:`kinematic_infeasibility`, and the SDC route metrics. Differentiable:
:func:`gaussian_overlap` (AWM paper Eq. 6-9) and :func:`smooth_offroad_cost`.

All take one step of every object, a :class:`Trajectory` with fields ``(..., N)``, and
return a :class:`MetricResult` of shape ``(..., N)``. Metrics are chosen by name through
:data:`METRIC_REGISTRY`, each called with a :class:`MetricInputs`.

Offroad acceleration: Waymax finds, for each of the 4 box corners of every object, the
nearest road-edge sample among all roadgraph points (512 x 20000 distances per scenario
and step). :class:`RoadEdgeIndex` precomputes per scenario a uniform grid whose cells list
the few road-edge samples that can be nearest to any point in the cell, plus a lower bound
on the distance of every sample left out. A query whose best listed distance beats that
bound has provably found Waymax's nearest sample (ties included); any query that cannot
prove it (outside the grid, or near an overpass) triggers the exact brute-force path, so
results are identical to Waymax for every valid object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from diffdrive.sim import dynamics as dynamics_lib
from diffdrive.sim.datatypes import (
    Array,
    MetricResult,
    ObjectMetadata,
    Paths,
    RoadgraphPoints,
    Trajectory,
    bbox_corners,
    is_road_edge,
)

Z_STRETCH = 2.0
"""Offroad: z differences count double when picking the nearest edge sample."""
KIM_MAX_ACCEL = 10.4
KIM_MAX_CURVATURE = 0.3
KIM_EPSILON = 1e-3


# --------------------------------------------------------------------------------------
# Log divergence and kinematic infeasibility
# --------------------------------------------------------------------------------------


def log_divergence(current: Trajectory, log: Trajectory) -> MetricResult:
    """Euclidean xy distance between simulated and logged state, ``(..., N)``.

    Valid where both are valid. The gradient is NaN at zero distance, as in Waymax.
    """
    value = jnp.sqrt((current.x - log.x) ** 2 + (current.y - log.y) ** 2)
    return MetricResult(value=value, valid=current.valid & log.valid)


def kinematic_infeasibility(previous: Trajectory, current: Trajectory) -> MetricResult:
    """1 where the transition ``previous -> current`` needs |a| > 10.4 or |kappa| > 0.3."""
    raw = dynamics_lib.InvertibleBicycleModel().raw_inverse_step(previous, current)
    accel, curvature = raw.data[..., 0], raw.data[..., 1]
    infeasible = (jnp.abs(accel) > KIM_MAX_ACCEL + KIM_EPSILON) | (
        jnp.abs(curvature) > KIM_MAX_CURVATURE + KIM_EPSILON
    )
    return MetricResult(value=infeasible.astype(jnp.float32), valid=raw.valid[..., 0])


# --------------------------------------------------------------------------------------
# Overlap (separating axis theorem)
# --------------------------------------------------------------------------------------


def pairwise_overlap(current: Trajectory) -> Array:
    """``(..., N, N)`` bool: boxes intersect (strictly positive overlap on all 4 axes).

    The diagonal is False. Validity is not applied here.
    """
    corners = bbox_corners(current.x, current.y, current.length, current.width, current.yaw)
    cos, sin = jnp.cos(current.yaw), jnp.sin(current.yaw)
    # Each box's two axes: heading (c, s) and lateral (-s, c); shape (..., N, 2, 2).
    axes = jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], axis=-2)
    # proj[..., b, o, corner, k]: corner of box b projected on axis k of box o.
    proj = jnp.einsum("...bcd,...okd->...bock", corners, axes)
    pmin, pmax = proj.min(axis=-2), proj.max(axis=-2)  # (..., N_b, N_o, 2)
    n = current.x.shape[-1]
    eye = jnp.eye(n, dtype=bool)
    self_min = jnp.sum(jnp.where(eye[..., None], pmin, 0.0), axis=-3)  # (..., N_o, 2)
    self_max = jnp.sum(jnp.where(eye[..., None], pmax, 0.0), axis=-3)
    depth = jnp.minimum(pmax, self_max[..., None, :, :]) - jnp.maximum(
        pmin, self_min[..., None, :, :]
    )
    no_gap_on_owner_axes = jnp.all(depth > 0, axis=-1)  # (..., N_b, N_o)
    both = no_gap_on_owner_axes & jnp.swapaxes(no_gap_on_owner_axes, -1, -2)
    return both & ~eye


def overlap(current: Trajectory) -> MetricResult:
    """1 where an object's box intersects the box of another *valid* object, ``(..., N)``."""
    hits = pairwise_overlap(current) & current.valid[..., :, None]
    value = jnp.any(hits, axis=-2).astype(jnp.float32)
    return MetricResult(value=value, valid=current.valid)


def gaussian_overlap(current: Trajectory, scale: float = 25.0) -> MetricResult:
    """The AWM paper's differentiable overlap (Eq. 6-9), summed over valid partners.

    Each box becomes N(mu = (x, y), Sigma = R diag(L^2, W^2) R^T / scale); the overlap of
    two boxes is the Gaussian density of mu_1 - mu_2 under Sigma_1 + Sigma_2. Smooth
    everywhere, finite for coincident boxes and any yaw.

    Returns:
      ``value`` ``(..., N)``: sum over other valid objects of the pairwise density (1/m^2).
    """
    cos, sin = jnp.cos(current.yaw), jnp.sin(current.yaw)
    var_l = jnp.square(current.length) / scale
    var_w = jnp.square(current.width) / scale
    s_xx = cos**2 * var_l + sin**2 * var_w
    s_yy = sin**2 * var_l + cos**2 * var_w
    s_xy = cos * sin * (var_l - var_w)
    a = s_xx[..., :, None] + s_xx[..., None, :]
    d = s_yy[..., :, None] + s_yy[..., None, :]
    b = s_xy[..., :, None] + s_xy[..., None, :]
    det = jnp.maximum(a * d - b * b, 1e-8)
    dx = current.x[..., :, None] - current.x[..., None, :]
    dy = current.y[..., :, None] - current.y[..., None, :]
    mahalanobis = (d * dx * dx - 2 * b * dx * dy + a * dy * dy) / det
    density = jnp.exp(-0.5 * mahalanobis) / (2 * jnp.pi * jnp.sqrt(det))
    n = current.x.shape[-1]
    partner = current.valid[..., None, :] & current.valid[..., :, None] & ~jnp.eye(n, dtype=bool)
    value = jnp.sum(jnp.where(partner, density, 0.0), axis=-1)
    return MetricResult(value=value, valid=current.valid)


# --------------------------------------------------------------------------------------
# Offroad
# --------------------------------------------------------------------------------------


def _sq_dist(qx, qy, qz, px, py, pz):
    return (qx - px) ** 2 + (qy - py) ** 2 + (Z_STRETCH * (qz - pz)) ** 2


def _signed_from_nearest(qx, qy, idx, rg: RoadgraphPoints) -> Array:
    """Waymax's signed distance given the nearest sample index ``idx`` (same shape as q)."""

    def gather(a, i):
        return jnp.take_along_axis(a, i.reshape(i.shape[: a.ndim - 1] + (-1,)), axis=-1).reshape(
            i.shape
        )

    prev = jnp.maximum(idx - 1, 0)
    px, py = gather(rg.x, idx), gather(rg.y, idx)
    dx, dy = qx - px, qy - py
    cross = dx * gather(rg.dir_y, idx) - dy * gather(rg.dir_x, idx)
    cross_prev = dx * gather(rg.dir_y, prev) - dy * gather(rg.dir_x, prev)
    same_line = gather(rg.ids, prev) == gather(rg.ids, idx)
    cross = jnp.where(same_line & (cross_prev < cross), cross_prev, cross)
    return jnp.sqrt(dx**2 + dy**2) * jnp.sign(cross)


def signed_distance_to_road_edge(points: Array, roadgraph: RoadgraphPoints) -> Array:
    """Waymax's signed distance (m) of query points to the road edge; > 0 is offroad.

    Brute force over every roadgraph sample: exact reference semantics.

    Args:
      points: ``(..., Q, 3)`` query xyz.
      roadgraph: ``(..., P)``.

    Returns:
      ``(..., Q)``.
    """
    qx, qy, qz = points[..., 0], points[..., 1], points[..., 2]
    d2 = _sq_dist(
        qx[..., :, None], qy[..., :, None], qz[..., :, None],
        roadgraph.x[..., None, :], roadgraph.y[..., None, :], roadgraph.z[..., None, :],
    )
    candidate = roadgraph.valid & is_road_edge(roadgraph.types)
    d2 = jnp.where(candidate[..., None, :], d2, jnp.inf)
    idx = jnp.argmin(d2, axis=-1)
    return _signed_from_nearest(qx, qy, idx, roadgraph)


def _corner_queries(current: Trajectory) -> Array:
    """``(..., 4N, 3)`` box corners with each object's z."""
    corners = bbox_corners(current.x, current.y, current.length, current.width, current.yaw)
    z = jnp.broadcast_to(current.z[..., None, None], corners.shape[:-1] + (1,))
    q = jnp.concatenate([corners, z], axis=-1)
    return q.reshape(q.shape[:-3] + (-1, 3))


@struct.dataclass
class RoadEdgeIndex:
    """Per-scenario grid over the road-edge samples for exact, fast offroad queries.

    Shapes (batch ``(...)``): ``origin`` ``(..., 2)`` lower-left corner (m); ``cell_size``
    ``(...)`` (m); ``cells`` ``(..., G*G, K)`` roadgraph indices of the samples that may be
    nearest within each cell (padded with the cell's first entry); ``excluded_bound``
    ``(..., G*G)`` squared xy distance (m^2) from the cell to the nearest sample *not*
    listed (+inf when all are listed); ``has_edges`` ``(...)``.
    """

    origin: Array
    cell_size: Array
    cells: Array
    excluded_bound: Array
    has_edges: Array
    grid_size: int = struct.field(pytree_node=False, default=32)


@dataclasses.dataclass(frozen=True)
class RoadEdgeIndexConfig:
    """Attributes:
    grid_size: cells per side of the square grid.
    candidates_per_cell: K, samples kept per cell.
    margin: metres added around the road edges' bounding box.
    """

    grid_size: int = 48
    candidates_per_cell: int = 48
    margin: float = 40.0


def build_road_edge_index(
    roadgraph: RoadgraphPoints, config: RoadEdgeIndexConfig = RoadEdgeIndexConfig()
) -> RoadEdgeIndex:
    """Precomputes a :class:`RoadEdgeIndex` for each scenario of ``roadgraph`` ``(..., P)``.

    Pure JAX; jit it or run it once when a dataset is cached.
    """
    batch = roadgraph.shape[:-1]
    flat = jax.tree.map(lambda a: a.reshape((-1, a.shape[-1])), roadgraph)
    index = jax.vmap(lambda rg: _build_one(rg, config))(flat)
    return jax.tree.map(lambda a: a.reshape(batch + a.shape[1:]), index)


def _build_one(rg: RoadgraphPoints, config: RoadEdgeIndexConfig) -> RoadEdgeIndex:
    g, k = config.grid_size, min(config.candidates_per_cell, rg.num_points)
    candidate = rg.valid & is_road_edge(rg.types)
    has_edges = jnp.any(candidate)
    big = jnp.float32(1e9)
    lo = jnp.stack([jnp.min(jnp.where(candidate, rg.x, big)), jnp.min(jnp.where(candidate, rg.y, big))])
    hi = jnp.stack(
        [jnp.max(jnp.where(candidate, rg.x, -big)), jnp.max(jnp.where(candidate, rg.y, -big))]
    )
    lo = jnp.where(has_edges, lo - config.margin, 0.0)
    hi = jnp.where(has_edges, hi + config.margin, 1.0)
    cell = jnp.maximum(jnp.max(hi - lo) / g, 1e-3)
    ij = jnp.arange(g, dtype=jnp.float32)
    cx0 = lo[0] + ij * cell
    cy0 = lo[1] + ij * cell
    # Cell c = iy * g + ix spans [cx0[ix], cx0[ix] + cell] x [cy0[iy], cy0[iy] + cell].
    x0 = jnp.tile(cx0, g)
    y0 = jnp.repeat(cy0, g)
    px, py = rg.x[None, :], rg.y[None, :]
    gap_x = jnp.maximum(jnp.maximum(x0[:, None] - px, px - (x0[:, None] + cell)), 0.0)
    gap_y = jnp.maximum(jnp.maximum(y0[:, None] - py, py - (y0[:, None] + cell)), 0.0)
    lower = gap_x**2 + gap_y**2  # (G*G, P): no point of the cell is closer in xy
    far_x = jnp.maximum(jnp.abs(x0[:, None] - px), jnp.abs(x0[:, None] + cell - px))
    far_y = jnp.maximum(jnp.abs(y0[:, None] - py), jnp.abs(y0[:, None] + cell - py))
    lower = jnp.where(candidate[None, :], lower, jnp.inf)
    upper = jnp.where(candidate[None, :], far_x**2 + far_y**2, jnp.inf)
    # Keep samples that may be nearest in xy: lower bound within the best upper bound.
    reach = jnp.min(upper, axis=-1, keepdims=True)
    score = jnp.where(lower <= reach, lower, jnp.inf)
    neg, order = jax.lax.top_k(-score, k)
    kept_finite = jnp.isfinite(neg)
    cells = jnp.where(kept_finite, order, order[:, :1])
    # Lower bound of everything not kept: the (k+1)-th smallest lower bound overall.
    lower_all = jnp.where(candidate[None, :], lower, jnp.inf)
    kept_mask = jnp.zeros_like(lower_all, dtype=bool)
    kept_mask = kept_mask.at[jnp.arange(g * g)[:, None], order].set(kept_finite)
    excluded = jnp.min(jnp.where(kept_mask, jnp.inf, lower_all), axis=-1)
    return RoadEdgeIndex(
        origin=lo,
        cell_size=cell,
        cells=cells.astype(jnp.int32),
        excluded_bound=excluded,
        has_edges=has_edges,
        grid_size=g,
    )


def _indexed_nearest(points: Array, roadgraph: RoadgraphPoints, index: RoadEdgeIndex):
    """Nearest-sample indices from the grid, and whether each one is certified exact."""
    g = index.grid_size
    qx, qy, qz = points[..., 0], points[..., 1], points[..., 2]
    rel_x = (qx - index.origin[..., None, 0]) / index.cell_size[..., None]
    rel_y = (qy - index.origin[..., None, 1]) / index.cell_size[..., None]
    inside = (rel_x >= 0) & (rel_x < g) & (rel_y >= 0) & (rel_y < g)
    ix = jnp.clip(jnp.floor(rel_x), 0, g - 1).astype(jnp.int32)
    iy = jnp.clip(jnp.floor(rel_y), 0, g - 1).astype(jnp.int32)
    cell = iy * g + ix  # (..., Q)
    cand = jnp.take_along_axis(index.cells, cell[..., None], axis=-2)  # (..., Q, K)
    bound = jnp.take_along_axis(index.excluded_bound, cell, axis=-1)

    def gather(a):
        flat = cand.reshape(cand.shape[:-2] + (-1,))
        return jnp.take_along_axis(a, flat, axis=-1).reshape(cand.shape)

    d2 = _sq_dist(qx[..., None], qy[..., None], qz[..., None], gather(roadgraph.x),
                  gather(roadgraph.y), gather(roadgraph.z))
    best = jnp.min(d2, axis=-1, keepdims=True)
    # Ties go to the lowest roadgraph index, as argmin over the full array does.
    big = jnp.iinfo(jnp.int32).max
    idx = jnp.min(jnp.where(d2 == best, cand, big), axis=-1)
    certified = inside & (best[..., 0] < bound)
    return idx, certified


def offroad(
    current: Trajectory,
    roadgraph: RoadgraphPoints,
    index: RoadEdgeIndex | None = None,
) -> MetricResult:
    """1 where any box corner is to the right of the nearest road edge, ``(..., N)``.

    ``valid`` is all True (Waymax). With ``index`` the result is identical to the brute
    force for every valid object: queries the grid cannot certify fall back to the brute
    force (one ``lax.cond`` for the whole call, so call it on a batch rather than under
    ``vmap``). Corners of invalid objects outside the grid are judged by the grid alone.
    """
    points = _corner_queries(current)
    n = current.x.shape[-1]
    if index is None:
        signed = signed_distance_to_road_edge(points, roadgraph)
    else:
        idx, certified = _indexed_nearest(points, roadgraph, index)
        object_valid = jnp.repeat(current.valid, 4, axis=-1)
        needs_exact = jnp.any(~certified & object_valid & index.has_edges[..., None])

        def exact(_):
            return signed_distance_to_road_edge(points, roadgraph)

        def fast(_):
            return _signed_from_nearest(points[..., 0], points[..., 1], idx, roadgraph)

        signed = jax.lax.cond(needs_exact, exact, fast, None)
    value = jnp.any(signed.reshape(signed.shape[:-1] + (n, 4)) > 0, axis=-1)
    return MetricResult(value=value.astype(jnp.float32), valid=jnp.ones_like(current.valid))


def smooth_offroad_cost(
    current: Trajectory,
    roadgraph: RoadgraphPoints,
    temperature: float = 0.5,
    margin: float = 0.0,
) -> MetricResult:
    """A differentiable offroad cost: softplus of a smoothed signed distance of the corners.

    The nearest edge sample is replaced by a softmin-weighted average (over road-edge
    samples, squared-distance logits at ``temperature`` m^2) of each sample's signed
    half-plane distance ``cross2(q - p, dir)``, so the cost moves continuously with the
    pose. ``value`` ``(..., N)`` = sum over corners of ``softplus((d + margin) / t) * t``;
    about 0 well inside the road, growing linearly with the distance outside.
    """
    points = _corner_queries(current)
    qx, qy, qz = (points[..., i, None] for i in range(3))
    d2 = _sq_dist(qx, qy, qz, roadgraph.x[..., None, :], roadgraph.y[..., None, :],
                  roadgraph.z[..., None, :])
    candidate = (roadgraph.valid & is_road_edge(roadgraph.types))[..., None, :]
    logits = jnp.where(candidate, -d2 / temperature, -jnp.inf)
    any_edge = jnp.any(candidate, axis=-1, keepdims=True)
    logits = jnp.where(any_edge, logits, 0.0)
    weights = jax.nn.softmax(logits, axis=-1)
    half_plane = (qx - roadgraph.x[..., None, :]) * roadgraph.dir_y[..., None, :] - (
        qy - roadgraph.y[..., None, :]
    ) * roadgraph.dir_x[..., None, :]
    signed = jnp.sum(weights * jnp.where(candidate, half_plane, 0.0), axis=-1)
    signed = jnp.where(any_edge[..., 0], signed, -1e3)
    cost = temperature * jax.nn.softplus((signed + margin) / temperature)
    n = current.x.shape[-1]
    value = jnp.sum(cost.reshape(cost.shape[:-1] + (n, 4)), axis=-1)
    return MetricResult(value=value, valid=current.valid)


# --------------------------------------------------------------------------------------
# SDC route metrics
# --------------------------------------------------------------------------------------


def _path_distances(xy: Array, paths: Paths) -> Array:
    """``(..., num_paths, points)`` distance from ``xy`` ``(..., 2)`` to each valid path point."""
    d = jnp.sqrt((paths.x - xy[..., None, None, 0]) ** 2 + (paths.y - xy[..., None, None, 1]) ** 2)
    return jnp.where(paths.valid, d, jnp.inf)


def sdc_wrongway(sdc_xy: Array, paths: Paths, threshold: float = 3.5) -> MetricResult:
    """Distance to the nearest path point when it exceeds ``threshold`` m, else 0; ``(...)``."""
    d = jnp.min(_path_distances(sdc_xy, paths), axis=(-2, -1))
    valid = jnp.isfinite(d)
    return MetricResult(value=jnp.where(valid & (d >= threshold), d, 0.0), valid=valid)


def sdc_off_route(sdc_xy: Array, paths: Paths) -> MetricResult:
    """d_on when off-route (d_on > 5 m or d_on - d_off > 2 m), else 0; ``(...)``."""
    d = _path_distances(sdc_xy, paths)
    on = paths.on_route  # (..., num_paths, 1)
    d_on = jnp.min(jnp.where(on, d, jnp.inf), axis=(-2, -1))
    d_off = jnp.min(jnp.where(on, jnp.inf, d), axis=(-2, -1))
    off = (d_on > 5.0) | (d_on - d_off > 2.0)
    value = jnp.where(off, d_on, 0.0)
    valid = jnp.isfinite(value)
    return MetricResult(value=jnp.where(valid, value, 0.0), valid=valid)


def sdc_progression(
    sdc_xy: Array, sdc_valid: Array, log_start_xy: Array, log_end_xy: Array, paths: Paths
) -> MetricResult:
    """Arc-length progress along the closest on-route path, ``(s - s0) / (s1 - s0)``; ``(...)``."""
    on = paths.on_route & paths.valid
    d = jnp.where(on, _path_distances(sdc_xy, paths), jnp.inf)
    has_path = jnp.any(on, axis=(-2, -1))
    best_path = jnp.argmin(jnp.min(d, axis=-1), axis=-1)

    def take_path(a):
        return jnp.take_along_axis(a, best_path[..., None, None], axis=-2)[..., 0, :]

    path = jax.tree.map(take_path, paths.replace(on_route=jnp.broadcast_to(on, paths.x.shape)))

    def arc_at(xy):
        dist = jnp.sqrt((path.x - xy[..., None, 0]) ** 2 + (path.y - xy[..., None, 1]) ** 2)
        dist = jnp.where(path.valid, dist, jnp.inf)
        i = jnp.argmin(dist, axis=-1)
        return jnp.take_along_axis(path.arc_length, i[..., None], axis=-1)[..., 0]

    s0, s1, s = arc_at(log_start_xy), arc_at(log_end_xy), arc_at(sdc_xy)
    span = s1 - s0
    value = jnp.where(span == 0, 1.0, (s - s0) / jnp.where(span == 0, 1.0, span))
    valid = has_path & sdc_valid
    return MetricResult(value=jnp.where(valid, value, 0.0), valid=valid)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


@struct.dataclass
class MetricInputs:
    """Everything a metric may read at one step; fields ``(..., N)`` unless noted.

    ``previous`` is the simulated step before ``current`` (for kinematic infeasibility).
    """

    current: Trajectory
    previous: Trajectory
    log: Trajectory
    metadata: ObjectMetadata
    roadgraph: RoadgraphPoints
    road_edge_index: RoadEdgeIndex | None = None


METRIC_REGISTRY: dict[str, Callable[[MetricInputs], MetricResult]] = {
    "log_divergence": lambda m: log_divergence(m.current, m.log),
    "overlap": lambda m: overlap(m.current),
    "offroad": lambda m: offroad(m.current, m.roadgraph, m.road_edge_index),
    "kinematic_infeasibility": lambda m: kinematic_infeasibility(m.previous, m.current),
    "gaussian_overlap": lambda m: gaussian_overlap(m.current),
    "smooth_offroad": lambda m: smooth_offroad_cost(m.current, m.roadgraph),
}


def run_metrics(names, inputs: MetricInputs) -> dict[str, MetricResult]:
    """Evaluates the named metrics; unknown names are a clear error."""
    out = {}
    for name in names:
        if name not in METRIC_REGISTRY:
            raise ValueError(f"unknown metric {name!r}; choose from {sorted(METRIC_REGISTRY)}")
        out[name] = METRIC_REGISTRY[name](inputs)
    return out


def log_replay_event_counts(log: Trajectory, roadgraph: RoadgraphPoints) -> dict[str, Array]:
    """Per object, over the log ``(..., N, T)``: steps valid, overlapping and offroad.

    Overlap and offroad are counted only at steps where the object is valid. Returns a dict of
    int32 arrays ``(..., N)`` with keys ``valid_steps``, ``overlap_steps``, ``offroad_steps``.
    """
    steps = jax.tree.map(lambda a: jnp.moveaxis(a, -1, 0), log)

    def per_step(step):
        ov = overlap(step).value > 0
        off = offroad(step, roadgraph).value > 0
        return step.valid, ov & step.valid, off & step.valid

    valid, ov, off = jax.lax.map(per_step, steps)
    return {
        "valid_steps": jnp.sum(valid, axis=0).astype(jnp.int32),
        "overlap_steps": jnp.sum(ov, axis=0).astype(jnp.int32),
        "offroad_steps": jnp.sum(off, axis=0).astype(jnp.int32),
    }
