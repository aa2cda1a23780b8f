"""Scenario assembly: layout, traffic, WOMD-like noise, SDC choice and verification.

One scenario is built from ``numpy.random.default_rng([seed, attempt])`` only (no global
state), so a seed always gives bitwise identical arrays. An attempt

1. draws a layout (:mod:`.roads`) and its agents (:mod:`.population`);
2. simulates them from ``-warmup`` seconds (:mod:`.driver`) and records 91 steps at 10 Hz;
3. adds tracking noise: temporally correlated position and yaw jitter, velocities from
   central finite differences of the noisy positions plus white noise (so velocity and yaw
   are not exactly consistent), occasional occlusion gaps of non-SDC objects;
4. picks the SDC among the vehicles present at all 91 steps, builds the flat arrays (object
   selection nearest the SDC, roadgraph cut to the points nearest the SDC's path with road
   edges kept first, traffic lights) and *verifies* on those final float32 arrays, with
   Waymax's exact rules, that the SDC never overlaps a valid object and never has a corner
   offroad (both with a safety margin). The next candidate SDC is tried if not; if none
   passes, the whole scenario is regenerated with the next attempt's sub-stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from diffdrive.data import select
from diffdrive.data.synthetic import geometry as geo
from diffdrive.data.synthetic.driver import (
    KIND_CYCLIST,
    KIND_PARKED,
    KIND_PEDESTRIAN,
    KIND_VEHICLE,
    Recording,
    TrafficSim,
)
from diffdrive.data.synthetic.population import plan_population
from diffdrive.data.synthetic.roads import LAYOUTS, RoadNetwork, build_network
from diffdrive.data.types import DecodedScenario
from diffdrive.sim import datatypes
from diffdrive.sim.datatypes import ObjectType, RoadType

FORMAT = "synthetic"
_OBJECT_TYPE = {
    KIND_VEHICLE: int(ObjectType.VEHICLE),
    KIND_PARKED: int(ObjectType.VEHICLE),
    KIND_CYCLIST: int(ObjectType.CYCLIST),
    KIND_PEDESTRIAN: int(ObjectType.PEDESTRIAN),
}
_EDGE_TYPES = (int(RoadType.ROAD_EDGE_BOUNDARY), int(RoadType.ROAD_EDGE_MEDIAN))


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Settings of the procedural dataset.

    Attributes:
      max_objects: object slots per scenario (1..128); the agents nearest the SDC are kept.
      num_roadgraph_points: roadgraph size; larger maps keep the points nearest the SDC's
        path (road edges first), smaller ones are padded with -1/False.
      num_vehicles: inclusive range of moving vehicles simulated.
      cyclist_share, pedestrian_share: expected fraction of all agents that are cyclists /
        pedestrians (urban layouts only; none on freeways).
      parked_share: expected fraction of vehicles parked (where a parking strip exists).
      late_entry_share: fraction of moving vehicles entering the map after the start.
      dropout_prob: probability that a non-SDC object has an occlusion gap in its track.
      position_noise: std (m) of the correlated position jitter.
      yaw_noise: std (rad) of the correlated yaw jitter (x5 for pedestrians).
      velocity_noise: std (m/s) of the white noise added to the finite differences.
      layout_weights: relative probability of each of :data:`roads.LAYOUTS` (straight,
        curve, four_way, t_junction).
      warmup: seconds simulated before the first recorded step.
      substep: integration step (s) of the driver model.
      max_attempts: regenerations (seed sub-streams) before giving up.
      sdc_margin: clearance (m) the SDC must keep from other boxes and road edges.
    """

    max_objects: int = 32
    num_roadgraph_points: int = 20000
    num_vehicles: tuple[int, int] = (10, 20)
    cyclist_share: float = 0.08
    pedestrian_share: float = 0.15
    parked_share: float = 0.15
    late_entry_share: float = 0.15
    dropout_prob: float = 0.08
    position_noise: float = 0.03
    yaw_noise: float = 0.008
    velocity_noise: float = 0.05
    layout_weights: tuple[float, float, float, float] = (0.2, 0.2, 0.35, 0.25)
    warmup: float = 2.0
    substep: float = 0.02
    max_attempts: int = 8
    sdc_margin: float = 0.05

    def __post_init__(self):
        if not 1 <= self.max_objects <= 128:
            raise ValueError(f"max_objects must be in [1, 128], got {self.max_objects}")
        if self.num_roadgraph_points < 100:
            raise ValueError(
                f"num_roadgraph_points must be at least 100, got {self.num_roadgraph_points}"
            )
        lo, hi = self.num_vehicles
        if not 1 <= lo <= hi:
            raise ValueError(f"num_vehicles must be a range 1 <= lo <= hi, got {self.num_vehicles}")
        if self.cyclist_share < 0 or self.pedestrian_share < 0:
            raise ValueError("cyclist_share and pedestrian_share must be >= 0")
        if self.cyclist_share + self.pedestrian_share >= 0.9:
            raise ValueError("cyclist_share + pedestrian_share must be below 0.9")
        if len(self.layout_weights) != len(LAYOUTS) or min(self.layout_weights) < 0:
            raise ValueError(f"layout_weights: {len(LAYOUTS)} non-negative weights {LAYOUTS}")
        if sum(self.layout_weights) <= 0:
            raise ValueError("layout_weights must not all be zero")
        steps = 0.1 / self.substep
        if self.substep <= 0 or abs(steps - round(steps)) > 1e-6:
            raise ValueError(f"substep must divide 0.1 s, got {self.substep}")
        if self.max_attempts < 1 or self.warmup < 0:
            raise ValueError("max_attempts must be >= 1 and warmup >= 0")


