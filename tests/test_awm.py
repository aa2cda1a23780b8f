"""AWM heads: analytic minimisers on single transitions, detaching, a tiny training run."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffdrive.data import batching, synthetic
from diffdrive.data.sources import synthetic_config
from diffdrive.models import world_model as wm
from diffdrive.models.config import ModelConfig
from diffdrive.sim.datatypes import Action, Trajectory
from diffdrive.sim.dynamics import SmoothBicycleModel
from diffdrive.sim.env import StepView
from diffdrive.train import apg, awm, checkpoint, loop
from diffdrive.train.config import TrainConfig

SCENARIOS = synthetic_config("small", max_objects=8, num_roadgraph_points=500, num_vehicles=(2, 4))
DYN = SmoothBicycleModel()
CFG = ModelConfig.tiny()


@functools.lru_cache(maxsize=1)
def _batch():
    scenarios = [synthetic.generate_scenario(i, SCENARIOS) for i in range(2)]
    return apg.training_batch(batching.batch_scenarios(scenarios))


def _step(x, y, yaw, speed, heading=None) -> Trajectory:
    """One object's step with fields ``(B,)``; the velocity points along ``heading``."""
    x, y, yaw, speed = (jnp.asarray(v, jnp.float32) for v in (x, y, yaw, speed))
    heading = yaw if heading is None else jnp.asarray(heading, jnp.float32)
    z = jnp.zeros_like(x)
    return Trajectory(
        x=x,
        y=y,
        z=z,
        yaw=yaw,
        vel_x=speed * jnp.cos(heading),
        vel_y=speed * jnp.sin(heading),
        length=z + 4.5,
        width=z + 2.0,
        height=z + 1.5,
        timestamp_micros=jnp.zeros(x.shape, jnp.int32),
        valid=jnp.ones(x.shape, bool),
    )


# Two transitions: a turning, accelerating car and a braking one (global frame, any yaw).
CURRENT = _step([3.0, -10.0], [1.0, 5.0], [0.4, -2.5], [8.0, 12.0])
ACTION = jnp.array([[1.5, 0.04], [-3.0, -0.02]])


def _fit(loss_of_outputs, steps: int = 600, lr: float = 3e-3, seed: int = 0):
    """Overfits the tiny heads on fixed random inputs; returns the trained head params."""
    heads = wm.WorldModelHeads(CFG)
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    g = jax.random.normal(k[0], (2, CFG.fusion_width))
    h = jax.random.normal(k[1], (2, CFG.hidden_size))
    params = wm.init_heads(CFG, k[2])
    tx = optax.adam(lr)

    def loss_fn(p):
        out = heads.apply(p, g, h, ACTION)
        plan = heads.apply(p, g, h, method=wm.WorldModelHeads.plan)
        return jnp.mean(loss_of_outputs(out, plan))

    @jax.jit
    def update(p, s):
        value, grad = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grad, s, p)
        return optax.apply_updates(p, updates), s, value

    state = tx.init(params)
    for _ in range(steps):
        params, state, value = update(params, state)
    out = heads.apply(params, g, h, ACTION)
    plan = heads.apply(params, g, h, method=wm.WorldModelHeads.plan)
    return out, plan, float(value)


def test_odometry_converges_to_the_state_difference():
    nxt = wm.simulate(DYN, CURRENT, ACTION)
    expected = wm.analytic_odometry(CURRENT, nxt)
    speed = wm.speed_of(CURRENT)
    # At the analytic answer the loss is zero; one metre off it is not.
    zero = wm.odometry_loss(DYN, expected, CURRENT, ACTION, nxt)
    np.testing.assert_allclose(zero, 0.0, atol=1e-8)
    assert float(jnp.min(wm.odometry_loss(DYN, expected + 1.0, CURRENT, ACTION, nxt))) > 0.1

    out, _, final = _fit(
        lambda o, p: wm.odometry_loss(
            DYN, wm.odometry_delta(o.odometry, speed, DYN.dt), CURRENT, ACTION, nxt
        )
    )
    predicted = wm.odometry_delta(out.odometry, speed, DYN.dt)
    assert final < 1e-5
    np.testing.assert_allclose(predicted, expected, atol=5e-3)


def test_inverse_state_converges_to_sim_inverse():
    # The expert reached log_next from a state 0.8 m ahead / 0.5 m left of ours.
    offset = jnp.array([[0.8, 0.5], [-0.6, 0.3]])
    log_next = wm.simulate(DYN, wm.displaced(CURRENT, offset), ACTION)
    expected = wm.analytic_inverse_state(DYN, CURRENT, ACTION, log_next)
    np.testing.assert_allclose(expected, offset, atol=1e-4)  # Sim^-1 recovers the offset
    out, _, final = _fit(
        lambda o, p: wm.inverse_state_loss(DYN, o.inverse_state, CURRENT, ACTION, log_next)
    )
    assert final < 1e-5
    np.testing.assert_allclose(out.inverse_state, expected, atol=5e-3)


