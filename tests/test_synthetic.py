"""The procedural dataset: determinism, WOMD shapes, a clean SDC, plausible motion."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffdrive.data import select
from diffdrive.data.synthetic import (
    LAYOUTS,
    SyntheticConfig,
    generate_dataset,
    generate_scenario,
    generate_scenario_with_info,
    roads,
)
from diffdrive.data.synthetic import generator as gen
from diffdrive.data.synthetic import geometry as geo
from diffdrive.sim import datatypes, metrics
from diffdrive.sim.datatypes import ObjectType, RoadType

SMALL = SyntheticConfig(max_objects=16, num_roadgraph_points=4000, num_vehicles=(6, 10))
NUM_SEEDS = 30


@pytest.fixture(scope="module")
def batch():
    """30 small scenarios with their infos and the real metrics' per-object event counts."""
    counts_fn = jax.jit(metrics.log_replay_event_counts)
    out = []
    for seed in range(NUM_SEEDS):
        scenario, info = generate_scenario_with_info(seed, SMALL)
        state = scenario.to_state()
        counts = counts_fn(state.log_trajectory, state.roadgraph_points)
        out.append((scenario, info, {k: np.asarray(v) for k, v in counts.items()}))
    return out


def _arrays(scenario, group):
    return {k.split("/")[1]: v for k, v in scenario.arrays.items() if k.startswith(group + "/")}


def test_same_seed_is_bitwise_identical_and_seeds_differ():
    a = generate_scenario(7, SMALL)
    b = generate_scenario(7, SMALL)
    c = generate_scenario(8, SMALL)
    assert a.scenario_id == "synthetic-7" and a.format == "synthetic"
    assert a.arrays.keys() == b.arrays.keys()
    for key in a.arrays:
        assert a.arrays[key].dtype == b.arrays[key].dtype
        assert a.arrays[key].tobytes() == b.arrays[key].tobytes(), key
    assert not np.array_equal(a.arrays["log_trajectory/x"], c.arrays["log_trajectory/x"])


def test_shapes_dtypes_and_padding(batch):
    n, p = SMALL.max_objects, SMALL.num_roadgraph_points
    for scenario, _, _ in batch:
        state = datatypes.validate(scenario.to_state())
        assert state.log_trajectory.shape == (n, 91)
        assert state.roadgraph_points.shape == (p,)
        assert state.log_traffic_light.shape == (16, 91)
        traj, meta = _arrays(scenario, "log_trajectory"), _arrays(scenario, "object_metadata")
        for key, arr in scenario.arrays.items():
            assert arr.dtype in (np.float32, np.int32, np.bool_), key
        # Exactly one SDC, in slot 0, a vehicle valid at every step.
        assert meta["is_sdc"].sum() == 1 and meta["is_sdc"][0]
        assert meta["object_types"][0] == ObjectType.VEHICLE and traj["valid"][0].all()
        assert meta["is_modeled"][0] and meta["objects_of_interest"].sum() in (0, 2)
        real = meta["is_valid"]
        assert np.all(real == traj["valid"].any(axis=1))
        assert len(set(meta["ids"][real].tolist())) == real.sum() and (meta["ids"][real] > 0).all()
        assert (meta["ids"][~real] == -1).all() and (meta["object_types"][~real] == -1).all()
        inv = ~traj["valid"]
        for field in ("x", "y", "z", "yaw", "vel_x", "vel_y"):
            assert (traj[field][inv] == -1).all(), field
        assert (traj["timestamp_micros"][inv] == -1).all()
        steps = np.broadcast_to(np.arange(91) * 100_000, traj["valid"].shape)
        assert (traj["timestamp_micros"][~inv] == steps[~inv]).all()
        assert (traj["length"][real] == traj["length"][real][:, :1]).all()
        # Object z is the box centre above the flat road.
        rg = _arrays(scenario, "roadgraph_points")
        road_z = rg["z"][rg["valid"]][0]
        dz = traj["z"][0] - road_z
        assert np.allclose(dz, traj["height"][0] / 2, atol=0.1)
        # Roadgraph: WOMD codes, unit (or zero) directions, ~0.5 m spacing, padding.
        types = set(np.unique(rg["types"][rg["valid"]]).tolist())
        assert types <= datatypes.VALID_ROAD_TYPES
        norm = np.hypot(rg["dir_x"], rg["dir_y"])[rg["valid"]]
        assert np.all((np.abs(norm - 1) < 1e-4) | (norm == 0))
        same = (rg["ids"][1:] == rg["ids"][:-1]) & rg["valid"][1:] & rg["valid"][:-1]
        gaps = np.hypot(np.diff(rg["x"]), np.diff(rg["y"]))[same]
        assert 0.4 < np.median(gaps) < 0.6
        assert (rg["types"][~rg["valid"]] == -1).all() and (rg["x"][~rg["valid"]] == -1).all()


