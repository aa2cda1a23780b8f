"""Who is in a synthetic scenario: vehicles, cyclists, pedestrians and parked cars.

Sizes follow WOMD's typical boxes: cars 4.2-5.0 x 1.8-2.0 m, SUVs and pick-ups up to
5.6 x 2.1 m, some trucks and buses (7.5-12 x 2.4-2.55 m), cyclists about 1.8 x 0.7 m and
pedestrians about 0.6 x 0.6 m.
"""

from __future__ import annotations

import itertools

import numpy as np

from diffdrive.data.synthetic import geometry as geo
from diffdrive.data.synthetic.driver import (
    KIND_CYCLIST,
    KIND_PARKED,
    KIND_PEDESTRIAN,
    KIND_VEHICLE,
    AgentPlan,
    assemble_path,
    route_path,
)
from diffdrive.data.synthetic.roads import Lane, RoadNetwork
from diffdrive.sim.datatypes import RoadType, TrafficLightState

_TURN_WEIGHTS = {"straight": 0.6, "left": 0.2, "right": 0.2}
_BIKE_TURN_WEIGHTS = {"straight": 0.7, "left": 0.0, "right": 0.3}


def vehicle_size(rng: np.random.Generator, allow_large: bool = True) -> tuple[float, float, float]:
    """``(length, width, height)`` (m) of a random car, SUV/pick-up, truck or bus."""
    u = rng.random()
    if u < 0.75 or (not allow_large and u >= 0.92):
        return rng.uniform(4.2, 5.0), rng.uniform(1.8, 2.0), rng.uniform(1.4, 1.7)
    if u < 0.92:
        return rng.uniform(4.8, 5.6), rng.uniform(1.95, 2.1), rng.uniform(1.7, 2.0)
    return rng.uniform(7.5, 12.0), rng.uniform(2.4, 2.55), rng.uniform(2.8, 3.5)


def _sample_route(net: RoadNetwork, lane: Lane, rng, weights: dict[str, float]) -> list[int]:
    route = [lane.id]
    while net.lanes[route[-1]].successors:
        succ = [net.lanes[k] for k in net.lanes[route[-1]].successors]
        if succ[0].connector:
            w = np.array([weights.get(c.turn, 0.0) for c in succ])
            if w.sum() <= 0:
                return route if len(route) > 1 else []
            nxt = succ[int(rng.choice(len(succ), p=w / w.sum()))]
        else:
            nxt = succ[0]
        route.append(nxt.id)
    return route


def _intersection_center(net: RoadNetwork) -> np.ndarray | None:
    conns = [lane.points for lane in net.lanes.values() if lane.connector]
    if not conns:
        return None
    return np.concatenate(conns).mean(axis=0)


def _initial_speed(net: RoadNetwork, plan: AgentPlan, rng, t0: float) -> float:
    """A speed from which the agent can settle: curves, closed stop points."""
    v = plan.v_des * rng.uniform(0.75, 1.0)
    path = plan.path
    pts = path.points
    k = int(np.clip(plan.s0 / geo.SPACING, 0, len(pts) - 1))
    lo, hi = max(k - 20, 0), min(k + 80, len(pts))
    kap = np.abs(geo.curvature(pts[lo:hi])).max() if hi - lo > 3 else 0.0
    v = min(v, np.sqrt(plan.a_lat / max(kap, 1e-4)))
    if path.gates:
        gate = path.gates[0]
        dist = gate.s_stop - (plan.s0 + plan.length / 2)
        open_ = gate.control == "priority" or (
            gate.control == "signal"
            and int(net.signal.lane_state(gate.arm, gate.turn, t0))
            in (int(TrafficLightState.GO), int(TrafficLightState.ARROW_GO))
        )
        if not open_ or dist < 25.0:
            v = min(v, np.sqrt(2 * 1.5 * max(dist - 3.0, 0.0)))
    return float(max(v, 0.0))


