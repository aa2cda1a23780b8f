"""Turning golden-file dictionaries into simulator datatypes."""

from __future__ import annotations

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
