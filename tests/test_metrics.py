"""Metric conformance with real Waymax, the offroad index's exactness, and surrogate gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffdrive.sim import datatypes as dt
from diffdrive.sim import metrics
from tests import golden_utils
from tests.conftest import SHARED, golden_array


def test_overlap_matches_waymax(golden):
    section = golden["overlap"]
    current = golden_utils.trajectory(section["agents"]).at(0)
    np.testing.assert_allclose(
        current.bbox_corners, golden_array(section["bbox_corners"]), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(
        metrics.pairwise_overlap(current), golden_array(section["pairwise_overlap"], bool)
    )
    result = metrics.overlap(current)
    np.testing.assert_array_equal(result.value, golden_array(section["metric_value"]))
    np.testing.assert_array_equal(result.valid, golden_array(section["metric_valid"], bool))


@pytest.mark.parametrize("use_index", [False, True])
def test_offroad_matches_waymax(golden, use_index):
    section = golden["offroad"]
    current = golden_utils.trajectory(section["agents"]).at(0)
    rg = golden_utils.roadgraph(section["roadgraph"])
    index = metrics.build_road_edge_index(rg) if use_index else None
    result = metrics.offroad(current, rg, index)
    np.testing.assert_array_equal(result.value, golden_array(section["metric_value"]))
    np.testing.assert_array_equal(result.valid, golden_array(section["metric_valid"], bool))
    corners = metrics._corner_queries(current)
    signed = metrics.signed_distance_to_road_edge(corners, rg).reshape(-1, 4)
    np.testing.assert_allclose(
        signed, golden_array(section["corner_signed_distance"]), rtol=1e-5, atol=1e-5
    )
    probes = golden_array(section["probe_points_xyz"])
    np.testing.assert_allclose(
        metrics.signed_distance_to_road_edge(probes, rg),
        golden_array(section["probe_signed_distance"]),
        rtol=1e-5,
        atol=1e-5,
    )


def test_log_divergence_and_kinematic_infeasibility_match_waymax(golden):
    section = golden["log_divergence_and_kim"]
    log = golden_utils.trajectory(section["log"])
    sim = golden_utils.trajectory(section["sim"])
    for entry in section["per_timestep"]:
        t = entry["timestep"]
        ld = metrics.log_divergence(sim.at(t), log.at(t))
        np.testing.assert_allclose(ld.value, golden_array(entry["log_divergence"]), atol=1e-6)
        np.testing.assert_array_equal(ld.valid, golden_array(entry["log_divergence_valid"], bool))
        if "kinematic_infeasibility" in entry:
            kim = metrics.kinematic_infeasibility(sim.at(t - 1), sim.at(t))
            np.testing.assert_array_equal(kim.value, golden_array(entry["kinematic_infeasibility"]))
            np.testing.assert_array_equal(
                kim.valid, golden_array(entry["kinematic_infeasibility_valid"], bool)
            )


def test_kinematic_infeasibility_on_inverse_cases_matches_waymax(golden):
    section = golden["bicycle_inverse"]
    traj = golden_utils.trajectory(section["trajectory"])
    kim = metrics.kinematic_infeasibility(traj.at(0), traj.at(1))
    expected = section["kinematic_infeasibility_t1"]
    np.testing.assert_array_equal(kim.value, golden_array(expected["value"]))
    np.testing.assert_array_equal(kim.valid, golden_array(expected["valid"], bool))


def test_route_metrics_match_waymax(golden):
    section = golden["route_metrics"]
    p = section["paths"]
    x = golden_array(p["x"])
    paths = dt.Paths(
        x=x,
        y=golden_array(p["y"]),
        z=np.zeros_like(x),
        arc_length=golden_array(p["arc_length"]),
        ids=np.zeros(x.shape, np.int32),
        valid=golden_array(p["valid"], bool),
        on_route=golden_array(p["on_route"], bool),
    )
    log_x = section["log_sdc_x"]
    start = jnp.array([log_x[0], 0.0])
    end = jnp.array([log_x[-1], 0.0])
    for case in section["cases"]:
        xy = jnp.asarray(case["sdc_xy"], jnp.float32)
        assert float(metrics.sdc_wrongway(xy, paths).value) == pytest.approx(
            case["sdc_wrongway"], abs=1e-5
        )
        assert float(metrics.sdc_off_route(xy, paths).value) == pytest.approx(
            case["sdc_off_route"], abs=1e-5
        )
        prog = metrics.sdc_progression(xy, jnp.array(True), start, end, paths)
        assert float(prog.value) == pytest.approx(case["sdc_progression"], abs=1e-5), case["name"]


def _real_states():
    out = []
    for name in (
        "conformance/waymax_decoded_tf_example.npz",
        "data/womd/waymax_state/scenario_50.npz",
    ):
        path = SHARED / name
        if not path.exists():
            pytest.skip(f"{path} not found: the real scenarios live in ../shared")
        out.append(dt.state_from_flat_arrays(np.load(path), source=str(path)))
    return out


@pytest.mark.slow
def test_log_replay_overlap_and_offroad_counts_match_waymax_on_real_scenarios(golden):
    states = _real_states()
    for state, expected in zip(states, golden["real_scenarios"]):
        log = state.log_trajectory
        index = jax.jit(metrics.build_road_edge_index)(state.roadgraph_points)

        @jax.jit
        def counts(t, index=index, log=log, rg=state.roadgraph_points):
            step = log.at(t)
            ov = metrics.overlap(step).value * step.valid
            off = metrics.offroad(step, rg, index).value * step.valid
            return step.valid.sum(), ov.sum(), off.sum()

        got = np.array([counts(t) for t in range(91)])
        exp = expected["log_replay_all_objects"]
        np.testing.assert_array_equal(got[:, 0], exp["num_valid_per_t"])
        np.testing.assert_array_equal(got[:, 1], exp["num_overlapping_valid_per_t"])
        np.testing.assert_array_equal(got[:, 2], exp["num_offroad_valid_per_t"])


@pytest.mark.slow
def test_offroad_index_equals_brute_force_on_perturbed_real_boxes():
    state = _real_states()[0]
    rg = state.roadgraph_points
    index = jax.jit(metrics.build_road_edge_index)(rg)
    log = state.log_trajectory.at(40)
    key = jax.random.PRNGKey(0)
    fast = jax.jit(lambda c: metrics.offroad(c, rg, index).value)
    exact = jax.jit(lambda c: metrics.offroad(c, rg).value)
    for i in range(5):
        k1, k2, key = jax.random.split(key, 3)
        moved = log.replace(
            x=log.x + 3.0 * jax.random.normal(k1, log.x.shape),
            y=log.y + 3.0 * jax.random.normal(k2, log.y.shape),
            yaw=log.yaw + 0.3 * i,
        )
        valid = np.asarray(moved.valid)
        np.testing.assert_array_equal(
            np.asarray(fast(moved))[valid], np.asarray(exact(moved))[valid]
        )


def _boxes(x, y, yaw, length=4.0, width=2.0):
    x = jnp.asarray(x, jnp.float32)
    return dt.Trajectory(
        x=x,
        y=jnp.asarray(y, jnp.float32),
        z=jnp.zeros_like(x),
        yaw=jnp.asarray(yaw, jnp.float32),
        vel_x=jnp.zeros_like(x),
        vel_y=jnp.zeros_like(x),
        length=jnp.full_like(x, length),
        width=jnp.full_like(x, width),
        height=jnp.ones_like(x),
        timestamp_micros=jnp.zeros(x.shape, jnp.int32),
        valid=jnp.ones(x.shape, bool),
    )


def test_gaussian_overlap_hand_checked_value():
    # Two coincident axis-aligned 4 x 2 boxes: Sigma_1 + Sigma_2 = diag(32, 8) / 25.
    value = metrics.gaussian_overlap(_boxes([0.0, 0.0], [0.0, 0.0], [0.0, 0.0])).value
    expected = 1.0 / (2 * np.pi * np.sqrt(32 / 25 * 8 / 25))
    np.testing.assert_allclose(value, [expected, expected], rtol=1e-5)
    far = metrics.gaussian_overlap(_boxes([0.0, 50.0], [0.0, 0.0], [0.0, 0.0])).value
    assert float(far.max()) < 1e-20


@settings(max_examples=30, deadline=None)
@given(
    dx=st.sampled_from([0.0, 1e-6, 0.5, 3.0]),
    yaw=st.sampled_from([-np.pi, np.pi, 0.0, 1.0]),
    speed=st.sampled_from([0.0, 2.0]),
)
def test_differentiable_costs_have_finite_gradients_at_edge_cases(dx, yaw, speed):
    rg = golden_utils.straight_road(half_width=5.0, x_min=-20.0, x_max=20.0)

    def loss(p):
        boxes = _boxes(
            jnp.stack([p[0], p[0] + dx]), jnp.stack([p[1], p[1]]), jnp.stack([p[2], p[2]])
        )
        boxes = boxes.replace(vel_x=jnp.full(2, speed))
        return (
            metrics.gaussian_overlap(boxes).value.sum()
            + metrics.smooth_offroad_cost(boxes, rg).value.sum()
        )

    grad = jax.grad(loss)(jnp.array([0.0, 0.0, yaw]))
    assert np.all(np.isfinite(grad))


def test_smooth_offroad_cost_grows_off_the_road_and_points_back():
    rg = golden_utils.straight_road(half_width=5.0, x_min=-20.0, x_max=20.0)
    cost = lambda y: metrics.smooth_offroad_cost(_boxes([0.0], [y], [0.0]), rg).value[0]
    assert float(cost(0.0)) < 0.05 < float(cost(6.0)) < float(cost(8.0))
    assert float(jax.grad(cost)(7.0)) > 0  # moving further off the road costs more
    assert float(metrics.offroad(_boxes([0.0], [7.0], [0.0]), rg).value[0]) == 1.0
