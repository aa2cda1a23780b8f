"""Analytic policy gradients: roll the policy out in the differentiable simulator.

The loss of one batch (:func:`apg_loss`):

1. **Warm-up.** The GRU consumes the logged steps ``0 .. init_steps - 2`` (as
   :func:`~diffdrive.models.policy.warm_up` does, but inside the rollout's scan); the
   rollout starts from the logged state at ``init_steps - 1``, as after Waymax's ``reset``.
2. **Rollout** (one ``lax.scan`` of ``rollout_steps``). At each step the SDC observes
   the current simulated state, the policy gives a Gaussian mixture, an action is chosen
   and the world advances under Waymax's planning rules (the SDC follows the dynamics,
   every other object replays the log).
3. **Dense loss.** Huber on the SDC's (x, y, yaw, vel_x, vel_y) against the next logged
   state, at every step, masked by the log's validity.
4. **Detaching** (``config.detach``). The simulator state and the observation are wrapped
   in ``stop_gradient`` at every step, so the loss at step ``t + 1`` reaches the policy
   only through the action of step ``t``, and earlier steps only through the GRU state.
   ``detach=False`` differentiates through the whole rollout.
5. **Winner-take-all** (``action_selection="wta"``). Every component's mean is stepped
   through the dynamics; the component landing nearest the next logged xy is executed
   (a reparameterised sample, or its mean) and so receives the gradient, and a
   cross-entropy term pulls the mixture weights towards it.
6. **Incremental training.** When the simulated SDC ends a step farther than the reset
   threshold from the log, the carried state is snapped back to the log (after its loss
   is taken); :func:`diffdrive.train.schedule.reset_threshold` makes resets rarer over
   training.
7. **AWM recipe.** ``entropy_weight`` rewards the entropy of the mixture weights; the
   variance floor is the model's ``log_std_min``.

``replay`` runs the same loss on given carried states instead of the simulated ones
(off-policy transitions). With detaching, the loss's gradient at ``params`` equals the
true gradient of the replayed loss with the states the rollout itself produced, which is
how the tests check it by finite differences.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffdrive.models.policy import GaussianMixture, Policy, initial_carry, observe
from diffdrive.sim.datatypes import Action, Array, SimulatorState, Trajectory
from diffdrive.sim.dynamics import DynamicsModel, step_objects
from diffdrive.sim.env import StepView
from diffdrive.train import losses
from diffdrive.train.config import TrainConfig


class Simulator:
    """The two simulator calls of an APG step (a stand-in may replace them for profiling).

    Args:
      dynamics: the training dynamics.
      allow_new_objects: Waymax's object injection for log-replayed objects.
    """

    def __init__(self, dynamics: DynamicsModel, allow_new_objects: bool = True):
        self.dynamics = dynamics
        self.allow_new_objects = allow_new_objects

    def step(self, view: StepView, action: Action) -> Trajectory:
        """Next state of every object ``(..., N)``: the SDC follows ``action`` ``(..., A)``.

        The same rules as :class:`~diffdrive.sim.env.PlanningAgentEnvironment`: the SDC takes
        the dynamics update, the other objects replay the log.
        """
        n = view.current.x.shape[-1]
        tiled = Action(
            data=jnp.broadcast_to(
                action.data[..., None, :], action.data.shape[:-1] + (n,) + action.data.shape[-1:]
            ),
            valid=jnp.broadcast_to(action.valid[..., None, :], action.valid.shape[:-1] + (n, 1)),
        )
        return step_objects(
            self.dynamics,
            tiled,
            view.current,
            view.log_next,
            view.metadata.is_sdc,
            self.allow_new_objects,
        )

    def candidates(self, sdc: Trajectory, actions: Array) -> tuple[Array, Array]:
        """Next SDC xy under each of ``K`` actions: ``sdc`` fields ``(...)``, actions
        ``(..., K, A)`` -> ``(x, y)`` each ``(..., K)``."""
        k = actions.shape[-2]
        current = jax.tree.map(lambda a: jnp.broadcast_to(a[..., None], a.shape + (k,)), sdc)
        valid = jnp.ones(actions.shape[:-1] + (1,), bool)
        update = self.dynamics.compute_update(Action(data=actions, valid=valid), current)
        return update.x, update.y


def training_batch(state: SimulatorState) -> SimulatorState:
    """Drops what training never reads (the simulated trajectory, offroad index, paths)."""
    return state.replace(sim_trajectory=None, road_edge_index=None, sdc_paths=None)


def snap_to_log(nxt: Trajectory, log_next: Trajectory, mask: Array) -> Trajectory:
    """Replaces pose and velocity by the log's where ``mask`` ``(..., N)``."""
    kw = {f: jnp.where(mask, getattr(log_next, f), getattr(nxt, f)) for f in losses.STATE_FIELDS}
    return nxt.replace(**kw)


