"""MPC with the AWM world model (the AWM paper's Algorithm 1) and the planner-head driver.

Every step, from the current observation ``o_t``:

1. ``g_t = encode(o_t)``, ``h_t = GRU(g_t, h_{t-1})`` (the actor state is ``h``);
2. ``N`` imagined trajectories of ``H`` steps branch from ``(g_t, h_t)``: at each step the
   actor samples ``a ~ GMM(h)`` (trajectory 0 takes the deterministic action, by default
   the mixture mean, so ``N = 1`` is the deterministic reactive policy; the most likely
   component's mean is a poor driver when the WTA-trained weights are spread), the
   world-model heads give the reward,
   the inverse-state displacement, the odometry and the next latent ``g'``, and
   ``h' = GRU(g', h)``;
3. each trajectory is scored by the sum of a reward (:data:`REWARDS`) over its steps;
4. the executed action is the mean first action of the ``top_k`` best trajectories.

Rewards: ``reward_head`` (the learned ``-||s_{t+1} - s^log_{t+1}||``), ``inverse_state``
(``-||inverse-state displacement||``, Table IV), and the oracles ``neg_dist_log`` /
``pos_dist_log`` (minus / plus the distance of the ego's state, rolled through the true
kinematic dynamics under the imagined actions, to the logged state; the paper's "standard
reward" and its worst case), over (x, y) by default (``MPCConfig.oracle_fields``; ``"state"``
adds yaw and velocity, the paper's ``||s_{t+1} - s^log_{t+1}||``). The actor plugs
into :func:`diffdrive.eval.rollouts.evaluate` (planning setting), so MPC numbers follow
the evaluation protocol of every other table.

Nothing is jitted here; the evaluation engine jits the whole rollout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffdrive.models import policy as policy_lib
from diffdrive.models import world_model as wm
from diffdrive.models.policy import GaussianMixture, Policy, observe
from diffdrive.sim.datatypes import Action, Array, Trajectory
from diffdrive.sim.dynamics import DynamicsModel, InvertibleBicycleModel
from diffdrive.sim.env import StepView
from diffdrive.train import losses

REWARDS = ("reward_head", "inverse_state", "neg_dist_log", "pos_dist_log")
"""Names of the trajectory rewards (see the module docstring)."""

MEAN_ACTIONS = ("mixture_mean", "most_likely")
"""The deterministic actions of :func:`deterministic_action`."""


def deterministic_action(gmm: GaussianMixture, mean_action: str = "mixture_mean") -> Array:
    """``(..., A)`` the policy's deterministic action: the mixture mean
    (``"mixture_mean"``) or the most likely component's mean (``"most_likely"``)."""
    if mean_action == "mixture_mean":
        return gmm.mean()
    if mean_action == "most_likely":
        return gmm.component_mean(gmm.most_likely_component())
    raise ValueError(f"mean_action must be one of {MEAN_ACTIONS}, got {mean_action!r}")


@dataclasses.dataclass(frozen=True)
class MPCConfig:
    """Algorithm 1's settings.

    Attributes:
      num_rollouts: ``N`` imagined trajectories per step.
      horizon: ``H`` imagined steps per trajectory.
      top_k: trajectories whose first actions are averaged (cut to ``N``).
      reward: one of :data:`REWARDS`.
      first_is_mean: imagined trajectory 0 follows the deterministic ``mean_action``.
      mean_action: ``"mixture_mean"`` (the mixture's mean) or ``"most_likely"`` (the most
        likely component's mean): see :func:`deterministic_action`.
      oracle_fields: the oracle rewards' distance, ``"xy"`` (the position, the metric ADE
        measures) or ``"state"`` (x, y, yaw, vel_x, vel_y).
    """

    num_rollouts: int = 4
    horizon: int = 10
    top_k: int = 3
    reward: str = "reward_head"
    first_is_mean: bool = True
    mean_action: str = "mixture_mean"
    oracle_fields: str = "xy"

    def __post_init__(self):
        if self.reward not in REWARDS:
            raise ValueError(f"unknown MPC reward {self.reward!r}; choose one of {REWARDS}")
        if self.mean_action not in MEAN_ACTIONS:
            raise ValueError(f"mean_action must be one of {MEAN_ACTIONS}, got {self.mean_action!r}")
        if self.oracle_fields not in ("state", "xy"):
            raise ValueError(f"oracle_fields must be 'state' or 'xy', got {self.oracle_fields!r}")
        if self.num_rollouts < 1 or self.horizon < 1 or self.top_k < 1:
            raise ValueError(
                "num_rollouts, horizon and top_k must be >= 1, got "
                f"{self.num_rollouts}, {self.horizon}, {self.top_k}"
            )


