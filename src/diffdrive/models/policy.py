"""The recurrent Gaussian-mixture policy and its adapter to the simulator's actors.

One step: ego-frame features (:func:`observe`) -> :class:`~diffdrive.models.encoders.SceneEncoder`
-> GRU (explicit carry) -> :class:`GMMHead` -> a :class:`GaussianMixture` over (acceleration,
curvature). Everything takes any leading batch shape; nothing is jitted here.

:func:`make_policy_actor` wraps trained parameters as an
``actor(view, actor_state, key) -> (Action, actor_state)`` for
:meth:`diffdrive.sim.env.PlanningAgentEnvironment.rollout`; the actor state is the GRU
carry, built by :func:`warm_up` on the logged history.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from diffdrive.models.config import ModelConfig
from diffdrive.models.encoders import SceneEncoder
from diffdrive.sim import observation
from diffdrive.sim.datatypes import (
    INIT_STEPS,
    NUM_ROAD_TYPES,
    Action,
    Array,
    ObjectMetadata,
    RoadgraphPoints,
    SimulatorState,
    TrafficLights,
    Trajectory,
)
from diffdrive.sim.env import StepView

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------
# Gaussian mixture
# --------------------------------------------------------------------------------------


@struct.dataclass
class GaussianMixture:
    """A mixture of ``K`` diagonal Gaussians over ``A``-dimensional actions.

    Attributes:
      logits: ``(..., K)`` unnormalised mixture weights.
      means: ``(..., K, A)``.
      log_stds: ``(..., K, A)`` (already clipped by the head).
    """

    logits: Array
    means: Array
    log_stds: Array

    @property
    def num_components(self) -> int:
        return self.logits.shape[-1]

    @property
    def log_weights(self) -> Array:
        """``(..., K)`` log mixture weights."""
        return jax.nn.log_softmax(self.logits, axis=-1)

    def component_log_prob(self, x: Array) -> Array:
        """``(..., K)`` log-density of ``x`` ``(..., A)`` under each component."""
        z = (x[..., None, :] - self.means) * jnp.exp(-self.log_stds)
        return jnp.sum(-0.5 * z**2 - self.log_stds - 0.5 * _LOG_2PI, axis=-1)

    def log_prob(self, x: Array) -> Array:
        """``(...)`` log-density of the mixture at ``x`` ``(..., A)``."""
        return jax.nn.logsumexp(self.log_weights + self.component_log_prob(x), axis=-1)

    def categorical_entropy(self) -> Array:
        """``(...)`` entropy of the mixture weights (not of the Gaussians)."""
        logp = self.log_weights
        return -jnp.sum(jnp.exp(logp) * logp, axis=-1)

    def most_likely_component(self) -> Array:
        """``(...)`` int32 index of the largest weight."""
        return jnp.argmax(self.logits, axis=-1).astype(jnp.int32)

    def component_mean(self, k: Array) -> Array:
        """``(..., A)`` mean of component ``k`` ``(...)``."""
        return jnp.take_along_axis(self.means, k[..., None, None], axis=-2)[..., 0, :]

    def component_log_std(self, k: Array) -> Array:
        """``(..., A)`` log-std of component ``k`` ``(...)``."""
        return jnp.take_along_axis(self.log_stds, k[..., None, None], axis=-2)[..., 0, :]

    def sample_component(self, key: Array, k: Array) -> Array:
        """Reparameterised sample of component ``k``: ``mean_k + std_k * eps``, ``(..., A)``."""
        mean = self.component_mean(k)
        eps = jax.random.normal(key, mean.shape, mean.dtype)
        return mean + jnp.exp(self.component_log_std(k)) * eps

    def sample(self, key: Array) -> tuple[Array, Array]:
        """A component drawn from the weights, then a reparameterised sample of it.

        Returns:
          ``(action (..., A), component (...))``; the action is differentiable in the
          component's mean and std (the discrete choice is not).
        """
        k_key, n_key = jax.random.split(key)
        k = jax.random.categorical(k_key, jax.lax.stop_gradient(self.logits), axis=-1)
        k = k.astype(jnp.int32)
        return self.sample_component(n_key, k), k

    def mean(self) -> Array:
        """``(..., A)`` mixture mean."""
        w = jnp.exp(self.log_weights)
        return jnp.sum(w[..., None] * self.means, axis=-2)


# --------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------


class GMMHead(nn.Module):
    """``(..., H)`` -> :class:`GaussianMixture` with ``K`` components over ``A`` actions."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> GaussianMixture:
        cfg = self.config
        k, a = cfg.num_components, cfg.action_dim
        h = nn.relu(nn.Dense(cfg.head_width)(x))
        logits = nn.Dense(k, name="logits")(h)
        raw = nn.Dense(2 * k * a, name="gaussians")(h).reshape(h.shape[:-1] + (k, 2 * a))
        scale = jnp.asarray(cfg.action_scale, raw.dtype)
        means = raw[..., :a] * scale
        log_stds = jnp.clip(raw[..., a:] + jnp.log(scale), cfg.log_std_min, cfg.log_std_max)
        return GaussianMixture(logits=logits, means=means, log_stds=log_stds)


