"""World-model MPC (AWM Algorithm 1): pieces by hand, closed-loop runs, the CLI parser."""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffdrive.data.sources import synthetic_config
from diffdrive.data.synthetic import generate_scenario
from diffdrive.eval import rollouts
from diffdrive.models import policy as policy_lib
from diffdrive.models import world_model as wm
from diffdrive.plan import mpc, mpc_cli
from diffdrive.train import awm
from diffdrive.train.config import TrainConfig

SMALL = synthetic_config("small", max_objects=8, num_roadgraph_points=500, num_vehicles=(2, 4))
STEPS = 20


@functools.lru_cache(maxsize=1)
def _agent():
    cfg = TrainConfig.tiny(algorithm="awm")
    params = awm.init_params(cfg, jax.random.PRNGKey(0))
    return policy_lib.Policy(cfg.model), awm.make_heads(cfg.model), params


def _batches():
    scenarios = [generate_scenario(i, SMALL) for i in range(3)]
    return rollouts.batches_with_ids(scenarios, 3, max_objects=8, num_roadgraph_points=500)


def _run(actor, init, seed=0):
    environment = rollouts.make_environment("planning")
    res = rollouts.evaluate(
        environment, actor, init, _batches(), key=jax.random.PRNGKey(seed), num_steps=STEPS
    )
    return res.summary()["metrics"]


def test_config_validation():
    with pytest.raises(ValueError, match="unknown MPC reward"):
        mpc.MPCConfig(reward="best")
    with pytest.raises(ValueError, match="num_rollouts"):
        mpc.MPCConfig(num_rollouts=0)


def test_top_k_mean_of_first_actions_by_hand():
    actions = jnp.array([[[1.0, 0.1], [9.0, 9.0]], [[3.0, 0.3], [9.0, 9.0]], [[5.0, 0.5], [0, 0]]])
    scores = jnp.array([2.0, 3.0, -1.0])
    np.testing.assert_allclose(mpc.aggregate_first_action(actions, scores, 2), [2.0, 0.2])
    np.testing.assert_allclose(mpc.aggregate_first_action(actions, scores, 1), [3.0, 0.3])
    # top_k beyond N averages all N.
    np.testing.assert_allclose(mpc.aggregate_first_action(actions, scores, 9), [3.0, 0.3])


def test_log_distance_scores_by_hand():
    imagined = {"kinematic_xy": jnp.array([[[0.0, 0.0], [1.0, 0.0]], [[0.0, 3.0], [0.0, 4.0]]])}
    log_xy = jnp.array([[0.0, 0.0], [1.0, 1.0]])
    valid = jnp.array([True, True])
    neg = mpc.score(imagined, "neg_dist_log", log_xy, valid)
    np.testing.assert_allclose(neg, [-1.0, -(3.0 + np.hypot(1.0, 3.0))], rtol=1e-6)
    np.testing.assert_allclose(mpc.score(imagined, "pos_dist_log", log_xy, valid), -neg)
    masked = mpc.score(imagined, "neg_dist_log", log_xy, jnp.array([True, False]))
    np.testing.assert_allclose(masked, [0.0, -3.0])


def test_log_state_scores_wrap_the_yaw_by_hand():
    # (x, y, yaw, vel_x, vel_y): trajectory 0 is 0.1 rad off across the +-pi seam.
    state = jnp.array([[[0.0, 0.0, 3.1, 1.0, 0.0]], [[3.0, 4.0, -3.1, 1.0, 0.0]]])
    imagined = {"kinematic_xy": state[..., :2], "kinematic_state": state}
    log = jnp.array([[0.0, 0.0, -3.0832, 1.0, 0.0]])
    scores = mpc.score(imagined, "neg_dist_log", log, jnp.array([True]))
    np.testing.assert_allclose(scores, [-0.1, -np.hypot(5.0, 0.0168)], rtol=1e-3)
    xy_only = mpc.score(imagined, "neg_dist_log", log[..., :2], jnp.array([True]))
    np.testing.assert_allclose(xy_only, [0.0, -5.0], atol=1e-6)


def test_deterministic_action_by_hand():
    gmm = policy_lib.GaussianMixture(
        logits=jnp.log(jnp.array([0.3, 0.7])),
        means=jnp.array([[2.0, 0.1], [-1.0, 0.0]]),
        log_stds=jnp.zeros((2, 2)),
    )
    np.testing.assert_allclose(mpc.deterministic_action(gmm), [-0.1, 0.03], rtol=1e-5)
    np.testing.assert_allclose(mpc.deterministic_action(gmm, "most_likely"), [-1.0, 0.0])
    with pytest.raises(ValueError, match="mean_action"):
        mpc.MPCConfig(mean_action="mode")


