"""Learning-rate, optimiser and incremental-reset schedules.

Each schedule is a pure ``jnp`` function of the step *and* of the run's total step count,
both of which may be traced: one compiled train step serves runs of any length.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from diffdrive.sim.datatypes import Array
from diffdrive.train.config import TrainConfig


def _cosine_interpolate(start: Array, end: Array, pct: Array) -> Array:
    return end + (start - end) / 2.0 * (jnp.cos(jnp.pi * pct) + 1.0)


def learning_rate(config: TrainConfig, step: Array | int, total_steps: Array | int) -> Array:
    """One-cycle cosine learning rate at ``step`` of a ``total_steps`` run.

    ``peak / div_factor`` rises (cosine) to ``peak_lr`` over the first
    ``floor(pct_start * total_steps)`` steps, then falls to
    ``peak / div_factor / final_div_factor`` at ``total_steps`` and stays there; the same
    values as ``optax.cosine_onecycle_schedule(total_steps, ...)``.
    """
    count = jnp.asarray(step, jnp.float32)
    total = jnp.maximum(jnp.asarray(total_steps, jnp.int32), 1)
    warm = jnp.floor(config.pct_start * total.astype(jnp.float32)).astype(jnp.int32)
    bounds = jnp.stack([jnp.zeros((), jnp.int32), warm, total]).astype(jnp.float32)
    init = config.peak_lr / config.div_factor
    values = jnp.asarray([init, config.peak_lr, init / config.final_div_factor], jnp.float32)
    sizes = jnp.maximum(bounds[1:] - bounds[:-1], 1.0)
    inside = (bounds[:-1] <= count) & (count < bounds[1:])
    pct = (count - bounds[:-1]) / sizes
    interp = _cosine_interpolate(values[:-1], values[1:], pct)
    return jnp.sum(jnp.where(inside, interp, 0.0)) + jnp.where(bounds[-1] <= count, values[-1], 0.0)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam's scaling (``eps``); the caller multiplies by
    ``-learning_rate`` (see :func:`learning_rate`)."""
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.scale_by_adam(eps=config.adam_eps),
    )


def reset_threshold(config: TrainConfig, step: Array | int, total_steps: Array | int) -> Array:
    """The incremental-training snap-back threshold (m) at ``step``; ``inf`` means none.

    Grows geometrically from ``reset_threshold_start`` to ``reset_threshold_end`` over the
    first ``reset_decay_fraction`` of training, so resets become rarer; afterwards (and
    when ``incremental`` is off) it is infinite.
    """
    if not config.incremental or config.reset_decay_fraction <= 0.0:
        return jnp.asarray(jnp.inf, jnp.float32)
    total = jnp.asarray(total_steps, jnp.float32)
    horizon = jnp.maximum(config.reset_decay_fraction * total, 1.0)
    progress = jnp.asarray(step, jnp.float32) / horizon
    start, end = config.reset_threshold_start, config.reset_threshold_end
    value = start * (end / start) ** jnp.clip(progress, 0.0, 1.0)
    return jnp.where(progress < 1.0, value, jnp.inf).astype(jnp.float32)
