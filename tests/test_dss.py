"""DSS (test-time search through the simulator): the four settings, the gradient step, the
softmax weights, the classifier's guidance, determinism and the CLI parser."""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffdrive.data import batching, synthetic
from diffdrive.data.sources import synthetic_config
from diffdrive.models import classifier as classifier_lib
from diffdrive.models import policy
from diffdrive.models.config import model_config
from diffdrive.plan import dss, dss_cli
from diffdrive.sim import dynamics
from diffdrive.sim.datatypes import RoadgraphPoints, Trajectory
from diffdrive.train import classifier as train_classifier

SCENARIOS = synthetic_config("small", max_objects=8, num_roadgraph_points=500, num_vehicles=(2, 4))


@functools.lru_cache(maxsize=1)
def _state():
    return jax.tree.map(
        jnp.asarray, batching.batch_scenarios([synthetic.generate_scenario(0, SCENARIOS)])
    )


@functools.lru_cache(maxsize=1)
def _ego():
    cfg = model_config("tiny", route="waypoint")
    return dss.EgoPolicy(policy.Policy(cfg), policy.init_params(cfg, jax.random.PRNGKey(0)))


def _planner(**kw) -> dss.Planner:
    return dss.Planner(dss.DSSConfig(**kw), _ego(), dss.constant_velocity_others())


@functools.lru_cache(maxsize=1)
def _reset_view():
    env = dss.make_real_environment()
    s = env.reset(_state())
    return s, env.view(s)


def _plan(planner, key=0, eta=None, tau=None):
    eta = jnp.asarray(planner.config.eta if eta is None else eta, jnp.float32)
    tau = jnp.asarray(planner.config.tau if tau is None else tau, jnp.float32)
    return _plan_fn(planner)(_reset_view()[1], jax.random.PRNGKey(key), eta, tau)


@functools.lru_cache(maxsize=8)
def _plan_fn(planner):
    """One compilation per planner; ``eta`` ``(2,)`` and ``tau`` are traced."""
    s, _view = _reset_view()
    return jax.jit(
        lambda v, k, eta, tau: dss.plan(
            planner, v, planner.ego.init(s), planner.others.init(s), k, eta, tau
        )
    )


# One planner with gradients serves every Algorithm-1 test (eta and tau are traced).
_GRAD = dict(K=3, T=3, M=2, eta_accel=100.0, eta_steer=0.001, tau=1.0)


@functools.lru_cache(maxsize=1)
def _grad_planner():
    return _planner(**_GRAD)


# ----------------------------------------------------------------------------- config


def test_config_names_the_four_settings_and_rejects_bad_input():
    assert dss.DSSConfig(K=1, eta_accel=0, eta_steer=0).setting == "reactive"
    assert dss.DSSConfig(K=1).setting == "reactive_gradients"
    assert dss.DSSConfig(K=4, eta_accel=0, eta_steer=0).setting == "simulator_critic"
    assert dss.DSSConfig(K=4).setting == "dss"
    assert not dss.DSSConfig(K=1).samples_ego and dss.DSSConfig(K=2).samples_ego
    with pytest.raises(ValueError, match="M=4"):
        dss.DSSConfig(T=3, M=4)
    with pytest.raises(ValueError, match="not differentiable"):
        dss.DSSConfig(loss="overlap")
    with pytest.raises(ValueError, match="unknown planning loss"):
        dss.DSSConfig(loss="nope")
    with pytest.raises(ValueError, match="tau"):
        dss.DSSConfig(tau=-1.0)
    with pytest.raises(ValueError, match="classifier"):
        _planner(loss="classifier")


# ----------------------------------------------------------------------------- Algorithm 2


@functools.lru_cache(maxsize=2)
def _control_loop_fn(K: int):
    """Algorithm 2 compiled once per K; the step sizes are traced, so eta = 0 (reactive /
    simulator as critic) and eta > 0 (with gradients) share one compilation."""
    planner = _planner(K=K, T=3, M=2, eta_accel=1.0, eta_steer=1.0)
    return jax.jit(lambda s, k, eta: dss.control_loop(planner, s, k, num_steps=5, eta=eta))