def _tile(x: Array, n: int, axis_from_end: int) -> Array:
    """Inserts an axis of size ``n`` at ``-axis_from_end - 1`` (broadcast)."""
    pos = x.ndim - axis_from_end
    x = jnp.expand_dims(x, pos)
    shape = x.shape[:pos] + (n,) + x.shape[pos + 1 :]
    return jnp.broadcast_to(x, shape)


def _tile_gmm(gmm: GaussianMixture, n: int) -> GaussianMixture:
    return GaussianMixture(
        logits=_tile(gmm.logits, n, 1),
        means=_tile(gmm.means, n, 2),
        log_stds=_tile(gmm.log_stds, n, 2),
    )


def imagine(
    model: Policy,
    heads: wm.WorldModelHeads,
    params: dict[str, Any],
    encoded: Array,
    carry: Array,
    sdc: Trajectory,
    key: Array,
    *,
    horizon: int,
    num_rollouts: int = 1,
    actions: Array | None = None,
    first_is_mean: bool = True,
    dynamics: DynamicsModel | None = None,
    gmm: GaussianMixture | None = None,
    mean_action: str = "mixture_mean",
) -> dict[str, Array]:
    """Imagines ``N`` trajectories of ``H`` steps from ``(g_t, h_t)`` (a ``lax.scan``).

    Args:
      model, heads, params: the AWM agent (``params = {"policy", "heads"}``).
      encoded: ``(..., F)`` the current fused feature ``g_t``.
      carry: ``(..., hidden)`` the GRU state ``h_t`` after ``g_t``.
      sdc: the SDC's current step, fields ``(...)`` (the start of the imagined poses).
      key: PRNG key of the actor's samples.
      horizon: ``H`` (static).
      num_rollouts: ``N`` (static).
      actions: ``(..., N, H, 2)`` to impose instead of the actor's (forced commands).
      first_is_mean: trajectory 0 follows the deterministic action at every step.
      dynamics: also roll the SDC through these true kinematics (the oracle rewards).
      gmm: the actor's mixture at ``h_t`` (computed when ``None``).
      mean_action: trajectory 0's action (:func:`deterministic_action`).

    Returns:
      ``actions`` ``(..., N, H, 2)``, ``reward`` and ``inverse_norm`` ``(..., N, H)``,
      ``odometry_xy`` (the imagined poses) ``(..., N, H, 2)`` and, with ``dynamics``,
      ``kinematic_xy`` ``(..., N, H, 2)`` and ``kinematic_state`` (x, y, yaw, vel_x,
      vel_y) ``(..., N, H, 5)``.
    """
    n = num_rollouts
    pp, hp = params["policy"], params["heads"]
    g = _tile(encoded, n, 1)
    h = _tile(carry, n, 1)
    pose = jax.tree.map(lambda a: _tile(a, n, 0), sdc)
    gmm = _tile_gmm(_head_of(model, pp, carry) if gmm is None else gmm, n)
    dt = dynamics.dt if dynamics is not None else InvertibleBicycleModel().dt
    is_first = jnp.arange(n) == 0

    def body(state, xs):
        g, h, gmm, pose, exact = state
        step_key, forced = xs
        sampled, _ = gmm.sample(step_key)
        if first_is_mean:
            mean = deterministic_action(gmm, mean_action)
            sampled = jnp.where(is_first[:, None], mean, sampled)
        a = sampled if forced is None else forced
        out = heads.apply(hp, g, h, a)
        delta = wm.odometry_delta(out.odometry, wm.speed_of(pose), dt)
        pose = wm.imagine_pose(pose, delta, a[..., 0], dt)
        rec = {
            "actions": a,
            "reward": out.reward,
            "inverse_norm": jnp.linalg.norm(out.inverse_state, axis=-1),
            "odometry_xy": jnp.stack([pose.x, pose.y], -1),
        }
        if exact is not None:
            exact = wm.simulate(dynamics, exact, a)
            rec["kinematic_xy"] = jnp.stack([exact.x, exact.y], -1)
            rec["kinematic_state"] = _state_vector(exact)
        h, gmm = model.apply(pp, out.next_feature, h, method=Policy.step_encoded)
        return (out.next_feature, h, gmm, pose, exact), rec

    forced = None if actions is None else jnp.moveaxis(actions, -2, 0)
    exact0 = pose if dynamics is not None else None
    xs = (jax.random.split(key, horizon), forced)
    _, rec = jax.lax.scan(body, (g, h, gmm, pose, exact0), xs)
    # The scan stacks steps on axis 0: move them behind N (before any vector axis).
    vectors = ("actions", "odometry_xy", "kinematic_xy", "kinematic_state")
    return {k: jnp.moveaxis(v, 0, -2 if k in vectors else -1) for k, v in rec.items()}


