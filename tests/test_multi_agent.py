"""Multi-agent APG and BC: per-agent observations, the controlled set, training, evaluation."""

from __future__ import annotations

import argparse
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffdrive.data import batching, synthetic
from diffdrive.data.sources import synthetic_config
from diffdrive.eval import baselines, rollouts
from diffdrive.models import policy
from diffdrive.models.config import ModelConfig
from diffdrive.sim import observation
from diffdrive.sim.datatypes import SimulatorState
from diffdrive.train import apg, checkpoint, loop, multi_agent
from diffdrive.train import cli as train_cli
from diffdrive.train.config import TrainConfig, train_config

SCENARIOS = synthetic_config(
    "small", max_objects=16, num_roadgraph_points=500, num_vehicles=(6, 10)
)
TRAIN_AGENTS = 4
ROLLOUT = 40
TRAIN_STEPS = 60


@functools.lru_cache(maxsize=2)
def scenarios(n: int = 4):
    return tuple(synthetic.generate_scenario(i, SCENARIOS) for i in range(n))


def _state(n: int = 4, max_objects: int = 16) -> SimulatorState:
    return jax.tree.map(
        jnp.asarray, batching.batch_scenarios(list(scenarios(n)), max_objects=max_objects)
    )


def _config(**overrides) -> TrainConfig:
    # Two mixture components: in a 60-step run the weights of 2 are learned well enough
    # for the most likely component to be the right one; those of 6 are not.
    model = dataclasses.replace(ModelConfig.tiny(), agent_encoder="transformer", num_components=2)
    kw = dict(setting="multi_agent", train_agents=TRAIN_AGENTS, rollout_steps=ROLLOUT, model=model)
    return train_config("tiny", **(kw | overrides))


def _train(config: TrainConfig, batch: SimulatorState, steps: int):
    """``steps`` jitted train steps on one batch; returns the state and per-step metrics."""
    state = loop.create_train_state(config, steps)
    step_fn = loop.make_train_step(config)
    history = []
    for s in range(steps):
        state, metrics = step_fn(state, batch, loop.step_key(config, s))
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return state, history


# ----------------------------------------------------------------------------- features


@jax.jit
def _features(state: SimulatorState, t):
    cfg = observation.FeatureConfig(roadgraph_top_k=64, max_agents=8)
    log = state.log_trajectory
    args = (
        log.at(t),
        state.object_metadata,
        state.roadgraph_points,
        state.log_traffic_light,
        log,
        t,
        cfg,
    )
    return (
        observation.policy_features(*args),
        observation.policy_features(*args, ego=state.object_metadata.is_sdc),
        observation.policy_features_per_agent(*args),
    )


def test_per_agent_features_of_the_sdc_are_the_sdc_features():
    state = _state()
    t = jnp.int32(20)
    sdc_feats, explicit, per_agent = _features(state, t)
    sdc = np.argmax(np.asarray(state.object_metadata.is_sdc), axis=-1)
    rows = np.arange(len(sdc))
    for name, value in sdc_feats.items():
        np.testing.assert_array_equal(explicit[name], value)
        assert per_agent[name].shape == value.shape[:1] + (16,) + value.shape[1:]
        np.testing.assert_allclose(per_agent[name][rows, sdc], value, rtol=1e-6, atol=1e-6)
    # Hand check: each agent's own speed, in its frame, is its logged speed / 50.
    current = state.log_trajectory.at(t)
    speed = np.hypot(current.vel_x, current.vel_y)
    valid = np.asarray(current.valid)
    ego = np.asarray(per_agent["ego"])
    np.testing.assert_allclose(ego[..., 0][valid] * 50.0, speed[valid], rtol=1e-4, atol=1e-4)
    # The agents differ: the observers see different scenes.
    assert not np.allclose(ego[..., 0][valid], ego[..., 0][valid][0])


def _rigid(state: SimulatorState, theta: float, shift: tuple[float, float]) -> SimulatorState:
    """The scene rotated by ``theta`` about the origin, then shifted by ``shift`` (m)."""
    c, s = np.cos(theta), np.sin(theta)
    f64 = functools.partial(np.asarray, dtype=np.float64)
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)

    def vec(x, y):
        x, y = f64(x), f64(y)
        return f32(c * x - s * y), f32(s * x + c * y)

    def pos(x, y):
        x, y = f64(x), f64(y)
        return f32(c * x - s * y + shift[0]), f32(s * x + c * y + shift[1])

    log = state.log_trajectory
    x, y = pos(log.x, log.y)
    vx, vy = vec(log.vel_x, log.vel_y)
    log = log.replace(x=x, y=y, vel_x=vx, vel_y=vy, yaw=log.yaw + theta)
    rg = state.roadgraph_points
    rx, ry = pos(rg.x, rg.y)
    dx, dy = vec(rg.dir_x, rg.dir_y)
    rg = rg.replace(x=rx, y=ry, dir_x=dx, dir_y=dy)
    tl = state.log_traffic_light
    tx, ty = pos(tl.x, tl.y)
    return state.replace(
        log_trajectory=log, roadgraph_points=rg, log_traffic_light=tl.replace(x=tx, y=ty)
    )