def _driver_params(rng, kind: int) -> dict:
    if kind == KIND_CYCLIST:
        return {"a_max": 1.0, "b_comf": 1.5, "headway": 1.2, "s_min": 1.5, "a_lat": 1.5}
    if kind == KIND_PEDESTRIAN:
        return {"a_max": 0.8, "b_comf": 1.5, "headway": 0.7, "s_min": 0.6, "a_lat": 1.0}
    return {
        "a_max": rng.uniform(1.2, 2.2),
        "b_comf": rng.uniform(1.8, 2.8),
        "headway": rng.uniform(1.0, 1.8),
        "s_min": rng.uniform(1.5, 3.0),
        "a_lat": rng.uniform(1.8, 2.6),
    }


def _vehicle_plans(net, rng, n_vehicles: int, n_late: int, t0: float, t1: float):
    lanes = [
        lane
        for lane in net.lanes.values()
        if not lane.connector and lane.lane_type != int(RoadType.LANE_BIKE_LANE)
    ]
    center = _intersection_center(net)
    slots = []
    for lane in lanes:
        length = geo.cumulative_length(lane.points)[-1]
        s = length - rng.uniform(3.5, 12.0)
        while s > 7.0:
            slots.append((lane, s))
            s -= rng.uniform(10.0, 16.0) + rng.exponential(12.0)
    if not slots:
        return []
    weights = np.ones(len(slots))
    if center is not None:
        d = np.array([np.linalg.norm(geo.point_at(lane.points, s) - center) for lane, s in slots])
        weights = np.exp(-d / 60.0)
    n_init = min(n_vehicles - n_late, len(slots))
    chosen = rng.choice(len(slots), size=n_init, replace=False, p=weights / weights.sum())
    plans = []
    for c in sorted(chosen):
        lane, s = slots[c]
        route = _sample_route(net, lane, rng, _TURN_WEIGHTS)
        length, width, height = vehicle_size(rng)
        plan = AgentPlan(
            KIND_VEHICLE,
            length,
            width,
            height,
            route_path(net, route),
            route,
            s0=s,
            v_des=min(
                lane.speed_limit * rng.uniform(0.85, 1.08) * (0.9 if length > 7 else 1.0), 23.5
            ),
            **_driver_params(rng, KIND_VEHICLE),
        )
        plan.s0 = float(np.clip(s, plan.length / 2 + 0.5, plan.path.length - plan.length / 2 - 1))
        if (lane.left >= 0 or lane.right >= 0) and rng.random() < 0.3:
            plan.lane_change_time = rng.uniform(t0, t1 - 2.0)
        plans.append(plan)
    # Keep room between consecutive vehicles of a lane; the first lane of the route decides.
    plans = _drop_crowded(plans)
    for plan in plans:
        plan.v0 = _initial_speed(net, plan, rng, t0)
    _settle_followers(plans)
    entries = [lane for lane in lanes if lane.entry]
    for _ in range(n_late if entries else 0):
        lane = entries[int(rng.integers(len(entries)))]
        route = _sample_route(net, lane, rng, _TURN_WEIGHTS)
        length, width, height = vehicle_size(rng)
        plan = AgentPlan(
            KIND_VEHICLE,
            length,
            width,
            height,
            route_path(net, route),
            route,
            s0=length / 2 + 0.5,
            v_des=min(lane.speed_limit * rng.uniform(0.85, 1.05), 23.5),
            spawn_time=rng.uniform(t0 + 0.5, t1 - 0.5),
            **_driver_params(rng, KIND_VEHICLE),
        )
        plan.v0 = _initial_speed(net, plan, rng, t0) * 0.9
        plans.append(plan)
    return plans


def _drop_crowded(plans: list[AgentPlan]) -> list[AgentPlan]:
    keep: list[AgentPlan] = []
    for plan in sorted(plans, key=lambda p: (p.route[0], -p.s0)):
        same = [q for q in keep if q.route[0] == plan.route[0]]
        if same and min(abs(q.s0 - plan.s0) - (q.length + plan.length) / 2 for q in same) < 3.5:
            continue
        keep.append(plan)
    return keep


def _settle_followers(plans: list[AgentPlan]) -> None:
    """Caps initial speeds so that nobody starts closer than its IDM equilibrium gap."""
    by_lane: dict[int, list[AgentPlan]] = {}
    for plan in plans:
        by_lane.setdefault(plan.route[0], []).append(plan)
    for group in by_lane.values():
        group.sort(key=lambda p: -p.s0)
        for lead, follow in itertools.pairwise(group):
            gap = lead.s0 - follow.s0 - (lead.length + follow.length) / 2
            v_eq = max(0.0, (gap - follow.s_min) / follow.headway)
            follow.v0 = min(follow.v0, lead.v0 + 0.5 * v_eq, v_eq)