def _head_of(model: Policy, params: Any, carry: Array) -> GaussianMixture:
    """The actor's mixture at GRU state ``carry`` (the head alone)."""
    return model.apply(params, carry, method=lambda m, c: m.head(c))


def _state_vector(step: Trajectory) -> Array:
    """``(..., 5)`` (x, y, yaw, vel_x, vel_y) of a step."""
    return jnp.stack([step.x, step.y, step.yaw, step.vel_x, step.vel_y], axis=-1)


def score(
    imagined: dict[str, Array], reward: str, log_state: Array | None = None, log_valid=None
) -> Array:
    """``(..., N)`` summed reward of each imagined trajectory.

    ``log_state`` ``(..., H, D)`` and ``log_valid`` ``(..., H)``: the SDC's logged future
    (the oracle rewards only), ``D = 2`` (x, y; compared with ``kinematic_xy``) or
    ``D = 5`` (x, y, yaw, vel_x, vel_y; compared with ``kinematic_state``, the yaw
    difference wrapped).
    """
    if reward == "reward_head":
        return jnp.sum(imagined["reward"], -1)
    if reward == "inverse_state":
        return -jnp.sum(imagined["inverse_norm"], -1)
    if reward not in ("neg_dist_log", "pos_dist_log"):
        raise ValueError(f"unknown MPC reward {reward!r}; choose one of {REWARDS}")
    if log_state is None or "kinematic_xy" not in imagined:
        raise ValueError(f"reward {reward!r} needs the logged future and the true dynamics")
    name = "kinematic_xy" if log_state.shape[-1] == 2 else "kinematic_state"
    diff = imagined[name] - log_state[..., None, :, :]
    if log_state.shape[-1] > 2:
        diff = diff.at[..., 2].set(wm.wrap(diff[..., 2]))
    dist = jnp.linalg.norm(diff, axis=-1)
    dist = jnp.sum(jnp.where(log_valid[..., None, :], dist, 0.0), -1)
    return -dist if reward == "neg_dist_log" else dist


def aggregate_first_action(actions: Array, scores: Array, top_k: int) -> Array:
    """Mean first action ``(..., 2)`` of the ``top_k`` best-scored trajectories.

    ``actions`` ``(..., N, H, 2)``, ``scores`` ``(..., N)``.
    """
    k = min(top_k, scores.shape[-1])
    _, idx = jax.lax.top_k(scores, k)
    first = actions[..., 0, :]
    chosen = jnp.take_along_axis(first, idx[..., None], axis=-2)
    return jnp.mean(chosen, axis=-2)


