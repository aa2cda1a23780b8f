"""Procedural road layouts: multi-lane straights, curves, four-way and T intersections.

A layout is built in a local frame, then rotated and translated into WOMD-like global
coordinates. Every road edge (types 15/16) is oriented with the drivable area on its left,
which is what Waymax's offroad metric assumes; intersection corners are rounded fillets
that close the drivable area. Lane centres, lines and edges are sampled about 0.5 m apart.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from diffdrive.data.synthetic import geometry as geo
from diffdrive.sim.datatypes import RoadType, TrafficLightState

LAYOUTS = ("straight", "curve", "four_way", "t_junction")
"""Layout names, in the order of :attr:`SyntheticConfig.layout_weights`."""

SIDEWALK_OFFSET = 2.0
"""Distance (m) of the pedestrian walking line outside the road edge."""


class Ids:
    """Sequential map feature ids starting at a random small integer."""

    def __init__(self, start: int):
        self.next_id = int(start)

    def __call__(self) -> int:
        self.next_id += 1
        return self.next_id - 1


@dataclasses.dataclass
class Lane:
    """A lane centre polyline (lane types 1, 2 or 3).

    Attributes:
      id: map feature id.
      points: ``(n, 2)`` centre line in the direction of travel (m).
      lane_type: :class:`RoadType` code.
      speed_limit: m/s.
      successors: ids of the lanes that continue this one.
      left, right: ids of the adjacent same-direction lanes (-1 if none).
      connector: the lane is a path through an intersection.
      turn: ``straight``/``left``/``right`` for connectors.
      control: for connectors, how entry is controlled: ``signal``, ``stop`` or ``priority``.
      arm: intersection arm the connector comes from (-1 elsewhere).
      entry: the lane starts at the map boundary (new agents may enter there).
    """

    id: int
    points: np.ndarray
    lane_type: int
    speed_limit: float
    successors: list[int] = dataclasses.field(default_factory=list)
    left: int = -1
    right: int = -1
    connector: bool = False
    turn: str = ""
    control: str = ""
    arm: int = -1
    entry: bool = False


@dataclasses.dataclass
class Crossing:
    """A pedestrian crossing over an intersection arm.

    Attributes:
      zone: id of the crosswalk polygon (also its reservation zone).
      arm: the arm it crosses.
      line: ``(2, 2)`` walking line from sidewalk ``sidewalk_a`` to ``sidewalk_b`` (m).
    """

    zone: int
    arm: int
    line: np.ndarray
    sidewalk_a: int
    sidewalk_b: int


@dataclasses.dataclass
class SignalPlan:
    """Fixed-time signal: phase groups of arms served one after the other.

    Attributes:
      groups: arm indices of each phase group.
      green: green time of each group (s).
      yellow: caution time (s).
      all_red: all-red clearance after each caution (s).
      offset: cycle time at scenario time 0 (s).
      arrows: left-turn lights show arrow states.
    """

    groups: tuple[tuple[int, ...], ...]
    green: tuple[float, ...]
    yellow: float
    all_red: float
    offset: float
    arrows: bool

    @property
    def cycle(self) -> float:
        return float(sum(self.green) + len(self.green) * (self.yellow + self.all_red))

    def arm_state(self, arm: int, t: np.ndarray | float) -> np.ndarray:
        """State (GO/CAUTION/STOP) of the through lights of ``arm`` at times ``t`` (s)."""
        pos = np.mod(np.asarray(t, np.float64) + self.offset, self.cycle)
        state = np.full(pos.shape, int(TrafficLightState.STOP), np.int32)
        start = 0.0
        for group, green in zip(self.groups, self.green):
            if arm in group:
                go = (pos >= start) & (pos < start + green)
                caution = (pos >= start + green) & (pos < start + green + self.yellow)
                state = np.where(go, int(TrafficLightState.GO), state)
                state = np.where(caution, int(TrafficLightState.CAUTION), state)
            start += green + self.yellow + self.all_red
        return state

    def lane_state(self, arm: int, turn: str, t: np.ndarray | float) -> np.ndarray:
        """State of the light of a connector (arrow states for left turns with ``arrows``)."""
        state = self.arm_state(arm, t)
        if self.arrows and turn == "left":
            state = state - 3  # GO 6 -> ARROW_GO 3, CAUTION 5 -> 2, STOP 4 -> 1
        return state

    def transitions(self) -> list[float]:
        """Cycle times (s) at which some light changes."""
        out, start = [], 0.0
        for green in self.green:
            out += [start, start + green, start + green + self.yellow]
            start += green + self.yellow + self.all_red
        return out


@dataclasses.dataclass
class RoadNetwork:
    """A road layout in global coordinates.

    Attributes:
      layout: one of :data:`LAYOUTS`.
      variant: e.g. ``freeway``, ``urban``, ``signalized``, ``all_way_stop``, ``stop_sign``.
      lanes: lane id -> :class:`Lane` (connectors included).
      features: ``(points (n, 2), type, id)`` of every other map feature (lines, edges,
        crosswalk polygons, stop signs).
      sidewalks: pedestrian walking lines ``(n, 2)``.
      crossings: pedestrian crossings.
      parking: ``(3,)`` parking slots ``(x, y, yaw)``.
      signal: the signal plan of a signalized intersection, else None.
      light_lanes: connector lane ids with a traffic light, in slot order (at most 16).
      z: road elevation (m).
      rotation, translation: the local-to-global transform (rad, m).
    """

    layout: str
    variant: str
    lanes: dict[int, Lane]
    features: list[tuple[np.ndarray, int, int]]
    sidewalks: list[np.ndarray]
    crossings: list[Crossing]
    parking: list[np.ndarray]
    signal: SignalPlan | None
    light_lanes: list[int]
    z: float = 0.0
    rotation: float = 0.0
    translation: tuple[float, float] = (0.0, 0.0)

    @property
    def freeway(self) -> bool:
        return self.variant == "freeway"

    def transformed(self, rotation: float, translation, z: float) -> RoadNetwork:
        """The network rotated by ``rotation`` (rad) about the origin, then translated."""

        def tf(p):
            return geo.transform_points(p, rotation, translation)

        lanes = {
            k: dataclasses.replace(lane, points=tf(lane.points)) for k, lane in self.lanes.items()
        }
        parking = [
            np.array([*tf(p[None, :2])[0], float(geo.wrap(p[2] + rotation))]) for p in self.parking
        ]
        return dataclasses.replace(
            self,
            lanes=lanes,
            features=[(tf(p), t, i) for p, t, i in self.features],
            sidewalks=[tf(p) for p in self.sidewalks],
            crossings=[dataclasses.replace(c, line=tf(c.line)) for c in self.crossings],
            parking=parking,
            z=float(z),
            rotation=float(rotation),
            translation=(float(translation[0]), float(translation[1])),
        )

    def polylines(self) -> list[tuple[np.ndarray, int, int]]:
        """Every map feature as ``(points (n, 2), type, id)``: lanes first, then the rest."""
        out = [(lane.points, lane.lane_type, lane.id) for lane in self.lanes.values()]
        return out + list(self.features)


@dataclasses.dataclass(frozen=True)
class CrossSection:
    """Lateral layout of a two-way road relative to its reference line.

    "Forward" lanes run along the reference direction on its right (negative lateral
    offsets); "backward" lanes run against it on its left. From the centre outwards: half
    the median, the lanes, a bike lane, a parking strip, a shoulder, the road edge.
    """

    n_fwd: int
    n_bwd: int
    lane_width: float
    median: float = 0.0
    shoulder: float = 0.5
    bike_width: float = 0.0
    park_width: float = 0.0
    center_type: int = int(RoadType.ROAD_LINE_SOLID_DOUBLE_YELLOW)
    lane_type: int = int(RoadType.LANE_SURFACE_STREET)

    def count(self, fwd: bool) -> int:
        return self.n_fwd if fwd else self.n_bwd

    def lanes_width(self, fwd: bool) -> float:
        """Distance (m) from the reference line to the outer side of the outer lane."""
        return self.median / 2 + self.count(fwd) * self.lane_width

    def side_width(self, fwd: bool) -> float:
        """Distance (m) from the reference line to the road edge on that side."""
        return self.lanes_width(fwd) + self.bike_width + self.park_width + self.shoulder

    def lane_offset(self, fwd: bool, i: int) -> float:
        """Signed lateral offset (m, left positive) of lane ``i`` (0 = innermost)."""
        o = self.median / 2 + (i + 0.5) * self.lane_width
        return -o if fwd else o

    def mirrored(self) -> CrossSection:
        return dataclasses.replace(self, n_fwd=self.n_bwd, n_bwd=self.n_fwd)


def _resampled_offset(ref: np.ndarray, lateral: float, reverse: bool = False) -> np.ndarray:
    pts = geo.resample(geo.offset(ref, lateral))
    return pts[::-1].copy() if reverse else pts


def _median_loop(ref: np.ndarray, half: float) -> np.ndarray:
    """Closed median outline around ``ref`` (clockwise: the road outside is on the left)."""
    h = geo.headings(ref)
    left = geo.offset(ref, half)
    right = geo.offset(ref, -half)[::-1]
    cap_end = geo.arc(ref[-1], half, h[-1] + np.pi / 2, h[-1] - np.pi / 2, 0.1)
    cap_start = geo.arc(ref[0], half, h[0] - np.pi / 2, h[0] - 3 * np.pi / 2, 0.1)
    loop = geo.concat(left, cap_end, right, cap_start)
    loop = geo.resample(loop)
    loop[-1] = loop[0]
    return loop


def _carriageway(
    ref: np.ndarray,
    cs: CrossSection,
    ids: Ids,
    speed_limit: float,
    *,
    edges: bool,
    median_loop_ref: np.ndarray | None = None,
) -> tuple[list[Lane], list[Lane], list[tuple[np.ndarray, int, int]], dict]:
    """Lanes, lines (and edges) of a road along a dense reference ``ref``.

    Returns:
      ``(fwd_lanes, bwd_lanes, features, extra)``; lanes are innermost first; ``extra``
      holds ``sidewalks`` and ``parking`` when ``edges``.
    """
    fwd, bwd, feats = [], [], []
    for is_fwd, lanes in ((True, fwd), (False, bwd)):
        for i in range(cs.count(is_fwd)):
            pts = _resampled_offset(ref, cs.lane_offset(is_fwd, i), reverse=not is_fwd)
            lanes.append(Lane(ids(), pts, cs.lane_type, speed_limit, entry=True))
        for i, lane in enumerate(lanes):
            lane.left = lanes[i - 1].id if i > 0 else -1
            lane.right = lanes[i + 1].id if i + 1 < len(lanes) else -1
        sign = -1.0 if is_fwd else 1.0
        for i in range(1, cs.count(is_fwd)):
            off = sign * (cs.median / 2 + i * cs.lane_width)
            pts = _resampled_offset(ref, off, reverse=not is_fwd)
            feats.append((pts, int(RoadType.ROAD_LINE_BROKEN_SINGLE_WHITE), ids()))
        if cs.bike_width > 0:
            off = sign * cs.lanes_width(is_fwd)
            feats.append(
                (
                    _resampled_offset(ref, off, reverse=not is_fwd),
                    int(RoadType.ROAD_LINE_SOLID_SINGLE_WHITE),
                    ids(),
                )
            )
            bike_off = sign * (cs.lanes_width(is_fwd) + cs.bike_width / 2)
            pts = _resampled_offset(ref, bike_off, reverse=not is_fwd)
            lanes.append(
                Lane(ids(), pts, int(RoadType.LANE_BIKE_LANE), min(speed_limit, 8.0), entry=True)
            )
    if cs.median <= 0:
        feats.append((geo.resample(ref), cs.center_type, ids()))
    else:
        loop_ref = ref if median_loop_ref is None else median_loop_ref
        feats.append((_median_loop(loop_ref, cs.median / 2), int(RoadType.ROAD_EDGE_MEDIAN), ids()))
    extra: dict = {"sidewalks": [], "parking": []}
    if edges:
        right = _resampled_offset(ref, -cs.side_width(True))
        left = _resampled_offset(ref, cs.side_width(False), reverse=True)
        feats.append((right, int(RoadType.ROAD_EDGE_BOUNDARY), ids()))
        feats.append((left, int(RoadType.ROAD_EDGE_BOUNDARY), ids()))
        extra["sidewalks"] = [
            _resampled_offset(ref, -(cs.side_width(True) + SIDEWALK_OFFSET)),
            _resampled_offset(ref, cs.side_width(False) + SIDEWALK_OFFSET, reverse=True),
        ]
    return fwd, bwd, feats, extra


def _parking_slots(rng, ref: np.ndarray, cs: CrossSection) -> list[np.ndarray]:
    """Parking slots ``(x, y, yaw)`` along the parking strips of both sides."""
    if cs.park_width <= 0:
        return []
    out = []
    h = geo.headings(ref)
    s_ref = geo.cumulative_length(ref)
    for is_fwd in (True, False):
        sign = -1.0 if is_fwd else 1.0
        off = sign * (cs.lanes_width(is_fwd) + cs.bike_width + cs.park_width / 2)
        s = rng.uniform(5.0, 10.0)
        while s < s_ref[-1] - 5.0:
            k = int(np.searchsorted(s_ref, s))
            p = ref[k] + off * geo.left_of(geo.unit(h[k]))
            out.append(np.array([p[0], p[1], h[k] if is_fwd else geo.wrap(h[k] + np.pi)]))
            s += rng.uniform(6.2, 8.0)
    return out


# --------------------------------------------------------------------------------------
# Straights and curves
# --------------------------------------------------------------------------------------


def _corridor_cross_section(rng, freeway: bool) -> tuple[CrossSection, float]:
    if freeway:
        n = int(rng.integers(2, 4))
        cs = CrossSection(
            n_fwd=n,
            n_bwd=n,
            lane_width=rng.uniform(3.6, 3.9),
            median=rng.uniform(3.0, 9.0),
            shoulder=rng.uniform(1.5, 3.0),
            lane_type=int(RoadType.LANE_FREEWAY),
        )
        return cs, rng.uniform(20.0, 23.0)
    n_fwd = int(rng.integers(1, 4))
    n_bwd = int(np.clip(n_fwd + rng.integers(-1, 2), 1, 3))
    median = rng.uniform(2.0, 4.0) if min(n_fwd, n_bwd) >= 2 and rng.random() < 0.3 else 0.0
    cs = CrossSection(
        n_fwd=n_fwd,
        n_bwd=n_bwd,
        lane_width=rng.uniform(3.2, 3.8),
        median=median,
        shoulder=rng.uniform(0.3, 0.8),
        bike_width=rng.uniform(1.5, 1.9) if rng.random() < 0.35 else 0.0,
        park_width=rng.uniform(2.3, 2.6) if rng.random() < 0.3 else 0.0,
        center_type=int(
            RoadType.ROAD_LINE_SOLID_DOUBLE_YELLOW
            if rng.random() < 0.7
            else RoadType.ROAD_LINE_BROKEN_DOUBLE_YELLOW
        ),
    )
    return cs, rng.uniform(11.0, 16.0)


def _reference_path(rng, layout: str, freeway: bool) -> np.ndarray:
    """Dense (0.25 m) reference line of a straight or curved road, starting at the origin."""
    if layout == "straight":
        length = rng.uniform(340.0, 420.0) if freeway else rng.uniform(260.0, 340.0)
        return geo.resample(np.array([[0.0, 0.0], [length, 0.0]]), 0.25)
    total = rng.uniform(340.0, 420.0) if freeway else rng.uniform(260.0, 340.0)
    pts = [np.zeros(2)]
    heading = 0.0
    num_arcs = 1 if rng.random() < 0.6 else 2
    sign = rng.choice([-1.0, 1.0])
    remaining = total
    for k in range(num_arcs):
        straight = rng.uniform(30.0, 90.0)
        pts.append(pts[-1] + straight * geo.unit(heading))
        radius = rng.uniform(220.0, 400.0) if freeway else rng.uniform(40.0, 150.0)
        angle = min(np.deg2rad(rng.uniform(30.0, 100.0)), 0.5 * remaining / radius)
        turn = sign * angle if k == 0 else -sign * angle
        center = pts[-1] + radius * np.sign(turn) * geo.left_of(geo.unit(heading))
        a0 = np.arctan2(*(pts[-1] - center)[::-1])
        arc = geo.arc(center, radius, a0, a0 + turn, 0.25)
        pts.extend(arc[1:])
        heading += turn
        remaining = total - geo.cumulative_length(np.array(pts))[-1]
    if remaining > 20.0:
        pts.append(pts[-1] + max(remaining, 30.0) * geo.unit(heading))
    return geo.resample(np.array(pts), 0.25)


def build_corridor(rng: np.random.Generator, layout: str, ids: Ids) -> RoadNetwork:
    """A straight or curved two-way road (local frame), urban or freeway."""
    freeway = rng.random() < (0.35 if layout == "straight" else 0.25)
    cs, limit = _corridor_cross_section(rng, freeway)
    ref = _reference_path(rng, layout, freeway)
    fwd, bwd, feats, extra = _carriageway(ref, cs, ids, limit, edges=True)
    lanes = {lane.id: lane for lane in fwd + bwd}
    return RoadNetwork(
        layout=layout,
        variant="freeway" if freeway else "urban",
        lanes=lanes,
        features=feats,
        sidewalks=[] if freeway else extra["sidewalks"],
        crossings=[],
        parking=_parking_slots(rng, ref, cs),
        signal=None,
        light_lanes=[],
    )


# --------------------------------------------------------------------------------------
# Intersections
# --------------------------------------------------------------------------------------


def _arm_point(theta: float, s: float, lateral: float) -> np.ndarray:
    d = geo.unit(theta)
    return s * d + lateral * geo.left_of(d)


def build_intersection(rng: np.random.Generator, layout: str, ids: Ids) -> RoadNetwork:
    """A four-way or T intersection (local frame, centre at the origin).

    Arms point outward from the centre in counter-clockwise order. On each arm the
    outgoing lanes are the cross-section's forward lanes (right of the outward reference)
    and the incoming lanes its backward lanes. Roads crossing straight through share one
    cross-section (mirrored on the opposite arm), so their lanes line up.
    """
    four = layout == "four_way"
    w = rng.uniform(3.2, 3.7)
    shoulder = rng.uniform(0.3, 0.7)
    r_corner = rng.uniform(5.0, 9.0)
    limit = rng.uniform(11.0, 15.0)

    def road_cs(allow_median: bool) -> CrossSection:
        n_out = int(rng.integers(1, 4))
        n_in = int(np.clip(n_out + rng.integers(-1, 2), 1, 3))
        median = 0.0
        if allow_median and min(n_in, n_out) >= 2 and rng.random() < 0.3:
            median = rng.uniform(2.0, 3.5)
        ctype = (
            RoadType.ROAD_LINE_SOLID_DOUBLE_YELLOW
            if rng.random() < 0.75
            else RoadType.ROAD_LINE_BROKEN_DOUBLE_YELLOW
        )
        return CrossSection(n_out, n_in, w, median, shoulder, center_type=int(ctype))

    main = road_cs(True)
    if four:
        cross = road_cs(True)
        theta = [
            0.0,
            np.pi / 2 + rng.uniform(-0.2, 0.2),
            np.pi + rng.uniform(-0.04, 0.04),
        ]
        theta.append(theta[1] + np.pi + rng.uniform(-0.04, 0.04))
        arm_cs = [main, cross, main.mirrored(), cross.mirrored()]
    else:
        stem = road_cs(False)
        theta = [0.0, np.pi / 2 + rng.uniform(-0.25, 0.25), np.pi]
        arm_cs = [main, stem, main.mirrored()]
    n_arms = len(theta)
    arm_len = [rng.uniform(80.0, 130.0) for _ in range(n_arms)]

    # Corners: arm j's left edge inward, a fillet, arm j+1's right edge outward.
    feats: list[tuple[np.ndarray, int, int]] = []
    sidewalks: list[np.ndarray] = []
    tangent = np.zeros(n_arms)
    for j in range(n_arms):
        a, b = j, (j + 1) % n_arms
        gap = np.mod(theta[b] - theta[a], 2 * np.pi)
        lw, rw = arm_cs[a].side_width(False), arm_cs[b].side_width(True)
        far_a = _arm_point(theta[a], arm_len[a], lw)
        far_b = _arm_point(theta[b], arm_len[b], -rw)
        if gap < np.deg2rad(150.0):
            p1, u1 = _arm_point(theta[a], 0.0, lw), -geo.unit(theta[a])
            p2, u2 = _arm_point(theta[b], 0.0, -rw), geo.unit(theta[b])
            right1, right2 = -geo.left_of(u1), -geo.left_of(u2)
            center, _, _ = geo.line_intersection(
                p1 + r_corner * right1, u1, p2 + r_corner * right2, u2
            )
            t1, t2 = center - r_corner * right1, center - r_corner * right2
            a0 = np.arctan2(*(t1 - center)[::-1])
            a1 = np.arctan2(*(t2 - center)[::-1])
            while a1 > a0:
                a1 -= 2 * np.pi
            edge = geo.concat(
                np.stack([far_a, t1]), geo.arc(center, r_corner, a0, a1, 0.1), np.stack([t2, far_b])
            )
            tangent[a] = max(tangent[a], float(t1 @ geo.unit(theta[a])))
            tangent[b] = max(tangent[b], float(t2 @ geo.unit(theta[b])))
        else:
            edge = np.stack([far_a, far_b])
        dense = geo.resample(edge, 0.25)
        feats.append((geo.resample(dense), int(RoadType.ROAD_EDGE_BOUNDARY), ids()))
        sidewalks.append(geo.resample(geo.offset(dense, -SIDEWALK_OFFSET)))

    # Crosswalks and stop lines.
    cw_start = tangent + rng.uniform(0.5, 1.0, n_arms)
    cw_end = cw_start + rng.uniform(3.0, 4.5, n_arms)
    stop = cw_end + rng.uniform(0.8, 1.5, n_arms)

    if four:
        variant = "signalized" if rng.random() < 0.7 else "all_way_stop"
    else:
        variant = "signalized" if rng.random() < 0.5 else "stop_sign"
    if variant == "signalized":
        control = ["signal"] * n_arms
    elif variant == "all_way_stop":
        control = ["stop"] * n_arms
    else:
        control = ["priority", "stop", "priority"]

    lanes: dict[int, Lane] = {}
    incoming: list[list[Lane]] = []
    outgoing: list[list[Lane]] = []
    crossings: list[Crossing] = []
    for k in range(n_arms):
        ref = geo.resample(
            np.stack([_arm_point(theta[k], stop[k], 0.0), _arm_point(theta[k], arm_len[k], 0.0)]),
            0.25,
        )
        cs = arm_cs[k]
        loop_ref = None
        if cs.median > 0:
            nose = stop[k] + 0.5 + cs.median / 2
            loop_ref = geo.resample(
                np.stack(
                    [_arm_point(theta[k], nose, 0.0), _arm_point(theta[k], arm_len[k] + 1.0, 0.0)]
                ),
                0.25,
            )
        out_l, in_l, arm_feats, _ = _carriageway(
            ref, cs, ids, limit, edges=False, median_loop_ref=loop_ref
        )
        for lane in out_l:
            lane.entry = False
        feats.extend(arm_feats)
        incoming.append(in_l)
        outgoing.append(out_l)
        lanes.update({lane.id: lane for lane in out_l + in_l})
        # Crosswalk polygon from road edge to road edge.
        rw, lw = cs.side_width(True), cs.side_width(False)
        corners = np.stack(
            [
                _arm_point(theta[k], cw_start[k], -rw),
                _arm_point(theta[k], cw_end[k], -rw),
                _arm_point(theta[k], cw_end[k], lw),
                _arm_point(theta[k], cw_start[k], lw),
                _arm_point(theta[k], cw_start[k], -rw),
            ]
        )
        zone = ids()
        feats.append((geo.resample(corners), int(RoadType.CROSSWALK), zone))
        mid = 0.5 * (cw_start[k] + cw_end[k])
        line = np.stack(
            [
                _arm_point(theta[k], mid, -(rw + SIDEWALK_OFFSET)),
                _arm_point(theta[k], mid, lw + SIDEWALK_OFFSET),
            ]
        )
        crossings.append(Crossing(zone, k, line, (k - 1) % n_arms, k))
        if control[k] == "stop":
            sign_xy = _arm_point(theta[k], stop[k], lw + 0.3)
            feats.append((sign_xy[None], int(RoadType.STOP_SIGN), ids()))

    # Connectors from every incoming lane to the reachable outgoing lanes.
    by_arm: list[list[Lane]] = [[] for _ in range(n_arms)]
    right_radius = r_corner + shoulder + w / 2
    for a in range(n_arms):
        n_in = len(incoming[a])
        h0 = theta[a] + np.pi
        for b in range(n_arms):
            if b == a:
                continue
            turn_angle = float(geo.wrap(theta[b] - h0))
            n_out = len(outgoing[b])
            if abs(turn_angle) < np.deg2rad(30):
                turn, pairs = "straight", [(i, i) for i in range(min(n_in, n_out))]
            elif turn_angle > 0:
                turn, pairs = "left", [(0, 0)]
            else:
                turn, pairs = "right", [(n_in - 1, n_out - 1)]
            for i, o in pairs:
                src, dst = incoming[a][i], outgoing[b][o]
                p0, p1 = src.points[-1], dst.points[0]
                if turn == "straight":
                    pts = geo.bezier(p0, h0, p1, theta[b])
                else:
                    radius = right_radius if turn == "right" else 60.0
                    pts = geo.fillet_path(p0, h0, p1, theta[b], radius)
                    if pts is None:
                        pts = geo.bezier(p0, h0, p1, theta[b])
                conn = Lane(
                    ids(),
                    pts,
                    int(RoadType.LANE_SURFACE_STREET),
                    limit,
                    successors=[dst.id],
                    connector=True,
                    turn=turn,
                    control=control[a],
                    arm=a,
                )
                src.successors.append(conn.id)
                lanes[conn.id] = conn
                by_arm[a].append(conn)

    signal = None
    light_lanes: list[int] = []
    if variant == "signalized":
        groups = ((0, 2), (1, 3)) if four else ((0, 2), (1,))
        green = tuple(float(rng.uniform(7.0, 14.0)) for _ in groups)
        plan = SignalPlan(
            groups=groups,
            green=green,
            yellow=float(rng.uniform(3.0, 4.0)),
            all_red=float(rng.uniform(1.0, 2.0)),
            offset=0.0,
            arrows=bool(rng.random() < 0.4),
        )
        # Put a light change inside the 9.1 s window.
        change = float(rng.choice(plan.transitions()))
        offset = np.mod(change - rng.uniform(1.0, 7.5), plan.cycle)
        signal = dataclasses.replace(plan, offset=float(offset))
        order = {"straight": 0, "left": 1, "right": 2}
        ranked = [sorted(c, key=lambda lane: order[lane.turn]) for c in by_arm]
        rank = 0
        while len(light_lanes) < 16 and any(rank < len(r) for r in ranked):
            for r in ranked:
                if rank < len(r) and len(light_lanes) < 16:
                    light_lanes.append(r[rank].id)
            rank += 1

    return RoadNetwork(
        layout=layout,
        variant=variant,
        lanes=lanes,
        features=feats,
        sidewalks=sidewalks,
        crossings=crossings,
        parking=[],
        signal=signal,
        light_lanes=light_lanes,
    )


def build_network(rng: np.random.Generator, layout: str) -> RoadNetwork:
    """A random layout of the given kind, rotated and translated to global coordinates."""
    ids = Ids(int(rng.integers(1, 400)))
    if layout in ("straight", "curve"):
        net = build_corridor(rng, layout, ids)
    elif layout in ("four_way", "t_junction"):
        net = build_intersection(rng, layout, ids)
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    rotation = rng.uniform(-np.pi, np.pi)
    translation = rng.uniform(-1500.0, 1500.0, size=2)
    z = rng.uniform(-60.0, 120.0)
    return net.transformed(rotation, translation, z)