@pytest.mark.parametrize("K,eta", [(1, 0.0), (1, 200.0), (3, 0.0), (3, 200.0)], ids=dss.SETTINGS)
def test_each_setting_drives_a_scenario(K, eta):
    steps = 5
    eta = jnp.array([eta, 0.01 if eta else 0.0])
    rec = _control_loop_fn(K)(_state(), jax.random.PRNGKey(0), eta)
    assert rec["log_divergence"].shape == (1, steps)
    assert rec["actions"].shape == (1, steps, 2)
    assert np.all(np.isfinite(rec["log_divergence"])) and np.all(rec["valid"])
    # The physical trajectory is the executed actions stepped through the real dynamics.
    traj = rec["trajectory"]
    start = jax.tree.map(lambda a: a[:, 0], traj)
    replay = dss.replay_ego(dynamics.InvertibleBicycleModel(), start, rec["actions"])
    np.testing.assert_allclose(replay.x, traj.x[:, 1:], atol=1e-3)
    np.testing.assert_allclose(replay.y, traj.y[:, 1:], atol=1e-3)


# ----------------------------------------------------------------------------- Algorithm 1


def test_gradient_step_lowers_the_imagined_loss_and_replay_matches_imagination():
    planner = _grad_planner()
    out = _plan(planner)
    assert out.actions.shape == (1, 2, 2) and out.weights.shape == (1, 3)
    assert np.all(np.isfinite(out.gradient)) and float(jnp.abs(out.gradient).max()) > 0
    assert np.all(out.loss_after < out.loss), (out.loss, out.loss_after)
    # The ego replay through the dynamics reproduces the imagined ego exactly.
    _s, view = _reset_view()
    start = dss._tile_k(dss.ego_state(view.current, view.metadata.is_sdc), 3)
    replay = dss.replay_ego(planner.dynamics, start, out.sampled_actions)
    sdc = view.metadata.is_sdc[:, None, :, None]
    imagined_x = jnp.sum(out.imagined.x * sdc, axis=-2)
    np.testing.assert_allclose(replay.x, imagined_x, atol=1e-4)
    # Weighted average of the optimised first M actions.
    expected = jnp.einsum("bk,bkmd->bmd", out.weights, out.optimised_actions[:, :, :2])
    np.testing.assert_allclose(out.actions, expected, rtol=1e-5)


def test_without_a_gradient_step_the_actions_are_the_policys():
    out = _plan(_grad_planner(), eta=jnp.zeros(2))
    np.testing.assert_array_equal(out.optimised_actions, out.sampled_actions)
    np.testing.assert_allclose(out.loss_after, out.loss, rtol=1e-6)