@dataclasses.dataclass(frozen=True)
class ScenarioInfo:
    """What was generated (for statistics and tests).

    Attributes:
      layout: one of :data:`roads.LAYOUTS`.
      variant: ``urban``/``freeway`` or ``signalized``/``all_way_stop``/``stop_sign``.
      attempt: sub-stream index that produced the scenario (0 unless regenerated).
      rejected_sdcs: candidate SDCs that failed verification before the accepted one.
      num_simulated: agents simulated (before object selection).
      lane_changes: lane changes of the kept objects.
      sdc_turns: intersection movements of the SDC during the simulation.
    """

    layout: str
    variant: str
    attempt: int
    rejected_sdcs: int
    num_simulated: int
    lane_changes: int
    sdc_turns: tuple[str, ...]


class GenerationError(RuntimeError):
    """No attempt produced a scenario whose SDC passes verification."""


# --------------------------------------------------------------------------------------
# Observation noise
# --------------------------------------------------------------------------------------


def _ar1(rng, shape: tuple[int, int], sigma: np.ndarray, rho: float) -> np.ndarray:
    """Stationary AR(1) noise along the last axis, per-row std ``sigma``."""
    white = rng.standard_normal(shape)
    out = np.empty(shape)
    out[:, 0] = white[:, 0]
    k = np.sqrt(1 - rho**2)
    for t in range(1, shape[1]):
        out[:, t] = rho * out[:, t - 1] + k * white[:, t]
    return out * sigma[:, None]


def _finite_difference(p: np.ndarray, valid: np.ndarray, dt: float = 0.1) -> np.ndarray:
    """Central differences over valid neighbours, one-sided at the ends of valid runs."""
    nxt = np.zeros_like(valid)
    prv = np.zeros_like(valid)
    nxt[:, :-1] = valid[:, :-1] & valid[:, 1:]
    prv[:, 1:] = valid[:, 1:] & valid[:, :-1]
    p_next = np.concatenate([p[:, 1:], p[:, -1:]], axis=1)
    p_prev = np.concatenate([p[:, :1], p[:, :-1]], axis=1)
    both = nxt & prv
    out = np.where(both, (p_next - p_prev) / (2 * dt), 0.0)
    out = np.where(nxt & ~prv, (p_next - p) / dt, out)
    out = np.where(prv & ~nxt, (p - p_prev) / dt, out)
    return np.where(valid, out, 0.0)


def _observe(rec: Recording, kinds: np.ndarray, rng, cfg: SyntheticConfig) -> dict:
    """Noisy logged x, y, yaw, vel_x, vel_y ``(A, T)`` from the true states."""
    valid = rec.valid
    a, t = valid.shape
    scale = rng.uniform(0.5, 1.5, a)
    ped = kinds == KIND_PEDESTRIAN
    pos_sigma = cfg.position_noise * scale * np.where(ped, 1.5, 1.0)
    yaw_sigma = cfg.yaw_noise * scale * np.where(ped, 5.0, 1.0)
    x = np.where(valid, rec.x, 0.0) + _ar1(rng, (a, t), pos_sigma, 0.9)
    y = np.where(valid, rec.y, 0.0) + _ar1(rng, (a, t), pos_sigma, 0.9)
    yaw = np.where(valid, rec.yaw, 0.0) + _ar1(rng, (a, t), yaw_sigma, 0.8)
    vel_x = _finite_difference(x, valid) + cfg.velocity_noise * rng.standard_normal((a, t))
    vel_y = _finite_difference(y, valid) + cfg.velocity_noise * rng.standard_normal((a, t))
    still = (kinds == KIND_PARKED)[:, None] | (np.hypot(vel_x, vel_y) < 0.15)
    vel_x, vel_y = np.where(still, 0.0, vel_x), np.where(still, 0.0, vel_y)
    return {"x": x, "y": y, "yaw": geo.wrap(yaw), "vel_x": vel_x, "vel_y": vel_y, "valid": valid}


