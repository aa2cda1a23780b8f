"""Behaviour cloning: the same policy, trained to reproduce the log's actions on log replay.

Expert actions are the bicycle inverse of the log (``dynamics.inverse_step`` from step
``t`` to ``t + 1``, the training dynamics' own inverse). One ``lax.scan`` feeds the GRU
the logged steps ``0 .. init_steps - 2 + rollout_steps`` (teacher forcing); the first
``init_steps - 1`` are the warm-up, exactly as in APG, and carry no loss; at each later
step the policy predicts the expert's action. The loss is the mixture's negative
log-likelihood (``bc_loss="nll"``) or winner-take-all (``"wta"``: the NLL of the
component whose mean is nearest the expert action, in units of ``action_scale``, plus
the mixture-weight cross-entropy).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from diffdrive.models.policy import GaussianMixture, Policy, features_at, initial_carry
from diffdrive.sim.datatypes import Action, Array, SimulatorState
from diffdrive.sim.dynamics import DynamicsModel
from diffdrive.train import losses
from diffdrive.train.config import TrainConfig


def expert_actions(
    batch: SimulatorState, dynamics: DynamicsModel, start: int, num_steps: int
) -> Action:
    """The SDC's logged actions from steps ``start .. start + num_steps - 1``.

    Returns:
      :class:`Action` with ``data`` ``(S, ..., A)`` and ``valid`` ``(S, ...)`` (both ends
      of the transition valid and an SDC present).
    """
    log = batch.log_trajectory
    is_sdc = batch.object_metadata.is_sdc

    def one(t):
        action = dynamics.inverse_step(log.at(t), log.at(t + 1))
        idx = jnp.argmax(is_sdc, axis=-1)[..., None, None]
        data = jnp.take_along_axis(action.data, idx, axis=-2)[..., 0, :]
        valid = jnp.take_along_axis(action.valid[..., 0], idx[..., 0], axis=-1)[..., 0]
        return Action(data=data, valid=valid & jnp.any(is_sdc, axis=-1))

    return jax.vmap(one)(jnp.arange(start, start + num_steps, dtype=jnp.int32))


def bc_loss(
    params: Any,
    batch: SimulatorState,
    key: Array,
    reset_threshold: Array | None = None,
    *,
    model: Policy,
    config: TrainConfig,
    dynamics: DynamicsModel,
) -> tuple[Array, dict[str, Array]]:
    """Behaviour-cloning loss of a batch on log replay.

    Args:
      params: policy parameters.
      batch: states with batch shape ``(B,)``.
      key: unused (the loss is deterministic); kept for the common step signature.
      reset_threshold: unused (no simulation).
      model: the :class:`~diffdrive.models.policy.Policy`.
      config: the :class:`~diffdrive.train.config.TrainConfig`.
      dynamics: the model whose inverse gives the expert actions.

    Returns:
      ``(loss, aux)``: ``aux`` has scalar ``loss``, ``nll`` (mixture NLL), ``ce``,
      ``entropy`` and ``action_error`` (mean |most likely mean - expert| per dimension,
      summed).
    """
    del key, reset_threshold
    k0 = config.init_steps - 1
    steps = k0 + config.rollout_steps
    log = batch.log_trajectory
    carry0 = initial_carry(config.model, batch.shape, log.x.dtype)
    expert = expert_actions(batch, dynamics, 0, steps)
    in_rollout = jnp.arange(steps) >= k0
    expert_valid = expert.valid & in_rollout.reshape((steps,) + (1,) * (expert.valid.ndim - 1))
    scale = jnp.asarray(config.model.action_scale, log.x.dtype)

    def body(h, xs):
        t, target, valid = xs
        feats = features_at(
            log.at(t),
            log,
            batch.object_metadata,
            batch.roadgraph_points,
            batch.log_traffic_light,
            t,
            config.model,
        )
        h, gmm = model.apply(params, feats, h)
        return h, step_terms(gmm, target, valid, config, scale)

    xs = (jnp.arange(steps, dtype=jnp.int32), expert.data, expert_valid)
    _, out = jax.lax.scan(body, carry0, xs)
    return reduce_terms(out, config)


def step_terms(
    gmm: GaussianMixture, target: Array, valid: Array, config: TrainConfig, scale: Array
) -> dict[str, Array]:
    """Per-step BC terms of the mixture ``gmm`` against the expert action ``target`` ``(..., A)``.

    ``scale`` ``(A,)`` makes the WTA winner's distance unit-free. Returns ``step_loss``,
    ``nll``, ``ce``, ``entropy``, ``err`` (L1 error of the most likely component's mean) and
    ``valid``, each ``(...)``.
    """
    nll = -gmm.log_prob(target)
    if config.bc_loss == "wta":
        winner = losses.nearest_component(gmm.means / scale, target / scale)
        ce = losses.mixture_cross_entropy(gmm, winner)
        step_loss = losses.component_nll(gmm, target, winner) + config.wta_weight * ce
    else:
        ce = jnp.zeros_like(nll)
        step_loss = nll
    err = jnp.sum(jnp.abs(gmm.component_mean(gmm.most_likely_component()) - target), -1)
    return {
        "step_loss": step_loss,
        "nll": nll,
        "ce": ce,
        "entropy": gmm.categorical_entropy(),
        "err": err,
        "valid": valid,
    }


def reduce_terms(out: dict[str, Array], config: TrainConfig) -> tuple[Array, dict[str, Array]]:
    """``(loss, aux)`` from :func:`step_terms` stacked over steps: means over valid entries."""
    valid = out["valid"]
    loss = losses.masked_mean(out["step_loss"], valid)
    entropy = losses.masked_mean(out["entropy"], valid)
    if config.entropy_weight:
        loss = loss - config.entropy_weight * entropy
    aux = {
        "loss": loss,
        "nll": losses.masked_mean(out["nll"], valid),
        "ce": losses.masked_mean(out["ce"], valid),
        "entropy": entropy,
        "action_error": losses.masked_mean(out["err"], valid),
    }
    return loss, aux