def test_each_agents_features_and_actions_are_invariant_to_a_rigid_transform():
    cfg = dataclasses.replace(ModelConfig.tiny(), agent_encoder="transformer")
    params = policy.init_params(cfg, jax.random.PRNGKey(3))
    model = policy.Policy(cfg)
    state = _state(2)
    moved = _rigid(state, 0.7, (350.0, -120.0))
    t = jnp.int32(30)

    @jax.jit
    def run(state):
        log = state.log_trajectory
        feats = policy.features_per_agent(
            log.at(t),
            log,
            state.object_metadata,
            state.roadgraph_points,
            state.log_traffic_light,
            t,
            cfg,
        )
        carry = policy.initial_carry(cfg, feats["ego"].shape[:-1])
        _, gmm = model.apply(params, feats, carry)
        return feats, gmm

    (f0, g0), (f1, g1) = run(state), run(moved)
    valid = np.asarray(state.log_trajectory.valid[..., 30])
    assert valid.sum() >= 8
    for name in ("ego", "agents", "traffic_lights"):
        np.testing.assert_allclose(f1[name][valid], f0[name][valid], atol=2e-4)
    # The heading target is the first logged point 10 m ahead: rounding may move it to
    # the neighbouring logged step, a change of direction of ~1e-3.
    np.testing.assert_allclose(f1["route"][valid], f0["route"][valid], atol=5e-3)
    # The roadgraph points may tie in distance; the permutation-invariant policy may not.
    np.testing.assert_allclose(g1.means[valid], g0.means[valid], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(g1.logits[valid], g0.logits[valid], rtol=1e-3, atol=1e-3)
    # Not vacuous: the raw global coordinates did change.
    assert not np.allclose(moved.log_trajectory.x, state.log_trajectory.x)


# ----------------------------------------------------------------------- controlled set


def test_driven_agents_are_the_valid_ones_nearest_the_sdc():
    state = apg.training_batch(_state())
    index, row_valid, egos = jax.jit(multi_agent.driven_agents, static_argnums=(1, 2))(
        state, 11, TRAIN_AGENTS
    )
    last = jax.device_get(state.log_trajectory.at(10))
    sdc = np.argmax(np.asarray(state.object_metadata.is_sdc), axis=-1)
    for b in range(state.shape[0]):
        valid = np.flatnonzero(last.valid[b])
        d = np.hypot(last.x[b, valid] - last.x[b, sdc[b]], last.y[b, valid] - last.y[b, sdc[b]])
        expected = valid[np.argsort(d, kind="stable")][:TRAIN_AGENTS]
        assert index[b, 0] == sdc[b]
        assert set(np.asarray(index[b])[np.asarray(row_valid[b])]) == set(expected)
        np.testing.assert_array_equal(np.argmax(egos[b], -1)[row_valid[b]], index[b][row_valid[b]])
    # All slots: the padding rows are exactly the objects absent at step 10.
    _, rows, egos_all = multi_agent.driven_agents(state, 11)
    np.testing.assert_array_equal(np.sum(rows, -1), np.sum(last.valid, -1))
    np.testing.assert_array_equal(np.any(egos_all, -2), last.valid)


def test_config_and_cli_pick_the_transformer_for_multi_agent():
    assert train_config("tiny", setting="multi_agent").model.agent_encoder == "transformer"
    # The per-agent MLP (the DSS paper's others policy) pools over any agent count too.
    assert TrainConfig.tiny(setting="multi_agent").model.agent_encoder == "mlp"
    with pytest.raises(ValueError, match="setting"):
        TrainConfig.tiny(setting="everyone")
    with pytest.raises(ValueError, match="train_agents"):
        _config(train_agents=0)
    args = argparse.Namespace(
        preset="tiny",
        setting="multi_agent",
        train_agents=8,
        agent_encoder=None,
        awm=False,
        epochs=None,
    )
    config = train_cli._build_config("apg", args)
    assert (config.setting, config.train_agents) == ("multi_agent", 8)
    assert config.model.agent_encoder == "transformer"
    args.agent_encoder = "mlp"
    assert train_cli._build_config("bc", args).model.agent_encoder == "mlp"


# ------------------------------------------------------------------------------ training


@functools.lru_cache(maxsize=1)
def _trained_apg():
    config = _config()
    batch = jax.device_put(apg.training_batch(_state()))
    state, history = _train(config, batch, TRAIN_STEPS)
    return config, state, history


def _multi_agent_ade(actor, init, max_objects: int):
    environment = rollouts.make_environment("multi_agent")
    batches = rollouts.batches_with_ids(
        scenarios(), 4, max_objects=max_objects, num_roadgraph_points=500
    )
    results = rollouts.evaluate(environment, actor, init, batches, num_steps=ROLLOUT)
    return results


def test_multi_agent_apg_lowers_its_loss_with_finite_gradients():
    config, _, history = _trained_apg()
    assert all(np.isfinite(h["grad_norm"]) and h["grad_norm"] > 0 for h in history)
    assert all(np.isfinite(h["loss"]) for h in history)
    assert history[0]["agents"] == pytest.approx(TRAIN_AGENTS)
    # Resets stop half-way; compare like with like: the no-reset tail against the
    # initial parameters' loss without resets.
    fresh = loop.create_train_state(config, 1).params
    trained = _trained_apg()[1].params
    loss_fn = jax.jit(loop.make_loss_fn(dataclasses.replace(config, action_selection="mean")))
    batch = apg.training_batch(_state())
    before, aux_before = loss_fn(fresh, batch, jax.random.PRNGKey(0), jnp.inf)
    after, aux_after = loss_fn(trained, batch, jax.random.PRNGKey(0), jnp.inf)
    assert float(after) < 0.7 * float(before)
    assert float(aux_after["ade"]) < 0.5 * float(aux_before["ade"])
    assert float(aux_after["reset_rate"]) == 0.0


def test_trained_with_few_agents_evaluates_with_all_agents(tmp_path):
    config, state, _ = _trained_apg()
    checkpoint.save_policy(tmp_path / "policy", state.params, config)
    actor, init = apg.make_policy_actor(str(tmp_path / "policy"), setting="multi_agent")
    # 32 object slots in evaluation (the policy trained on 16, driving 4 of them).
    results = _multi_agent_ade(actor, init, max_objects=32)
    assert results.controlled.shape[-1] == 32
    assert results.controlled.sum(-1).min() > TRAIN_AGENTS
    fresh = loop.create_train_state(config, 1).params
    untrained = _multi_agent_ade(*policy.make_multi_agent_actor(None, fresh, config.model), 32)
    cv = baselines.make_baseline("constant_velocity", "multi_agent")
    cv_results = _multi_agent_ade(cv.actor, None, max_objects=32)
    ade = results.summary()["metrics"]["ade"]
    before = untrained.summary()["metrics"]["ade"]
    cv_ade = cv_results.summary()["metrics"]["ade"]
    # What training on the 4 agents nearest the SDC learned carries over to every agent.
    assert np.isfinite(ade) and ade < 0.7 * before, (ade, before)
    # This 60-step run does not yet beat constant velocity (~1.3x its ADE at 40 steps);
    # it must stay in its range.
    assert ade < 1.5 * cv_ade, (ade, cv_ade)
    # The same parameter tree serves both agent counts.
    _, loaded, _ = checkpoint.load_policy(tmp_path / "policy")
    assert jax.tree.structure(loaded) == jax.tree.structure(state.params)
    assert jax.tree.map(np.shape, loaded) == jax.tree.map(np.shape, state.params)


def test_actor_is_invariant_to_padding_object_slots():
    config, state, _ = _trained_apg()
    actor, init = policy.make_multi_agent_actor(None, state.params, config.model)
    environment = rollouts.make_environment("multi_agent")

    @jax.jit
    def first_action(batch):
        reset = environment.reset(batch)
        carry = init(reset)
        action, carry = actor(environment.view(reset), carry, jax.random.PRNGKey(0))
        return action.data, carry

    a16, h16 = first_action(_state(2, 16))
    a32, h32 = first_action(_state(2, 32))
    valid = np.asarray(_state(2, 16).log_trajectory.valid[..., 10])
    np.testing.assert_allclose(a32[:, :16][valid], a16[valid], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h32[:, :16][valid], h16[valid], rtol=1e-4, atol=1e-5)


def test_multi_agent_bc_lowers_its_nll_with_finite_gradients():
    config = _config(algorithm="bc", rollout_steps=30)
    batch = jax.device_put(apg.training_batch(_state()))
    _, history = _train(config, batch, 30)
    assert all(np.isfinite(h["grad_norm"]) and h["grad_norm"] > 0 for h in history)
    assert history[0]["agents"] == pytest.approx(TRAIN_AGENTS)
    first = np.mean([h["nll"] for h in history[:3]])
    last = np.mean([h["nll"] for h in history[-3:]])
    assert last < first - 1.0, (first, last)
    assert all(np.isfinite(h["action_error"]) and 0 < h["entropy"] for h in history)
