"""AWM world-model heads and the analytic pieces of their losses (the AWM paper, Sec. III).

The heads sit beside the recurrent policy (:class:`~diffdrive.models.policy.Policy`) and read
its *detached* fused scene feature ``g_t`` (:meth:`Policy.encode`), its GRU state ``h_t``
(after consuming ``g_t``) and, for the action-conditioned heads, the executed action
``a_t = (acceleration m/s^2, curvature 1/m)``:

* **relative odometry** (Eq. 3 and the appendix): ``(dx, dy, dyaw)`` in the ego frame of
  ``s_t`` such that the state ``s_{t+1} - delta`` with the velocities of ``s_t`` held
  evolves under ``a_t`` into ``s_{t+1}``; the unique minimiser is ``s_{t+1} - s_t``;
* **optimal state planner** (Eq. 4, 11): the next velocity vector ``(v'_x, v'_y)`` (ego
  frame); the inverse kinematics (Eq. 11) turn it into an action, which is executed from
  ``s_t`` and supervised against the next log state on (x, y, yaw) and, unlike the
  paper's appendix, also the velocity (see :func:`planner_loss`);
* **inverse optimal state** (Eq. 5): ``(dx, dy)`` (ego frame) of a state from which
  ``a_t`` reaches the next log state; the loss is on ``(x, y)``, the yaw and velocities
  are held, so the minimiser ``Sim^-1`` is unique (the yaw would only be identified through
  the ``a dt^2 / 2`` term and not at all when ``a = 0``, which is why it is not predicted);
* **latent next feature**: ``g_{t+1}`` from ``(g_t, h_t, a_t)`` (drives imagination);
* **reward**: ``r_t = -||s_{t+1} - s^log_{t+1}||`` over (x, y, yaw, vel_x, vel_y) (the
  paper's standard reward; :func:`reward_target`).

Every function takes any leading batch shape. A step of one object is a
:class:`~diffdrive.sim.datatypes.Trajectory` with fields ``(...)``; displacements are in
the ego frame of that step (x forward, y left), as the paper's appendix prescribes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffdrive.models.config import ModelConfig
from diffdrive.sim.datatypes import Action, Array, Trajectory
from diffdrive.sim.dynamics import DynamicsModel, InvertibleBicycleModel

LATENT_WIDTH = 128
"""Second hidden width of every head (the papers' heads are 128 and 512 wide)."""

DYAW_SCALE = 0.1
"""rad: scale of the yaw outputs (per-step yaw changes are small)."""


def default_head_widths(config: ModelConfig) -> tuple[int, int]:
    """Hidden widths of every head: the policy's head width, then 128 (paper: 512, 128)."""
    return (config.head_width, min(LATENT_WIDTH, config.head_width))


class _MLP(nn.Module):
    widths: tuple[int, ...]
    out: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for w in self.widths:
            x = nn.relu(nn.Dense(w)(x))
        return nn.Dense(self.out, kernel_init=nn.initializers.zeros)(x)


@struct.dataclass
class HeadOutputs:
    """Raw outputs of the action-conditioned heads, batch shape ``(...)``.

    Attributes:
      odometry: ``(..., 3)`` residual of (dx m, dy m, dyaw / DYAW_SCALE); see
        :func:`odometry_delta`.
      inverse_state: ``(..., 2)`` (dx, dy) in metres, ego frame.
      reward: ``(...)`` predicted reward (negative metres).
      next_feature: ``(..., fusion_width)`` predicted next fused feature.
    """

    odometry: Array
    inverse_state: Array
    reward: Array
    next_feature: Array


class WorldModelHeads(nn.Module):
    """The AWM heads (one MLP each, widths ``widths`` or :func:`default_head_widths`).

    ``__call__(encoded, carry, action) -> HeadOutputs``; :meth:`plan` ``(encoded, carry)
    -> (..., 2)`` the planner's raw next-velocity residual. ``encoded`` ``(..., F)``,
    ``carry`` ``(..., H)``, ``action`` ``(..., 2)`` (physical units; divided by the model's
    ``action_scale``). Callers pass detached inputs.
    """

    config: ModelConfig
    widths: tuple[int, ...] = ()

    def setup(self):
        w = tuple(self.widths) or default_head_widths(self.config)
        self.odometry = _MLP(w, 3)
        self.inverse_state = _MLP(w, 2)
        self.reward = _MLP(w, 1)
        self.next_feature = _MLP(w, self.config.fusion_width)
        self.planner = _MLP(w, 2)

    def _inputs(self, encoded: Array, carry: Array, action: Array | None) -> Array:
        parts = [encoded, carry]
        if action is not None:
            parts.append(action / jnp.asarray(self.config.action_scale, action.dtype))
        return jnp.concatenate(parts, axis=-1)

    def __call__(self, encoded: Array, carry: Array, action: Array) -> HeadOutputs:
        x = self._inputs(encoded, carry, action)
        return HeadOutputs(
            odometry=self.odometry(x),
            inverse_state=self.inverse_state(x),
            reward=self.reward(x)[..., 0],
            # A residual: consecutive scene features differ little.
            next_feature=encoded + self.next_feature(x),
        )

    def plan(self, encoded: Array, carry: Array) -> Array:
        return self.planner(self._inputs(encoded, carry, None))

    def init_all(self, encoded: Array, carry: Array, action: Array) -> tuple:
        """Touches every head (for ``init``)."""
        return self(encoded, carry, action), self.plan(encoded, carry)


def init_heads(config: ModelConfig, key: Array, widths: tuple[int, ...] = ()) -> Any:
    """Initial parameters of :class:`WorldModelHeads`."""
    heads = WorldModelHeads(config, tuple(widths))
    g = jnp.zeros((1, config.fusion_width))
    h = jnp.zeros((1, config.hidden_size))
    a = jnp.zeros((1, config.action_dim))
    return heads.init(key, g, h, a, method=WorldModelHeads.init_all)


# --------------------------------------------------------------------------------------
# Frames and analytic helpers
# --------------------------------------------------------------------------------------


def speed_of(step: Trajectory) -> Array:
    """``(...)`` speed (m/s) of a step."""
    return jnp.hypot(step.vel_x, step.vel_y)


def ego_to_global(dx: Array, dy: Array, yaw: Array) -> tuple[Array, Array]:
    """Rotates an ego-frame vector ``(dx, dy)`` by ``yaw`` into the global frame."""
    c, s = jnp.cos(yaw), jnp.sin(yaw)
    return dx * c - dy * s, dx * s + dy * c


def global_to_ego(dx: Array, dy: Array, yaw: Array) -> tuple[Array, Array]:
    """Rotates a global vector into the ego frame of heading ``yaw``."""
    c, s = jnp.cos(yaw), jnp.sin(yaw)
    return dx * c + dy * s, -dx * s + dy * c


def wrap(angle: Array) -> Array:
    return jnp.arctan2(jnp.sin(angle), jnp.cos(angle))


def odometry_delta(raw: Array, speed: Array, dt: float) -> Array:
    """The odometry head's ``(dx, dy, dyaw)`` (ego frame, m and rad), ``(..., 3)``.

    A kinematic prior (``speed * dt`` straight ahead) plus the head's residual, so an
    untrained head already predicts constant-velocity motion.
    """
    return jnp.stack([speed * dt + raw[..., 0], raw[..., 1], DYAW_SCALE * raw[..., 2]], axis=-1)


def planner_velocity(raw: Array, speed: Array) -> Array:
    """The planner's next velocity ``(v'_x, v'_y)`` (ego frame, m/s): current speed ahead
    plus the head's residual, ``(..., 2)``."""
    return jnp.stack([speed + raw[..., 0], raw[..., 1]], axis=-1)


def displaced(step: Trajectory, delta: Array) -> Trajectory:
    """``step`` moved by the ego-frame ``(dx, dy[, dyaw])`` ``(..., 2|3)``, velocities held."""
    gx, gy = ego_to_global(delta[..., 0], delta[..., 1], step.yaw)
    yaw = step.yaw + delta[..., 2] if delta.shape[-1] > 2 else step.yaw
    return step.replace(x=step.x + gx, y=step.y + gy, yaw=yaw)


def simulate(dynamics: DynamicsModel, step: Trajectory, action: Array) -> Trajectory:
    """``Sim(s, a)`` of one object's step: fields ``(...)``, ``action`` ``(..., 2)``."""
    act = Action(data=action, valid=jnp.ones(action.shape[:-1] + (1,), bool))
    update = dynamics.compute_update(act, step)
    return step.replace(
        x=update.x, y=update.y, yaw=update.yaw, vel_x=update.vel_x, vel_y=update.vel_y
    )


def inverse_kinematics(dynamics: InvertibleBicycleModel, step: Trajectory, vel: Array) -> Array:
    """Eq. 11: the (acceleration, curvature) ``(..., 2)`` that turns ``step``'s velocity
    into ``vel`` ``(..., 2)`` (ego frame, m/s), unclipped.

    Reuses the bicycle model's ``raw_inverse_step`` (Waymax's inverse: heading of the new
    velocity vector, zero curvature below 0.6 m/s).
    """
    gx, gy = ego_to_global(vel[..., 0], vel[..., 1], step.yaw)
    # The heading of a (near) zero vector is never used (zero curvature below 0.6 m/s);
    # feed atan2 a safe vector there so its gradient stays finite.
    moving = jnp.hypot(jax.lax.stop_gradient(vel[..., 0]), jax.lax.stop_gradient(vel[..., 1]))
    safe_x = jnp.where(moving > 1e-3, vel[..., 0], 1.0)
    safe_y = jnp.where(moving > 1e-3, vel[..., 1], 0.0)
    yaw = step.yaw + jnp.arctan2(safe_y, safe_x)
    following = step.replace(vel_x=gx, vel_y=gy, yaw=yaw, valid=step.valid)
    return dynamics.raw_inverse_step(step, following).data


def _five(step: Trajectory) -> Array:
    return jnp.stack([step.x, step.y, step.yaw, step.vel_x, step.vel_y], axis=-1)


def _huber(diff: Array, delta: float) -> Array:
    return jnp.sum(optax.huber_loss(diff, delta=delta), axis=-1)


def _state_diff(pred: Array, target: Array) -> Array:
    d = pred - target
    return d.at[..., 2].set(wrap(d[..., 2])) if d.shape[-1] > 2 else d


# --------------------------------------------------------------------------------------
# Losses (Eq. 3, 4, 5) and their analytic minimisers
# --------------------------------------------------------------------------------------


def odometry_loss(
    dynamics: DynamicsModel,
    delta: Array,
    current: Trajectory,
    action: Array,
    nxt: Trajectory,
    huber_delta: float = 1.0,
) -> Array:
    """Eq. 3: ``Huber(Sim(s_{t+1} - delta, a_t) - s_{t+1})`` on (x, y, yaw, vel_x, vel_y).

    ``s_{t+1} - delta`` takes the velocities of ``s_t`` (the appendix), so the minimiser
    is unique: :func:`analytic_odometry`. ``delta`` ``(..., 3)`` ego frame of ``current``.
    """
    gx, gy = ego_to_global(delta[..., 0], delta[..., 1], current.yaw)
    start = current.replace(x=nxt.x - gx, y=nxt.y - gy, yaw=nxt.yaw - delta[..., 2])
    pred = simulate(dynamics, start, action)
    return _huber(_state_diff(_five(pred), _five(nxt)), huber_delta)


def analytic_odometry(current: Trajectory, nxt: Trajectory) -> Array:
    """The odometry minimiser ``s_{t+1} - s_t`` as ego-frame ``(dx, dy, dyaw)``."""
    ex, ey = global_to_ego(nxt.x - current.x, nxt.y - current.y, current.yaw)
    return jnp.stack([ex, ey, wrap(nxt.yaw - current.yaw)], axis=-1)


PLANNER_STATE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0)
"""Weights of (x, y, yaw, vel_x, vel_y) in the planner loss (the default: all five, as in
the APG trajectory loss)."""