def _log_future(view: StepView, horizon: int, fields: str = "xy") -> tuple[Array, Array]:
    """The SDC's logged future at ``t + 1 .. t + H``: ``(..., H, 5)`` (x, y, yaw, vel_x,
    vel_y) with ``fields="state"``, ``(..., H, 2)`` (x, y) with ``"xy"``, and its validity
    ``(..., H)``."""
    is_sdc = view.metadata.is_sdc
    t_max = view.log.x.shape[-1] - 1
    steps = [
        losses.sdc_step(view.log.at(jnp.minimum(view.timestep + 1 + i, t_max)), is_sdc)
        for i in range(horizon)
    ]
    vectors = [_state_vector(s) for s in steps]
    if fields == "xy":
        vectors = [v[..., :2] for v in vectors]
    beyond = view.timestep + 1 + jnp.arange(horizon) > t_max
    valid = jnp.stack([s.valid for s in steps], -1) & ~beyond
    return jnp.stack(vectors, -2), valid


def make_mpc_actor(
    model: Policy,
    heads: wm.WorldModelHeads,
    params: dict[str, Any],
    config: MPCConfig,
    dynamics: DynamicsModel | None = None,
) -> tuple[Callable, Callable]:
    """Algorithm 1 as an SDC actor for :func:`diffdrive.eval.rollouts.evaluate`.

    Args:
      model, heads, params: the AWM agent (:func:`diffdrive.train.awm.load_awm`).
      config: :class:`MPCConfig`.
      dynamics: the true kinematics for the oracle rewards (default Waymax's bicycle,
        the evaluation dynamics).

    Returns:
      ``(actor, init_actor_state)`` as :func:`diffdrive.models.policy.make_policy_actor`
      (the actor state is the GRU state, warmed up on the logged history).
    """
    cfg = model.config
    dynamics = dynamics or InvertibleBicycleModel()
    oracle = config.reward in ("neg_dist_log", "pos_dist_log")
    _, init_actor_state = policy_lib.make_policy_actor(model, params["policy"], cfg)

    def actor(view: StepView, carry: Array, key: Array) -> tuple[Action, Array]:
        pp = params["policy"]
        g = model.apply(pp, observe(view, cfg), method=Policy.encode)
        h, gmm = model.apply(pp, g, carry, method=Policy.step_encoded)
        sdc = losses.sdc_step(view.current, view.metadata.is_sdc)
        imagined = imagine(
            model,
            heads,
            params,
            g,
            h,
            sdc,
            key,
            horizon=config.horizon,
            num_rollouts=config.num_rollouts,
            first_is_mean=config.first_is_mean,
            dynamics=dynamics if oracle else None,
            gmm=gmm,
            mean_action=config.mean_action,
        )
        log_state = log_valid = None
        if oracle:
            log_state, log_valid = _log_future(view, config.horizon, config.oracle_fields)
        scores = score(imagined, config.reward, log_state, log_valid)
        action = aggregate_first_action(imagined["actions"], scores, config.top_k)
        return Action(data=action, valid=jnp.ones(action.shape[:-1] + (1,), bool)), h

    return actor, init_actor_state


def make_planner_actor(
    model: Policy, heads: wm.WorldModelHeads, params: dict[str, Any], dt: float = 0.1
) -> tuple[Callable, Callable]:
    """The optimal-planner head as a deterministic reactive driver (Table III).

    The planner predicts the next velocity; the inverse kinematics (Eq. 11, unclipped)
    give the action, which the evaluation dynamics then clip as usual.
    """
    cfg = model.config
    ik = InvertibleBicycleModel(dt=dt)
    _, init_actor_state = policy_lib.make_policy_actor(model, params["policy"], cfg)

    def actor(view: StepView, carry: Array, key: Array) -> tuple[Action, Array]:
        del key
        pp = params["policy"]
        g = model.apply(pp, observe(view, cfg), method=Policy.encode)
        h, _ = model.apply(pp, g, carry, method=Policy.step_encoded)
        sdc = losses.sdc_step(view.current, view.metadata.is_sdc)
        raw = heads.apply(params["heads"], g, h, method=wm.WorldModelHeads.plan)
        action = wm.inverse_kinematics(ik, sdc, wm.planner_velocity(raw, wm.speed_of(sdc)))
        return Action(data=action, valid=jnp.ones(action.shape[:-1] + (1,), bool)), h

    return actor, init_actor_state
