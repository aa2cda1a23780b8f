"""Planar polyline geometry and Waymax-exact numpy checks for the procedural generator.

Everything here works on float64 numpy arrays on the host. Points are ``(n, 2)`` arrays in
metres; headings are radians counter-clockwise from +x; "left" is the side a
counter-clockwise quarter turn from the direction of travel.
"""

from __future__ import annotations

import numpy as np

from diffdrive.sim.datatypes import RoadType

SPACING = 0.5
"""Roadgraph sample spacing (m), as in WOMD (median 0.497 m)."""
Z_STRETCH = 2.0
"""Waymax's offroad z stretch (over- and under-passes)."""


def wrap(angle: np.ndarray | float) -> np.ndarray:
    """Wraps angles (rad) to [-pi, pi)."""
    return np.mod(np.asarray(angle) + np.pi, 2 * np.pi) - np.pi


def unit(heading: float) -> np.ndarray:
    """``(2,)`` unit vector of a heading (rad)."""
    return np.array([np.cos(heading), np.sin(heading)])


def left_of(vec: np.ndarray) -> np.ndarray:
    """The vector turned a quarter turn counter-clockwise, ``(..., 2)``."""
    return np.stack([-vec[..., 1], vec[..., 0]], axis=-1)


def dedupe(points: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Drops consecutive points closer than ``tol`` (m)."""
    points = np.asarray(points, np.float64)
    if len(points) < 2:
        return points
    keep = np.ones(len(points), bool)
    keep[1:] = np.linalg.norm(np.diff(points, axis=0), axis=1) > tol
    return points[keep]


def cumulative_length(points: np.ndarray) -> np.ndarray:
    """``(n,)`` arc length (m) at each point, 0 at the first."""
    s = np.zeros(len(points))
    if len(points) > 1:
        s[1:] = np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))
    return s


def resample(points: np.ndarray, spacing: float = SPACING) -> np.ndarray:
    """Uniform resampling by arc length, both end points kept; spacing about ``spacing``."""
    points = dedupe(points)
    if len(points) < 2:
        return points.copy()
    s = cumulative_length(points)
    n = max(1, round(s[-1] / spacing))
    t = np.linspace(0.0, s[-1], n + 1)
    return np.stack([np.interp(t, s, points[:, 0]), np.interp(t, s, points[:, 1])], axis=-1)


def point_at(points: np.ndarray, s_query: np.ndarray | float) -> np.ndarray:
    """Points at arc lengths ``s_query`` (clipped to the polyline), ``(..., 2)``."""
    s = cumulative_length(points)
    q = np.clip(np.asarray(s_query, np.float64), 0.0, s[-1])
    return np.stack([np.interp(q, s, points[:, 0]), np.interp(q, s, points[:, 1])], axis=-1)


def tangents(points: np.ndarray) -> np.ndarray:
    """``(n, 2)`` unit tangents: the mean direction of the adjacent segments."""
    seg = np.diff(points, axis=0)
    seg = seg / np.maximum(np.linalg.norm(seg, axis=1, keepdims=True), 1e-12)
    tan = np.zeros_like(points)
    tan[0] = seg[0]
    tan[-1] = seg[-1]
    if len(points) > 2:
        mid = seg[:-1] + seg[1:]
        tan[1:-1] = mid / np.maximum(np.linalg.norm(mid, axis=1, keepdims=True), 1e-12)
    return tan


def headings(points: np.ndarray) -> np.ndarray:
    """``(n,)`` heading (rad) of :func:`tangents`."""
    tan = tangents(points)
    return np.arctan2(tan[:, 1], tan[:, 0])


def curvature(points: np.ndarray) -> np.ndarray:
    """``(n,)`` signed curvature (1/m, left turns positive) of a uniformly sampled polyline."""
    if len(points) < 3:
        return np.zeros(len(points))
    seg = np.diff(points, axis=0)
    h = np.arctan2(seg[:, 1], seg[:, 0])
    ds = np.linalg.norm(seg, axis=1)
    k = np.zeros(len(points))
    k[1:-1] = wrap(np.diff(h)) / np.maximum(0.5 * (ds[:-1] + ds[1:]), 1e-9)
    k[0], k[-1] = k[1], k[-2]
    return k


def offset(points: np.ndarray, lateral: float) -> np.ndarray:
    """The parallel polyline ``lateral`` metres to the left (negative: right)."""
    return points + lateral * left_of(tangents(points))


def sub_polyline(points: np.ndarray, s0: float, s1: float, spacing: float = SPACING):
    """The part between arc lengths ``s0`` and ``s1`` (reversed if ``s1 < s0``), resampled."""
    s = cumulative_length(points)
    lo, hi = sorted((float(np.clip(s0, 0, s[-1])), float(np.clip(s1, 0, s[-1]))))
    inner = points[(s > lo) & (s < hi)]
    part = np.concatenate([point_at(points, lo)[None], inner, point_at(points, hi)[None]])
    part = resample(part, spacing)
    return part[::-1].copy() if s1 < s0 else part


def arc(center, radius: float, a0: float, a1: float, spacing: float = SPACING) -> np.ndarray:
    """Circle arc from polar angle ``a0`` to ``a1`` (rad; ``a1 < a0`` runs clockwise)."""
    n = max(2, int(np.ceil(abs(a1 - a0) * radius / spacing)) + 1)
    a = np.linspace(a0, a1, n)
    return np.asarray(center, np.float64) + radius * np.stack([np.cos(a), np.sin(a)], -1)


def concat(*parts: np.ndarray) -> np.ndarray:
    """Joins polylines end to start, dropping the duplicated joint points."""
    return dedupe(np.concatenate([np.asarray(p, np.float64) for p in parts if len(p)]))


def line_intersection(p0, d0, p1, d1) -> tuple[np.ndarray, float, float] | None:
    """Intersection of the lines ``p0 + t0 d0`` and ``p1 + t1 d1``: ``(point, t0, t1)``."""
    m = np.array([[d0[0], -d1[0]], [d0[1], -d1[1]]])
    det = np.linalg.det(m)
    if abs(det) < 1e-9:
        return None
    t0, t1 = np.linalg.solve(m, np.asarray(p1, float) - np.asarray(p0, float))
    return np.asarray(p0, float) + t0 * np.asarray(d0, float), float(t0), float(t1)


def bezier(p0, h0: float, p1, h1: float, spacing: float = SPACING) -> np.ndarray:
    """Cubic Bezier from ``p0`` heading ``h0`` to ``p1`` heading ``h1`` (near-circular)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    chord = float(np.linalg.norm(p1 - p0))
    delta = abs(float(wrap(h1 - h0)))
    if delta < 1e-6:
        ctrl = chord / 3.0
    else:
        ctrl = 4.0 / 3.0 * np.tan(delta / 4.0) * chord / (2.0 * np.sin(delta / 2.0))
    c0, c1 = p0 + ctrl * unit(h0), p1 - ctrl * unit(h1)
    t = np.linspace(0.0, 1.0, max(8, int(4 * chord / spacing)))[:, None]
    pts = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * c0 + 3 * (1 - t) * t**2 * c1 + t**3 * p1
    return resample(pts, spacing)


def fillet_path(p0, h0: float, p1, h1: float, radius: float, spacing: float = SPACING):
    """Line-arc-line path from ``p0`` (heading ``h0``) to ``p1`` (heading ``h1``).

    The arc has the given radius and is tangent to both lines; the radius shrinks if the
    tangent points would fall outside ``[p0, p1]``. Returns None if the lines are parallel.
    """
    d0, d1 = unit(h0), unit(h1)
    hit = line_intersection(p0, d0, p1, d1)
    if hit is None:
        return None
    x, t0, t1 = hit
    delta = float(wrap(h1 - h0))
    half = np.tan(abs(delta) / 2.0)
    if t0 <= 0 or t1 >= 0 or half < 1e-6:
        return None
    radius = min(radius, t0 / half, -t1 / half)
    tl = radius * half
    a, b = x - tl * d0, x + tl * d1
    side = 1.0 if delta > 0 else -1.0  # centre to the left for left turns
    center = a + side * radius * left_of(d0)
    a0 = np.arctan2(*(a - center)[::-1])
    a1 = a0 + delta
    pts = concat(np.stack([p0, a]), arc(center, radius, a0, a1, spacing / 4), np.stack([b, p1]))
    return resample(pts, spacing)


def transform_points(points: np.ndarray, rotation: float, translation) -> np.ndarray:
    """Rotates by ``rotation`` (rad) about the origin, then translates."""
    c, s = np.cos(rotation), np.sin(rotation)
    rot = np.array([[c, -s], [s, c]])
    return np.asarray(points, float) @ rot.T + np.asarray(translation, float)


# --------------------------------------------------------------------------------------
# Waymax-exact checks (numpy), used by the generator's verification pass
# --------------------------------------------------------------------------------------


def box_corners(x, y, length, width, yaw) -> np.ndarray:
    """``(..., 4, 2)`` box corners, front-right first then counter-clockwise (Waymax order)."""
    x, y, length, width, yaw = (np.asarray(a, np.float64) for a in (x, y, length, width, yaw))
    c, s = np.cos(yaw), np.sin(yaw)
    hl_c, hl_s, hw_c, hw_s = 0.5 * length * c, 0.5 * length * s, 0.5 * width * c, 0.5 * width * s
    dx = np.stack([hl_c + hw_s, hl_c - hw_s, -hl_c - hw_s, -hl_c + hw_s], axis=-1)
    dy = np.stack([hl_s - hw_c, hl_s + hw_c, -hl_s + hw_c, -hl_s - hw_c], axis=-1)
    return np.stack([x[..., None] + dx, y[..., None] + dy], axis=-1)


def sat_depth(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
    """Smallest overlap (m) over the 4 SAT axes of boxes ``(..., 5)`` = (x, y, l, w, yaw).

    Positive iff the boxes intersect (Waymax's strict test); negative values are the
    largest separating gap along one of the 4 axes.
    """
    ca = box_corners(*np.moveaxis(box_a, -1, 0))
    cb = box_corners(*np.moveaxis(box_b, -1, 0))
    depths = []
    for yaw in (box_a[..., 4], box_b[..., 4]):
        for axis in (
            np.stack([np.cos(yaw), np.sin(yaw)], -1),
            np.stack([-np.sin(yaw), np.cos(yaw)], -1),
        ):
            pa = np.einsum("...cd,...d->...c", ca, axis)
            pb = np.einsum("...cd,...d->...c", cb, axis)
            depths.append(np.minimum(pa.max(-1), pb.max(-1)) - np.maximum(pa.min(-1), pb.min(-1)))
    return np.min(np.stack(depths, -1), axis=-1)


def offroad_cross(
    qx: np.ndarray, qy: np.ndarray, qz: np.ndarray, roadgraph: dict[str, np.ndarray]
) -> np.ndarray:
    """Waymax's offroad side value per query point: > 0 means offroad.

    Follows the spec exactly: the nearest valid road-edge sample (types 15/16) by
    ``dx^2 + dy^2 + (2 dz)^2`` (ties to the lowest index; index 0 if there is none), the
    cross product ``cross2(q - p, dir)``, and the previous sample's cross product where it
    is smaller and belongs to the same polyline. Unlike the metric this returns the cross
    product (the perpendicular distance to the sample's line), usable as a margin.

    Args:
      qx, qy, qz: ``(M,)`` query coordinates (m).
      roadgraph: ``roadgraph_points/<field>`` arrays ``(P,)`` (keys without the prefix).

    Returns:
      ``(M,)`` the selected cross product (m).
    """
    rx, ry, rz = (np.asarray(roadgraph[k], np.float64) for k in ("x", "y", "z"))
    dxr, dyr = (np.asarray(roadgraph[k], np.float64) for k in ("dir_x", "dir_y"))
    ids = np.asarray(roadgraph["ids"])
    types = np.asarray(roadgraph["types"])
    cand = np.nonzero(
        np.asarray(roadgraph["valid"], bool)
        & ((types == RoadType.ROAD_EDGE_BOUNDARY) | (types == RoadType.ROAD_EDGE_MEDIAN))
    )[0]
    qx, qy, qz = (np.asarray(a, np.float64).reshape(-1) for a in (qx, qy, qz))
    if len(cand) == 0:
        idx = np.zeros(len(qx), np.int64)
    else:
        idx = np.empty(len(qx), np.int64)
        chunk = max(1, 2_000_000 // len(cand))
        for i in range(0, len(qx), chunk):
            sl = slice(i, i + chunk)
            d2 = (
                (qx[sl, None] - rx[cand]) ** 2
                + (qy[sl, None] - ry[cand]) ** 2
                + (Z_STRETCH * (qz[sl, None] - rz[cand])) ** 2
            )
            idx[sl] = cand[np.argmin(d2, axis=1)]
    prev = np.maximum(idx - 1, 0)
    ddx, ddy = qx - rx[idx], qy - ry[idx]
    cross = ddx * dyr[idx] - ddy * dxr[idx]
    cross_prev = ddx * dyr[prev] - ddy * dxr[prev]
    use_prev = (ids[prev] == ids[idx]) & (cross_prev < cross)
    return np.where(use_prev, cross_prev, cross)