PAPER_PLANNER_STATE_WEIGHTS = (1.0, 1.0, 1.0, 0.0, 0.0)
"""The paper's appendix: (x, y, yaw) only. Ill-conditioned in the speed (see
:func:`planner_loss`); kept for comparison."""


def planner_loss(
    dynamics: InvertibleBicycleModel,
    velocity: Array,
    current: Trajectory,
    log_next: Trajectory,
    huber_delta: float = 1.0,
    state_weights: tuple[float, ...] = PLANNER_STATE_WEIGHTS,
) -> tuple[Array, Array]:
    """Eq. 4: ``Huber(Sim(s_t, InvKin(s_t, v')) - s^log_{t+1})``, weighted per state field.

    ``state_weights`` weighs (x, y, yaw, vel_x, vel_y) (``(..., 5)`` broadcast). The
    paper supervises (x, y, yaw) only (:data:`PAPER_PLANNER_STATE_WEIGHTS`); there the
    speed ``|v'|`` reaches the loss only through the ``a dt^2 / 2`` term of the position
    (0.005 m per m/s^2), so the minimiser ``a* = 2 r / dt^2`` amplifies any along-track
    gap ``r`` (m) to the log 200-fold and the trained head learns a large acceleration
    bias. Supervising the next velocity too (the default, as APG's trajectory loss does)
    keeps ``a*`` near the log's acceleration; the minimiser stays the inverse kinematics
    for a reachable ``log_next``.

    Returns:
      ``(loss (...), action (..., 2))``; ``dynamics`` should not clip (the paper trains
      the planner without action clipping, which would stop its gradient).
    """
    action = inverse_kinematics(dynamics, current, velocity)
    pred = simulate(dynamics, current, action)
    diff = _state_diff(_five(pred), _five(log_next))
    weights = jnp.asarray(state_weights, diff.dtype)
    return jnp.sum(weights * optax.huber_loss(diff, delta=huber_delta), axis=-1), action