# --------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------


def _roadgraph(net: RoadNetwork) -> dict[str, np.ndarray]:
    lines = [(np.c_[p, np.full(len(p), net.z)], t, i) for p, t, i in net.polylines()]
    return select.polylines_to_roadgraph(lines)


def _crop_roadgraph(rg: dict[str, np.ndarray], path_xy: np.ndarray, num_points: int) -> dict:
    """Cuts or pads the roadgraph to ``num_points`` points.

    Keeps the points nearest the SDC's path ``path_xy`` ``(K, 2)``, road edges up to twice
    as far as the others (the offroad metric needs them), in their original order.
    """
    total = len(rg["roadgraph_points/x"])
    if total > num_points:
        x = rg["roadgraph_points/x"].astype(np.float64)
        y = rg["roadgraph_points/y"].astype(np.float64)
        d = np.full(total, np.inf)
        for px, py in path_xy:
            d = np.minimum(d, np.hypot(x - px, y - py))
        edge = np.isin(rg["roadgraph_points/types"], _EDGE_TYPES)
        d = np.where(edge, 0.5 * d, d)
        keep = np.sort(np.argsort(d, kind="stable")[:num_points])
        rg = {k: v[keep] for k, v in rg.items()}
    return select.pad_roadgraph(rg, num_points)


def _traffic_lights(net: RoadNetwork, num_steps: int) -> dict[str, np.ndarray]:
    series = []
    times = np.arange(num_steps) * datatypes.TIME_INTERVAL
    for lane_id in net.light_lanes:
        lane = net.lanes[lane_id]
        state = net.signal.lane_state(lane.arm, lane.turn, times)
        xyz = np.tile([lane.points[0, 0], lane.points[0, 1], net.z], (num_steps, 1))
        series.append(
            select.TrafficLightSeries(
                lane_id, state.astype(np.int32), np.ones(num_steps, bool), xyz
            )
        )
    return select.traffic_lights_to_arrays(series, num_steps)


def _dropouts(valid: np.ndarray, protect: np.ndarray, rng, prob: float) -> np.ndarray:
    """Occlusion gaps of 3-15 steps in some tracks (never in protected ones)."""
    valid = valid.copy()
    for i in range(len(valid)):
        if protect[i] or rng.random() >= prob:
            continue
        steps = np.nonzero(valid[i])[0]
        if len(steps) < 25:
            continue
        start = int(rng.integers(steps[0] + 3, steps[-1] - 18))
        valid[i, start : start + int(rng.integers(3, 16))] = False
    return valid


def _verify_sdc(arrays: dict[str, np.ndarray], margin: float) -> bool:
    """Waymax's overlap and offroad rules on the final arrays, with a margin (m)."""
    sdc = int(np.argmax(arrays["object_metadata/is_sdc"]))
    traj = {k.split("/")[1]: v for k, v in arrays.items() if k.startswith("log_trajectory/")}
    valid = traj["valid"]
    if not valid[sdc].all():
        return False
    f = {k: traj[k].astype(np.float32).astype(np.float64) for k in traj if k != "valid"}
    corners = geo.box_corners(
        f["x"][sdc], f["y"][sdc], f["length"][sdc], f["width"][sdc], f["yaw"][sdc]
    ).reshape(-1, 2)
    z = np.repeat(f["z"][sdc], 4)
    rg = {k.split("/")[1]: v for k, v in arrays.items() if k.startswith("roadgraph_points/")}
    rg = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in rg.items()}
    if np.max(geo.offroad_cross(corners[:, 0], corners[:, 1], z, rg)) > -margin:
        return False
    box = np.stack([f[k] for k in ("x", "y", "length", "width", "yaw")], -1)  # (N, T, 5)
    others = valid.copy()
    others[sdc] = False
    if not others.any():
        return True
    depth = geo.sat_depth(np.broadcast_to(box[sdc][None], box.shape), box)
    return bool(np.all(np.where(others, depth, -np.inf) <= -margin))