class Policy(nn.Module):
    """Scene encoder -> GRU -> mixture head.

    ``__call__(features, carry) -> (carry, GaussianMixture)``: ``features`` the dict of
    :func:`observe` with batch shape ``(...)``, ``carry`` ``(..., hidden_size)``.
    """

    config: ModelConfig

    def setup(self):
        self.encoder = SceneEncoder(self.config)
        self.cell = nn.GRUCell(features=self.config.hidden_size)
        self.head = GMMHead(self.config)

    def __call__(self, features: dict[str, Array], carry: Array) -> tuple[Array, GaussianMixture]:
        carry, y = self.cell(carry, self.encoder(features))
        return carry, self.head(y)

    def step_carry(self, features: dict[str, Array], carry: Array) -> Array:
        """Only the recurrent update (no head): the warm-up step."""
        carry, _ = self.cell(carry, self.encoder(features))
        return carry

    def encode(self, features: dict[str, Array]) -> Array:
        """The fused scene feature ``(..., fusion_width)`` (the AWM world model's latent)."""
        return self.encoder(features)

    def step_encoded(self, encoded: Array, carry: Array) -> tuple[Array, GaussianMixture]:
        """``__call__`` from an :meth:`encode` output (also an imagined one)."""
        carry, y = self.cell(carry, encoded)
        return carry, self.head(y)