def test_sdc_never_overlaps_nor_goes_offroad_real_metrics(batch):
    """Waymax overlap/offroad of the logged SDC over all 91 steps, 30 seeds."""
    veh_steps = veh_overlap = veh_offroad = 0
    for scenario, _, counts in batch:
        sdc = int(np.argmax(scenario.arrays["object_metadata/is_sdc"]))
        assert counts["valid_steps"][sdc] == 91
        assert counts["overlap_steps"][sdc] == 0, scenario.scenario_id
        assert counts["offroad_steps"][sdc] == 0, scenario.scenario_id
        veh = scenario.arrays["object_metadata/object_types"] == ObjectType.VEHICLE
        veh_steps += counts["valid_steps"][veh].sum()
        veh_overlap += counts["overlap_steps"][veh].sum()
        veh_offroad += counts["offroad_steps"][veh].sum()
    # Other vehicles mostly stay clean too (offroad steps come from the cut roadgraph).
    assert veh_overlap / veh_steps < 0.02
    assert veh_offroad / veh_steps < 0.08


def test_layouts_map_features_and_agents_cover_the_space(batch):
    layouts = collections.Counter(info.layout for _, info, _ in batch)
    variants = {info.variant for _, info, _ in batch}
    assert set(layouts) == set(LAYOUTS), layouts
    assert {"signalized", "freeway", "urban"} <= variants
    assert variants & {"stop_sign", "all_way_stop"}
    types, objects = set(), collections.Counter()
    late = gone = gaps = 0
    for scenario, _, _ in batch:
        rg = _arrays(scenario, "roadgraph_points")
        types |= set(np.unique(rg["types"][rg["valid"]]).tolist())
        meta, valid = _arrays(scenario, "object_metadata"), scenario.arrays["log_trajectory/valid"]
        objects.update(meta["object_types"][meta["is_valid"]].tolist())
        for row in valid[meta["is_valid"]]:
            steps = np.nonzero(row)[0]
            late += steps[0] > 0
            gone += steps[-1] < 90
            gaps += len(steps) != steps[-1] - steps[0] + 1
    want = {1, 2, 3, 6, 7, 10, 12, 15, 16, 17, 18}
    assert want <= types, want - types
    assert objects[ObjectType.CYCLIST] >= 5 and objects[ObjectType.PEDESTRIAN] >= 10
    assert objects[ObjectType.VEHICLE] > objects[ObjectType.PEDESTRIAN]
    assert late > 0 and gone > 0 and gaps > 0