def test_single_imagined_trajectory_is_the_deterministic_reactive_policy():
    # N = 1 executes trajectory 0, the mixture mean (or, on request, the most likely
    # component's mean): exactly the reactive policy with the same deterministic action.
    model, heads, params = _agent()
    for mean_action, mode in (("mixture_mean", policy_lib.MIXTURE_MEAN), ("most_likely", None)):
        reactive = _run(
            *policy_lib.make_policy_actor(model, params["policy"], model.config, mode=mode)
        )
        config = mpc.MPCConfig(num_rollouts=1, horizon=1, top_k=3, mean_action=mean_action)
        planned = _run(*mpc.make_mpc_actor(model, heads, params, config), seed=3)
        np.testing.assert_allclose(planned["ade"], reactive["ade"], rtol=1e-5)


def test_untrained_odometry_imagines_constant_speed_motion():
    # The heads' last layers start at zero, so the odometry is its kinematic prior.
    model, heads, params = _agent()
    cfg = model.config
    sdc = jax.tree.map(lambda a: a[:, 0], _first_sdc())
    g = jnp.zeros((2, cfg.fusion_width))
    h = jnp.zeros((2, cfg.hidden_size))
    horizon = 4
    forced = jnp.zeros((2, 1, horizon, 2))
    out = mpc.imagine(
        model, heads, params, g, h, sdc, jax.random.PRNGKey(0), horizon=horizon, actions=forced
    )
    speed = wm.speed_of(sdc)
    step = jnp.arange(1, horizon + 1) * speed[:, None] * 0.1
    expected = jnp.stack(
        [
            sdc.x[:, None] + step * jnp.cos(sdc.yaw)[:, None],
            sdc.y[:, None] + step * jnp.sin(sdc.yaw)[:, None],
        ],
        -1,
    )
    assert out["odometry_xy"].shape == (2, 1, horizon, 2)
    np.testing.assert_allclose(out["odometry_xy"][:, 0], expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(out["actions"], forced)


def _first_sdc():
    from diffdrive.data import batching
    from diffdrive.train import losses

    state = batching.batch_scenarios([generate_scenario(i, SMALL) for i in range(2)])
    state = jax.tree.map(jnp.asarray, state)
    step = losses.sdc_step(state.log_trajectory.at(10), state.object_metadata.is_sdc)
    return jax.tree.map(lambda a: a[:, None], step)


def test_mpc_with_the_log_reward_beats_the_reactive_policy_and_is_deterministic():
    model, heads, params = _agent()
    reactive = _run(
        *policy_lib.make_policy_actor(
            model, params["policy"], model.config, mode=policy_lib.MIXTURE_MEAN
        )
    )
    config = mpc.MPCConfig(num_rollouts=8, horizon=1, top_k=1, reward="neg_dist_log")
    actor, init = mpc.make_mpc_actor(model, heads, params, config)
    planned = _run(actor, init)
    assert np.isfinite(planned["ade"])
    # Trajectory 0 is the reactive action; picking the best of 8 by the true next-step
    # distance to the log can only help the untrained policy.
    assert planned["ade"] < 0.8 * reactive["ade"]
    again = _run(actor, init)
    assert again["ade"] == planned["ade"]
    worst = _run(
        *mpc.make_mpc_actor(
            model,
            heads,
            params,
            config.__class__(num_rollouts=8, horizon=1, top_k=1, reward="pos_dist_log"),
        )
    )
    assert worst["ade"] > planned["ade"]


def test_mpc_with_learned_rewards_and_the_planner_run():
    model, heads, params = _agent()
    for reward in ("reward_head", "inverse_state"):
        config = mpc.MPCConfig(num_rollouts=3, horizon=3, top_k=2, reward=reward)
        m = _run(*mpc.make_mpc_actor(model, heads, params, config))
        assert np.isfinite(m["ade"]) and m["ade"] > 0
    m = _run(*mpc.make_planner_actor(model, heads, params))
    assert np.isfinite(m["ade"])


def test_cli_parser():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    mpc_cli.add_parser(sub)
    args = parser.parse_args(
        ["mpc", "--checkpoint", "run", "--data", "synthetic:2", "--num-rollouts", "8"]
    )
    assert args.func is mpc_cli.cmd_mpc
    assert (args.num_rollouts, args.horizon, args.top_k, args.reward) == (8, 10, 3, "reward_head")
    with pytest.raises(SystemExit):
        parser.parse_args(["mpc", "--checkpoint", "run", "--data", "x", "--reward", "best"])


def test_cli_rejects_a_non_awm_run(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    mpc_cli.add_parser(sub)
    args = parser.parse_args(["mpc", "--checkpoint", str(tmp_path), "--data", "synthetic:1"])
    assert args.func(args) == 2
    assert "error" in capsys.readouterr().err