def _cyclist_plans(net, rng, n: int, vehicles: list[AgentPlan], t0: float, t1: float):
    bike_lanes = [lane for lane in net.lanes.values() if lane.lane_type == RoadType.LANE_BIKE_LANE]
    right_lanes = [
        lane
        for lane in net.lanes.values()
        if not lane.connector and lane.right < 0 and lane.lane_type == RoadType.LANE_SURFACE_STREET
    ]
    pool = bike_lanes or right_lanes
    plans = []
    for _ in range(n if pool else 0):
        for _try in range(10):
            lane = pool[int(rng.integers(len(pool)))]
            route = _sample_route(net, lane, rng, _BIKE_TURN_WEIGHTS)
            if not route:
                continue
            length = geo.cumulative_length(lane.points)[-1]
            s = rng.uniform(3.0, max(length - 5.0, 3.5))
            clash = any(
                q.route[0] == lane.id and abs(q.s0 - s) < (q.length + 2.0) / 2 + 8.0
                for q in vehicles + plans
            )
            if clash:
                continue
            plan = AgentPlan(
                KIND_CYCLIST,
                rng.uniform(1.6, 1.95),
                rng.uniform(0.6, 0.8),
                rng.uniform(1.5, 1.8),
                route_path(net, route),
                route,
                s0=s,
                v_des=rng.uniform(3.5, 7.0),
                **_driver_params(rng, KIND_CYCLIST),
            )
            if rng.random() < 0.2:
                plan.spawn_time, plan.s0 = rng.uniform(t0 + 0.5, t1 - 0.5), 1.5
            plan.v0 = _initial_speed(net, plan, rng, t0)
            plans.append(plan)
            break
    _settle_followers([p for p in vehicles + plans if p.spawn_time == -np.inf])
    return plans


def _smooth(points: np.ndarray, window: int = 7) -> np.ndarray:
    if len(points) <= window:
        return points
    pad = window // 2
    kern = np.ones(window) / window
    ext = np.concatenate([np.repeat(points[:1], pad, 0), points, np.repeat(points[-1:], pad, 0)])
    out = np.stack([np.convolve(ext[:, d], kern, mode="valid") for d in range(2)], -1)
    out[0], out[-1] = points[0], points[-1]
    return out


def _walk_piece(sidewalk: np.ndarray, s_from: float, s_to: float, side: float) -> np.ndarray:
    piece = geo.sub_polyline(sidewalk, s_from, s_to)
    return geo.offset(piece, side) if len(piece) > 1 else piece