def test_object_sizes_are_realistic(batch):
    sizes = collections.defaultdict(list)
    for scenario, _, _ in batch:
        traj, meta = _arrays(scenario, "log_trajectory"), _arrays(scenario, "object_metadata")
        for i in np.nonzero(meta["is_valid"])[0]:
            sizes[int(meta["object_types"][i])].append((traj["length"][i, 0], traj["width"][i, 0]))
    veh = np.array(sizes[ObjectType.VEHICLE])
    assert 4.2 <= np.median(veh[:, 0]) <= 5.5 and 1.8 <= np.median(veh[:, 1]) <= 2.1
    assert veh[:, 0].max() <= 12.0 and veh[:, 1].max() <= 2.6
    cyc, ped = np.array(sizes[ObjectType.CYCLIST]), np.array(sizes[ObjectType.PEDESTRIAN])
    assert np.all((cyc[:, 0] > 1.5) & (cyc[:, 0] < 2.0) & (cyc[:, 1] < 0.85))
    assert np.all((ped[:, 0] < 0.9) & (ped[:, 1] < 0.9))


def test_traffic_lights_change_and_sit_on_their_lanes(batch):
    changed = 0
    signalized = [s for s, info, _ in batch if info.variant == "signalized"]
    assert signalized
    for scenario in signalized:
        tl, rg = _arrays(scenario, "log_traffic_light"), _arrays(scenario, "roadgraph_points")
        slots = tl["valid"].any(axis=1)
        assert slots.sum() >= 4
        assert (tl["state"][~tl["valid"]] == -1).all() and (
            tl["lane_ids"][~tl["valid"]] == -1
        ).all()
        states = set(np.unique(tl["state"][tl["valid"]]).tolist())
        assert states <= {1, 2, 3, 4, 5, 6}
        changed += any(len(set(row[v].tolist())) > 1 for row, v in zip(tl["state"], tl["valid"]))
        for j in np.nonzero(slots)[0]:
            lane = rg["valid"] & (rg["ids"] == tl["lane_ids"][j, 0])
            if lane.any():  # the lane may be cut from the roadgraph far from the SDC
                assert set(np.unique(rg["types"][lane]).tolist()) <= {1, 2}
                dx, dy = rg["x"][lane] - tl["x"][j, 0], rg["y"][lane] - tl["y"][j, 0]
                d = np.hypot(dx, dy)
                # At the lane's first sample, or upstream of its first kept one (cut).
                ahead = dx[0] * rg["dir_x"][lane][0] + dy[0] * rg["dir_y"][lane][0]
                assert d.min() < 0.05 or (np.argmin(d) == 0 and ahead > 0)
    assert changed == len(signalized)  # every plan puts a change inside the 9.1 s


def test_motion_is_plausible_and_not_bicycle_consistent(batch):
    speeds, accels, pos_resid, yaw_gap = [], [], [], []
    for scenario, _, _ in batch:
        traj, meta = _arrays(scenario, "log_trajectory"), _arrays(scenario, "object_metadata")
        veh = meta["object_types"] == ObjectType.VEHICLE
        v = traj["valid"][veh]
        vx, vy = traj["vel_x"][veh], traj["vel_y"][veh]
        speed = np.hypot(vx, vy)
        speeds.append(speed[v])
        both = v[:, 1:] & v[:, :-1]
        accels.append((np.abs(np.diff(speed, axis=1)) / 0.1)[both])
        # Constant-velocity prediction of the next position (Waymax's first-order term).
        px = traj["x"][veh][:, :-1] + 0.05 * (vx[:, :-1] + vx[:, 1:])
        py = traj["y"][veh][:, :-1] + 0.05 * (vy[:, :-1] + vy[:, 1:])
        resid = np.hypot(traj["x"][veh][:, 1:] - px, traj["y"][veh][:, 1:] - py)
        pos_resid.append(resid[both])
        moving = v & (speed > 3.0)
        gap = np.abs(geo.wrap(traj["yaw"][veh] - np.arctan2(vy, vx)))
        yaw_gap.append(gap[moving])
    speeds, accels = np.concatenate(speeds), np.concatenate(accels)
    pos_resid, yaw_gap = np.concatenate(pos_resid), np.concatenate(yaw_gap)
    assert speeds.max() < 25.0 and speeds.mean() > 3.0
    assert np.mean(accels < 8.0) > 0.995 and np.median(accels) < 2.0
    # Noisy: positions, velocities and yaw never line up exactly, but stay close.
    assert np.mean(pos_resid > 1e-3) > 0.9 and np.median(pos_resid) < 0.1
    assert np.mean(yaw_gap > 1e-4) > 0.95 and np.median(yaw_gap) < 0.05


