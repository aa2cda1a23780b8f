"""Models: GMM hand checks, encoder masking, transformer equivariance, the policy actor."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffdrive.data import batching, synthetic
from diffdrive.data.sources import synthetic_config
from diffdrive.models import config as model_config
from diffdrive.models import encoders, policy, transformer
from diffdrive.sim import dynamics, env, observation

TINY = model_config.ModelConfig.tiny()


def _normal_logpdf(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


# ----------------------------------------------------------------------------- mixture


def test_gmm_log_prob_matches_hand_computation():
    logits = np.array([0.3, -1.2, 2.0])
    means = np.array([[0.5, -0.1], [-2.0, 0.05], [1.0, 0.0]])
    log_stds = np.array([[0.0, -2.0], [0.5, -3.0], [-1.0, -1.5]])
    x = np.array([0.8, -0.02])
    gmm = policy.GaussianMixture(jnp.asarray(logits), jnp.asarray(means), jnp.asarray(log_stds))
    w = np.exp(logits) / np.exp(logits).sum()
    comp = _normal_logpdf(x, means, np.exp(log_stds)).sum(-1)
    expected = np.log(np.sum(w * np.exp(comp)))
    np.testing.assert_allclose(gmm.component_log_prob(jnp.asarray(x)), comp, rtol=1e-5)
    np.testing.assert_allclose(gmm.log_prob(jnp.asarray(x)), expected, rtol=1e-5)
    # One component: the product of two normal densities.
    one = policy.GaussianMixture(jnp.zeros(1), jnp.zeros((1, 2)), jnp.zeros((1, 2)))
    np.testing.assert_allclose(one.log_prob(jnp.zeros(2)), -np.log(2 * np.pi), rtol=1e-6)


def test_gmm_categorical_entropy_hand_values():
    k = 6
    uniform = policy.GaussianMixture(jnp.zeros(k), jnp.zeros((k, 2)), jnp.zeros((k, 2)))
    np.testing.assert_allclose(uniform.categorical_entropy(), math.log(6), rtol=1e-6)
    p = jnp.log(jnp.array([0.5, 0.25, 0.25]))
    three = policy.GaussianMixture(p, jnp.zeros((3, 2)), jnp.zeros((3, 2)))
    np.testing.assert_allclose(three.categorical_entropy(), 1.5 * math.log(2), rtol=1e-6)
    peaked = policy.GaussianMixture(
        jnp.array([60.0, 0.0, 0.0]), jnp.zeros((3, 2)), jnp.zeros((3, 2))
    )
    assert float(peaked.categorical_entropy()) < 1e-20
    # Batched: entropy per row.
    batched = policy.GaussianMixture(
        jnp.stack([jnp.zeros(3), p]), jnp.zeros((2, 3, 2)), jnp.zeros((2, 3, 2))
    )
    np.testing.assert_allclose(
        batched.categorical_entropy(), [math.log(3), 1.5 * math.log(2)], rtol=1e-6
    )


def test_gmm_sampling_is_reparameterised_and_follows_the_weights():
    means = jnp.array([[1.0, 0.1], [-3.0, -0.2]])
    log_stds = jnp.array([[-1.0, -2.0], [0.0, -3.0]])
    logits = jnp.log(jnp.array([0.8, 0.2]))
    key = jax.random.PRNGKey(3)

    def sample(m, s):
        gmm = policy.GaussianMixture(logits, m, s)
        return gmm.sample_component(key, jnp.asarray(1))

    x = sample(means, log_stds)
    eps = (x - means[1]) / jnp.exp(log_stds[1])
    jac_mean = jax.jacobian(sample, argnums=0)(means, log_stds)  # (A, K, A)
    np.testing.assert_allclose(jac_mean[:, 1, :], np.eye(2), atol=1e-6)
    np.testing.assert_allclose(jac_mean[:, 0, :], 0.0)
    jac_std = jax.jacobian(sample, argnums=1)(means, log_stds)
    np.testing.assert_allclose(np.diagonal(jac_std[:, 1, :]), jnp.exp(log_stds[1]) * eps, rtol=1e-5)
    gmm = policy.GaussianMixture(logits, means, log_stds)
    _, comps = jax.jit(jax.vmap(gmm.sample))(jax.random.split(key, 4000))
    assert abs(float(jnp.mean(comps == 0)) - 0.8) < 0.03
    # Modes of the actor: the most likely component's mean, or a fixed component.
    k0 = policy.select_action(gmm, key, sample=False, mode=None)
    np.testing.assert_allclose(k0, means[0])
    np.testing.assert_allclose(policy.select_action(gmm, key, sample=False, mode=1), means[1])


def test_head_clips_log_std_and_scales_means():
    cfg = dataclasses.replace(TINY, log_std_min=-4.0, log_std_max=1.5)
    head = policy.GMMHead(cfg)
    x = jnp.ones((3, 8))
    params = jax.jit(head.init)(jax.random.PRNGKey(0), x)
    apply = jax.jit(head.apply)
    for bias, expected in ((100.0, 1.5), (-100.0, -4.0)):
        p = jax.tree.map(lambda a: a, params)
        g = p["params"]["gaussians"]
        a = cfg.action_dim
        b = np.array(g["bias"]).reshape(cfg.num_components, 2 * a)
        b[:, a:] = bias
        g["bias"] = jnp.asarray(b.reshape(-1))
        out = apply(p, x)
        np.testing.assert_allclose(out.log_stds, expected)
        assert out.means.shape == (3, cfg.num_components, cfg.action_dim)
        assert out.logits.shape == (3, cfg.num_components)
    zero = jax.tree.map(jnp.zeros_like, params)
    g = zero["params"]["gaussians"]
    b = np.zeros((cfg.num_components, 2 * cfg.action_dim))
    b[:, : cfg.action_dim] = 1.0
    g["bias"] = jnp.asarray(b.reshape(-1))
    out = apply(zero, x)
    np.testing.assert_allclose(out.means[0, 0], cfg.action_scale, rtol=1e-6)
    np.testing.assert_allclose(out.log_stds[0, 0], np.log(cfg.action_scale), rtol=1e-5)


# ----------------------------------------------------------------------------- encoders


def _random_agents(key, n, valid):
    x = jax.random.normal(key, (n, 9))
    return x.at[:, -1].set(jnp.asarray(valid, jnp.float32))


def test_set_encoders_ignore_padding_and_order():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    agents = _random_agents(k1, 5, [1, 1, 0, 1, 0])
    enc = encoders.SetEncoder((16, 8))
    params = enc.init(k2, agents)
    garbage = agents.at[2, :-1].set(1e3).at[4, :-1].set(-7.0)
    padded = jnp.concatenate([agents, _random_agents(k3, 11, [0] * 11)])
    none = agents.at[:, -1].set(0.0)

    @jax.jit
    def run(params):
        f = functools.partial(enc.apply, params)
        return f(agents), f(garbage), f(padded), f(agents[::-1]), f(none)

    base, *others, empty = run(params)
    for out in others:
        np.testing.assert_allclose(out, base)
    np.testing.assert_allclose(empty, 0.0)


def test_roadgraph_encoder_pools_per_type():
    k = 12
    key = jax.random.PRNGKey(1)
    types = jnp.array([15, 15, 1, 1, 2, 6, 6, 6, 18, 15, 1, 2])
    valid = jnp.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], jnp.float32)
    xy = jax.random.normal(key, (k, 4))
    feats = jnp.concatenate([xy, jax.nn.one_hot(types, 20), valid[:, None]], -1)
    enc = encoders.RoadgraphEncoder((16, 8), 32)
    params = enc.init(key, feats)
    perm = jax.random.permutation(jax.random.PRNGKey(2), k)
    batch = jnp.stack([feats, feats[perm], feats.at[10, :4].set(50.0), feats.at[0, :4].set(5.0)])
    base, permuted, invalid_moved, valid_moved = jax.jit(enc.apply)(params, batch)
    np.testing.assert_allclose(permuted, base, rtol=1e-6)
    # Invalid points never matter; valid ones do.
    np.testing.assert_allclose(invalid_moved, base)
    assert not np.allclose(valid_moved, base)


# --------------------------------------------------------------------------- transformer


def test_agent_tokens_are_permutation_equivariant():
    key = jax.random.PRNGKey(6)
    agents = _random_agents(key, 7, [1, 1, 1, 0, 1, 1, 0])
    mask = agents[:, -1] > 0.5
    tokens = transformer.AgentTokens(width=16, num_layers=2, num_heads=2)
    params = jax.jit(tokens.init)(key, agents, mask)
    perm = jnp.array([3, 0, 6, 2, 5, 1, 4])
    out, permuted = jax.jit(tokens.apply)(
        params, jnp.stack([agents, agents[perm]]), jnp.stack([mask, mask[perm]])
    )
    np.testing.assert_allclose(permuted, out[perm], atol=1e-5)
    np.testing.assert_allclose(out[~mask], 0.0)


def test_agent_transformer_is_invariant_to_order_padding_and_agent_count():
    model = transformer.AgentTransformer(
        width=16, num_layers=2, num_heads=2, num_queries=3, out_width=8
    )
    agents = _random_agents(jax.random.PRNGKey(4), 32, [1] * 20 + [0] * 12)
    params = jax.jit(model.init)(jax.random.PRNGKey(5), agents, agents[:, -1] > 0.5)
    perm = jax.random.permutation(jax.random.PRNGKey(7), 32)
    garbage = agents.at[25:, :-1].set(123.0)  # masked agents' values
    many = jnp.concatenate([agents, _random_agents(jax.random.PRNGKey(8), 96, [0] * 96)])
    empty = agents.at[:, -1].set(0.0)
    moved = agents.at[0, 0].set(3.0)

    @jax.jit
    def run(params):
        def f(a):
            return model.apply(params, a, a[..., -1] > 0.5)

        # 32 slots (as in training) in one batch; 128 slots (evaluation) separately.
        return f(jnp.stack([agents, agents[perm], garbage, empty, moved])), f(many)

    (base, permuted, masked, none, changed), with_128 = run(params)
    np.testing.assert_allclose(permuted, base, atol=1e-5)
    np.testing.assert_allclose(masked, base, atol=1e-5)
    # Trained with 32 slots, evaluated with 128: the same parameters, the same output.
    np.testing.assert_allclose(with_128, base, atol=1e-5)
    # No other agent at all: finite (the learned null token is always attended).
    assert np.all(np.isfinite(none))
    # Valid agents do matter.
    assert not np.allclose(changed, base, atol=1e-4)


# --------------------------------------------------------------------------- policy


@functools.lru_cache(maxsize=1)
def _scenarios():
    cfg = synthetic_config("small", max_objects=8, num_roadgraph_points=500, num_vehicles=(2, 4))
    return [synthetic.generate_scenario(i, cfg) for i in range(3)]


def test_presets():
    paper = model_config.model_config("paper")
    assert paper.hidden_size == 512 and paper.num_components == 6
    assert (paper.log_std_min, paper.log_std_max) == (-5.0, 2.0)
    assert paper.roadgraph_top_k == 2000 and paper.max_agents == 128
    assert paper.fusion_width == 512 and paper.roadgraph_point_widths[-1] == 8
    default = model_config.model_config("default")
    assert default.hidden_size == 128 and default.roadgraph_top_k == 256
    assert default.max_agents == 32
    assert TINY.feature_config.roadgraph_top_k == TINY.roadgraph_top_k
    with pytest.raises(ValueError, match="unknown model preset"):
        model_config.model_config("huge")
    with pytest.raises(ValueError, match="agent_encoder"):
        model_config.ModelConfig(agent_encoder="gnn")


def test_policy_shapes_any_batch():
    params = jax.jit(policy.init_params, static_argnums=0)(TINY, jax.random.PRNGKey(0))

    @jax.jit
    def run(params):
        outs = []
        for batch_shape in ((), (2, 3)):
            feats = policy.dummy_features(batch_shape)
            feats["agents"] = jnp.zeros(batch_shape + (5, 9))
            carry = policy.initial_carry(TINY, batch_shape)
            outs.append(policy.Policy(TINY).apply(params, feats, carry))
        return outs

    for batch_shape, (carry, gmm) in zip(((), (2, 3)), run(params)):
        assert carry.shape == batch_shape + (TINY.hidden_size,)
        assert gmm.means.shape == batch_shape + (6, 2)
        assert gmm.logits.shape == batch_shape + (6,)
        assert gmm.log_stds.shape == batch_shape + (6, 2)


def test_policy_actor_runs_in_the_planning_environment():
    cfg = TINY
    model = policy.Policy(cfg)
    params = jax.jit(policy.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(1))
    state = jax.tree.map(jnp.asarray, batching.batch_scenarios(_scenarios()))
    planning = env.PlanningAgentEnvironment(
        dynamics.make_dynamics("bicycle"),
        env.EnvironmentConfig(metrics=("log_divergence",), road_edge_index=False),
    )

    @jax.jit
    def run(params, key):
        reset = planning.reset(state)
        _, init = policy.make_policy_actor(model, params, cfg)
        warm = init(reset)  # the state alone, positionally
        outs = []
        for sample in (False, True):
            actor, _ = policy.make_policy_actor(model, params, cfg, sample=sample)
            outs.append(planning.rollout(reset, actor, 20, key=key, actor_state=warm))
        return outs, warm, init((3,))

    (mean, sampled), warm, zeros = run(params, jax.random.PRNGKey(2))
    assert mean.actions.data.shape == (3, 2, 20)
    assert mean.metrics["log_divergence"].value.shape == (3, 21)
    for out in (mean, sampled):
        assert np.all(np.isfinite(out.actions.data))
    assert warm.shape == zeros.shape == (3, cfg.hidden_size)
    np.testing.assert_allclose(zeros, 0.0)
    assert not np.allclose(warm, 0.0)  # the GRU consumed the logged history
    (mean2, sampled2), _, _ = run(params, jax.random.PRNGKey(3))
    np.testing.assert_array_equal(mean2.actions.data, mean.actions.data)  # deterministic
    assert not np.allclose(sampled2.actions.data, sampled.actions.data)  # key-dependent
    with pytest.raises(ValueError, match="mode"):
        policy.make_policy_actor(model, params, cfg, mode=6)


def test_features_cut_top_k_to_the_map():
    state = jax.tree.map(jnp.asarray, batching.batch_scenarios(_scenarios()[:1]))
    cfg = dataclasses.replace(TINY, roadgraph_top_k=10_000)
    log = state.log_trajectory
    feats = jax.jit(
        lambda state: policy.features_at(
            log.at(10),
            log,
            state.object_metadata,
            state.roadgraph_points,
            state.log_traffic_light,
            10,
            cfg,
        )
    )(state)
    assert feats["roadgraph"].shape == (1, 500, observation.ROADGRAPH_FEATURES)
    assert feats["agents"].shape == (1, 8, 9)
