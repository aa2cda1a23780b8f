"""AWM training: APG plus the analytic world-model heads (the AWM paper, Sec. III).

``awm_loss = apg_loss + sum_i w_i * head_loss_i (+ overlap_weight * gaussian_overlap)``.

The parameters are ``{"policy": <Policy params>, "heads": <WorldModelHeads params>}``. The
heads are trained inside the APG rollout through :func:`diffdrive.train.apg.apg_rollout`'s
``step_extras`` hook; every input they read (the fused feature, the GRU state, the
executed action, the states) is wrapped in ``stop_gradient``, so the head losses have a
zero gradient with respect to the policy. The optimiser (:func:`make_optimizer`) clips the
two groups' gradients separately, so the heads cannot even rescale the policy's step: the
policy trains exactly as under plain APG with the same seed (with ``overlap_weight = 0``).

Head losses (Huber, masked like the APG loss; :mod:`diffdrive.models.world_model`):

* ``odometry`` (Eq. 3, velocities held): supervised through the training dynamics against
  the simulated next state (before any incremental reset);
* ``planner`` (Eq. 4, 11): next velocity -> inverse kinematics -> executed with the
  unclipped smooth bicycle, (x, y, yaw, vel_x, vel_y) against the next log state (the
  paper's (x, y, yaw) alone leaves the speed nearly free:
  :func:`diffdrive.models.world_model.planner_loss`);
* ``inverse_state`` (Eq. 5): (x, y) against the next log state;
* ``latent``: the predicted next fused feature against the next step's (detached) one,
  skipped where the rollout was reset (the next observation then is not ``Sim(s_t, a_t)``);
* ``reward``: ``r_t = -||s_{t+1} - s^log_{t+1}||`` over (x, y, yaw, vel_x, vel_y)
  (:func:`diffdrive.models.world_model.reward_target`).

The differentiable overlap (Eq. 6-9; :func:`diffdrive.sim.metrics.gaussian_overlap`) of the
SDC's simulated next state is the only extra term that trains the policy.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax

from diffdrive.models import policy as policy_lib
from diffdrive.models import world_model as wm
from diffdrive.models.config import ModelConfig
from diffdrive.sim import metrics
from diffdrive.sim.datatypes import Array, SimulatorState, Trajectory
from diffdrive.sim.dynamics import SmoothBicycleModel
from diffdrive.train import apg, losses
from diffdrive.train.config import TrainConfig

HEAD_LOSSES = ("odometry", "planner", "inverse_state", "latent", "reward")
"""The head losses, in the order of ``TrainConfig.awm_head_weights``."""


def make_heads(config: ModelConfig) -> wm.WorldModelHeads:
    """The heads module of a model config."""
    return wm.WorldModelHeads(config)


def init_params(config: TrainConfig, key: Array) -> dict[str, Any]:
    """``{"policy", "heads"}``; the policy's part is exactly APG's from the same key."""
    return {
        "policy": policy_lib.init_params(config.model, key),
        "heads": wm.init_heads(config.model, jax.random.fold_in(key, 7)),
    }


def planner_dynamics(dt: float) -> SmoothBicycleModel:
    """The planner's training dynamics and inverse kinematics: smooth bicycle, no clipping."""
    return SmoothBicycleModel(dt=dt, clip_actions=False)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Like :func:`diffdrive.train.schedule.make_optimizer` (same state structure) on the
    raveled ``{"heads", "policy"}`` vector, but the global-norm clipping is applied to each
    group alone, so the heads' gradients never change the policy's step."""
    shapes = jax.eval_shape(functools.partial(init_params, config), jax.random.PRNGKey(0))
    num_heads = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes["heads"]))
    # ravel_pytree sorts dict keys: the "heads" lead the flat vector, the "policy" follows.

    def clip(flat: Array) -> Array:
        parts = (flat[:num_heads], flat[num_heads:])
        clipped = []
        for g in parts:
            norm = jnp.linalg.norm(g)
            scale = jnp.where(norm > config.grad_clip, config.grad_clip / norm, 1.0)
            clipped.append(g * scale)
        return jnp.concatenate(clipped)

    def update(updates, state, params=None):
        del params
        return clip(updates), state

    return optax.chain(
        optax.GradientTransformation(lambda params: optax.EmptyState(), update),
        optax.scale_by_adam(eps=config.adam_eps),
    )


def _sdc(step: Trajectory, is_sdc: Array) -> Trajectory:
    return losses.sdc_step(step, is_sdc)


def head_losses(
    heads_params: Any,
    *,
    heads: wm.WorldModelHeads,
    config: TrainConfig,
    dynamics,
    view,
    encoded: Array,
    carry: Array,
    action: Array,
    nxt: Trajectory,
    log_next: Trajectory,
) -> dict[str, Array]:
    """One step's head losses ``(B,)`` and latent pieces (the ``step_extras`` hook body).

    Every input is detached here; only ``overlap_cost`` (when ``config.overlap_weight``)
    keeps the gradient of the simulated next state.
    """
    sg = jax.lax.stop_gradient
    is_sdc = view.metadata.is_sdc
    current = sg(_sdc(view.current, is_sdc))
    following = sg(_sdc(nxt, is_sdc))
    target = sg(_sdc(log_next, is_sdc))
    g, h, a = sg(encoded), sg(carry), sg(action)
    delta = config.huber_delta
    out = heads.apply(heads_params, g, h, a)
    speed = wm.speed_of(current)
    odometry = wm.odometry_loss(
        dynamics, wm.odometry_delta(out.odometry, speed, dynamics.dt), current, a, following, delta
    )
    raw_plan = heads.apply(heads_params, g, h, method=wm.WorldModelHeads.plan)
    planner, _ = wm.planner_loss(
        planner_dynamics(dynamics.dt), wm.planner_velocity(raw_plan, speed), current, target, delta
    )
    inverse = wm.inverse_state_loss(dynamics, out.inverse_state, current, a, target, delta)
    reward = optax.huber_loss(out.reward - wm.reward_target(following, target), delta=delta)
    res = {
        "odometry_loss": odometry,
        "planner_loss": planner,
        "inverse_state_loss": inverse,
        "reward_loss": reward,
        "encoded": g,
        "next_feature": out.next_feature,
    }
    if config.overlap_weight:
        res["overlap_cost"] = jnp.sum(
            jnp.where(is_sdc, metrics.gaussian_overlap(nxt).value, 0.0), axis=-1
        )
    return res


def awm_loss(
    params: dict[str, Any],
    batch: SimulatorState,
    key: Array,
    reset_threshold: Array,
    *,
    config: TrainConfig,
    simulator: apg.Simulator,
    replay: Trajectory | None = None,
    return_states: bool = False,
) -> tuple[Array, dict[str, Any]]:
    """The AWM loss of a batch (see the module docstring) and its metrics.

    Args:
      params: ``{"policy", "heads"}`` (:func:`init_params`).
      batch, key, reset_threshold, replay, return_states: as :func:`diffdrive.train.apg.apg_loss`.
      config: the :class:`TrainConfig` (``awm_head_weights``, ``overlap_weight``).
      simulator: an :class:`~diffdrive.train.apg.Simulator`; its dynamics train the
        odometry and inverse-state heads.

    Returns:
      ``(loss, aux)``: APG's aux plus ``apg_loss``, ``<head>_loss`` for each of
      :data:`HEAD_LOSSES` and ``overlap_cost`` (all scalars).
    """
    model = policy_lib.Policy(config.model)
    heads = make_heads(config.model)
    hook = functools.partial(
        _hook, params["heads"], heads=heads, config=config, dynamics=simulator.dynamics
    )
    apg_value, aux = apg.apg_loss(
        params["policy"],
        batch,
        key,
        reset_threshold,
        model=model,
        config=config,
        simulator=simulator,
        replay=replay,
        return_states=return_states,
        step_extras=hook,
    )
    steps = aux.pop("steps")
    valid = steps["valid"]
    terms = {
        "odometry": losses.masked_mean(steps["odometry_loss"], valid),
        "planner": losses.masked_mean(steps["planner_loss"], valid),
        "inverse_state": losses.masked_mean(steps["inverse_state_loss"], valid),
        "reward": losses.masked_mean(steps["reward_loss"], valid),
    }
    # The next feature of step t is the encoding observed at step t + 1 (when not reset).
    latent = jnp.mean(
        optax.huber_loss(steps["next_feature"][:-1] - steps["encoded"][1:], delta=1.0), -1
    )
    terms["latent"] = losses.masked_mean(latent, valid[:-1] & ~steps["reset"][:-1])
    loss = apg_value
    for name, weight in zip(HEAD_LOSSES, config.awm_head_weights, strict=True):
        if weight:
            loss = loss + weight * terms[name]
    overlap = jnp.zeros((), apg_value.dtype)
    if config.overlap_weight:
        overlap = losses.masked_mean(steps["overlap_cost"], valid)
        loss = loss + config.overlap_weight * overlap
    aux = dict(aux, loss=loss, apg_loss=apg_value, overlap_cost=overlap)
    aux.update({f"{name}_loss": terms[name] for name in HEAD_LOSSES})
    return loss, aux


def _hook(heads_params, view, encoded, carry, action, nxt, log_next, *, heads, config, dynamics):
    return head_losses(
        heads_params,
        heads=heads,
        config=config,
        dynamics=dynamics,
        view=view,
        encoded=encoded,
        carry=carry,
        action=action,
        nxt=nxt,
        log_next=log_next,
    )


def load_awm(
    directory: str | os.PathLike,
) -> tuple[policy_lib.Policy, wm.WorldModelHeads, dict[str, Any], TrainConfig]:
    """Loads an exported AWM agent (a run directory or its ``policy/``).

    Returns:
      ``(model, heads, params, train_config)`` with ``params = {"policy", "heads"}``.
    """
    import orbax.checkpoint as ocp

    from diffdrive.train import checkpoint

    directory = os.path.abspath(directory)
    if os.path.exists(os.path.join(directory, "policy", checkpoint.CONFIG_NAME)):
        directory = os.path.join(directory, "policy")
    config = checkpoint.load_train_config(directory)
    if config.algorithm != "awm":
        raise ValueError(f"{directory}: not an AWM run (algorithm {config.algorithm!r})")
    abstract = jax.eval_shape(functools.partial(init_params, config), jax.random.PRNGKey(0))
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(directory, "params"), abstract)
    return policy_lib.Policy(config.model), make_heads(config.model), params, config