def test_road_edges_keep_lanes_left_and_sidewalks_right():
    """Every layout: lane centres on road, sidewalks off road, by the real offroad metric."""
    rng = np.random.default_rng(0)
    signed_fn = jax.jit(metrics.signed_distance_to_road_edge)
    for layout in LAYOUTS:
        net = roads.build_network(rng, layout)
        rg_np = select.polylines_to_roadgraph(
            [(np.c_[p, np.full(len(p), net.z)], t, i) for p, t, i in net.polylines()]
        )
        flat = {k.split("/")[1]: v for k, v in rg_np.items()}
        lanes = np.concatenate([lane.points for lane in net.lanes.values()])
        cross = geo.offroad_cross(lanes[:, 0], lanes[:, 1], np.full(len(lanes), net.z), flat)
        assert cross.max() < -1.1, layout  # every lane centre >= 1.1 m inside the edge line
        # The real metric on a fixed-size sample (one compilation): lanes on, sidewalks off.
        rg_np = select.pad_roadgraph(rg_np, 16000)
        rg = datatypes.RoadgraphPoints(
            **{k.split("/")[1]: jnp.asarray(v) for k, v in rg_np.items()}
        )
        walks = np.concatenate([sw[2:-2] for sw in net.sidewalks] or [np.zeros((0, 2))])
        q_lane = lanes[rng.choice(len(lanes), 600)]
        q_walk = walks[rng.choice(len(walks), 200)] if len(walks) else q_lane[:200]
        q = np.c_[np.concatenate([q_lane, q_walk]), np.full(800, net.z + 1.0)]
        signed = np.asarray(signed_fn(jnp.asarray(q, jnp.float32), rg))
        assert signed[:600].max() < 0, layout
        if len(walks):
            assert signed[600:].min() > 0, layout


def test_numpy_checks_match_the_real_metrics():
    """The generator's verification uses numpy copies of Waymax's rules; same answers."""
    scenario = generate_scenario(3, SMALL)
    rg_np = _arrays(scenario, "roadgraph_points")
    rg = scenario.to_state().roadgraph_points
    rng = np.random.default_rng(1)
    valid = rg_np["valid"] & np.isin(rg_np["types"], [15, 16])
    base = np.c_[rg_np["x"][valid], rg_np["y"][valid]][rng.integers(0, valid.sum(), 400)]
    q = base + rng.normal(0, 1.5, base.shape)
    z = np.full(len(q), rg_np["z"][valid][0] + 0.8)
    mine = geo.offroad_cross(q[:, 0], q[:, 1], z, rg_np)
    ref = np.asarray(
        metrics.signed_distance_to_road_edge(jnp.asarray(np.c_[q, z], jnp.float32), rg)
    )
    clear = np.abs(mine) > 1e-3
    assert np.array_equal(mine[clear] > 0, ref[clear] > 0)
    # SAT depth > 0 exactly where Waymax's pairwise overlap says so.
    n = 60
    boxes = np.c_[
        rng.uniform(0, 12, (n, 2)),
        rng.uniform(0.5, 6, n),
        rng.uniform(0.5, 2.5, n),
        rng.uniform(-np.pi, np.pi, n),
    ]
    depth = geo.sat_depth(boxes[:, None], boxes[None, :])
    step = datatypes.Trajectory(
        x=jnp.asarray(boxes[:, 0], jnp.float32),
        y=jnp.asarray(boxes[:, 1], jnp.float32),
        z=jnp.zeros(n),
        yaw=jnp.asarray(boxes[:, 4], jnp.float32),
        vel_x=jnp.zeros(n),
        vel_y=jnp.zeros(n),
        length=jnp.asarray(boxes[:, 2], jnp.float32),
        width=jnp.asarray(boxes[:, 3], jnp.float32),
        height=jnp.ones(n),
        timestamp_micros=jnp.zeros(n, jnp.int32),
        valid=jnp.ones(n, bool),
    )
    ref = np.asarray(metrics.pairwise_overlap(step))
    off = ~np.eye(n, dtype=bool) & (np.abs(depth) > 1e-4)
    assert np.array_equal((depth > 0)[off], ref[off]) and ref.any() and not ref[off].all()