def choose_action(
    gmm: GaussianMixture,
    current: Trajectory,
    target: Trajectory,
    key: Array,
    config: TrainConfig,
    simulator: Simulator,
) -> tuple[Array, Array]:
    """The executed action ``(..., A)`` and its mixture cross-entropy ``(...)``.

    ``current``/``target``: the acting objects' current and next logged states, fields
    ``(...)``. ``wta`` steps every component's mean (:meth:`Simulator.candidates`), executes
    the one landing nearest the target xy (a sample of it, or its mean) and returns the
    cross-entropy towards it; ``sample`` and ``mean`` return a zero cross-entropy.
    """
    if config.action_selection == "wta":
        cx, cy = simulator.candidates(current, gmm.means)
        winner = losses.nearest_component(
            jnp.stack([cx, cy], -1), jnp.stack([target.x, target.y], -1)
        )
        if config.sample_actions:
            action = gmm.sample_component(key, winner)
        else:
            action = gmm.component_mean(winner)
        return action, losses.mixture_cross_entropy(gmm, winner)
    if config.action_selection == "sample":
        action, _ = gmm.sample(key)
    else:
        action = gmm.component_mean(gmm.most_likely_component())
    return action, jnp.zeros(action.shape[:-1], action.dtype)


def apg_rollout(
    params: Any,
    batch: SimulatorState,
    key: Array,
    reset_threshold: Array,
    *,
    model: Policy,
    config: TrainConfig,
    simulator: Simulator,
    replay: Trajectory | None = None,
    step_extras: Callable[..., dict[str, Array]] | None = None,
) -> dict[str, Array]:
    """The scanned warm-up and rollout; per-step outputs with a leading step axis.

    One ``lax.scan`` covers ``S = init_steps - 1 + rollout_steps`` steps ``t = 0 .. S - 1``.
    Up to ``t = init_steps - 1`` the SDC acts from the logged state (the warm-up: the GRU
    consumes the history; those steps carry no loss); from there on it acts from the
    simulated state.

    Args:
      params: policy parameters.
      batch: states with batch shape ``(B,)`` (only log, metadata, roadgraph and lights
        are read).
      key: PRNG key (split once per step).
      reset_threshold: scalar snap-back distance (m); ``inf`` for none.
      model, config, simulator: see :func:`apg_loss`.
      replay: carried states ``(S, B, N)`` to act from instead of the simulated ones.
      step_extras: optional hook ``f(view, encoded, carry, action, nxt, log_next) -> dict``
        called at every step with the step's view, the fused scene feature
        (:meth:`~diffdrive.models.policy.Policy.encode`), the GRU state after it, the
        executed action ``(B, A)``, the simulated next state (before any reset) and the
        logged next state; its arrays join the per-step outputs (the AWM heads' losses).

    Returns:
      ``traj_loss``, ``ce``, ``entropy``, ``dist``, ``valid`` (the loss mask: a logged
      next state and a rollout step), ``reset`` ``(S, B)`` and ``states`` ``(S, B, N)``
      (the state each step acted from).
    """
    k0 = config.init_steps - 1
    log = batch.log_trajectory
    meta = batch.object_metadata
    is_sdc = meta.is_sdc
    first = log.at(0)
    base = StepView(
        current=first,
        previous=first,
        timestep=jnp.zeros((), jnp.int32),
        log=log,
        metadata=meta,
        roadgraph=batch.roadgraph_points,
        traffic_lights=batch.log_traffic_light,
    )
    detach = jax.lax.stop_gradient if config.detach else (lambda x: x)

    def body(carry, xs):
        current, h = carry
        step_key, t, replayed = xs
        warm = t <= k0
        logged = log.at(t)
        current = jax.tree.map(lambda a, b: jnp.where(warm, a, b), logged, current)
        if replayed is not None:
            current = replayed
        current = detach(current)
        view = base.replace(current=current, previous=current, timestep=t)
        feats = detach(observe(view, config.model))
        if step_extras is None:
            h, gmm = model.apply(params, feats, h)
        else:
            encoded = model.apply(params, feats, method=Policy.encode)
            h, gmm = model.apply(params, encoded, h, method=Policy.step_encoded)

        log_next = log.at(t + 1)
        target = losses.sdc_step(log_next, is_sdc)
        valid = target.valid & (t >= k0)
        action, ce = choose_action(
            gmm, losses.sdc_step(current, is_sdc), target, step_key, config, simulator
        )
        act = Action(data=action, valid=jnp.ones(action.shape[:-1] + (1,), bool))
        nxt = simulator.step(view, act)

        pred = losses.sdc_step(nxt, is_sdc)
        traj_loss = losses.state_huber(
            losses.state_vector(pred),
            losses.state_vector(target),
            config.state_weights,
            config.huber_delta,
        )
        dist = jax.lax.stop_gradient(jnp.hypot(pred.x - target.x, pred.y - target.y))
        reset = valid & (dist > reset_threshold)
        extras = {} if step_extras is None else step_extras(view, encoded, h, action, nxt, log_next)
        nxt = snap_to_log(nxt, log_next, reset[..., None] & is_sdc)
        out = {
            **extras,
            "traj_loss": traj_loss,
            "ce": ce,
            "entropy": gmm.categorical_entropy(),
            "dist": dist,
            "valid": valid,
            "reset": reset,
            "states": current,
        }
        return (nxt, h), out

    steps = k0 + config.rollout_steps
    carry0 = initial_carry(config.model, batch.shape, log.x.dtype)
    xs = (jax.random.split(key, steps), jnp.arange(steps, dtype=jnp.int32), replay)
    _, out = jax.lax.scan(body, (first, carry0), xs)
    return out