def _pedestrian_plans(net, rng, n: int, t0: float, t1: float):
    if not net.sidewalks:
        return []
    plans: list[AgentPlan] = []
    starts: list[np.ndarray] = []
    for _ in range(n):
        for _try in range(10):
            length, width = rng.uniform(0.45, 0.85), rng.uniform(0.45, 0.8)
            height = rng.uniform(1.5, 1.9)
            params = _driver_params(rng, KIND_PEDESTRIAN)
            u = rng.random()
            side = -0.45  # walk on the right-hand side of the sidewalk
            if u < 0.2:
                sw = net.sidewalks[int(rng.integers(len(net.sidewalks)))]
                s = rng.uniform(0.0, geo.cumulative_length(sw)[-1])
                p = geo.offset(sw, -1.3)
                p = geo.point_at(p, s)
                pose = np.array([p[0], p[1], rng.uniform(-np.pi, np.pi)])
                plan = AgentPlan(KIND_PEDESTRIAN, length, width, height, pose=pose, **params)
                start = p
            elif u < 0.6 and net.crossings:
                c = net.crossings[int(rng.integers(len(net.crossings)))]
                ends = [(c.sidewalk_a, c.line[0]), (c.sidewalk_b, c.line[1])]
                if rng.random() < 0.5:
                    ends = ends[::-1]
                sw_a, sw_b = net.sidewalks[ends[0][0]], net.sidewalks[ends[1][0]]
                la, lb = geo.cumulative_length(sw_a), geo.cumulative_length(sw_b)
                sa = la[np.argmin(np.linalg.norm(sw_a - ends[0][1], axis=1))]
                sb = lb[np.argmin(np.linalg.norm(sw_b - ends[1][1], axis=1))]
                before = rng.uniform(3.0, 25.0) * rng.choice([-1.0, 1.0])
                s_start = float(np.clip(sa + before, 0.0, la[-1]))
                after = 45.0 * rng.choice([-1.0, 1.0])
                s_end = float(np.clip(sb + after, 0.0, lb[-1]))
                if abs(s_end - sb) < 15.0 or abs(sa - s_start) < 2.0:
                    continue
                walk = np.stack([ends[0][1], ends[1][1]])
                walk = geo.offset(geo.resample(walk), side)
                pieces = [
                    (-1, _walk_piece(sw_a, s_start, sa, side)),
                    (c.zone, walk),
                    (-2, _walk_piece(sw_b, sb, s_end, side)),
                ]
                gate = {c.zone: {"control": "ped", "arm": c.arm, "turn": ""}}
                path = assemble_path(pieces, gate)
                path.points = geo.resample(_smooth(path.points))
                plan = AgentPlan(
                    KIND_PEDESTRIAN,
                    length,
                    width,
                    height,
                    path,
                    s0=0.3,
                    v_des=rng.uniform(0.9, 1.6),
                    **params,
                )
                start = path.points[0]
            else:
                sw = net.sidewalks[int(rng.integers(len(net.sidewalks)))]
                total = geo.cumulative_length(sw)[-1]
                s = rng.uniform(0.0, total)
                s_end = float(np.clip(s + 60.0 * rng.choice([-1.0, 1.0]), 0.0, total))
                if abs(s_end - s) < 25.0:
                    continue
                path = assemble_path([(-1, _walk_piece(sw, s, s_end, side))], {})
                plan = AgentPlan(
                    KIND_PEDESTRIAN,
                    length,
                    width,
                    height,
                    path,
                    s0=0.3,
                    v_des=rng.uniform(0.9, 1.6),
                    **params,
                )
                start = path.points[0]
            if any(np.linalg.norm(start - q) < 1.5 for q in starts):
                continue
            if plan.path is not None and rng.random() < 0.2:
                plan.spawn_time = rng.uniform(t0 + 0.5, t1 - 0.5)
            plan.v0 = plan.v_des * rng.uniform(0.7, 1.0)
            starts.append(start)
            plans.append(plan)
            break
    return plans


def _parked_plans(net, rng, n: int):
    if not net.parking or n <= 0:
        return []
    idx = rng.choice(len(net.parking), size=min(n, len(net.parking)), replace=False)
    plans = []
    for k in sorted(idx):
        length, width, height = vehicle_size(rng, allow_large=False)
        length = min(length, 5.2)
        plans.append(
            AgentPlan(KIND_PARKED, length, width, height, pose=np.array(net.parking[k], float))
        )
    return plans


def plan_population(
    net: RoadNetwork,
    rng: np.random.Generator,
    *,
    num_vehicles: int,
    num_cyclists: int,
    num_pedestrians: int,
    num_parked: int,
    num_late: int,
    t0: float,
    t1: float,
) -> list[AgentPlan]:
    """Agents for one scenario: moving vehicles, cyclists, pedestrians, parked vehicles.

    Args:
      net: the road network.
      rng: randomness.
      num_vehicles: moving vehicles, ``num_late`` of which enter after the start.
      num_cyclists, num_pedestrians, num_parked: other agents (fewer if the layout has no
        room, bike lanes, sidewalks or parking).
      t0, t1: simulated time span (s).
    """
    vehicles = _vehicle_plans(net, rng, num_vehicles, num_late, t0, t1)
    cyclists = _cyclist_plans(net, rng, num_cyclists, vehicles, t0, t1)
    peds = _pedestrian_plans(net, rng, num_pedestrians, t0, t1)
    parked = _parked_plans(net, rng, num_parked)
    return vehicles + cyclists + peds + parked