def test_planner_action_converges_to_inverse_kinematics():
    log_next = wm.simulate(DYN, CURRENT, ACTION)  # reachable: the expert took ACTION
    expected = wm.analytic_planner_action(DYN, CURRENT, log_next)
    np.testing.assert_allclose(expected, ACTION, rtol=1e-3, atol=1e-4)
    speed = wm.speed_of(CURRENT)
    _, plan, final = _fit(
        lambda o, p: wm.planner_loss(DYN, wm.planner_velocity(p, speed), CURRENT, log_next)[0],
        steps=800,
    )
    action = wm.inverse_kinematics(DYN, CURRENT, wm.planner_velocity(plan, speed))
    assert final < 1e-5
    np.testing.assert_allclose(action, expected, rtol=0.02, atol=2e-3)


def test_inverse_kinematics_matches_the_bicycle_inverse():
    # Eq. 11 on the next velocity equals the dynamics' inverse of the next state.
    nxt = wm.simulate(DYN, CURRENT, ACTION)
    vel = jnp.stack(wm.global_to_ego(nxt.vel_x, nxt.vel_y, CURRENT.yaw), -1)
    np.testing.assert_allclose(
        wm.inverse_kinematics(DYN, CURRENT, vel), ACTION, rtol=1e-3, atol=1e-4
    )


def _velocity_for_accel(accel):
    """The ego-frame next velocity (m/s) whose inverse kinematics give ``(accel, ACTION's
    curvature)`` from ``CURRENT``."""
    nxt = wm.simulate(DYN, CURRENT, ACTION.at[:, 0].set(accel))
    return jnp.stack(wm.global_to_ego(nxt.vel_x, nxt.vel_y, CURRENT.yaw), -1)


def test_planner_loss_supervises_the_speed_not_only_the_position():
    # The expert took ACTION but its logged position is 0.1 m further along the track
    # (log noise, or our state lagging it). On (x, y, yaw) alone (the paper's appendix)
    # the minimiser closes the gap in one step, a* = a + 2 * 0.1 / dt^2 = a + 20 m/s^2: the
    # head learned such a bias and drove at +30 m/s^2. With the velocity supervised too,
    # the logged acceleration stays (nearly) optimal.
    reached = wm.simulate(DYN, CURRENT, ACTION)
    log_next = wm.displaced(reached, jnp.array([[0.1, 0.0], [0.1, 0.0]]))
    logged, greedy = _velocity_for_accel(ACTION[:, 0]), _velocity_for_accel(ACTION[:, 0] + 20.0)
    paper = wm.PAPER_PLANNER_STATE_WEIGHTS

    def loss(vel, weights=wm.PLANNER_STATE_WEIGHTS):
        return wm.planner_loss(DYN, vel, CURRENT, log_next, state_weights=weights)[0]

    assert jnp.all(loss(greedy, paper) < 5e-5)  # (the yaw moves a little with the arc)
    assert jnp.all(loss(logged, paper) > 100 * loss(greedy, paper))
    assert jnp.all(loss(logged) < loss(greedy))
    # The default loss's minimiser along the acceleration: within 0.1 m/s^2 of the log's.
    accels = ACTION[:, 0] + jnp.linspace(-2.0, 2.0, 401)[:, None]  # (401, 2)
    values = jax.vmap(lambda a: loss(_velocity_for_accel(a)))(accels)
    best = accels[jnp.argmin(values, axis=0), jnp.arange(2)]
    np.testing.assert_allclose(best, ACTION[:, 0], atol=0.1)


def test_reward_target_is_the_state_distance():
    nxt = _step([0.0, 1.0], [0.0, 2.0], [0.1, 3.1], [10.0, 5.0])
    log = _step([3.0, 1.0], [4.0, 2.0], [0.1, -3.1], [10.0, 5.0])
    np.testing.assert_allclose(wm.reward_target(nxt, log, "xy"), [-5.0, 0.0], atol=1e-6)
    # Same speed, yaw 0.0832 rad apart across the +-pi seam (wrapped): the velocity
    # vectors differ by 5 * 0.0832 m/s as well.
    dyaw = 2 * np.pi - 6.2
    dvel = 2 * 5.0 * np.sin(dyaw / 2)
    np.testing.assert_allclose(wm.reward_target(nxt, log), [-5.0, -np.hypot(dyaw, dvel)], rtol=1e-4)


# ------------------------------------------------------------------------------ training


def _cfg(**kw):
    return TrainConfig.tiny(algorithm="awm", rollout_steps=6, batch_size=2, **kw)


@functools.lru_cache(maxsize=4)
def _grads(cfg: TrainConfig):
    params = awm.init_params(cfg, jax.random.PRNGKey(0))
    fn = loop.make_loss_fn(cfg)
    grad = jax.jit(jax.grad(lambda p: fn(p, _batch(), jax.random.PRNGKey(1), jnp.inf)[0]))
    return params, grad(params)