def apg_loss(
    params: Any,
    batch: SimulatorState,
    key: Array,
    reset_threshold: Array,
    *,
    model: Policy,
    config: TrainConfig,
    simulator: Simulator,
    replay: Trajectory | None = None,
    return_states: bool = False,
    step_extras: Callable[..., dict[str, Array]] | None = None,
) -> tuple[Array, dict[str, Any]]:
    """The APG loss of a batch and its metrics.

    ``loss = traj + wta_weight * ce - entropy_weight * entropy``, each a mean over valid
    (scenario, step) pairs.

    Args:
      params: policy parameters.
      batch: states with batch shape ``(B,)`` (see :func:`training_batch`).
      key: PRNG key.
      reset_threshold: snap-back distance (m), ``inf`` for none.
      model: the :class:`~diffdrive.models.policy.Policy`.
      config: the :class:`~diffdrive.train.config.TrainConfig`.
      simulator: a :class:`Simulator`.
      replay: optional carried states ``(S, B, N)`` (see the module docstring and
        :func:`apg_rollout`).
      return_states: add the carried states ``(S, B, N)`` to the aux dict as ``states``.
      step_extras: the per-step hook of :func:`apg_rollout`; with it the aux dict also
        holds every per-step output under ``steps``.

    Returns:
      ``(loss, aux)``: ``aux`` has scalar ``loss``, ``traj_loss``, ``ce``, ``entropy``,
      ``ade`` (mean simulated-to-log SDC distance, i.e. Waymax's ``log_divergence``, over
      the rollout's post-step states) and ``reset_rate``.
    """
    out = apg_rollout(
        params,
        batch,
        key,
        reset_threshold,
        model=model,
        config=config,
        simulator=simulator,
        replay=replay,
        step_extras=step_extras,
    )
    loss, aux = reduce_rollout(out, config)
    if return_states:
        aux["states"] = out["states"]
    if step_extras is not None:
        aux["steps"] = out
    return loss, aux


