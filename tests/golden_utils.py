"""Turning golden-file dictionaries into simulator datatypes."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from diffdrive.sim import datatypes as dt
from tests.conftest import golden_array


def trajectory(d: dict, timestamps_step: int = dt.TIMESTEP_MICROS_INTERVAL) -> dt.Trajectory:
    """A golden ``{x, y, ...}`` block (objects x time) as a Trajectory."""
    x = golden_array(d["x"])
    fields = {}
    for name in ("x", "y", "z", "yaw", "vel_x", "vel_y", "length", "width"):
        fields[name] = golden_array(d[name])
    fields["height"] = golden_array(d["height"]) if "height" in d else np.ones_like(x) * 1.5
    fields["valid"] = golden_array(d["valid"], bool)
    if "timestamp_micros" in d:
        fields["timestamp_micros"] = golden_array(d["timestamp_micros"], np.int32)
    else:
        t = np.arange(x.shape[-1], dtype=np.int32) * timestamps_step
        fields["timestamp_micros"] = np.broadcast_to(t, x.shape).astype(np.int32)
    return dt.Trajectory(**fields)


def roadgraph(d: dict) -> dt.RoadgraphPoints:
    x = golden_array(d["x"])
    zeros = np.zeros_like(x)
    return dt.RoadgraphPoints(
        x=x,
        y=golden_array(d["y"]),
        z=golden_array(d["z"]) if "z" in d else zeros,
        dir_x=golden_array(d["dir_x"]),
        dir_y=golden_array(d["dir_y"]),
        dir_z=golden_array(d["dir_z"]) if "dir_z" in d else zeros,
        types=golden_array(d["types"], np.int32),
        ids=golden_array(d["ids"], np.int32),
        valid=golden_array(d["valid"], bool),
    )


def straight_road(half_width, x_min, x_max, step=0.5):
    """Two boundary edges along x, oriented with the road on their left."""
    xs = jnp.arange(x_min, x_max + step / 2, step, dtype=jnp.float32)
    m = xs.shape[0]
    return dt.RoadgraphPoints(
        x=jnp.concatenate([xs, xs[::-1]]),
        y=jnp.concatenate([jnp.full(m, -half_width), jnp.full(m, half_width)]),
        z=jnp.zeros(2 * m),
        dir_x=jnp.concatenate([jnp.ones(m), -jnp.ones(m)]),
        dir_y=jnp.zeros(2 * m),
        dir_z=jnp.zeros(2 * m),
        types=jnp.full(2 * m, 15, jnp.int32),
        ids=jnp.concatenate([jnp.zeros(m, jnp.int32), jnp.ones(m, jnp.int32)]),
        valid=jnp.ones(2 * m, bool),
    )