def analytic_planner_action(
    dynamics: InvertibleBicycleModel, current: Trajectory, log_next: Trajectory
) -> Array:
    """The inverse-kinematics action from ``current`` to ``log_next`` (unclipped)."""
    return dynamics.raw_inverse_step(current, log_next).data


def inverse_state_loss(
    dynamics: DynamicsModel,
    delta: Array,
    current: Trajectory,
    action: Array,
    log_next: Trajectory,
    huber_delta: float = 1.0,
) -> Array:
    """Eq. 5: ``Huber(Sim(s_t + delta, a_t) - s^log_{t+1})`` on (x, y); ``delta`` ``(..., 2)``."""
    pred = simulate(dynamics, displaced(current, delta), action)
    diff = jnp.stack([pred.x - log_next.x, pred.y - log_next.y], axis=-1)
    return _huber(diff, huber_delta)


def analytic_inverse_state(
    dynamics: DynamicsModel, current: Trajectory, action: Array, log_next: Trajectory
) -> Array:
    """``Sim^-1`` on (x, y): the bicycle step is translation-equivariant in (x, y), so the
    displacement is ``xy^log_{t+1} - Sim(s_t, a_t).xy`` (returned in the ego frame)."""
    pred = simulate(dynamics, current, action)
    return jnp.stack(global_to_ego(log_next.x - pred.x, log_next.y - pred.y, current.yaw), -1)