def reduce_rollout(out: dict[str, Array], config: TrainConfig) -> tuple[Array, dict[str, Array]]:
    """``(loss, aux)`` of per-step rollout outputs (``traj_loss``, ``ce``, ``entropy``,
    ``dist``, ``reset``, ``valid``): means over the valid entries, combined as in
    :func:`apg_loss`."""
    valid = out["valid"]
    traj = losses.masked_mean(out["traj_loss"], valid)
    ce = losses.masked_mean(out["ce"], valid)
    entropy = losses.masked_mean(out["entropy"], valid)
    loss = traj
    if config.action_selection == "wta" and config.wta_weight:
        loss = loss + config.wta_weight * ce
    if config.entropy_weight:
        loss = loss - config.entropy_weight * entropy
    aux = {
        "loss": loss,
        "traj_loss": traj,
        "ce": ce,
        "entropy": entropy,
        "ade": losses.masked_mean(out["dist"], valid),
        "reset_rate": losses.masked_mean(out["reset"].astype(jnp.float32), valid),
    }
    return loss, aux


def make_policy_actor(
    checkpoint: str | None = None,
    preset: str | None = None,
    setting: str = "planning",
    sample: bool = False,
    mode: int | str | None = None,
) -> tuple[Any, Any]:
    """A trained policy as an actor, loaded from a run (what ``diffdrive eval`` calls).

    Args:
      checkpoint: a training run directory or its exported ``policy/``
        (:func:`diffdrive.train.checkpoint.load_policy`).
      preset: with no ``checkpoint``, the model preset of an *untrained* policy (seed 0;
        for smoke tests; the agent transformer in the multi-agent setting); ignored
        otherwise (the run's own config is used).
      setting: ``planning`` (the policy drives the SDC) or ``multi_agent`` (it drives
        every object, each in its own frame, for ``MultiAgentEnvironment``).
      sample: sample actions (K stochastic modes) instead of the most likely mean.
      mode: a fixed mixture component (see :func:`diffdrive.models.policy.select_action`).

    Returns:
      ``(actor, init_actor_state)`` of :func:`diffdrive.models.policy.make_policy_actor`
      (planning) or :func:`diffdrive.models.policy.make_multi_agent_actor` (multi-agent).
    """
    from diffdrive.models import policy as policy_lib
    from diffdrive.models.config import model_config
    from diffdrive.train.checkpoint import load_policy

    if setting not in ("planning", "multi_agent"):
        raise ValueError(f"unknown setting {setting!r}; choose planning or multi_agent")
    if checkpoint is not None:
        model, params, config = load_policy(checkpoint)
    elif preset is not None:
        overrides = {"agent_encoder": "transformer"} if setting == "multi_agent" else {}
        config = model_config(preset, **overrides)
        model = Policy(config)
        params = jax.jit(policy_lib.init_params, static_argnums=0)(config, jax.random.PRNGKey(0))
    else:
        raise ValueError(
            "make_policy_actor: give a checkpoint (or a preset for an untrained policy)"
        )
    if setting == "multi_agent":
        return policy_lib.make_multi_agent_actor(model, params, config, sample=sample, mode=mode)
    return policy_lib.make_policy_actor(model, params, config, sample=sample, mode=mode)
