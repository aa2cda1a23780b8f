"""Loss pieces shared by APG and behaviour cloning (pure functions, any batch shape)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from diffdrive.models.policy import GaussianMixture
from diffdrive.sim.datatypes import Array, Trajectory

STATE_FIELDS = ("x", "y", "yaw", "vel_x", "vel_y")


def wrap_angle(angle: Array) -> Array:
    """Angle in (-pi, pi] via ``atan2(sin, cos)`` (smooth gradients)."""
    return jnp.arctan2(jnp.sin(angle), jnp.cos(angle))


def sdc_step(step: Trajectory, is_sdc: Array) -> Trajectory:
    """The SDC's entry of one step ``(..., N)`` -> fields ``(...)``.

    ``valid`` is False where the scenario has no SDC. Gradients reach only the SDC entry.
    """
    idx = jnp.argmax(is_sdc, axis=-1)[..., None]
    out = jax.tree.map(lambda a: jnp.take_along_axis(a, idx, axis=-1)[..., 0], step)
    return out.replace(valid=out.valid & jnp.any(is_sdc, axis=-1))


def state_vector(step: Trajectory) -> Array:
    """``(..., 5)`` stack of (x, y, yaw, vel_x, vel_y) of a step with fields ``(...)``."""
    return jnp.stack([getattr(step, f) for f in STATE_FIELDS], axis=-1)


def state_huber(pred: Array, target: Array, weights: Sequence[float], delta: float = 1.0) -> Array:
    """Weighted Huber loss on (x, y, yaw, vel_x, vel_y), the yaw error wrapped.

    Args:
      pred, target: ``(..., 5)``.
      weights: 5 weights.
      delta: Huber transition point.

    Returns:
      ``(...)`` sum over the 5 terms.
    """
    diff = pred - target
    diff = diff.at[..., 2].set(wrap_angle(diff[..., 2]))
    w = jnp.asarray(weights, diff.dtype)
    return jnp.sum(w * optax.huber_loss(diff, delta=delta), axis=-1)


def masked_mean(x: Array, valid: Array) -> Array:
    """Mean of ``x`` over entries where ``valid`` (0 when none is)."""
    v = valid.astype(x.dtype)
    return jnp.sum(x * v) / jnp.maximum(jnp.sum(v), 1.0)


def nearest_component(candidates: Array, target: Array) -> Array:
    """``(...)`` int32 index of the candidate ``(..., K, D)`` nearest ``target`` ``(..., D)``.

    The choice carries no gradient.
    """
    d2 = jnp.sum((jax.lax.stop_gradient(candidates) - target[..., None, :]) ** 2, axis=-1)
    return jnp.argmin(jax.lax.stop_gradient(d2), axis=-1).astype(jnp.int32)


def mixture_cross_entropy(gmm: GaussianMixture, k: Array) -> Array:
    """``(...)`` cross-entropy of the mixture weights against component ``k`` ``(...)``."""
    return -jnp.take_along_axis(gmm.log_weights, k[..., None], axis=-1)[..., 0]


def component_nll(gmm: GaussianMixture, x: Array, k: Array) -> Array:
    """``(...)`` negative log-density of ``x`` ``(..., A)`` under component ``k``."""
    return -jnp.take_along_axis(gmm.component_log_prob(x), k[..., None], axis=-1)[..., 0]