def _assemble(
    net: RoadNetwork,
    obs: dict,
    sizes: np.ndarray,
    kinds: np.ndarray,
    sdc: int,
    rng,
    cfg: SyntheticConfig,
) -> dict[str, np.ndarray]:
    num_agents, num_steps = obs["valid"].shape
    current = select.CURRENT_STEP
    valid = obs["valid"]
    present = valid.any(axis=1)
    cx, cy = obs["x"], obs["y"]
    # Modeled tracks (WOMD tracks_to_predict) and objects of interest near the SDC.
    dist = np.hypot(cx - cx[sdc], cy - cy[sdc])
    dist_now = np.where(valid[:, current], dist[:, current], np.inf)
    movable = kinds != KIND_PARKED
    modeled = np.zeros(num_agents, bool)
    modeled[sdc] = True
    cand = np.nonzero(movable & valid[:, current] & (valid[:, current:].mean(1) > 0.8))[0]
    cand = cand[cand != sdc]
    num_modeled = int(rng.integers(1, 6))
    modeled[cand[np.argsort(dist_now[cand])][:num_modeled]] = True
    interest = np.zeros(num_agents, bool)
    both = valid & valid[sdc][None]
    closest = np.where(both, dist, np.inf).min(axis=1)
    closest[sdc] = np.inf
    closest[~movable] = np.inf
    if rng.random() < 0.5 and np.isfinite(closest).any() and closest.min() < 15.0:
        interest[[sdc, int(np.argmin(closest))]] = True
    valid = _dropouts(valid, modeled | interest, rng, cfg.dropout_prob)
    ids = rng.choice(np.arange(1, 5000), size=num_agents, replace=False)
    is_sdc = np.zeros(num_agents, bool)
    is_sdc[sdc] = True
    z = net.z + 0.5 * sizes[:, 2][:, None] + 0.02 * rng.standard_normal((num_agents, num_steps))
    keep = present
    arrays = select.build_object_arrays(
        x=obs["x"][keep],
        y=obs["y"][keep],
        z=z[keep],
        yaw=obs["yaw"][keep],
        vel_x=obs["vel_x"][keep],
        vel_y=obs["vel_y"][keep],
        length=sizes[keep, 0],
        width=sizes[keep, 1],
        height=sizes[keep, 2],
        valid=valid[keep],
        timestamps_micros=np.arange(num_steps) * datatypes.TIMESTEP_MICROS_INTERVAL,
        ids=ids[keep],
        object_types=np.array([_OBJECT_TYPE[int(k)] for k in kinds[keep]], np.int32),
        is_sdc=is_sdc[keep],
        is_modeled=modeled[keep],
        objects_of_interest=interest[keep],
    )
    arrays, _ = select.select_objects(arrays, cfg.max_objects)
    path_xy = np.stack([cx[sdc, ::5], cy[sdc, ::5]], -1)
    arrays.update(_crop_roadgraph(_roadgraph(net), path_xy, cfg.num_roadgraph_points))
    arrays.update(_traffic_lights(net, num_steps))
    return arrays


def _sdc_candidates(rec: Recording, kinds, sizes, net: RoadNetwork, rng) -> list[int]:
    full = rec.valid.all(axis=1) & (kinds == KIND_VEHICLE) & (sizes[:, 0] <= 6.0)
    cand = np.nonzero(full)[0]
    if len(cand) == 0:
        return []
    speed = np.hypot(np.diff(rec.x[cand]), np.diff(rec.y[cand])).mean(axis=1) / 0.1
    through = np.array([len(rec.turns[i]) > 0 for i in cand])
    score = rng.random(len(cand)) + 1.0 * (speed > 2.0) + 0.7 * through
    return [int(i) for i in cand[np.argsort(-score)]]


