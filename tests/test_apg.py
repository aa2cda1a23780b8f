"""APG: schedules, simulator semantics, gradients (finite differences), a tiny training run."""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from diffdrive.data import batching, synthetic
from diffdrive.data.sources import synthetic_config
from diffdrive.models import policy
from diffdrive.sim import dynamics, env
from diffdrive.sim.datatypes import Action
from diffdrive.train import apg, loop, losses, schedule
from diffdrive.train.config import TrainConfig

SCENARIOS = synthetic_config("small", max_objects=8, num_roadgraph_points=500, num_vehicles=(2, 4))


@functools.lru_cache(maxsize=2)
def scenarios(n: int = 4):
    return [synthetic.generate_scenario(i, SCENARIOS) for i in range(n)]


def _batch(n: int = 4):
    return apg.training_batch(batching.batch_scenarios(scenarios(n)))


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("total", [1, 7, 100])
def test_learning_rate_is_optax_one_cycle_with_a_traced_horizon(total):
    cfg = TrainConfig.tiny(peak_lr=2e-3)
    reference = optax.cosine_onecycle_schedule(
        total, cfg.peak_lr, cfg.pct_start, cfg.div_factor, cfg.final_div_factor
    )
    steps = jnp.arange(total + 3)
    ours = jax.jit(jax.vmap(lambda s, n: schedule.learning_rate(cfg, s, n), (0, None)))(
        steps, total
    )
    np.testing.assert_allclose(ours, jax.vmap(reference)(steps), rtol=1e-5)


def test_reset_threshold_grows_then_stops_resets():
    cfg = TrainConfig.tiny(reset_threshold_start=1.0, reset_threshold_end=8.0)
    values = [float(schedule.reset_threshold(cfg, s, 100)) for s in (0, 25, 49, 50, 99)]
    assert values[0] == pytest.approx(1.0)
    assert values[1] == pytest.approx(8.0**0.5, rel=1e-5)
    assert values[0] < values[1] < values[2] < 8.0
    assert values[3] == values[4] == np.inf
    off = dataclasses.replace(cfg, incremental=False)
    assert float(schedule.reset_threshold(off, 0, 100)) == np.inf


def test_config_validation():
    with pytest.raises(ValueError, match="exceeds"):
        TrainConfig(rollout_steps=81)
    with pytest.raises(ValueError, match="action_selection"):
        TrainConfig(action_selection="best")
    awm = TrainConfig.default().with_awm_recipe()
    assert awm.entropy_weight > 0 and awm.model.log_std_min == -3.0
    assert awm.epochs == TrainConfig.default().epochs // 2


# ------------------------------------------------------------------------ simulator step


def test_simulator_step_is_the_planning_environment_step():
    dyn = dynamics.make_dynamics("smooth_bicycle")
    state = jax.tree.map(jnp.asarray, batching.batch_scenarios(scenarios(2)))
    planning = env.PlanningAgentEnvironment(dyn, env.EnvironmentConfig(road_edge_index=False))
    action = Action(data=jnp.array([[1.5, 0.02], [-2.0, -0.01]]), valid=jnp.ones((2, 1), bool))
    cands = jnp.stack([action.data, action.data[::-1]], axis=-2)  # (B, K=2, 2)

    @jax.jit
    def run(state):
        reset = planning.reset(state)
        expected = planning.step(reset, action).sim_trajectory.at(reset.timestep + 1)
        view = planning.view(reset)
        got = apg.Simulator(dyn).step(view, action)
        sdc = losses.sdc_step(view.current, reset.object_metadata.is_sdc)
        # WTA candidates: the SDC's next xy under each of K actions.
        cx, cy = apg.Simulator(dyn).candidates(sdc, cands)
        return expected, got, losses.sdc_step(got, reset.object_metadata.is_sdc), cx, cy

    expected, got, nxt, cx, cy = run(state)
    for field in ("x", "y", "yaw", "vel_x", "vel_y", "valid"):
        np.testing.assert_array_equal(getattr(got, field), getattr(expected, field))
    np.testing.assert_allclose(cx[:, 0], nxt.x, rtol=1e-6)
    np.testing.assert_allclose(cy[:, 0], nxt.y, rtol=1e-6)
    assert not np.allclose(cx[:, 1], nxt.x)


