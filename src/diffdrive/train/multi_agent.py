"""Multi-agent training: one policy drives every controlled object, each in its own frame.

The APG multi-agent recipe. The controlled objects of a scenario are those valid at the
last warm-up step ``init_steps - 1`` (Waymax's ``controlled_object='valid'`` with
``allow_new_objects_after_warmup=False``, as :func:`diffdrive.eval.rollouts.make_environment`
evaluates); with ``config.train_agents`` only the ``train_agents`` of them nearest the SDC
(SDC first) are driven during training, the others replay the log. Each driven object
observes the scene in its own ego frame, with its own logged future as route conditioning
(:func:`diffdrive.models.policy.features_per_agent`), and runs its own GRU state of the
shared policy; the agent transformer pools any number of other agents.

* :func:`multi_agent_apg_loss`: :func:`diffdrive.train.apg.apg_loss` with an agent axis.
  Warm-up on the log, a ``lax.scan`` rollout in which every driven object follows its own
  action (objects not valid at the end of warm-up never appear), dense Huber loss per
  (agent, step) against its next logged state, detaching, winner-take-all and snap-back
  per agent, entropy bonus.
* :func:`multi_agent_bc_loss`: :func:`diffdrive.train.bc.bc_loss` with an agent axis:
  teacher forcing on the log, each driven object's inverse-kinematics action as target.

Both average over the valid (scenario, agent, step) triples and return the aux keys of
their planning counterparts, plus ``agents`` (mean driven objects per scenario).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from diffdrive.models.policy import Policy, features_per_agent, initial_carry
from diffdrive.sim.datatypes import Action, Array, SimulatorState, Trajectory, select_by_onehot
from diffdrive.sim.dynamics import DynamicsModel, step_objects
from diffdrive.train import bc, losses
from diffdrive.train.apg import Simulator, choose_action, reduce_rollout, snap_to_log
from diffdrive.train.config import TrainConfig


def driven_agents(
    batch: SimulatorState, init_steps: int, max_agents: int | None = None
) -> tuple[Array, Array, Array]:
    """The objects a multi-agent training step drives.

    The candidates are the objects valid in the log at step ``init_steps - 1``; they are
    ranked by distance to the SDC there (the SDC first), and the nearest ``max_agents``
    are kept.

    Args:
      batch: states with batch shape ``(...)`` and ``N`` objects.
      init_steps: Waymax's warm-up steps (the controlled set is fixed at the last one).
      max_agents: at most this many (``None``: all ``N`` slots).

    Returns:
      ``(index, row_valid, egos)``: ``index`` ``(..., M)`` int32 object indices, nearest
      first; ``row_valid`` ``(..., M)`` bool, False for padding rows (fewer candidates
      than ``M``); ``egos`` ``(..., M, N)`` bool one-hot rows (all False for padding), with
      ``M = min(max_agents, N)``.
    """
    last = batch.log_trajectory.at(init_steps - 1)
    n = last.x.shape[-1]
    m = n if max_agents is None else min(max_agents, n)
    sdc = batch.object_metadata.is_sdc
    sx, sy = select_by_onehot(last.x, sdc), select_by_onehot(last.y, sdc)
    dist = jnp.hypot(last.x - sx[..., None], last.y - sy[..., None])
    # The SDC ranks first even when another object shares its position.
    dist = jnp.where(sdc, -1.0, dist)
    dist = jnp.where(last.valid, dist, jnp.inf)
    neg, index = jax.lax.top_k(-dist, m)
    row_valid = jnp.isfinite(neg)
    egos = jax.nn.one_hot(index, n, dtype=jnp.bool_) & row_valid[..., None]
    return index.astype(jnp.int32), row_valid, egos


def gather_agents(step: Trajectory, index: Array) -> Trajectory:
    """Rows ``index`` ``(..., M)`` of a step ``(..., N)`` -> fields ``(..., M)``."""
    return jax.tree.map(lambda a: jnp.take_along_axis(a, index, axis=-1), step)


def scatter_actions(data: Array, egos: Array) -> Array:
    """Per-agent actions ``(..., M, A)`` into object slots ``(..., N, A)`` (zeros elsewhere)."""
    return jnp.einsum("...mn,...ma->...na", egos.astype(data.dtype), data)


def multi_agent_apg_rollout(
    params: Any,
    batch: SimulatorState,
    key: Array,
    reset_threshold: Array,
    *,
    model: Policy,
    config: TrainConfig,
    simulator: Simulator,
) -> dict[str, Array]:
    """The scanned warm-up and multi-agent rollout; per-step outputs, leading step axis.

    As :func:`diffdrive.train.apg.apg_rollout` (``S = init_steps - 1 + rollout_steps``
    steps, the first ``init_steps - 1`` acting from the log without loss), with every
    driven object (:func:`driven_agents`) following its own action.

    Args:
      params: policy parameters.
      batch: states with batch shape ``(B,)``.
      key: PRNG key (split once per step).
      reset_threshold: scalar snap-back distance (m); ``inf`` for none.
      model, config, simulator: see :func:`multi_agent_apg_loss`.

    Returns:
      ``traj_loss``, ``ce``, ``entropy``, ``dist``, ``valid``, ``reset`` ``(S, B, M)``
      and ``row_valid`` ``(B, M)``.
    """
    k0 = config.init_steps - 1
    log = batch.log_trajectory
    meta = batch.object_metadata
    index, row_valid, egos = driven_agents(batch, config.init_steps, config.train_agents)
    driven = jnp.any(egos, axis=-2)
    detach = jax.lax.stop_gradient if config.detach else (lambda x: x)

    def body(carry, xs):
        current, h = carry
        step_key, t = xs
        warm = t <= k0
        current = jax.tree.map(lambda a, b: jnp.where(warm, a, b), log.at(t), current)
        current = detach(current)
        feats = features_per_agent(
            current,
            log,
            meta,
            batch.roadgraph_points,
            batch.log_traffic_light,
            t,
            config.model,
            egos,
        )
        h, gmm = model.apply(params, detach(feats), h)

        log_next = log.at(t + 1)
        target = gather_agents(log_next, index)
        valid = target.valid & row_valid & (t >= k0)
        action, ce = choose_action(
            gmm, gather_agents(current, index), target, step_key, config, simulator
        )
        data = scatter_actions(action, egos)
        act = Action(data=data, valid=jnp.ones(data.shape[:-1] + (1,), bool))
        # Objects absent at the end of warm-up never appear (no injection), as in evaluation.
        nxt = step_objects(simulator.dynamics, act, current, log_next, driven, False)

        pred = gather_agents(nxt, index)
        traj_loss = losses.state_huber(
            losses.state_vector(pred),
            losses.state_vector(target),
            config.state_weights,
            config.huber_delta,
        )
        dist = jax.lax.stop_gradient(jnp.hypot(pred.x - target.x, pred.y - target.y))
        reset = valid & (dist > reset_threshold)
        nxt = snap_to_log(nxt, log_next, jnp.any(egos & reset[..., None], axis=-2))
        out = {
            "traj_loss": traj_loss,
            "ce": ce,
            "entropy": gmm.categorical_entropy(),
            "dist": dist,
            "valid": valid,
            "reset": reset,
        }
        return (nxt, h), out

    steps = k0 + config.rollout_steps
    carry0 = initial_carry(config.model, index.shape, log.x.dtype)
    xs = (jax.random.split(key, steps), jnp.arange(steps, dtype=jnp.int32))
    _, out = jax.lax.scan(body, (log.at(0), carry0), xs)
    out["row_valid"] = row_valid
    return out


def multi_agent_apg_loss(
    params: Any,
    batch: SimulatorState,
    key: Array,
    reset_threshold: Array,
    *,
    model: Policy,
    config: TrainConfig,
    simulator: Simulator,
) -> tuple[Array, dict[str, Any]]:
    """The multi-agent APG loss of a batch and its metrics.

    ``loss = traj + wta_weight * ce - entropy_weight * entropy``, each a mean over valid
    (scenario, agent, step) triples.

    Args:
      params: policy parameters.
      batch: states with batch shape ``(B,)`` (:func:`diffdrive.train.apg.training_batch`).
      key: PRNG key.
      reset_threshold: snap-back distance (m), ``inf`` for none.
      model: the :class:`~diffdrive.models.policy.Policy`.
      config: the :class:`~diffdrive.train.config.TrainConfig` (``train_agents`` caps the
        driven objects).
      simulator: a :class:`~diffdrive.train.apg.Simulator`; its ``dynamics`` step the
        driven objects and its ``candidates`` the WTA components.

    Returns:
      ``(loss, aux)``: ``aux`` has scalar ``loss``, ``traj_loss``, ``ce``, ``entropy``,
      ``ade`` (mean simulated-to-log distance over driven objects and post-step states),
      ``reset_rate`` and ``agents`` (mean driven objects per scenario).
    """
    out = multi_agent_apg_rollout(
        params, batch, key, reset_threshold, model=model, config=config, simulator=simulator
    )
    loss, aux = reduce_rollout(out, config)
    aux["agents"] = jnp.mean(jnp.sum(out["row_valid"], axis=-1).astype(jnp.float32))
    return loss, aux


def multi_agent_expert_actions(
    batch: SimulatorState, dynamics: DynamicsModel, index: Array, start: int, num_steps: int
) -> Action:
    """Logged actions of the objects ``index`` ``(..., M)`` from steps ``start ..``.

    Returns:
      :class:`Action` with ``data`` ``(S, ..., M, A)`` and ``valid`` ``(S, ..., M)`` (both
      ends of the transition valid).
    """
    log = batch.log_trajectory

    def one(t):
        action = dynamics.inverse_step(log.at(t), log.at(t + 1))
        data = jnp.take_along_axis(action.data, index[..., None], axis=-2)
        valid = jnp.take_along_axis(action.valid[..., 0], index, axis=-1)
        return Action(data=data, valid=valid)

    return jax.vmap(one)(jnp.arange(start, start + num_steps, dtype=jnp.int32))


def multi_agent_bc_loss(
    params: Any,
    batch: SimulatorState,
    key: Array,
    reset_threshold: Array | None = None,
    *,
    model: Policy,
    config: TrainConfig,
    dynamics: DynamicsModel,
) -> tuple[Array, dict[str, Array]]:
    """Multi-agent behaviour cloning on log replay (:func:`diffdrive.train.bc.bc_loss` per agent).

    Args:
      params: policy parameters.
      batch: states with batch shape ``(B,)``.
      key: unused (the loss is deterministic); kept for the common step signature.
      reset_threshold: unused (no simulation).
      model: the :class:`~diffdrive.models.policy.Policy`.
      config: the :class:`~diffdrive.train.config.TrainConfig`.
      dynamics: the model whose inverse gives the expert actions.

    Returns:
      ``(loss, aux)``: ``aux`` has scalar ``loss``, ``nll``, ``ce``, ``entropy``,
      ``action_error`` (as in ``bc_loss``) and ``agents``.
    """
    del key, reset_threshold
    k0 = config.init_steps - 1
    steps = k0 + config.rollout_steps
    log = batch.log_trajectory
    index, row_valid, egos = driven_agents(batch, config.init_steps, config.train_agents)
    carry0 = initial_carry(config.model, index.shape, log.x.dtype)
    expert = multi_agent_expert_actions(batch, dynamics, index, 0, steps)
    in_rollout = (jnp.arange(steps) >= k0).reshape((steps,) + (1,) * row_valid.ndim)
    expert_valid = expert.valid & row_valid & in_rollout
    scale = jnp.asarray(config.model.action_scale, log.x.dtype)

    def body(h, xs):
        t, target, valid = xs
        feats = features_per_agent(
            log.at(t),
            log,
            batch.object_metadata,
            batch.roadgraph_points,
            batch.log_traffic_light,
            t,
            config.model,
            egos,
        )
        h, gmm = model.apply(params, feats, h)
        return h, bc.step_terms(gmm, target, valid, config, scale)

    xs = (jnp.arange(steps, dtype=jnp.int32), expert.data, expert_valid)
    _, out = jax.lax.scan(body, carry0, xs)
    loss, aux = bc.reduce_terms(out, config)
    aux["agents"] = jnp.mean(jnp.sum(row_valid, axis=-1).astype(jnp.float32))
    return loss, aux