def _attempt(seed: int, attempt: int, cfg: SyntheticConfig):
    rng = np.random.default_rng([seed, attempt])
    weights = np.asarray(cfg.layout_weights, np.float64)
    layout = LAYOUTS[int(rng.choice(len(LAYOUTS), p=weights / weights.sum()))]
    net = build_network(rng, layout)
    n_veh = int(rng.integers(cfg.num_vehicles[0], cfg.num_vehicles[1] + 1))
    others = cfg.cyclist_share + cfg.pedestrian_share
    total = n_veh / (1.0 - others)
    urban = not net.freeway
    n_cyc = int(rng.poisson(total * cfg.cyclist_share)) if urban else 0
    n_ped = int(rng.poisson(total * cfg.pedestrian_share)) if urban else 0
    n_park = int(rng.binomial(n_veh, cfg.parked_share)) if net.parking else 0
    n_late = int(rng.binomial(n_veh, cfg.late_entry_share))
    budget = max(cfg.max_objects + 8, 12)  # a few spare agents beyond the kept slots
    scale = min(1.0, budget / max(n_veh + n_cyc + n_ped + n_park, 1))
    n_veh = max(2, round(n_veh * scale))
    n_cyc, n_ped, n_park = (int(np.floor(n * scale)) for n in (n_cyc, n_ped, n_park))
    n_late = min(n_late, n_veh // 3)
    t_end = (datatypes.NUM_TIMESTEPS - 1) * datatypes.TIME_INTERVAL
    plans = plan_population(
        net,
        rng,
        num_vehicles=n_veh,
        num_cyclists=n_cyc,
        num_pedestrians=n_ped,
        num_parked=n_park,
        num_late=n_late,
        t0=-cfg.warmup,
        t1=t_end,
    )
    rec = TrafficSim(
        net, plans, rng, t_start=-cfg.warmup, num_steps=datatypes.NUM_TIMESTEPS, substep=cfg.substep
    ).run()
    kinds = np.array([p.kind for p in plans], np.int64)
    sizes = np.array([[p.length, p.width, p.height] for p in plans], np.float64)
    obs = _observe(rec, kinds, rng, cfg)
    candidates = _sdc_candidates(rec, kinds, sizes, net, rng)
    for rejected, sdc in enumerate(candidates[:6]):
        arrays = _assemble(net, obs, sizes, kinds, sdc, rng, cfg)
        if _verify_sdc(arrays, cfg.sdc_margin):
            info = ScenarioInfo(
                layout=layout,
                variant=net.variant,
                attempt=attempt,
                rejected_sdcs=rejected,
                num_simulated=len(plans),
                lane_changes=int(rec.lane_changes.sum()),
                sdc_turns=tuple(rec.turns[sdc]),
            )
            return arrays, info
    return None


def generate_scenario_with_info(
    seed: int, config: SyntheticConfig | None = None
) -> tuple[DecodedScenario, ScenarioInfo]:
    """Like :func:`generate_scenario`, also returning what was generated.

    Raises:
      GenerationError: no attempt within ``config.max_attempts`` passed verification.
    """
    cfg = config or SyntheticConfig()
    for attempt in range(cfg.max_attempts):
        out = _attempt(int(seed), attempt, cfg)
        if out is not None:
            arrays, info = out
            scenario = DecodedScenario(
                scenario_id=f"synthetic-{int(seed)}",
                format=FORMAT,
                arrays=arrays,
                source=FORMAT,
                record_index=0,
            )
            return scenario, info
    raise GenerationError(
        f"synthetic seed {seed}: no valid scenario in {cfg.max_attempts} attempts"
    )


def generate_scenario(seed: int, config: SyntheticConfig | None = None) -> DecodedScenario:
    """A deterministic procedural WOMD-shaped scenario (91 steps at 10 Hz).

    Args:
      seed: any integer; the same seed and config give bitwise identical arrays.
      config: sizes and distributions (defaults: :class:`SyntheticConfig`).

    Returns:
      A :class:`DecodedScenario` with format ``synthetic``, id ``synthetic-<seed>`` and the
      flat arrays of :func:`diffdrive.sim.datatypes.state_from_flat_arrays`:
      ``log_trajectory/*`` ``(max_objects, 91)``, ``object_metadata/*``
      ``(max_objects,)`` (SDC in slot 0), ``roadgraph_points/*``
      ``(num_roadgraph_points,)`` and ``log_traffic_light/*`` ``(16, 91)``.

    Raises:
      GenerationError: no attempt within ``config.max_attempts`` passed verification.
    """
    return generate_scenario_with_info(seed, config)[0]


def generate_dataset(
    num_scenarios: int, base_seed: int = 0, config: SyntheticConfig | None = None
) -> Iterator[DecodedScenario]:
    """Yields scenarios for seeds ``base_seed, base_seed + 1, ...`` (``record_index`` i)."""
    if num_scenarios < 0:
        raise ValueError(f"num_scenarios must be >= 0, got {num_scenarios}")
    for i in range(num_scenarios):
        scenario = generate_scenario(base_seed + i, config)
        yield dataclasses.replace(scenario, source=f"{FORMAT}:{base_seed}", record_index=i)
