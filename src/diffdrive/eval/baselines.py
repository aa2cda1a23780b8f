"""Reference actors for evaluation: log replay, constant velocity, closed-loop expert.

Each baseline is a :class:`Baseline`: an Actor with a trivial (None) actor state and the
dynamics model the environment must use with it.

* ``log_replay``: the controlled objects follow their log exactly. The actor emits the
  next logged state and the environment uses :class:`~diffdrive.sim.dynamics.StateDynamics`
  (Waymax's ``StateDynamics`` + expert), so the log divergence is 0 at every valid step.
* ``constant_velocity``: each step the bicycle action (inverse kinematics) that keeps the
  current simulated velocity vector: towards ``x + v dt``.
* ``expert``: Waymax's expert actor, closed loop: each step the bicycle inverse-kinematics
  action from the current *simulated* state to the next *logged* state (clipped to the
  model's action bounds), so it tracks the log up to what the bicycle can do.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp

from diffdrive.sim import dynamics as dynamics_lib
from diffdrive.sim import env as env_lib
from diffdrive.sim.datatypes import Action

BASELINES = ("expert", "constant_velocity", "log_replay")


@dataclasses.dataclass(frozen=True)
class Baseline:
    """An actor and the dynamics its environment must use.

    Attributes:
      name: one of :data:`BASELINES`.
      actor: ``actor(view, actor_state, key) -> (action, actor_state)``.
      dynamics: the environment's dynamics model for this actor.
      init_actor_state: always None (stateless).
    """

    name: str
    actor: env_lib.Actor
    dynamics: dynamics_lib.DynamicsModel
    init_actor_state: None = None


def _to_sdc(action: Action, is_sdc) -> Action:
    """The SDC's action without the object axis (zeros when there is no SDC)."""
    return Action(
        data=jnp.sum(action.data * is_sdc[..., None], axis=-2),
        valid=jnp.any(action.valid & is_sdc[..., None], axis=-2),
    )


def log_replay_actor(sdc_only: bool = False) -> env_lib.Actor:
    """Actions ``[x, y, yaw, vel_x, vel_y]`` of the next logged state (StateDynamics).

    Args:
      sdc_only: the action has no object axis (PlanningAgentEnvironment).
    """
    state_model = dynamics_lib.StateDynamics()

    def act(view: env_lib.StepView, actor_state, key):
        action = state_model.inverse_step(view.current, view.log_next)
        if sdc_only:
            action = _to_sdc(action, view.metadata.is_sdc)
        return action, actor_state

    return act


def expert_actor(dynamics: dynamics_lib.DynamicsModel, sdc_only: bool = False) -> env_lib.Actor:
    """Waymax's closed-loop expert: inverse dynamics from the simulated state to the next log."""
    return env_lib.expert_actor(dynamics, sdc_only=sdc_only)


def constant_velocity_actor(
    dynamics: dynamics_lib.DynamicsModel, sdc_only: bool = False
) -> env_lib.Actor:
    """Holds the current simulated velocity (inverse dynamics towards ``x + v dt``)."""
    return env_lib.constant_velocity_actor(dynamics, sdc_only=sdc_only)


@functools.lru_cache(maxsize=64)
def make_baseline(
    name: str,
    setting: str = "planning",
    dynamics: dynamics_lib.DynamicsModel | None = None,
) -> Baseline:
    """A baseline actor for a setting.

    Args:
      name: ``expert``, ``constant_velocity`` or ``log_replay``.
      setting: ``planning`` (SDC action without object axis) or ``multi_agent``.
      dynamics: the vehicle model for ``expert`` / ``constant_velocity`` (default Waymax's
        bicycle); ``log_replay`` always uses :class:`StateDynamics`.

    Returns:
      :class:`Baseline`; build the environment with ``baseline.dynamics``. Memoized: equal
      arguments give the same object, so evaluations reuse their compilations.
    """
    if setting not in ("planning", "multi_agent"):
        raise ValueError(f"unknown setting {setting!r}; choose planning or multi_agent")
    sdc_only = setting == "planning"
    dynamics = dynamics or dynamics_lib.InvertibleBicycleModel()
    if name == "log_replay":
        return Baseline(
            name, log_replay_actor(sdc_only), dynamics_lib.StateDynamics(dt=dynamics.dt)
        )
    if name == "expert":
        return Baseline(name, expert_actor(dynamics, sdc_only), dynamics)
    if name == "constant_velocity":
        return Baseline(name, constant_velocity_actor(dynamics, sdc_only), dynamics)
    raise ValueError(f"unknown baseline {name!r}; choose one of {BASELINES}")