def test_verification_rejects_collisions_and_offroad():
    scenario = generate_scenario(5, SMALL)
    arrays = dict(scenario.arrays)
    assert gen._verify_sdc(arrays, 0.05)
    other = int(np.nonzero(arrays["log_trajectory/valid"][1:].any(axis=1))[0][0]) + 1
    hit = {k: v.copy() for k, v in arrays.items()}
    for f in ("x", "y", "yaw"):
        hit[f"log_trajectory/{f}"][other, 40] = hit[f"log_trajectory/{f}"][0, 40] + (
            0.5 if f == "x" else 0.0
        )
    hit["log_trajectory/valid"][other, 40] = True
    assert not gen._verify_sdc(hit, 0.05)
    off = {k: v.copy() for k, v in arrays.items()}
    off["log_trajectory/x"][0, 60] += 300.0  # far beyond the road's side
    off["log_trajectory/y"][0, 60] += 300.0
    assert not gen._verify_sdc(off, 0.05)


def test_generate_dataset_and_config():
    scenarios = list(generate_dataset(2, base_seed=11, config=SMALL))
    assert [s.scenario_id for s in scenarios] == ["synthetic-11", "synthetic-12"]
    assert [s.record_index for s in scenarios] == [0, 1]
    alone = generate_scenario(12, SMALL)
    assert np.array_equal(alone.arrays["log_trajectory/x"], scenarios[1].arrays["log_trajectory/x"])
    big = generate_scenario(2, SyntheticConfig(max_objects=128, num_roadgraph_points=30000))
    assert big.num_objects == 128 and big.arrays["roadgraph_points/x"].shape == (30000,)
    assert not big.arrays["roadgraph_points/valid"].all()  # padded, never cut
    for bad in (
        {"max_objects": 0},
        {"max_objects": 129},
        {"num_vehicles": (5, 2)},
        {"substep": 0.03},
        {"layout_weights": (0, 0, 0, 0)},
    ):
        with pytest.raises(ValueError):
            SyntheticConfig(**bad)


def test_statistics_are_in_the_range_of_the_real_scenario(shared_data, batch):
    real = np.load(shared_data / "womd" / "waymax_state" / "scenario_50.npz")
    types = real["object_metadata/object_types"]
    real_len = np.median(real["log_trajectory/length"][types == 1, 0])
    syn_len = np.median(
        np.concatenate(
            [
                s.arrays["log_trajectory/length"][s.arrays["object_metadata/object_types"] == 1, 0]
                for s, _, _ in batch
            ]
        )
    )
    assert abs(real_len - syn_len) < 0.6
    for arrays in [dict(real)] + [s.arrays for s, _, _ in batch[:5]]:
        x, y, ids = (arrays[f"roadgraph_points/{k}"] for k in ("x", "y", "ids"))
        same = (ids[1:] == ids[:-1]) & arrays["roadgraph_points/valid"][1:]
        assert 0.45 < np.median(np.hypot(np.diff(x), np.diff(y))[same]) < 0.55
    assert RoadType.ROAD_EDGE_BOUNDARY in set(real["roadgraph_points/types"].tolist())