def initial_carry(config: ModelConfig, batch_shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    """Zero GRU state ``batch_shape + (hidden_size,)``."""
    return jnp.zeros(tuple(batch_shape) + (config.hidden_size,), dtype)


def dummy_features(batch_shape: tuple[int, ...] = (1,), dtype=jnp.float32) -> dict[str, Array]:
    """Zero features of the smallest sizes (the network's parameters do not depend on them)."""
    b = tuple(batch_shape)
    return {
        "agents": jnp.zeros(b + (1, len(observation.AGENT_FEATURES)), dtype),
        "roadgraph": jnp.zeros(b + (1, observation.ROADGRAPH_FEATURES), dtype),
        "traffic_lights": jnp.zeros(b + (1, observation.TRAFFIC_LIGHT_FEATURES), dtype),
        "ego": jnp.zeros(b + (3,), dtype),
        "route": jnp.zeros(b + (2,), dtype),
    }


def init_params(config: ModelConfig, key: Array) -> Any:
    """Initial parameters of :class:`Policy` (independent of agent/point counts)."""
    model = Policy(config)
    return model.init(key, dummy_features(), initial_carry(config, (1,)))


# --------------------------------------------------------------------------------------
# Observations
# --------------------------------------------------------------------------------------

assert observation.ROADGRAPH_FEATURES == 4 + NUM_ROAD_TYPES + 1


def features_at(
    current: Trajectory,
    log: Trajectory,
    metadata: ObjectMetadata,
    roadgraph: RoadgraphPoints,
    traffic_lights: TrafficLights,
    timestep: Array,
    config: ModelConfig,
) -> dict[str, Array]:
    """:func:`~diffdrive.sim.observation.policy_features` with the model's feature config.

    ``roadgraph_top_k`` is cut to the map's point count when larger (the encoders pool,
    so any count works). Shapes as in ``policy_features``.
    """
    fc = config.feature_config
    k = min(fc.roadgraph_top_k, roadgraph.num_points)
    if k != fc.roadgraph_top_k:
        fc = dataclasses.replace(fc, roadgraph_top_k=k)
    return observation.policy_features(
        current, metadata, roadgraph, traffic_lights, log, timestep, fc
    )


def observe(view: StepView, config: ModelConfig) -> dict[str, Array]:
    """The policy's features of a :class:`~diffdrive.sim.env.StepView` (the SDC's view)."""
    return features_at(
        view.current,
        view.log,
        view.metadata,
        view.roadgraph,
        view.traffic_lights,
        view.timestep,
        config,
    )


def warm_up(
    model: Policy,
    params: Any,
    state: SimulatorState,
    num_steps: int = INIT_STEPS - 1,
    carry: Array | None = None,
) -> Array:
    """Builds the GRU state on the logged steps ``0 .. num_steps - 1`` (a ``lax.scan``).

    With Waymax's 11 warm-up steps the rollout starts at step 10, whose observation is
    the actor's first; the GRU has then seen the 10 logged steps before it.

    Args:
      model: the :class:`Policy`.
      params: its parameters.
      state: a state with batch shape ``(...)`` (only the log, metadata, roadgraph and
        traffic lights are read).
      num_steps: logged steps to consume (static).
      carry: initial GRU state (zeros when ``None``).

    Returns:
      ``(..., hidden_size)`` GRU state.
    """
    cfg = model.config
    if carry is None:
        carry = initial_carry(cfg, state.shape, state.log_trajectory.x.dtype)
    log = state.log_trajectory

    def body(h, t):
        feats = features_at(
            log.at(t),
            log,
            state.object_metadata,
            state.roadgraph_points,
            state.log_traffic_light,
            t,
            cfg,
        )
        return model.apply(params, feats, h, method=Policy.step_carry), None

    carry, _ = jax.lax.scan(body, carry, jnp.arange(num_steps, dtype=jnp.int32))
    return carry


# --------------------------------------------------------------------------------------
# Actor
# --------------------------------------------------------------------------------------


MIXTURE_MEAN = "mixture_mean"
"""``mode`` value of :func:`select_action`: the deterministic action is the mixture mean."""


def select_action(gmm: GaussianMixture, key: Array, sample: bool, mode: int | str | None) -> Array:
    """The executed action ``(..., A)``.

    ``mode=None``: a mixture sample when ``sample``, else the mean of the most likely
    component. ``mode=k``: component ``k``'s sample or mean (one of ``K`` rollouts).
    ``mode="mixture_mean"``: a mixture sample when ``sample``, else the weighted mean of
    the component means (the most likely component alone can be a poor pick when the
    weights are spread).
    """
    if mode == MIXTURE_MEAN:
        return gmm.sample(key)[0] if sample else gmm.mean()
    if mode is None:
        if sample:
            return gmm.sample(key)[0]
        return gmm.component_mean(gmm.most_likely_component())
    k = jnp.full(gmm.logits.shape[:-1], mode, jnp.int32)
    return gmm.sample_component(key, k) if sample else gmm.component_mean(k)


def _actor_model(
    model: Policy | None, config: ModelConfig | None, mode: int | str | None, caller: str
) -> tuple[Policy, ModelConfig]:
    """The actor's network and config, checked (``mode``: see :func:`select_action`)."""
    if model is None:
        if config is None:
            raise ValueError(f"{caller}: give a model or a config")
        model = Policy(config)
    cfg = config or model.config
    if config is not None and model.config != config:
        raise ValueError(f"{caller}: config differs from model.config")
    if mode not in (None, MIXTURE_MEAN) and not (
        isinstance(mode, int) and 0 <= mode < cfg.num_components
    ):
        raise ValueError(
            f"mode must be in [0, {cfg.num_components}) or {MIXTURE_MEAN!r}, got {mode!r}"
        )
    return model, cfg


def make_policy_actor(
    model: Policy | None,
    params: Any,
    config: ModelConfig | None = None,
    sample: bool = False,
    mode: int | str | None = None,
    warm_steps: int = INIT_STEPS - 1,
) -> tuple[Callable, Callable]:
    """The trained policy as an SDC actor for :class:`~diffdrive.sim.env.PlanningAgentEnvironment`.

    Args:
      model: a :class:`Policy` (``None``: built from ``config``).
      params: its parameters.
      config: the model config (``None``: ``model.config``).
      sample: sample actions (else take component means).
      mode: ``None`` (mixture) or a component index (see :func:`select_action`).
      warm_steps: logged steps the GRU consumes in ``init_actor_state``.

    Returns:
      ``(actor, init_actor_state)``: ``actor(view, carry, key) -> (Action, carry)`` with
      ``Action.data`` ``(..., 2)`` and ``valid`` ``(..., 1)``;
      ``init_actor_state(batch_shape, state=None)`` gives the zero GRU state, or, with a
      ``state`` (which may also be passed alone, positionally), the state warmed up on
      its logged history (:func:`warm_up`).
    """
    model, cfg = _actor_model(model, config, mode, "make_policy_actor")

    def actor(view: StepView, carry: Array, key: Array) -> tuple[Action, Array]:
        carry, gmm = model.apply(params, observe(view, cfg), carry)
        action = select_action(gmm, key, sample, mode)
        return Action(data=action, valid=jnp.ones(action.shape[:-1] + (1,), bool)), carry

    def init_actor_state(batch_shape=None, state: SimulatorState | None = None) -> Array:
        if isinstance(batch_shape, SimulatorState):
            batch_shape, state = None, batch_shape
        if state is not None:
            return warm_up(model, params, state, warm_steps)
        if batch_shape is None:
            raise ValueError("init_actor_state: give a batch shape or a state")
        return initial_carry(cfg, tuple(batch_shape))

    return actor, init_actor_state


# --------------------------------------------------------------------------------------
# Multi-agent: every object observes in its own frame and follows the same policy
# --------------------------------------------------------------------------------------


def features_per_agent(
    current: Trajectory,
    log: Trajectory,
    metadata: ObjectMetadata,
    roadgraph: RoadgraphPoints,
    traffic_lights: TrafficLights,
    timestep: Array,
    config: ModelConfig,
    egos: Array | None = None,
) -> dict[str, Array]:
    """:func:`~diffdrive.sim.observation.policy_features_per_agent` with the model's config.

    Args:
      current, log, metadata, roadgraph, traffic_lights, timestep: as in
        :func:`features_at`, batch shape ``(...)``, ``N`` objects.
      config: the :class:`~diffdrive.models.config.ModelConfig`.
      egos: ``(..., M, N)`` one-hot observers (default: every object slot, ``M = N``).

    Returns:
      The feature dict with an observer axis: batch shape ``(..., M)``.
    """
    fc = config.feature_config
    k = min(fc.roadgraph_top_k, roadgraph.num_points)
    if k != fc.roadgraph_top_k:
        fc = dataclasses.replace(fc, roadgraph_top_k=k)
    return observation.policy_features_per_agent(
        current, metadata, roadgraph, traffic_lights, log, timestep, fc, egos
    )


def observe_all(view: StepView, config: ModelConfig, egos: Array | None = None) -> dict[str, Array]:
    """Every object's features of a :class:`~diffdrive.sim.env.StepView`, batch ``(..., N)``.

    Object ``i`` observes the scene in its own ego frame, with its own logged future as
    route conditioning (``egos`` ``(..., M, N)`` picks other observers, see
    :func:`features_per_agent`).
    """
    return features_per_agent(
        view.current,
        view.log,
        view.metadata,
        view.roadgraph,
        view.traffic_lights,
        view.timestep,
        config,
        egos,
    )


def warm_up_all(
    model: Policy,
    params: Any,
    state: SimulatorState,
    num_steps: int = INIT_STEPS - 1,
    egos: Array | None = None,
) -> Array:
    """:func:`warm_up` for every object (or the observers ``egos`` ``(..., M, N)``).

    Returns:
      ``(..., N, hidden_size)`` (``(..., M, hidden_size)`` with ``egos``) GRU states.
    """
    cfg = model.config
    log = state.log_trajectory
    observers = state.num_objects if egos is None else egos.shape[-2]
    carry = initial_carry(cfg, state.shape + (observers,), log.x.dtype)

    def body(h, t):
        feats = features_per_agent(
            log.at(t),
            log,
            state.object_metadata,
            state.roadgraph_points,
            state.log_traffic_light,
            t,
            cfg,
            egos,
        )
        return model.apply(params, feats, h, method=Policy.step_carry), None

    carry, _ = jax.lax.scan(body, carry, jnp.arange(num_steps, dtype=jnp.int32))
    return carry


def make_multi_agent_actor(
    model: Policy | None,
    params: Any,
    config: ModelConfig | None = None,
    sample: bool = False,
    mode: int | str | None = None,
    warm_steps: int = INIT_STEPS - 1,
) -> tuple[Callable, Callable]:
    """The policy driving every object, for :class:`~diffdrive.sim.env.MultiAgentEnvironment`.

    Each object slot runs its own copy of the recurrent policy on its own ego-frame
    features (:func:`observe_all`); the environment applies the actions of the objects it
    controls (``controlled_object='valid'``) and ignores the rest. Any object count works
    (the agent encoders pool), so a policy trained on 32 slots drives 128.

    Args:
      model: a :class:`Policy` (``None``: built from ``config``).
      params: its parameters.
      config: the model config (``None``: ``model.config``).
      sample: sample actions (else take component means).
      mode: ``None`` (mixture) or a component index (see :func:`select_action`).
      warm_steps: logged steps the GRUs consume in ``init_actor_state``.

    Returns:
      ``(actor, init_actor_state)``: ``actor(view, carry, key) -> (Action, carry)`` with
      ``carry`` ``(..., N, hidden_size)``, ``Action.data`` ``(..., N, 2)`` and ``valid``
      ``(..., N, 1)`` (the objects' current validity); ``init_actor_state(state)`` gives
      every object's GRU state warmed up on the logged history (:func:`warm_up_all`), and
      ``init_actor_state(batch_shape)`` with ``batch_shape = (..., N)`` the zero state.
    """
    model, cfg = _actor_model(model, config, mode, "make_multi_agent_actor")

    def actor(view: StepView, carry: Array, key: Array) -> tuple[Action, Array]:
        n = view.current.x.shape[-1]
        if carry.shape[-2] != n:
            raise ValueError(
                f"multi-agent actor: carry has {carry.shape[-2]} agents, the scene {n} objects"
            )
        carry, gmm = model.apply(params, observe_all(view, cfg), carry)
        action = select_action(gmm, key, sample, mode)
        return Action(data=action, valid=view.current.valid[..., None]), carry

    def init_actor_state(batch_shape=None, state: SimulatorState | None = None) -> Array:
        if isinstance(batch_shape, SimulatorState):
            batch_shape, state = None, batch_shape
        if state is not None:
            return warm_up_all(model, params, state, warm_steps)
        if batch_shape is None:
            raise ValueError("init_actor_state: give a batch shape (..., N) or a state")
        return initial_carry(cfg, tuple(batch_shape))

    return actor, init_actor_state