def test_winner_take_all_picks_the_nearest_landing_component():
    cands = jnp.array([[[0.0, 0.0], [3.0, 1.0], [1.0, 1.0]], [[5.0, 5.0], [0.0, 0.0], [4.9, 5.0]]])
    target = jnp.array([[1.2, 0.9], [5.0, 5.0]])
    np.testing.assert_array_equal(losses.nearest_component(cands, target), [2, 0])
    gmm = policy.GaussianMixture(
        jnp.log(jnp.array([[0.5, 0.25, 0.25]])), jnp.zeros((1, 3, 2)), jnp.zeros((1, 3, 2))
    )
    np.testing.assert_allclose(losses.mixture_cross_entropy(gmm, jnp.array([1])), np.log(4.0))
    pred = jnp.array([[1.0, 0.0, 0.1, 2.0, 0.0]])
    target5 = jnp.array([[0.0, 0.0, 0.1 + 2 * np.pi, 0.5, 0.0]])
    # Huber (delta 1): 0.5 * 1^2 for x, 0 for the wrapped yaw, 1.5 - 0.5 for vel_x.
    np.testing.assert_allclose(losses.state_huber(pred, target5, (1,) * 5), [1.5], rtol=1e-6)


# --------------------------------------------------------------------------- gradients


def _perturbed(params, seed, scale):
    """float64 numpy copies of ``params`` plus ``scale`` times standard normal noise."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda a: np.asarray(a, np.float64) + scale * rng.standard_normal(np.shape(a)), params
    )


@contextlib.contextmanager
def _fast_compile():
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


def test_gradients_match_finite_differences():
    """float64; directional derivatives along a random direction.

    Detached, the gradient is not that of the rollout's loss: it is the exact gradient of
    the same loss with the carried states held at the ones the rollout produced (the
    ``replay``), which finite differences check. Not detached, it is the gradient of the
    rollout's loss itself. Parameters are perturbed off their zero-bias init so that no
    ReLU sits exactly at its kink. Compiled without most optimisations: this test's
    programs are small to run and costly to optimise.
    """
    init = loop.create_train_state(TrainConfig.tiny(), 1).params  # float32, compiled once
    f64 = lambda a: a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a
    batch = jax.tree.map(f64, _batch(2))
    params = _perturbed(init, 1, 0.05)
    direction = _perturbed(jax.tree.map(np.zeros_like, init), 2, 1.0)
    with jax.enable_x64(True), _fast_compile():
        detached = TrainConfig.tiny(rollout_steps=12)
        full = dataclasses.replace(detached, detach=False)
        detached_loss, full_loss = loop.make_loss_fn(detached), loop.make_loss_fn(full)
        key, threshold = jax.random.PRNGKey(3), jnp.asarray(0.5, jnp.float64)  # some resets

        @jax.jit
        def gradients(p):
            grad = functools.partial(jax.value_and_grad, has_aux=True)
            d = grad(lambda p: detached_loss(p, batch, key, threshold, return_states=True))(p)
            f = grad(lambda p: full_loss(p, batch, key, threshold))(p)
            return d, f

        @jax.jit
        def values(p, states):
            replayed = detached_loss(p, batch, key, threshold, replay=states)[0]
            return replayed, full_loss(p, batch, key, threshold)[0]

        ((loss_d, aux), grad_d), ((loss_f, _), grad_f) = gradients(params)
        assert 0.0 < float(aux["reset_rate"]) < 1.0
        # Detaching changes gradients, never values; the replay reproduces the rollout.
        np.testing.assert_allclose(loss_f, loss_d, rtol=1e-12)
        np.testing.assert_allclose(values(params, aux["states"])[0], loss_d, rtol=1e-12)
        eps = 1e-6
        shift = jax.jit(lambda s: jax.tree.map(lambda a, d: a + s * eps * d, params, direction))
        plus, minus = values(shift(1.0), aux["states"]), values(shift(-1.0), aux["states"])
        fd_replayed, fd_full = [(p - m) / (2 * eps) for p, m in zip(plus, minus)]
        dot = jax.jit(lambda g: jnp.vdot(ravel_pytree(g)[0], ravel_pytree(direction)[0]))
        np.testing.assert_allclose(fd_replayed, dot(grad_d), rtol=1e-6)
        np.testing.assert_allclose(fd_full, dot(grad_f), rtol=1e-6)
        assert abs(float(dot(grad_d) - dot(grad_f))) > 1e-3 * abs(float(dot(grad_f)))


# --------------------------------------------------------------------------- training


@functools.lru_cache(maxsize=1)
def _evaluator():
    """ADE of the policy (mean of the most likely component) and of constant velocity in
    Waymax's bicycle, both from the simulator's log_divergence over the 80-step rollout;
    and the deterministic APG loss (mean actions) for a given reset threshold."""
    cfg = TrainConfig.tiny()
    dyn = dynamics.make_dynamics("bicycle")
    planning = env.PlanningAgentEnvironment(
        dyn, env.EnvironmentConfig(metrics=("log_divergence",), road_edge_index=False)
    )
    eval_cfg = dataclasses.replace(cfg, action_selection="mean")
    loss_fn = loop.make_loss_fn(eval_cfg)

    def ade(reset, actor, actor_state):
        out = planning.rollout(reset, actor, 80, actor_state=actor_state, with_rewards=False)
        m = out.metrics["log_divergence"]
        return jnp.sum(jnp.where(m.valid, m.value, 0.0), -1) / jnp.sum(m.valid, -1)

    @jax.jit
    def evaluate(params, state, batch, threshold):
        reset = planning.reset(state)
        actor, init = policy.make_policy_actor(None, params, cfg.model)
        policy_ade = ade(reset, actor, init(reset))
        cv_ade = ade(reset, env.constant_velocity_actor(dyn, sdc_only=True), None)
        loss, aux = loss_fn(params, batch, jax.random.PRNGKey(0), threshold)
        return policy_ade, cv_ade, loss, aux

    return evaluate


def test_apg_training_lowers_loss_and_beats_constant_velocity():
    cfg = TrainConfig.tiny(epochs=60)
    data = scenarios()
    state = jax.tree.map(jnp.asarray, batching.batch_scenarios(data))
    batch = _batch()
    evaluate = _evaluator()
    init = loop.create_train_state(cfg, 1).params
    before, cv, loss_before, _ = evaluate(init, state, batch, jnp.inf)
    result = loop.train(cfg, data, progress=False)
    assert result.completed and len(result.history) == 60
    after, cv_again, loss_after, aux = evaluate(result.state.params, state, batch, jnp.inf)
    np.testing.assert_array_equal(cv, cv_again)
    assert float(loss_after) < 0.7 * float(loss_before)
    assert float(jnp.mean(after)) < 0.7 * float(jnp.mean(cv))
    assert float(jnp.mean(after)) < 0.5 * float(jnp.mean(before))
    assert float(aux["reset_rate"]) == 0.0
    # Incremental training: with a zero threshold every valid step snaps back to the log,
    # so each step's error is a one-step error.
    _, _, _, snapped = evaluate(result.state.params, state, batch, 0.0)
    assert float(snapped["reset_rate"]) > 0.95
    assert float(snapped["ade"]) < 0.25 * float(aux["ade"])
    history = result.history
    assert all(np.isfinite(h["loss"]) for h in history)
    assert history[0]["reset_threshold"] == 1.0 and history[-1]["reset_threshold"] is None
