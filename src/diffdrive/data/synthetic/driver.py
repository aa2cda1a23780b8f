"""Rule-based traffic that produces the logged motion of a synthetic scenario.

Vehicles and cyclists are kinematic bicycles with a real wheelbase (steering *angle*, rear
axle reference point, steering lag and rate limit, acceleration lag), which is a different
model from Waymax's curvature bicycle. Their drivers

* track their path (lane centres, intersection connectors, lane-change blends) with a
  rear-axle controller: curvature feed-forward plus lateral and heading feedback;
* follow the car ahead with IDM, where "ahead" is any box inside the corridor swept along
  the driver's own path (so crossing traffic and pedestrians also count), and slow down
  for curves (lateral acceleration limit);
* stop at stop lines: red/yellow lights, stop signs (full stop first), and whenever the
  intersection manager has not granted their connector;
* change lanes occasionally on multi-lane roads when the gaps in the target lane allow.

The intersection manager is a reservation table: an agent may enter a connector (or a
pedestrian a crosswalk) only if no agent holds a conflicting one (paths closer than a
vehicle width); low-priority movements (permissive left turns, stop signs, pedestrians)
also wait for a gap in the approaching high-priority traffic. Pedestrians walk along
their sidewalk paths with the same car-following rule and wait for their crossing.

The state is integrated with explicit Euler substeps (default 0.02 s) and recorded every
0.1 s; all randomness comes from the generator passed in.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from diffdrive.data.synthetic import geometry as geo
from diffdrive.data.synthetic.roads import RoadNetwork
from diffdrive.sim.datatypes import TrafficLightState

KIND_VEHICLE, KIND_CYCLIST, KIND_PEDESTRIAN, KIND_PARKED = 0, 1, 2, 3

_GO = (int(TrafficLightState.GO), int(TrafficLightState.ARROW_GO))
_CAUTION = (int(TrafficLightState.CAUTION), int(TrafficLightState.ARROW_CAUTION))
_MAX_DECEL = 8.0
_LOOKAHEAD_SAMPLES = 80
_LOOKAHEAD_STEP = 2


@dataclasses.dataclass
class Gate:
    """A controlled entry along a path.

    Attributes:
      s_stop: arc length (m) of the stop point on the path.
      s_end: arc length (m) where the controlled zone ends.
      zone: reservation zone (connector lane id or crosswalk id).
      control: ``signal``, ``stop``, ``priority`` or ``ped``.
      arm: intersection arm of the signal / crossing.
      turn: connector turn (``straight``/``left``/``right``), empty for crossings.
    """

    s_stop: float
    s_end: float
    zone: int
    control: str
    arm: int
    turn: str = ""

    @property
    def high_priority(self) -> bool:
        return self.control == "priority" or (self.control == "signal" and self.turn != "left")


@dataclasses.dataclass
class Path:
    """A path made of pieces (lanes, crossings): points ``(M, 2)`` about 0.5 m apart.

    Attributes:
      points: the path (m).
      pieces: ``(lane id or -1, s_begin, s_end)`` of each piece, in order.
      gates: controlled entries along the path, in order.
    """

    points: np.ndarray
    pieces: list[tuple[int, float, float]]
    gates: list[Gate]

    @property
    def length(self) -> float:
        return float(geo.cumulative_length(self.points)[-1])

    def lane_at(self, s: float) -> int:
        for lane_id, s0, s1 in self.pieces:
            if s0 <= s <= s1:
                return lane_id
        return self.pieces[-1][0]


def assemble_path(pieces: list[tuple[int, np.ndarray]], gate_info: dict[int, dict]) -> Path:
    """Concatenates pieces ``(id, points)``; ids found in ``gate_info`` become gates."""
    pts = geo.resample(geo.concat(*[p for _, p in pieces]))
    s_all = geo.cumulative_length(pts)
    out_pieces, gates = [], []
    s0 = 0.0
    for pid, piece in pieces:
        length = float(geo.cumulative_length(geo.dedupe(piece))[-1])
        s1 = min(s0 + length, s_all[-1])
        out_pieces.append((pid, s0, s1))
        if pid in gate_info:
            gates.append(Gate(s_stop=s0, s_end=s1, zone=pid, **gate_info[pid]))
        s0 = s1
    return Path(pts, out_pieces, gates)


def route_path(net: RoadNetwork, route: list[int], start_s: float = 0.0) -> Path:
    """The path along lane ids ``route``, starting ``start_s`` metres into the first lane."""
    pieces = []
    for k, lane_id in enumerate(route):
        pts = net.lanes[lane_id].points
        if k == 0 and start_s > 0:
            pts = geo.sub_polyline(pts, start_s, geo.cumulative_length(pts)[-1])
        pieces.append((lane_id, pts))
    return assemble_path(pieces, connector_gates(net))


def connector_gates(net: RoadNetwork) -> dict[int, dict]:
    return {
        lane.id: {"control": lane.control, "arm": lane.arm, "turn": lane.turn}
        for lane in net.lanes.values()
        if lane.connector
    }


@dataclasses.dataclass
class AgentPlan:
    """One agent to simulate.

    Attributes:
      kind: ``KIND_*``.
      length, width, height: box size (m).
      path: its path (None for parked vehicles).
      route: lane ids of the path (vehicles and cyclists).
      s0: initial arc length of the box centre on the path (m).
      v0: initial speed (m/s).
      v_des: desired speed (m/s); 0 for standing pedestrians.
      spawn_time: simulation time (s) when it appears.
      lane_change_time: time (s) after which it wants to change lanes (inf: never).
      pose: ``(x, y, yaw)`` of a parked vehicle or standing pedestrian.
      a_max, b_comf, headway, s_min, a_lat: IDM and curve-speed parameters.
    """

    kind: int
    length: float
    width: float
    height: float
    path: Path | None = None
    route: list[int] = dataclasses.field(default_factory=list)
    s0: float = 0.0
    v0: float = 0.0
    v_des: float = 0.0
    spawn_time: float = -np.inf
    lane_change_time: float = np.inf
    pose: np.ndarray | None = None
    a_max: float = 1.5
    b_comf: float = 2.0
    headway: float = 1.4
    s_min: float = 2.0
    a_lat: float = 2.2


@dataclasses.dataclass
class Recording:
    """Recorded box states, ``(A, T)`` each, plus what the agents did.

    Attributes:
      x, y, yaw: box centre (m) and heading (rad); NaN where not present.
      valid: the agent exists at that step.
      lane_changes: ``(A,)`` number of lane changes.
      turns: per agent, the turns of the connectors it drove through.
    """

    x: np.ndarray
    y: np.ndarray
    yaw: np.ndarray
    valid: np.ndarray
    lane_changes: np.ndarray
    turns: list[list[str]]


def _zone_geometry(net: RoadNetwork) -> dict[int, tuple[np.ndarray, str, int]]:
    zones = {}
    for lane in net.lanes.values():
        if lane.connector:
            src = next((k for k, other in net.lanes.items() if lane.id in other.successors), -1)
            zones[lane.id] = (lane.points, "lane", src)
    for c in net.crossings:
        zones[c.zone] = (geo.resample(c.line), "ped", -1)
    return zones


def conflict_table(net: RoadNetwork) -> dict[int, set[int]]:
    """Zone id -> ids of the zones whose paths come too close to share the intersection."""
    zones = _zone_geometry(net)
    keys = list(zones)
    table: dict[int, set[int]] = {k: set() for k in keys}
    for a_i, a in enumerate(keys):
        pa, ka, src_a = zones[a]
        for b in keys[a_i + 1 :]:
            pb, kb, src_b = zones[b]
            if ka == "ped" and kb == "ped":
                continue
            if ka == "lane" and kb == "lane" and src_a == src_b:
                continue  # diverging from one lane: ordinary car following
            limit = 3.0 if ka == kb == "lane" else 2.6
            d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min()
            if d < limit:
                table[a].add(b)
                table[b].add(a)
    return table


def _smoothstep5(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u**3 * (10 - 15 * u + 6 * u**2)


class TrafficSim:
    """Simulates :class:`AgentPlan` s on a :class:`RoadNetwork`.

    Args:
      net: the road network.
      plans: agents to simulate.
      rng: randomness for driver decisions.
      t_start: simulation start time (s; negative = warm-up before the recorded window).
      num_steps: recorded steps (at 0.1 s, from time 0).
      substep: integration step (s); must divide 0.1.
    """

    def __init__(
        self,
        net: RoadNetwork,
        plans: list[AgentPlan],
        rng: np.random.Generator,
        t_start: float = -2.0,
        num_steps: int = 91,
        substep: float = 0.02,
    ):
        self.net, self.plans, self.rng = net, plans, rng
        self.num_substeps = max(1, round(0.1 / substep))
        self.dt = 0.1 / self.num_substeps
        self.t_start = round(t_start * 10) / 10
        self.num_steps = num_steps
        self.conflicts = (
            conflict_table(net)
            if net.crossings or net.signal or any(lane.connector for lane in net.lanes.values())
            else {}
        )
        n = len(plans)
        self.n = n
        f = lambda attr: np.array([getattr(p, attr) for p in plans], np.float64)
        self.kind = np.array([p.kind for p in plans], np.int64)
        self.length, self.width = f("length"), f("width")
        self.v_des, self.a_max, self.b_comf = f("v_des"), f("a_max"), f("b_comf")
        self.headway, self.s_min, self.a_lat = f("headway"), f("s_min"), f("a_lat")
        self.spawn_time = f("spawn_time")
        self.lc_time = f("lane_change_time")
        self.wheelbase = np.where(self.kind == KIND_PEDESTRIAN, 0.0, 0.6 * self.length)
        self.c_off = 0.5 * self.wheelbase
        self.bicycle = (self.kind == KIND_VEHICLE) | (self.kind == KIND_CYCLIST)
        self.margin = np.where(self.kind == KIND_PEDESTRIAN, 0.15, 0.35)
        self.paths: list[Path | None] = [p.path for p in plans]
        self.routes = [list(p.route) for p in plans]
        self.alive = np.zeros(n, bool)
        self.gone = np.zeros(n, bool)
        self.x, self.y, self.yaw = np.zeros(n), np.zeros(n), np.zeros(n)
        self.v, self.acc, self.steer = np.zeros(n), np.zeros(n), np.zeros(n)
        self.k = np.zeros(n, np.int64)  # path index of the tracked point
        self.s = np.zeros(n)  # arc length of the box centre
        self.lead_s = np.full(n, np.inf)  # leader's rear on my path (m)
        self.lead_v = np.zeros(n)
        self.lead_id = np.full(n, -1)
        self.stop_s = np.full(n, np.inf)  # stop point (m) while not granted
        self.gate_idx = np.zeros(n, np.int64)
        self.holding = np.full(n, -1, np.int64)
        self.stopped_at = np.full(n, -1, np.int64)  # gate index with a completed full stop
        self.wait_since = np.full(n, np.inf)
        self.lane_changes = np.zeros(n, np.int64)
        self.lc_until = np.full(n, -np.inf)
        self.turns: list[list[str]] = [[] for _ in range(n)]
        self._pack_paths()

    # ------------------------------------------------------------------ paths

    def _pack_paths(self) -> None:
        lens = [len(p.points) if p is not None else 2 for p in self.paths]
        m = max(lens) if lens else 2
        n = self.n
        self.P = np.zeros((n, m, 2))
        self.TAN = np.zeros((n, m, 2))
        self.TAN[..., 0] = 1.0
        self.HDG = np.zeros((n, m))
        self.KAP = np.zeros((n, m))
        self.VCAP = np.full((n, m), 1e3)
        self.NPTS = np.array(lens, np.int64)
        self.DS = np.full(n, geo.SPACING)
        for i, path in enumerate(self.paths):
            if path is not None:
                self._pack_one(i, path)

    def _pack_one(self, i: int, path: Path) -> None:
        pts = path.points
        m = len(pts)
        if m > self.P.shape[1]:
            self.paths[i] = path
            self._pack_paths()
            return
        tan = geo.tangents(pts)
        kap = geo.curvature(pts)
        kap = np.convolve(np.pad(kap, 4, mode="edge"), np.ones(9) / 9, mode="valid")
        ds = float(geo.cumulative_length(pts)[-1]) / max(m - 1, 1)
        vcap = np.sqrt(self.a_lat[i] / np.maximum(np.abs(kap), 1e-4))
        for k in range(m - 2, -1, -1):  # decelerate in time for the curves ahead
            vcap[k] = min(vcap[k], np.sqrt(vcap[k + 1] ** 2 + 2 * 1.5 * ds))
        self.P[i, :m], self.P[i, m:] = pts, pts[-1]
        self.TAN[i, :m], self.TAN[i, m:] = tan, tan[-1]
        self.HDG[i, :m] = np.arctan2(tan[:, 1], tan[:, 0])
        self.HDG[i, m:] = self.HDG[i, m - 1]
        self.KAP[i, :m], self.KAP[i, m:] = kap, 0.0
        self.VCAP[i, :m], self.VCAP[i, m:] = vcap, vcap[-1]
        self.NPTS[i], self.DS[i] = m, ds
        self.paths[i] = path

    def _path_length(self, i: int) -> float:
        return (self.NPTS[i] - 1) * self.DS[i]

    def _path_point(self, i: int, s: np.ndarray | float):
        """Point and heading on agent ``i``'s path at arc length ``s``."""
        m = self.NPTS[i]
        u = np.clip(np.asarray(s) / self.DS[i], 0, m - 1)
        k0 = np.minimum(np.floor(u).astype(np.int64), m - 2) if m > 1 else np.zeros_like(u, int)
        frac = (u - k0)[..., None]
        p = self.P[i, k0] * (1 - frac) + self.P[i, k0 + 1] * frac
        return p, self.HDG[i, k0]

    # ------------------------------------------------------------------ lifecycle

    def _spawn(self, t: float) -> None:
        due = np.nonzero(~self.alive & ~self.gone & (self.spawn_time <= t + 1e-9))[0]
        for i in due:
            plan = self.plans[i]
            if plan.path is None:
                self.x[i], self.y[i], self.yaw[i] = plan.pose
                self.alive[i] = True
                continue
            if self.kind[i] == KIND_PEDESTRIAN and plan.v_des <= 0:
                self.x[i], self.y[i], self.yaw[i] = plan.pose
                self.alive[i] = True
                continue
            track = plan.s0 - self.c_off[i]
            p, h = self._path_point(i, track)
            if t > self.t_start + 1e-9 and not self._clear(i, p, plan.v0):
                if t - self.spawn_time[i] > 3.0:
                    self.gone[i] = True  # the entry stayed blocked; it never appears
                continue
            self.x[i], self.y[i], self.yaw[i] = p[0], p[1], h
            self.v[i], self.s[i] = plan.v0, plan.s0
            self.k[i] = round(track / self.DS[i])
            self.alive[i] = True

    def _clear(self, i: int, p: np.ndarray, v0: float) -> bool:
        others = np.nonzero(self.alive)[0]
        if len(others) == 0:
            return True
        cx, cy = self._centres()
        d = np.hypot(cx[others] - p[0], cy[others] - p[1])
        need = 0.5 * (self.length[i] + self.length[others]) + 4.0 + v0 * 1.2
        return bool(np.all(d > need))

    def _centres(self) -> tuple[np.ndarray, np.ndarray]:
        cx = self.x + self.c_off * np.cos(self.yaw)
        cy = self.y + self.c_off * np.sin(self.yaw)
        return cx, cy

    def _exit(self) -> None:
        movers = np.nonzero(self.alive & (self.NPTS > 2) & (self.v_des > 0))[0]
        for i in movers:
            if self.s[i] + 0.5 * self.length[i] >= self._path_length(i) - 0.3:
                self.alive[i] = False
                self.gone[i] = True
                self.holding[i] = -1

    # ------------------------------------------------------------------ perception

    def _detect_leaders(self) -> None:
        self.lead_s[:] = np.inf
        self.lead_v[:] = 0.0
        self.lead_id[:] = -1
        movers = np.nonzero(self.alive & (self.v_des > 0) & (self.NPTS > 2))[0]
        obs = np.nonzero(self.alive)[0]
        if len(movers) == 0 or len(obs) < 2:
            return
        cx, cy = self._centres()
        c = np.stack([cx[obs], cy[obs]], -1)
        kc = np.round(self.s[movers] / self.DS[movers]).astype(np.int64)
        idx = kc[:, None] + _LOOKAHEAD_STEP * np.arange(_LOOKAHEAD_SAMPLES)[None, :]
        idx = np.minimum(idx, self.NPTS[movers, None] - 1)
        w = self.P[movers[:, None], idx]  # (Nm, K, 2)
        d2 = ((w[:, :, None, :] - c[None, None, :, :]) ** 2).sum(-1)  # (Nm, K, No)
        kk = np.argmin(d2, axis=1)  # (Nm, No)
        rows = np.arange(len(movers))[:, None]
        kidx = idx[rows, kk]
        p = self.P[movers[:, None], kidx]
        tan = self.TAN[movers[:, None], kidx]
        rel = c[None] - p
        lat = tan[..., 0] * rel[..., 1] - tan[..., 1] * rel[..., 0]
        lon = (tan * rel).sum(-1)
        s_obj = kidx * self.DS[movers, None] + lon
        dth = self.yaw[obs][None, :] - np.arctan2(tan[..., 1], tan[..., 0])
        lo, wo = self.length[obs][None, :] / 2, self.width[obs][None, :] / 2
        hw_perp = np.abs(lo * np.sin(dth)) + np.abs(wo * np.cos(dth))
        hl_par = np.abs(lo * np.cos(dth)) + np.abs(wo * np.sin(dth))
        inside = np.abs(lat) < self.width[movers, None] / 2 + hw_perp + self.margin[movers, None]
        at_end = kk == _LOOKAHEAD_SAMPLES - 1
        ahead = s_obj > self.s[movers, None] + 1e-3
        ok = inside & ahead & (~at_end | (lon < 1.0)) & (obs[None, :] != movers[:, None])
        rear = np.where(ok, s_obj - hl_par, np.inf)
        best = np.argmin(rear, axis=1)
        has = np.isfinite(rear[rows[:, 0], best])
        sel = movers[has]
        j = obs[best[has]]
        self.lead_s[sel] = rear[rows[:, 0], best][has]
        self.lead_v[sel] = np.maximum(self.v[j] * np.cos(dth[rows[:, 0], best][has]), 0.0)
        self.lead_id[sel] = j

    # ------------------------------------------------------------------ intersections

    def _light(self, gate: Gate, t: float) -> int:
        return int(self.net.signal.lane_state(gate.arm, gate.turn, t))

    def _may_go(self, i: int, gate: Gate, t: float, dist: float) -> bool:
        v = self.v[i]
        if gate.control == "signal":
            state = self._light(gate, t)
            if state in _GO:
                return True
            if state in _CAUTION:
                return dist < v * v / (2 * 3.5)
            return dist < v * v / (2 * 7.0)
        if gate.control == "stop":
            return self.stopped_at[i] == self.gate_idx[i]
        if gate.control == "ped" and self.net.signal is not None:
            return int(self.net.signal.arm_state(gate.arm, t)) == int(TrafficLightState.STOP)
        return True

    def _conflicts(self, a: int, b: int) -> bool:
        return b in self.conflicts.get(a, ())

    def _grantable(self, i: int, gate: Gate, t: float, pending: dict[int, float]) -> bool:
        holders = np.nonzero(self.holding >= 0)[0]
        for j in holders:
            if j != i and self._conflicts(gate.zone, int(self.holding[j])):
                return False
        if gate.high_priority:
            return True
        for j, dist in pending.items():
            if j == i:
                continue
            g = self.paths[j].gates[self.gate_idx[j]]
            if not g.high_priority or not self._conflicts(gate.zone, g.zone):
                continue
            if not self._may_go(j, g, t, dist):
                continue
            if dist < 60.0 and dist / max(self.v[j], 0.5) < 5.0:
                return False
        return True

    def _gates(self, t: float) -> None:
        self.stop_s[:] = np.inf
        requests, pending = [], {}
        for i in np.nonzero(self.alive)[0]:
            path = self.paths[i]
            if path is None or not path.gates or self.v_des[i] <= 0:
                continue
            while self.gate_idx[i] < len(path.gates):
                gate = path.gates[self.gate_idx[i]]
                if self.holding[i] == gate.zone and (self.s[i] - 0.5 * self.length[i] > gate.s_end):
                    self.holding[i] = -1
                    if gate.turn:
                        self.turns[i].append(gate.turn)
                    self.gate_idx[i] += 1
                    continue
                break
            if self.gate_idx[i] >= len(path.gates):
                continue
            gate = path.gates[self.gate_idx[i]]
            front = self.s[i] + 0.5 * self.length[i]
            dist = gate.s_stop - front
            v = self.v[i]
            if self.holding[i] == gate.zone:
                if gate.control == "signal" and dist > 0.5:
                    state = self._light(gate, t)
                    if state not in _GO and dist > v * v / (2 * 3.0) + 0.5:
                        self.holding[i] = -1  # stop for the yellow / red after all
                        self.stop_s[i] = gate.s_stop
                continue
            if gate.control == "stop" and v < 0.3 and dist < 3.5:
                self.stopped_at[i] = self.gate_idx[i]
            pending[i] = dist
            reach = (v * v / (2 * 2.0) + 8.0) if self.kind[i] != KIND_PEDESTRIAN else 1.5
            may_go = self._may_go(i, gate, t, dist)
            if not may_go or dist <= reach:
                self.stop_s[i] = gate.s_stop  # wait at the stop point until granted
            if dist > reach or not may_go:
                continue
            if not np.isfinite(self.wait_since[i]):
                self.wait_since[i] = t
            lead = self.lead_id[i]
            if (
                lead >= 0
                and self.lead_s[i] - front < dist - 0.5
                and self.holding[lead] != gate.zone
            ):
                continue  # someone queues ahead of me before the stop line
            requests.append(i)
        order = sorted(
            requests,
            key=lambda i: (
                not self.paths[i].gates[self.gate_idx[i]].high_priority,
                self.wait_since[i],
                pending[i],
                i,
            ),
        )
        for i in order:
            gate = self.paths[i].gates[self.gate_idx[i]]
            if self._grantable(i, gate, t, pending):
                self.holding[i] = gate.zone
                self.stop_s[i] = np.inf
                self.wait_since[i] = np.inf
                pending.pop(i, None)

    # ------------------------------------------------------------------ lane changes

    def _lane_changes(self, t: float) -> None:
        cand = np.nonzero(
            self.alive & (self.kind == KIND_VEHICLE) & (self.v > 4.0) & (t > self.lc_until + 3.0)
        )[0]
        for i in cand:
            wants = self.lc_time[i] <= t <= self.lc_time[i] + 6.0
            slow_lead = (
                self.lead_id[i] >= 0
                and self.lead_v[i] < 0.7 * self.v_des[i]
                and self.lead_s[i] - self.s[i] < 35.0
            )
            if not wants and not (slow_lead and self.rng.random() < 0.08):
                continue
            self._try_lane_change(i, t)

    def _try_lane_change(self, i: int, t: float) -> None:
        path = self.paths[i]
        lane_id = path.lane_at(self.s[i])
        lane = self.net.lanes.get(lane_id)
        if lane is None or lane.connector:
            return
        options = [k for k in (lane.left, lane.right) if k >= 0]
        if not options:
            return
        target = self.net.lanes[options[int(self.rng.integers(len(options)))]]
        v = self.v[i]
        span = float(np.clip(3.5 * v, 25.0, 70.0))
        lane_end = next(
            (s1 for pid, s0, s1 in path.pieces if pid == lane_id and s0 <= self.s[i] <= s1), 0.0
        )
        if lane_end - self.s[i] < span + 25.0:
            return
        # Gaps in the target lane.
        tpts = target.points
        t_s = geo.cumulative_length(tpts)
        cx, cy = self._centres()
        others = np.nonzero(self.alive & (np.arange(self.n) != i) & (self.kind != KIND_PEDESTRIAN))[
            0
        ]
        d2 = (tpts[None, :, 0] - cx[others, None]) ** 2 + (tpts[None, :, 1] - cy[others, None]) ** 2
        near = np.argmin(d2, axis=1)
        in_lane = np.sqrt(d2[np.arange(len(others)), near]) < 0.5 * self.width[others] + 1.6
        me_d2 = (tpts[:, 0] - cx[i]) ** 2 + (tpts[:, 1] - cy[i]) ** 2
        s_me = t_s[np.argmin(me_d2)]
        for j, kj, inl in zip(others, near, in_lane):
            if not inl:
                continue
            gap = t_s[kj] - s_me
            half = 0.5 * (self.length[i] + self.length[j])
            if gap >= 0 and gap - half < max(10.0, 1.0 * v):
                return
            if gap < 0 and -gap - half < max(10.0, 1.5 * self.v[j] + 3.0 * max(self.v[j] - v, 0)):
                return
        # The new path: what is left of the current one blended into the target lane.
        k_now = int(np.clip(round(self.s[i] / self.DS[i]), 1, self.NPTS[i] - 2))
        s_now = k_now * self.DS[i]
        prefix = path.points[: k_now + 1]
        blend_s = s_now + np.arange(1, int(span / 0.5) + 1) * 0.5
        a_pts, _ = self._path_point(i, blend_s)
        dd = ((a_pts[:, None, :] - tpts[None, :, :]) ** 2).sum(-1)
        b_idx = np.argmin(dd, axis=1)
        b_pts = tpts[b_idx]
        u = _smoothstep5((blend_s - s_now) / span)[:, None]
        blend = a_pts + u * (b_pts - a_pts)
        s_join = t_s[b_idx[-1]]
        rest_lane = geo.sub_polyline(tpts, s_join, t_s[-1])
        route = [target.id]
        while self.net.lanes[route[-1]].successors:
            succ = self.net.lanes[route[-1]].successors
            turns_old = [self.net.lanes[k].turn for k in self.routes[i] if k in self.net.lanes]
            same = [k for k in succ if self.net.lanes[k].turn in turns_old]
            route.append(same[0] if same else succ[0])
        pieces = [(lane_id, geo.concat(prefix, blend)), (target.id, rest_lane)]
        pieces += [(k, self.net.lanes[k].points) for k in route[1:]]
        new_path = assemble_path(pieces, connector_gates(self.net))
        self.routes[i] = [k for k in self.routes[i] if k == lane_id] + route
        s_rear = self.s[i] - self.c_off[i]
        self._pack_one(i, new_path)
        self.k[i] = round(s_rear / self.DS[i])
        self.gate_idx[i] = 0
        self.holding[i] = -1
        self.lane_changes[i] += 1
        self.lc_until[i] = t + span / max(v, 1.0)

    # ------------------------------------------------------------------ dynamics

    def _substep(self) -> None:
        dt = self.dt
        bike = np.nonzero(self.alive & self.bicycle & (self.v_des > 0))[0]
        ped = np.nonzero(self.alive & (self.kind == KIND_PEDESTRIAN) & (self.v_des > 0))[0]
        movers = np.concatenate([bike, ped])
        if len(movers) == 0:
            return
        # Longitudinal (IDM with leader / stop point).
        v = self.v[movers]
        front = self.s[movers] + 0.5 * self.length[movers]
        gap_lead = self.lead_s[movers] - front
        gap_stop = self.stop_s[movers] - front
        use_stop = gap_stop < gap_lead
        gap = np.where(use_stop, gap_stop, gap_lead)
        v_lead = np.where(use_stop, 0.0, self.lead_v[movers])
        kc = np.clip(np.round(self.s[movers] / self.DS[movers]).astype(np.int64), 0, None)
        kc = np.minimum(kc, self.NPTS[movers] - 1)
        v0 = np.maximum(np.minimum(self.v_des[movers], self.VCAP[movers, kc]), 0.5)
        a_max, b = self.a_max[movers], self.b_comf[movers]
        free = 1.0 - (v / v0) ** 4
        s_star = self.s_min[movers] + np.maximum(
            0.0, v * self.headway[movers] + v * (v - v_lead) / (2 * np.sqrt(a_max * b))
        )
        inter = np.where(np.isfinite(gap), (s_star / np.maximum(gap, 0.05)) ** 2, 0.0)
        a_cmd = np.clip(a_max * (free - inter), -_MAX_DECEL, a_max)
        tau_a = np.where(self.kind[movers] == KIND_PEDESTRIAN, 0.3, 0.25)
        acc = self.acc[movers] + (a_cmd - self.acc[movers]) * np.minimum(1.0, dt / tau_a)
        v_new = np.maximum(v + acc * dt, 0.0)
        acc = np.where((v_new <= 0) & (acc < 0), 0.0, acc)
        self.acc[movers], self.v[movers] = acc, v_new

        # Vehicles and cyclists: path tracking and kinematic bicycle.
        if len(bike):
            i = bike
            win = np.arange(-3, 10)
            idx = np.clip(self.k[i, None] + win[None, :], 0, self.NPTS[i, None] - 1)
            pts = self.P[i[:, None], idx]
            d2 = (pts[..., 0] - self.x[i, None]) ** 2 + (pts[..., 1] - self.y[i, None]) ** 2
            k = idx[np.arange(len(i)), np.argmin(d2, axis=1)]
            self.k[i] = k
            p, tan = self.P[i, k], self.TAN[i, k]
            rel = np.stack([self.x[i] - p[:, 0], self.y[i] - p[:, 1]], -1)
            lon = (tan * rel).sum(-1)
            e = tan[:, 0] * rel[:, 1] - tan[:, 1] * rel[:, 0]
            self.s[i] = k * self.DS[i] + lon + self.c_off[i]
            vi = self.v[i]
            psi = geo.wrap(self.yaw[i] - self.HDG[i, k])
            kp = np.minimum(
                k + np.round((vi * 0.35 + 0.5) / self.DS[i]).astype(np.int64), self.NPTS[i] - 1
            )
            lam = np.clip(0.6 * vi + 3.0, 4.0, 14.0)
            curv = self.KAP[i, kp] - 2.0 / lam * np.sin(psi) - e / lam**2
            wb = self.wheelbase[i]
            steer_cmd = np.clip(np.arctan(wb * curv), -0.6, 0.6)
            d_steer = np.clip((steer_cmd - self.steer[i]) * min(1.0, dt / 0.1), -0.9 * dt, 0.9 * dt)
            self.steer[i] += d_steer
            self.x[i] += vi * np.cos(self.yaw[i]) * dt
            self.y[i] += vi * np.sin(self.yaw[i]) * dt
            self.yaw[i] = geo.wrap(self.yaw[i] + vi * np.tan(self.steer[i]) / wb * dt)

        # Pedestrians: along their path.
        if len(ped):
            i = ped
            self.s[i] = np.minimum(self.s[i] + self.v[i] * dt, (self.NPTS[i] - 1) * self.DS[i])
            p, h = self._path_points(i, self.s[i])
            self.x[i], self.y[i] = p[:, 0], p[:, 1]
            self.yaw[i] = geo.wrap(self.yaw[i] + geo.wrap(h - self.yaw[i]) * min(1.0, dt / 0.4))

    def _path_points(self, i: np.ndarray, s: np.ndarray):
        """Points ``(n, 2)`` and headings ``(n,)`` of agents ``i`` at arc lengths ``s``."""
        u = np.clip(s / self.DS[i], 0, self.NPTS[i] - 1)
        k0 = np.clip(np.floor(u).astype(np.int64), 0, np.maximum(self.NPTS[i] - 2, 0))
        frac = (u - k0)[:, None]
        p = self.P[i, k0] * (1 - frac) + self.P[i, k0 + 1] * frac
        return p, self.HDG[i, k0]

    # ------------------------------------------------------------------ main loop

    def run(self) -> Recording:
        """Simulates from ``t_start`` and records the steps at t = 0, 0.1, ... (s)."""
        n, steps = self.n, self.num_steps
        rec_x, rec_y = np.full((n, steps), np.nan), np.full((n, steps), np.nan)
        rec_yaw, rec_valid = np.full((n, steps), np.nan), np.zeros((n, steps), bool)
        first_rec = round(-self.t_start * 10)
        total = first_rec + steps
        for step in range(total):
            t = self.t_start + step * 0.1
            self._exit()
            self._spawn(t)
            r = step - first_rec
            if r >= 0:
                cx, cy = self._centres()
                rec_x[:, r] = np.where(self.alive, cx, np.nan)
                rec_y[:, r] = np.where(self.alive, cy, np.nan)
                rec_yaw[:, r] = np.where(self.alive, self.yaw, np.nan)
                rec_valid[:, r] = self.alive
            if r == steps - 1:
                break
            self._detect_leaders()
            self._lane_changes(t)
            self._gates(t)
            for sub in range(self.num_substeps):
                self._substep()
                if sub < self.num_substeps - 1:
                    adv = self.dt * self.lead_v
                    self.lead_s = self.lead_s + adv
        return Recording(rec_x, rec_y, rec_yaw, rec_valid, self.lane_changes.copy(), self.turns)