def test_tau_to_zero_picks_the_best_rollout():
    loss = jnp.array([[3.0, 1.0, 2.0]])
    np.testing.assert_allclose(dss.rollout_weights(loss, 0.0), [[0, 1, 0]])
    np.testing.assert_allclose(dss.rollout_weights(loss, 1e-4), [[0, 1, 0]], atol=1e-6)
    np.testing.assert_allclose(dss.rollout_weights(loss, 1.0), jax.nn.softmax(-loss), rtol=1e-6)
    out = _plan(_grad_planner(), eta=jnp.zeros(2), tau=jnp.float32(1e-6))
    best = int(jnp.argmin(out.loss[0]))
    assert len(set(np.asarray(out.loss[0]).tolist())) == 3  # distinct rollouts
    assert float(out.weights[0, best]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(out.actions[0], out.optimised_actions[0, best, :2], atol=1e-5)


def test_same_key_same_plan_other_key_other_samples():
    planner = _grad_planner()
    a, b, c = _plan(planner, 7), _plan(planner, 7), _plan(planner, 8)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert not np.allclose(a.sampled_actions, c.sampled_actions)


def test_search_only_loss_runs_without_gradients():
    out = _plan(_planner(K=2, T=2, M=1, loss="overlap", eta_accel=0.0, eta_steer=0.0))
    assert np.all((out.loss >= 0) & (out.loss <= 1))
    np.testing.assert_array_equal(out.gradient, 0.0)
    np.testing.assert_array_equal(out.optimised_actions, out.sampled_actions)


def test_policy_others_observe_their_nearest_points_chosen_once_per_plan():
    cfg = model_config("tiny", agent_encoder="transformer", roadgraph_top_k=16)
    model = policy.Policy(cfg)
    params = policy.init_params(cfg, jax.random.PRNGKey(3))
    others = dss.policy_others(model, params, sample=False)
    s, view = _reset_view()
    config = dss.DSSConfig(K=2, T=2, M=1, eta_accel=0.0, eta_steer=0.0)
    planner = dss.Planner(config, _ego(), others)

    @jax.jit
    def reference(view):
        rg = others.select_roadgraph(view.roadgraph, view.current)
        exact = policy.observe_all(view, cfg)
        local = dss.features_with_agent_roadgraph(view, rg, cfg)
        # The others' first imagined step: the multi-agent policy's (mean) action.
        action, _ = others.actor(view, others.init(s), jax.random.PRNGKey(0))
        first = dynamics.step_objects(
            planner.dynamics,
            action,
            view.current,
            view.log_next,
            view.current.valid,
            allow_object_injection=False,
        )
        return rg, exact, local, first

    rg, exact, local, first = reference(view)
    # The points chosen once equal the per-step nearest-point search at the plan's start.
    assert rg.x.shape == (1, view.current.x.shape[-1], 16)
    for name in exact:
        np.testing.assert_allclose(local[name], exact[name], atol=1e-6, err_msg=name)
    out = _plan(planner)
    moving = view.current.valid & ~view.metadata.is_sdc
    assert bool(jnp.any(moving))
    for k in range(2):
        np.testing.assert_allclose(
            np.where(moving, out.imagined.x[:, k, :, 0], 0.0),
            np.where(moving, first.x, 0.0),
            atol=1e-4,
        )
    assert np.all(np.isfinite(out.actions))


# ----------------------------------------------------------------------------- classifier


def _two_box_scene(dx, dy, dyaw=0.0):
    """Ego at the origin heading +x, one other car at (dx, dy); shapes (..., 2)."""
    dx, dy, dyaw = np.broadcast_arrays(*(np.asarray(v, np.float32) for v in (dx, dy, dyaw)))
    shape = dx.shape + (2,)
    zeros = np.zeros(shape, np.float32)
    return Trajectory(
        x=jnp.asarray(np.stack([np.zeros_like(dx), dx], -1)),
        y=jnp.asarray(np.stack([np.zeros_like(dy), dy], -1)),
        z=jnp.asarray(zeros),
        yaw=jnp.asarray(np.stack([np.zeros_like(dyaw), dyaw], -1)),
        vel_x=jnp.asarray(zeros + np.array([5.0, 0.0], np.float32)),
        vel_y=jnp.asarray(zeros),
        length=jnp.asarray(zeros + 4.5),
        width=jnp.asarray(zeros + 2.0),
        height=jnp.asarray(zeros + 1.5),
        valid=jnp.ones(shape, bool),
        timestamp_micros=jnp.zeros(shape, jnp.int32),
    )


def _empty_roadgraph(points=4):
    z = jnp.zeros((points,), jnp.float32)
    return RoadgraphPoints(
        x=z,
        y=z,
        z=z,
        dir_x=z,
        dir_y=z,
        dir_z=z,
        types=jnp.zeros((points,), jnp.int32),
        ids=jnp.zeros((points,), jnp.int32),
        valid=jnp.zeros((points,), bool),
    )


def test_classifier_gradient_points_away_from_a_planted_collision():
    rng = np.random.default_rng(0)
    n = 4000
    dx, dy = rng.uniform(-9, 9, n), rng.uniform(-5, 5, n)
    dyaw = rng.uniform(-np.pi, np.pi, n)
    scene = _two_box_scene(dx, dy, dyaw)
    sdc = jnp.broadcast_to(jnp.array([True, False]), scene.x.shape)
    from diffdrive.sim import metrics

    labels = np.asarray(metrics.overlap(scene).value[..., 0] > 0)
    assert 0.1 < labels.mean() < 0.6  # both classes present
    cfg = classifier_lib.ClassifierConfig(num_agents=1, num_road_points=4, width=32)
    feats = classifier_lib.event_features(scene, sdc, _empty_roadgraph(), cfg)
    data = {k: np.asarray(v) for k, v in feats.items()}
    data["labels"] = np.stack([labels, np.zeros_like(labels)], -1)
    train_cfg = train_classifier.ClassifierTrainConfig(
        model=cfg, steps=600, batch_size=256, learning_rate=3e-3, holdout_fraction=0.2
    )
    bundle, report = train_classifier.train_classifier(data, train_cfg)
    assert report["holdout"]["collision"]["balanced_accuracy"] > 0.85, report

    def p_collision(offset, other):
        s = _two_box_scene(other[0], other[1])
        s = s.replace(x=s.x.at[0].add(offset[0]), y=s.y.at[0].add(offset[1]))
        return classifier_lib.event_probabilities(
            bundle, s, jnp.array([True, False]), _empty_roadgraph()
        )[0]

    for other in ([3.0, 0.8], [-2.5, -1.0], [1.0, 1.5]):
        other = jnp.asarray(other)
        assert float(p_collision(jnp.zeros(2), other)) > 0.5
        grad = jax.grad(p_collision)(jnp.zeros(2), other)
        # Descending the probability moves the ego away from the planted car.
        assert float(jnp.dot(-grad, -other)) > 0, (other, grad)
    assert float(p_collision(jnp.zeros(2), jnp.array([15.0, 6.0]))) < 0.2


def test_classifier_export_round_trip(tmp_path):
    cfg = classifier_lib.ClassifierConfig(num_agents=2, num_road_points=4, width=8)
    bundle = classifier_lib.EventClassifierBundle(
        params=classifier_lib.init_params(cfg, jax.random.PRNGKey(1)),
        config=cfg,
        loss_weights=(1.0, 0.5),
    )
    train_classifier.save_classifier(tmp_path / "clf", bundle, {"note": "test"})
    loaded = train_classifier.load_classifier(tmp_path / "clf")
    assert loaded.config == cfg and loaded.loss_weights == (1.0, 0.5)
    for a, b in zip(jax.tree.leaves(bundle.params), jax.tree.leaves(loaded.params)):
        np.testing.assert_array_equal(a, b)


def test_collect_dataset_labels_are_exact_metrics():
    mc = model_config("tiny", route="waypoint")
    model, params = policy.Policy(mc), policy.init_params(mc, jax.random.PRNGKey(0))
    actor, init = policy.make_policy_actor(model, params, sample=True)
    cfg = train_classifier.ClassifierTrainConfig(
        model=classifier_lib.ClassifierConfig(num_agents=4, num_road_points=8, width=8),
        jitter_copies=2,
        local_roadgraph_points=200,
    )
    data = train_classifier.collect_dataset(
        _state(),
        actor,
        init,
        cfg,
        jax.random.PRNGKey(0),
        num_steps=6,
        dynamics=dynamics.InvertibleBicycleModel(),
    )
    n = len(data["labels"])
    assert n == 1 * 7 * 2  # (steps + 1) x jitter copies
    assert data["agents"].shape == (n, 4, classifier_lib.AGENT_FEATURES)
    assert data["road"].shape == (n, 8, classifier_lib.ROAD_FEATURES)
    assert data["labels"].dtype == bool


# ----------------------------------------------------------------------------- CLI


def test_cli_parser():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    dss_cli.add_parser(sub)
    args = parser.parse_args(
        [
            "dss",
            "--data",
            "synthetic:2:0:small",
            "--ego-policy",
            "runs/ego",
            "--K",
            "8",
            "--eta-accel",
            "500",
            "--loss",
            "tracking",
            "--out",
            "x.json",
        ]
    )
    assert args.K == 8 and args.eta_accel == 500.0 and args.T == 10 and args.M == 3
    assert args.func is dss_cli.run
    with pytest.raises(SystemExit):
        parser.parse_args(["dss", "--data", "x", "--ego-policy", "y", "--loss", "bad"])
