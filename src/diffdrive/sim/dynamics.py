"""Dynamics models: how actions move objects, and the inverse (actions from a log).

Each model works on one step of every object, a :class:`~diffdrive.sim.datatypes.Trajectory`
whose fields have shape ``(..., num_objects)``:

* ``compute_update(action, current) -> TrajectoryUpdate`` — the next pose and velocity;
* ``inverse_step(current, following) -> Action`` — the action that takes ``current`` to
  ``following`` (as far as the model can);
* ``forward(action, sim, log, is_controlled, timestep)`` and ``inverse(traj, timestep)`` —
  Waymax's full-trajectory signatures, ``(..., num_objects, num_timesteps)``.

:func:`step_objects` applies Waymax's control and validity rules (controlled objects follow
actions, the rest replay the log) and is what the environments call. Models are chosen by
name through :data:`DYNAMICS_REGISTRY`.

Waymax's behaviour is the default everywhere. The papers' gradient-friendly bicycle
(:class:`SmoothBicycleModel`) is a separate, documented model.
"""

from __future__ import annotations

import abc
import dataclasses

import jax
import jax.numpy as jnp

from diffdrive.sim.datatypes import (
    TIME_INTERVAL,
    Action,
    Array,
    Trajectory,
    TrajectoryUpdate,
    wrap_yaws,
)

_SPEED_LIMIT_FOR_STEERING = 0.6
"""m/s: below it the inverse bicycle model reports zero curvature (Waymax)."""


def _split_action(action: Action) -> tuple[list[Array], Array]:
    parts = [action.data[..., i] for i in range(action.data.shape[-1])]
    return parts, action.valid[..., 0]