def test_head_losses_leave_the_policy_gradient_unchanged():
    cfg = _cfg()
    params, grads = _grads(cfg)
    apg_cfg = dataclasses.replace(cfg, algorithm="apg")
    apg_fn = loop.make_loss_fn(apg_cfg)
    apg_grad = jax.jit(jax.grad(lambda p: apg_fn(p, _batch(), jax.random.PRNGKey(1), jnp.inf)[0]))(
        params["policy"]
    )
    flat = jax.flatten_util.ravel_pytree
    np.testing.assert_allclose(flat(grads["policy"])[0], flat(apg_grad)[0], rtol=1e-5, atol=1e-7)
    head_grad = flat(grads["heads"])[0]
    assert np.all(np.isfinite(head_grad)) and float(jnp.linalg.norm(head_grad)) > 0


def _crowded_step():
    """A training batch's step 10 with a car 2.5 m beside the SDC, and its next step."""
    batch = _batch()
    log = batch.log_trajectory
    is_sdc = np.asarray(batch.object_metadata.is_sdc)
    sdc, other = int(np.argmax(is_sdc[0])), int(np.argmin(is_sdc[0]))
    x, y, valid = (np.array(getattr(log, f)) for f in ("x", "y", "valid"))
    x[:, other], y[:, other], valid[:, other] = x[:, sdc], y[:, sdc] + 2.5, True
    log = log.replace(x=jnp.asarray(x), y=jnp.asarray(y), valid=jnp.asarray(valid))
    view = StepView(
        current=log.at(10),
        previous=log.at(10),
        timestep=jnp.asarray(10),
        log=log,
        metadata=batch.object_metadata,
        roadgraph=batch.roadgraph_points,
        traffic_lights=batch.log_traffic_light,
    )
    return view, log.at(11)


def test_head_inputs_are_detached_and_only_the_overlap_reaches_the_action():
    cfg = _cfg(overlap_weight=1.0)
    params = awm.init_params(cfg, jax.random.PRNGKey(0))
    view, log_next = _crowded_step()
    sim = apg.Simulator(cfg.make_dynamics())
    g = jax.random.normal(jax.random.PRNGKey(1), (2, CFG.fusion_width))
    h = jax.random.normal(jax.random.PRNGKey(2), (2, CFG.hidden_size))
    action = jnp.array([[1.0, 0.01], [-1.0, 0.02]])

    def terms(g, h, action):
        nxt = sim.step(view, Action(data=action, valid=jnp.ones((2, 1), bool)))
        out = awm.head_losses(
            params["heads"],
            heads=awm.make_heads(CFG),
            config=cfg,
            dynamics=sim.dynamics,
            view=view,
            encoded=g,
            carry=h,
            action=action,
            nxt=nxt,
            log_next=log_next,
        )
        return {k: jnp.sum(v) for k, v in out.items()}

    names = ["odometry_loss", "planner_loss", "inverse_state_loss", "reward_loss", "next_feature"]
    for name in names:
        grads = jax.grad(lambda *a, n=name: terms(*a)[n], argnums=(0, 1, 2))(g, h, action)
        for grad in grads:
            assert float(jnp.max(jnp.abs(grad))) == 0.0, name
    overlap = jax.grad(lambda a: terms(g, h, a)["overlap_cost"])(action)
    assert float(terms(g, h, action)["overlap_cost"]) > 1e-3
    assert np.all(np.isfinite(overlap)) and float(jnp.max(jnp.abs(overlap))) > 0


def test_training_keeps_the_policy_of_plain_apg_and_reloads(tmp_path):
    data = [synthetic.generate_scenario(i, SCENARIOS) for i in range(4)]
    cfg = _cfg(epochs=1, seed=3)
    res = loop.train(cfg, data, tmp_path / "awm", progress=False)
    ref = loop.train(dataclasses.replace(cfg, algorithm="apg"), data, None, progress=False)
    flat = jax.flatten_util.ravel_pytree
    # Per-group clipping: the heads never rescale the policy's step.
    np.testing.assert_allclose(
        flat(res.state.params["policy"])[0], flat(ref.state.params)[0], rtol=1e-5, atol=1e-6
    )
    for name in awm.HEAD_LOSSES:
        assert np.isfinite(res.history[-1][f"{name}_loss"])
    _, _, params, config = awm.load_awm(tmp_path / "awm")
    assert config.algorithm == "awm"
    np.testing.assert_array_equal(flat(params)[0], flat(res.state.params)[0])
    _, policy_params, _ = checkpoint.load_policy(tmp_path / "awm")
    np.testing.assert_array_equal(flat(policy_params)[0], flat(res.state.params["policy"])[0])


def test_config_validation():
    with pytest.raises(ValueError, match="awm_head_weights"):
        TrainConfig(algorithm="awm", awm_head_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="overlap_weight"):
        TrainConfig(algorithm="awm", overlap_weight=-1.0)