def state_distance(step: Trajectory, log_step: Trajectory, fields: str = "state") -> Array:
    """``(...)`` distance of ``step`` to ``log_step``: ``fields="state"`` the Euclidean norm
    of the (x m, y m, yaw rad (wrapped), vel_x m/s, vel_y m/s) difference (the paper's
    ``||s_{t+1} - s^log_{t+1}||``), ``"xy"`` the position distance (m) alone."""
    if fields == "xy":
        return jnp.hypot(step.x - log_step.x, step.y - log_step.y)
    if fields != "state":
        raise ValueError(f"fields must be 'state' or 'xy', got {fields!r}")
    return jnp.linalg.norm(_state_diff(_five(step), _five(log_step)), axis=-1)


REWARD_FIELDS = "state"
"""What the reward head learns: :func:`state_distance` over the full state. Over (x, y)
alone the next-step reward hardly depends on the action (the acceleration moves the next
position by ``a dt^2 / 2``, the curvature not at all), so it cannot rank candidates."""


def reward_target(nxt: Trajectory, log_next: Trajectory, fields: str = REWARD_FIELDS) -> Array:
    """``r_t = -||s_{t+1} - s^log_{t+1}||`` ``(...)`` (:func:`state_distance`)."""
    return -state_distance(nxt, log_next, fields)


def imagine_pose(step: Trajectory, delta: Array, accel: Array, dt: float) -> Trajectory:
    """One imagined odometry step: pose moved by ``delta`` (ego frame), speed ``+ a dt``
    along the new heading (the bicycle's speed update)."""
    moved = displaced(step, delta)
    speed = speed_of(step) + accel * dt
    return moved.replace(vel_x=speed * jnp.cos(moved.yaw), vel_y=speed * jnp.sin(moved.yaw))