@dataclasses.dataclass(frozen=True)
class DynamicsModel(abc.ABC):
    """Base class. Subclasses are frozen dataclasses, hashable, safe as jit statics."""

    dt: float = TIME_INTERVAL

    @property
    @abc.abstractmethod
    def action_dim(self) -> int: ...

    @abc.abstractmethod
    def action_spec(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(low, high) bounds of a valid action, per component."""

    @abc.abstractmethod
    def compute_update(self, action: Action, current: Trajectory) -> TrajectoryUpdate:
        """Next pose, velocity and validity of every object.

        Args:
          action: ``data`` ``(..., N, action_dim)``, ``valid`` ``(..., N, 1)``.
          current: one step, fields ``(..., N)``.

        Returns:
          :class:`TrajectoryUpdate` with fields ``(..., N)``.
        """

    @abc.abstractmethod
    def inverse_step(self, current: Trajectory, following: Trajectory) -> Action:
        """Action taking ``current`` to ``following`` (fields ``(..., N)``); 0 where invalid."""

    def forward(
        self,
        action: Action,
        sim_trajectory: Trajectory,
        log_trajectory: Trajectory,
        is_controlled: Array,
        timestep: Array | int,
        allow_object_injection: bool = False,
    ) -> Trajectory:
        """Waymax-style forward: writes step ``timestep + 1`` of ``sim_trajectory``.

        Args:
          action: ``(..., N, action_dim)`` / ``(..., N, 1)``.
          sim_trajectory, log_trajectory: ``(..., N, T)``.
          is_controlled: ``(..., N)`` bool.
          timestep: the current step index (scalar or ``(...)``).
          allow_object_injection: uncontrolled objects may appear when the log says so.

        Returns:
          The simulated trajectory with step ``timestep + 1`` replaced.
        """
        current = sim_trajectory.at(timestep)
        log_next = log_trajectory.at(jnp.asarray(timestep) + 1)
        nxt = step_objects(self, action, current, log_next, is_controlled, allow_object_injection)
        return sim_trajectory.set_at(jnp.asarray(timestep) + 1, nxt)

    def inverse(self, trajectory: Trajectory, timestep: Array | int) -> Action:
        """Action from step ``timestep`` to ``timestep + 1`` of ``trajectory`` ``(..., N, T)``."""
        return self.inverse_step(trajectory.at(timestep), trajectory.at(jnp.asarray(timestep) + 1))


def step_objects(
    dynamics: DynamicsModel,
    action: Action,
    current: Trajectory,
    log_next: Trajectory,
    is_controlled: Array,
    allow_object_injection: bool = False,
) -> Trajectory:
    """The next state of every object under Waymax's control and validity rules.

    Controlled objects take the dynamics update (even with an invalid action, and they stay
    valid while they exist); the others replay ``log_next``. Without injection an
    uncontrolled object can only disappear, never appear. ``z``, box sizes are carried from
    ``current``; timestamps come from the log.

    Args:
      dynamics: the model.
      action: ``(..., N, action_dim)`` / ``(..., N, 1)``.
      current: the simulated step, fields ``(..., N)``.
      log_next: the logged next step, fields ``(..., N)``.
      is_controlled: ``(..., N)`` bool.
      allow_object_injection: see above.

    Returns:
      The next step, fields ``(..., N)``.
    """
    with jax.named_scope("step_objects"):
        update = dynamics.compute_update(action, current)
        ctrl = is_controlled

        def pick(field):
            return jnp.where(ctrl, getattr(update, field), getattr(log_next, field))

        exists_controlled = ctrl & current.valid
        if allow_object_injection:
            follow_log = log_next.valid
        else:
            follow_log = current.valid & log_next.valid
        valid = jnp.where(exists_controlled, current.valid, follow_log)
        return current.replace(
            x=pick("x"),
            y=pick("y"),
            yaw=pick("yaw"),
            vel_x=pick("vel_x"),
            vel_y=pick("vel_y"),
            valid=valid,
            timestamp_micros=log_next.timestamp_micros,
        )


# --------------------------------------------------------------------------------------
# Bicycle models
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InvertibleBicycleModel(DynamicsModel):
    """Waymax's kinematic bicycle: action (acceleration m/s^2, curvature 1/m).

    Actions are clipped to ``[-max_accel, max_accel] x [-max_steering, max_steering]``
    (``[-1, 1]^2`` when ``normalize_actions``, then scaled). The position update uses the
    current velocity vector plus half the acceleration along the old heading; speed is
    ``sqrt(vx^2 + vy^2)`` (NaN gradient at zero speed, as in Waymax); the vehicle may reverse.
    """

    max_accel: float = 6.0
    max_steering: float = 0.3
    normalize_actions: bool = False

    @property
    def action_dim(self) -> int:
        return 2

    def action_spec(self):
        if self.normalize_actions:
            return (-1.0, -1.0), (1.0, 1.0)
        return (-self.max_accel, -self.max_steering), (self.max_accel, self.max_steering)

    def _physical_action(self, action: Action) -> tuple[Array, Array, Array]:
        (accel, steering), valid = _split_action(action)
        low, high = self.action_spec()
        accel = jnp.clip(accel, low[0], high[0])
        steering = jnp.clip(steering, low[1], high[1])
        if self.normalize_actions:
            accel = accel * self.max_accel
            steering = steering * self.max_steering
        return accel, steering, valid

    def _speed(self, vel_x: Array, vel_y: Array) -> Array:
        return jnp.sqrt(vel_x**2 + vel_y**2)

    def _wrap(self, yaw: Array) -> Array:
        return wrap_yaws(yaw)

    def _integrate(self, accel, steering, current: Trajectory) -> TrajectoryUpdate:
        dt = self.dt
        speed = self._speed(current.vel_x, current.vel_y)
        cos, sin = jnp.cos(current.yaw), jnp.sin(current.yaw)
        x = current.x + current.vel_x * dt + 0.5 * accel * cos * dt**2
        y = current.y + current.vel_y * dt + 0.5 * accel * sin * dt**2
        yaw = self._wrap(current.yaw + steering * (speed * dt + 0.5 * accel * dt**2))
        new_speed = speed + accel * dt
        return TrajectoryUpdate(
            x=x,
            y=y,
            yaw=yaw,
            vel_x=new_speed * jnp.cos(yaw),
            vel_y=new_speed * jnp.sin(yaw),
            valid=current.valid,
        )

    def compute_update(self, action: Action, current: Trajectory) -> TrajectoryUpdate:
        accel, steering, action_valid = self._physical_action(action)
        update = self._integrate(accel, steering, current)
        return update.replace(valid=current.valid & action_valid)

    def raw_inverse_step(self, current: Trajectory, following: Trajectory) -> Action:
        """Unclipped, unnormalised (acceleration, curvature); Waymax's ``compute_inverse``."""
        dt = self.dt
        v0 = jnp.sqrt(current.vel_x**2 + current.vel_y**2)
        v1 = jnp.sqrt(following.vel_x**2 + following.vel_y**2)
        accel = (v1 - v0) / dt
        yaw0 = wrap_yaws(current.yaw)
        yaw1 = wrap_yaws(following.yaw)
        heading1 = jnp.where(
            v1 <= _SPEED_LIMIT_FOR_STEERING, yaw1, jnp.arctan2(following.vel_y, following.vel_x)
        )
        curvature = wrap_yaws(heading1 - yaw0) / (v0 * dt + 0.5 * accel * dt**2)
        slow = (v0 < _SPEED_LIMIT_FOR_STEERING) | (v1 < _SPEED_LIMIT_FOR_STEERING)
        curvature = jnp.where(slow, 0.0, curvature)
        valid = current.valid & following.valid
        data = jnp.stack([accel, curvature], axis=-1)
        data = jnp.where(valid[..., None], data, 0.0)
        return Action(data=data, valid=valid[..., None])

    def _clips(self) -> bool:
        return True

    def inverse_step(self, current: Trajectory, following: Trajectory) -> Action:
        raw = self.raw_inverse_step(current, following)
        data = raw.data
        if self.normalize_actions:
            data = data / jnp.asarray([self.max_accel, self.max_steering], data.dtype)
        if self._clips():
            low, high = self.action_spec()
            data = jnp.clip(data, jnp.asarray(low, data.dtype), jnp.asarray(high, data.dtype))
        return raw.replace(data=data)


@dataclasses.dataclass(frozen=True)
class SmoothBicycleModel(InvertibleBicycleModel):
    """The papers' gradient-friendly bicycle (a deliberate difference from Waymax).

    Same kinematics as :class:`InvertibleBicycleModel` except: speed is
    ``sqrt(vx^2 + vy^2 + speed_epsilon)`` so gradients are finite at zero speed; the yaw is
    wrapped with ``atan2(sin, cos)``; clipping is optional (off by default, as the AWM
    planner trains without it); the inverse divides by a denominator kept away from zero.
    """

    clip_actions: bool = False
    speed_epsilon: float = 1e-5

    def _physical_action(self, action: Action):
        (accel, steering), valid = _split_action(action)
        if self.clip_actions:
            low, high = self.action_spec()
            accel = jnp.clip(accel, low[0], high[0])
            steering = jnp.clip(steering, low[1], high[1])
        if self.normalize_actions:
            accel = accel * self.max_accel
            steering = steering * self.max_steering
        return accel, steering, valid

    def _speed(self, vel_x, vel_y):
        return jnp.sqrt(vel_x**2 + vel_y**2 + self.speed_epsilon)

    def _wrap(self, yaw):
        return jnp.arctan2(jnp.sin(yaw), jnp.cos(yaw))

    def raw_inverse_step(self, current: Trajectory, following: Trajectory) -> Action:
        dt = self.dt
        v0 = self._speed(current.vel_x, current.vel_y)
        v1 = self._speed(following.vel_x, following.vel_y)
        accel = (v1 - v0) / dt
        yaw0 = self._wrap(current.yaw)
        fast = v1 > _SPEED_LIMIT_FOR_STEERING
        # Feed atan2 a safe vector on the branch that is not taken, so its gradient stays finite.
        vx1 = jnp.where(fast, following.vel_x, 1.0)
        vy1 = jnp.where(fast, following.vel_y, 0.0)
        heading1 = jnp.where(fast, jnp.arctan2(vy1, vx1), self._wrap(following.yaw))
        arc = v0 * dt + 0.5 * accel * dt**2
        safe_arc = jnp.where(jnp.abs(arc) > 1e-6, arc, 1e-6)
        curvature = self._wrap(heading1 - yaw0) / safe_arc
        slow = (v0 < _SPEED_LIMIT_FOR_STEERING) | (v1 < _SPEED_LIMIT_FOR_STEERING)
        curvature = jnp.where(slow, 0.0, curvature)
        valid = current.valid & following.valid
        data = jnp.where(valid[..., None], jnp.stack([accel, curvature], axis=-1), 0.0)
        return Action(data=data, valid=valid[..., None])

    def _clips(self) -> bool:
        return self.clip_actions


# --------------------------------------------------------------------------------------
# Delta and state models
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeltaGlobal(DynamicsModel):
    """Action (dx, dy, dyaw) in the global frame. Forward neither clips nor wraps (Waymax)."""

    max_dx: float = 6.0
    max_dy: float = 6.0
    max_dyaw: float = float(jnp.pi)

    @property
    def action_dim(self) -> int:
        return 3

    def action_spec(self):
        return (-self.max_dx, -self.max_dy, -self.max_dyaw), (
            self.max_dx,
            self.max_dy,
            self.max_dyaw,
        )

    def _apply_global(self, dx, dy, dyaw, current: Trajectory, valid) -> TrajectoryUpdate:
        return TrajectoryUpdate(
            x=current.x + dx,
            y=current.y + dy,
            yaw=current.yaw + dyaw,
            vel_x=dx / self.dt,
            vel_y=dy / self.dt,
            valid=current.valid & valid,
        )

    def compute_update(self, action: Action, current: Trajectory) -> TrajectoryUpdate:
        (dx, dy, dyaw), valid = _split_action(action)
        return self._apply_global(dx, dy, dyaw, current, valid)

    def inverse_step(self, current: Trajectory, following: Trajectory) -> Action:
        valid = current.valid & following.valid
        dx = jnp.where(valid, following.x - current.x, 0.0)
        dy = jnp.where(valid, following.y - current.y, 0.0)
        dyaw = jnp.where(valid, following.yaw - current.yaw, 0.0)
        dx = jnp.clip(dx, -self.max_dx, self.max_dx)
        dy = jnp.clip(dy, -self.max_dy, self.max_dy)
        data = jnp.stack([dx, dy, wrap_yaws(dyaw)], axis=-1)
        return Action(data=data, valid=valid[..., None])


@dataclasses.dataclass(frozen=True)
class DeltaLocal(DeltaGlobal):
    """Action (dx, dy, dyaw) in each object's own frame (rotated by its current yaw)."""

    def compute_update(self, action: Action, current: Trajectory) -> TrajectoryUpdate:
        (dx, dy, dyaw), valid = _split_action(action)
        cos, sin = jnp.cos(current.yaw), jnp.sin(current.yaw)
        gdx = dx * cos - dy * sin
        gdy = dx * sin + dy * cos
        return self._apply_global(gdx, gdy, dyaw, current, valid)

    def inverse_step(self, current: Trajectory, following: Trajectory) -> Action:
        glob = super().inverse_step(current, following)
        dx, dy, dyaw = glob.data[..., 0], glob.data[..., 1], glob.data[..., 2]
        cos, sin = jnp.cos(current.yaw), jnp.sin(current.yaw)
        ldx = dx * cos + dy * sin
        ldy = -dx * sin + dy * cos
        ldx = jnp.clip(ldx, -self.max_dx, self.max_dx)
        ldy = jnp.clip(ldy, -self.max_dy, self.max_dy)
        data = jnp.stack([ldx, ldy, wrap_yaws(dyaw)], axis=-1)
        return glob.replace(data=data)


@dataclasses.dataclass(frozen=True)
class StateDynamics(DynamicsModel):
    """Action (x, y, yaw, vel_x, vel_y) sets the next state directly; no limits."""

    @property
    def action_dim(self) -> int:
        return 5

    def action_spec(self):
        inf = float("inf")
        return (-inf,) * 5, (inf,) * 5

    def compute_update(self, action: Action, current: Trajectory) -> TrajectoryUpdate:
        (x, y, yaw, vel_x, vel_y), valid = _split_action(action)
        return TrajectoryUpdate(x=x, y=y, yaw=yaw, vel_x=vel_x, vel_y=vel_y, valid=valid)

    def inverse_step(self, current: Trajectory, following: Trajectory) -> Action:
        data = jnp.stack(
            [following.x, following.y, following.yaw, following.vel_x, following.vel_y], axis=-1
        )
        return Action(data=data, valid=following.valid[..., None])


DYNAMICS_REGISTRY: dict[str, type[DynamicsModel]] = {
    "bicycle": InvertibleBicycleModel,
    "smooth_bicycle": SmoothBicycleModel,
    "delta_global": DeltaGlobal,
    "delta_local": DeltaLocal,
    "state": StateDynamics,
}


def make_dynamics(name: str, **kwargs) -> DynamicsModel:
    """Builds a dynamics model by registry name (``bicycle``, ``smooth_bicycle``, ...)."""
    try:
        cls = DYNAMICS_REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown dynamics model {name!r}; choose one of {sorted(DYNAMICS_REGISTRY)}"
        ) from None
    return cls(**kwargs)
