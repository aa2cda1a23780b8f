"""Dynamics conformance with real Waymax outputs, invariants and gradient edge cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffdrive.sim import datatypes as dt
from diffdrive.sim import dynamics
from tests import golden_utils
from tests.conftest import golden_array

RTOL, ATOL = 1e-5, 1e-5
UPDATE_FIELDS = ("x", "y", "yaw", "vel_x", "vel_y")


def _assert_update(update: dt.TrajectoryUpdate, expected: dict) -> None:
    for f in UPDATE_FIELDS:
        np.testing.assert_allclose(
            np.asarray(getattr(update, f)),
            golden_array(expected[f]),
            rtol=RTOL,
            atol=ATOL,
            err_msg=f,
        )
    np.testing.assert_array_equal(np.asarray(update.valid), golden_array(expected["valid"], bool))


def _step(traj: dt.Trajectory, t: int = 0) -> dt.Trajectory:
    return traj.at(t)


@pytest.mark.parametrize("case_index", range(14))
def test_bicycle_forward_matches_waymax(golden, case_index):
    section = golden["bicycle_forward"]
    case = section["cases"][case_index]
    current = _step(golden_utils.trajectory(section["agents"]))
    model = dynamics.InvertibleBicycleModel(normalize_actions=case["normalize_actions"])
    action = dt.Action(
        data=golden_array(case["action_per_agent"]),
        valid=golden_array(case["action_valid"], bool)[:, None],
    )
    _assert_update(model.compute_update(action, current), case["update"])


@pytest.mark.parametrize("normalize", [False, True])
def test_bicycle_inverse_matches_waymax(golden, normalize):
    section = golden["bicycle_inverse"]
    traj = golden_utils.trajectory(section["trajectory"])
    expected = section[f"normalize_{normalize}"]
    model = dynamics.InvertibleBicycleModel(normalize_actions=normalize)
    action = model.inverse(traj, 0)
    np.testing.assert_allclose(action.data, golden_array(expected["action"]), rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(action.valid[:, 0], golden_array(expected["valid"], bool))
    raw = model.raw_inverse_step(traj.at(0), traj.at(1))
    np.testing.assert_allclose(
        raw.data, golden_array(expected["raw_unclipped_action"]), rtol=RTOL, atol=ATOL
    )
    _assert_update(model.compute_update(action, traj.at(0)), expected["roundtrip_update_from_t0"])


def test_delta_models_match_waymax(golden):
    section = golden["delta"]
    current = _step(golden_utils.trajectory(section["agents"]))
    n = current.x.shape[-1]
    for name, model in (("local", dynamics.DeltaLocal()), ("global", dynamics.DeltaGlobal())):
        for case in section[name]:
            data = np.broadcast_to(golden_array(case["action"]), (n, 3))
            action = dt.Action(data=data, valid=golden_array(case["action_valid"], bool)[:, None])
            _assert_update(model.compute_update(action, current), case["update"])
    traj = golden_utils.trajectory(section["inverse_trajectory"])
    for name, model in (("local", dynamics.DeltaLocal()), ("global", dynamics.DeltaGlobal())):
        expected = section[f"inverse_{name}"]
        action = model.inverse(traj, 0)
        np.testing.assert_allclose(
            action.data, golden_array(expected["action"]), rtol=RTOL, atol=ATOL
        )
        np.testing.assert_array_equal(action.valid[:, 0], golden_array(expected["valid"], bool))


@pytest.mark.parametrize("case_index", range(6))
def test_forward_masks_match_waymax(golden, case_index):
    section = golden["forward_masks"]
    case = section["cases"][case_index]
    log = golden_utils.trajectory(section["log"])
    sim = golden_utils.trajectory(section["sim_before"])
    t = section["timestep"]
    n = log.x.shape[0]
    action = dt.Action(
        data=np.broadcast_to(golden_array(case["action"]), (n, 2)),
        valid=golden_array(case["action_valid"], bool)[:, None],
    )
    out = dynamics.InvertibleBicycleModel().forward(
        action,
        sim,
        log,
        golden_array(case["is_controlled"], bool),
        t,
        allow_object_injection=case["allow_object_injection"],
    )
    nxt = out.at(t + 1)
    for f in (*UPDATE_FIELDS, "length", "width"):
        np.testing.assert_allclose(
            getattr(nxt, f), golden_array(case["next_t2"][f]), rtol=RTOL, atol=ATOL, err_msg=f
        )
    np.testing.assert_array_equal(nxt.valid, golden_array(case["next_t2"]["valid"], bool))
    np.testing.assert_array_equal(
        nxt.timestamp_micros, golden_array(case["next_t2"]["timestamp_micros"], np.int32)
    )
    later = out.at(t + 2)
    np.testing.assert_array_equal(later.valid, golden_array(case["unchanged_t3_valid"], bool))
    np.testing.assert_allclose(later.x, golden_array(case["unchanged_t3_x"]))


def _single(vx, vy, yaw=0.0, x=0.0, y=0.0, batch=()):
    shape = (*batch, 1)
    full = lambda v: jnp.full(shape, v, jnp.float32)
    return dt.Trajectory(
        x=full(x),
        y=full(y),
        z=full(0.0),
        yaw=full(yaw),
        vel_x=full(vx),
        vel_y=full(vy),
        length=full(4.5),
        width=full(2.0),
        height=full(1.5),
        timestamp_micros=jnp.zeros(shape, jnp.int32),
        valid=jnp.ones(shape, bool),
    )


def test_waymax_bicycle_gradient_is_nan_at_zero_speed_and_smooth_variant_is_finite(golden):
    expected = golden_array(
        golden["gradients"]["jac_update_wrt_vel_x"]["jacobian[agent, out, agent, t]"]
    )
    assert np.isnan(expected[:, :, 1]).all() and not np.isnan(expected[:, :, 0]).any()

    def yaw_after(model, vx):
        cur = _single(vx, 0.0)
        action = dt.Action(data=jnp.array([[1.0, 0.1]]), valid=jnp.ones((1, 1), bool))
        return model.compute_update(action, cur).yaw[0]

    assert np.isnan(jax.grad(lambda v: yaw_after(dynamics.InvertibleBicycleModel(), v))(0.0))
    assert np.isfinite(jax.grad(lambda v: yaw_after(dynamics.SmoothBicycleModel(), v))(0.0))


def _two_gradient_agents(vel_x0=None):
    speed, yaw = jnp.array([10.0, 0.0]), jnp.array([0.3, 0.5])
    vel_x = speed * jnp.cos(yaw) if vel_x0 is None else jnp.stack([vel_x0, 0.0])
    return dt.Trajectory(
        x=jnp.zeros(2),
        y=jnp.zeros(2),
        z=jnp.zeros(2),
        yaw=yaw,
        vel_x=vel_x,
        vel_y=speed * jnp.sin(yaw),
        length=jnp.full(2, 4.5),
        width=jnp.full(2, 2.0),
        height=jnp.ones(2),
        timestamp_micros=jnp.zeros(2, jnp.int32),
        valid=jnp.ones(2, bool),
    )


def test_bicycle_velocity_jacobian_matches_waymax_including_nan(golden):
    section = golden["gradients"]["jac_update_wrt_vel_x"]
    model = dynamics.InvertibleBicycleModel()
    action = dt.Action(data=jnp.array([[2.0, 0.1], [2.0, 0.1]]), valid=jnp.ones((2, 1), bool))
    base = _two_gradient_agents()

    def fn(vel_x):
        u = model.compute_update(action, base.replace(vel_x=vel_x))
        return jnp.stack([u.x, u.y, u.yaw, u.vel_x, u.vel_y], axis=1)

    jac = np.asarray(jax.jacobian(fn)(base.vel_x)[..., None])
    expected = golden_array(section["jacobian[agent, out, agent, t]"])
    # The NaN pattern (every output of the zero-speed agent) and the position rows, which do
    # not depend on the unrecorded action, must match; yaw/velocity rows depend on it.
    np.testing.assert_array_equal(np.isnan(jac), np.isnan(expected))
    np.testing.assert_allclose(jac[:, :2], expected[:, :2], rtol=1e-5, atol=1e-6)


def test_bicycle_action_jacobian_matches_waymax(golden):
    section = golden["gradients"]
    # The golden file omits these two agents; its Jacobians pin them down exactly:
    # d yaw / d curvature = v dt + a dt^2 / 2 gives speeds 10 and 0, d x / d accel gives yaws.
    current = _two_gradient_agents()
    model = dynamics.InvertibleBicycleModel()
    for key in ("jac_update_wrt_action_inside_limits", "jac_update_wrt_action_beyond_limits"):
        action0 = golden_array(section[key]["action"])

        def fn(a):
            u = model.compute_update(dt.Action(data=a, valid=jnp.ones((2, 1), bool)), current)
            return jnp.stack([u.x, u.y, u.yaw, u.vel_x, u.vel_y], axis=1)

        jac = jax.jacobian(fn)(jnp.asarray(action0))
        expected = golden_array(section[key]["jacobian[agent, out(x,y,yaw,vx,vy), agent, act]"])
        np.testing.assert_allclose(jac, expected, rtol=1e-4, atol=1e-5)


def test_rollout10_gradient_matches_waymax(golden):
    section = golden["gradients"]["rollout10_bicycle"]
    start = golden_utils.trajectory(section["start"]).at(0)
    target = jnp.asarray(section["target"])
    model = dynamics.InvertibleBicycleModel()

    def loss(actions):
        def body(cur, a):
            u = model.compute_update(dt.Action(data=a[None], valid=jnp.ones((1, 1), bool)), cur)
            nxt = cur.replace(x=u.x, y=u.y, yaw=u.yaw, vel_x=u.vel_x, vel_y=u.vel_y)
            return nxt, jnp.stack([nxt.x[0], nxt.y[0]])

        _, xy = jax.lax.scan(body, start, actions)
        return jnp.sum((xy - target) ** 2)  # summed over all 10 steps

    actions = jnp.asarray(golden_array(section["actions"]))
    value, grad = jax.value_and_grad(loss)(actions)
    np.testing.assert_allclose(value, section["loss"], rtol=1e-5)
    np.testing.assert_allclose(grad, golden_array(section["grad"]), rtol=1e-4, atol=1e-4)


def _consistent_log(num_steps: int, seed: int) -> dt.Trajectory:
    """A log generated by the bicycle model itself, so the inverse is exact."""
    model = dynamics.InvertibleBicycleModel()
    rng = np.random.default_rng(seed)
    cur = _single(8.0, 0.0, yaw=0.3, x=5.0, y=-2.0)
    steps = [cur]
    for _ in range(num_steps - 1):
        a = jnp.asarray([[rng.uniform(-2, 2), rng.uniform(-0.05, 0.05)]], jnp.float32)
        u = model.compute_update(dt.Action(data=a, valid=jnp.ones((1, 1), bool)), cur)
        cur = cur.replace(x=u.x, y=u.y, yaw=u.yaw, vel_x=u.vel_x, vel_y=u.vel_y)
        steps.append(cur)
    return jax.tree.map(lambda *xs: jnp.stack(xs, axis=-1), *steps)


@pytest.mark.parametrize(
    "name", ["bicycle", "smooth_bicycle", "delta_global", "delta_local", "state"]
)
def test_inverse_then_forward_recovers_a_consistent_log(name):
    log = _consistent_log(12, seed=3)
    model = dynamics.make_dynamics(name)
    sim = log.at(0)
    for t in range(11):
        action = model.inverse_step(sim, log.at(t + 1))
        u = model.compute_update(action, sim)
        sim = sim.replace(x=u.x, y=u.y, yaw=u.yaw, vel_x=u.vel_x, vel_y=u.vel_y)
    final = log.at(11)
    tol = 2e-3 if "bicycle" in name else 1e-4
    np.testing.assert_allclose(sim.x, final.x, atol=tol)
    np.testing.assert_allclose(sim.y, final.y, atol=tol)
    np.testing.assert_allclose(np.cos(sim.yaw - final.yaw), 1.0, atol=1e-5)


@pytest.mark.parametrize("batch", [(), (2, 1)])
@pytest.mark.parametrize(
    "name", ["bicycle", "smooth_bicycle", "delta_global", "delta_local", "state"]
)
def test_dynamics_work_at_any_batch_shape(name, batch):
    model = dynamics.make_dynamics(name)
    cur = _single(5.0, 1.0, yaw=0.2, batch=batch)
    action = dt.Action(
        data=jnp.full((*batch, 1, model.action_dim), 0.1), valid=jnp.ones((*batch, 1, 1), bool)
    )
    update = model.compute_update(action, cur)
    assert update.x.shape == (*batch, 1)
    assert model.inverse_step(cur, cur).data.shape == (*batch, 1, model.action_dim)


def test_unknown_dynamics_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown dynamics model 'bycicle'"):
        dynamics.make_dynamics("bycicle")


@settings(max_examples=40, deadline=None)
@given(
    speed=st.sampled_from([0.0, 1e-4, 0.5, 3.0]),
    yaw=st.sampled_from([-np.pi, np.pi, np.pi - 1e-4, 0.0]),
    accel=st.floats(-8.0, 8.0),
    curvature=st.floats(-0.5, 0.5),
)
def test_smooth_bicycle_gradients_are_finite_at_edge_cases(speed, yaw, accel, curvature):
    model = dynamics.SmoothBicycleModel()

    def loss(state_and_action):
        vx, vy, yaw_, a, k = state_and_action
        cur = _single(vx, vy, yaw=yaw_)
        act = dt.Action(data=jnp.stack([a, k])[None], valid=jnp.ones((1, 1), bool))
        u = model.compute_update(act, cur)
        inv = model.inverse_step(
            cur, cur.replace(x=u.x, y=u.y, yaw=u.yaw, vel_x=u.vel_x, vel_y=u.vel_y)
        )
        return jnp.sum(u.x + u.y + u.yaw + u.vel_x + u.vel_y) + jnp.sum(inv.data)

    args = jnp.asarray(
        [speed * np.cos(yaw), speed * np.sin(yaw), yaw, accel, curvature], jnp.float32
    )
    grad = jax.grad(loss)(args)
    assert np.all(np.isfinite(grad)), grad
