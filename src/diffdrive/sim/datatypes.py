"""Simulator datatypes: one immutable pytree per concept, Waymax-compatible.

Every container is a ``flax.struct.dataclass`` whose array fields share one shape:

* :class:`Trajectory` ``(..., num_objects, num_timesteps)``; a single step of it (the
  current state of every object) is the same class with the time axis dropped,
  ``(..., num_objects)``.
* :class:`ObjectMetadata` ``(..., num_objects)``.
* :class:`RoadgraphPoints` ``(..., num_points)``.
* :class:`TrafficLights` ``(..., num_traffic_lights, num_timesteps)``.

Units: metres, radians (counter-clockwise from +x), metres per second, microseconds.
Floats are float32, ids/types/timestamps int32, masks bool. Invalid entries hold -1 (bool
False), as in Waymax. Validation is a separate :func:`validate` call, never
``__post_init__``, so that tree utilities and tracing keep working.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array

TIME_INTERVAL = 0.1
"""Seconds between two steps (10 Hz)."""
TIMESTEP_MICROS_INTERVAL = 100_000
NUM_TIMESTEPS = 91
"""WOMD episode length: 10 past + 1 current + 80 future steps."""
INIT_STEPS = 11
"""Steps replayed from the log by ``reset`` (10 history + current)."""
NUM_TRAFFIC_LIGHTS = 16


class ObjectType(enum.IntEnum):
    """WOMD object types (``state/type``)."""

    UNSET = 0
    VEHICLE = 1
    PEDESTRIAN = 2
    CYCLIST = 3
    OTHER = 4


class RoadType(enum.IntEnum):
    """WOMD roadgraph sample types (``roadgraph_samples/type``, Waymax ``MapElementIds``)."""

    LANE_UNDEFINED = 0
    LANE_FREEWAY = 1
    LANE_SURFACE_STREET = 2
    LANE_BIKE_LANE = 3
    ROAD_LINE_UNKNOWN = 5
    ROAD_LINE_BROKEN_SINGLE_WHITE = 6
    ROAD_LINE_SOLID_SINGLE_WHITE = 7
    ROAD_LINE_SOLID_DOUBLE_WHITE = 8
    ROAD_LINE_BROKEN_SINGLE_YELLOW = 9
    ROAD_LINE_BROKEN_DOUBLE_YELLOW = 10
    ROAD_LINE_SOLID_SINGLE_YELLOW = 11
    ROAD_LINE_SOLID_DOUBLE_YELLOW = 12
    ROAD_LINE_PASSING_DOUBLE_YELLOW = 13
    ROAD_EDGE_UNKNOWN = 14
    ROAD_EDGE_BOUNDARY = 15
    ROAD_EDGE_MEDIAN = 16
    STOP_SIGN = 17
    CROSSWALK = 18
    SPEED_BUMP = 19
    UNKNOWN = -1


NUM_ROAD_TYPES = 20
"""Size of a one-hot over road types 0..19 (type 4 is unused but keeps its slot)."""
VALID_ROAD_TYPES = frozenset(int(t) for t in RoadType if t >= 0)


class TrafficLightState(enum.IntEnum):
    """WOMD traffic-light signal states."""

    UNKNOWN = 0
    ARROW_STOP = 1
    ARROW_CAUTION = 2
    ARROW_GO = 3
    STOP = 4
    CAUTION = 5
    GO = 6
    FLASHING_STOP = 7
    FLASHING_CAUTION = 8


def is_road_edge(types: Array) -> Array:
    """True for types counted as road edges by the offroad metric (15 and 16 only)."""
    return (types == RoadType.ROAD_EDGE_BOUNDARY) | (types == RoadType.ROAD_EDGE_MEDIAN)


def wrap_yaws(yaw: Array) -> Array:
    """Wraps angles to [-pi, pi) with a floor-mod (gradient 1 everywhere)."""
    return jnp.mod(yaw + jnp.pi, 2 * jnp.pi) - jnp.pi


# --------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------


class _ArrayTree:
    """Shared helpers for dataclasses whose array fields all have one shape."""

    _FLOAT_FIELDS: tuple[str, ...] = ()
    _INT_FIELDS: tuple[str, ...] = ()
    _BOOL_FIELDS: tuple[str, ...] = ()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return cls._FLOAT_FIELDS + cls._INT_FIELDS + cls._BOOL_FIELDS

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(getattr(self, self.field_names()[0]).shape)

    @classmethod
    def zeros(cls, shape: Sequence[int]):
        """All-zero (False) instance of the given shape."""
        kw = {f: jnp.zeros(shape, jnp.float32) for f in cls._FLOAT_FIELDS}
        kw |= {f: jnp.zeros(shape, jnp.int32) for f in cls._INT_FIELDS}
        kw |= {f: jnp.zeros(shape, bool) for f in cls._BOOL_FIELDS}
        return cls(**kw)

    def fill_invalid(self):
        """Waymax's invalid fill: numbers -1, masks False, everywhere."""
        kw = {f: jnp.full_like(getattr(self, f), -1) for f in self._FLOAT_FIELDS}
        kw |= {f: jnp.full_like(getattr(self, f), -1) for f in self._INT_FIELDS}
        kw |= {f: jnp.zeros_like(getattr(self, f)) for f in self._BOOL_FIELDS}
        return self.replace(**kw)

    def tree_map_fields(self, fn):
        return jax.tree.map(fn, self)


@struct.dataclass
class Trajectory(_ArrayTree):
    """Per-object states over time, shape ``(..., num_objects, num_timesteps)``.

    Also used for a single step with shape ``(..., num_objects)``.

    Attributes:
      x, y, z: position (m), global frame.
      yaw: box heading (rad).
      vel_x, vel_y: velocity (m/s), global frame.
      length, width, height: box size (m); constant per object for loaded data.
      valid: whether the object exists at that step.
      timestamp_micros: time of the step (us).
    """

    x: Array
    y: Array
    z: Array
    yaw: Array
    vel_x: Array
    vel_y: Array
    length: Array
    width: Array
    height: Array
    timestamp_micros: Array
    valid: Array

    _FLOAT_FIELDS = ("x", "y", "z", "yaw", "vel_x", "vel_y", "length", "width", "height")
    _INT_FIELDS = ("timestamp_micros",)
    _BOOL_FIELDS = ("valid",)

    @property
    def num_objects(self) -> int:
        return self.shape[-2]

    @property
    def num_timesteps(self) -> int:
        return self.shape[-1]

    @property
    def xy(self) -> Array:
        """``(..., 2)`` positions."""
        return jnp.stack([self.x, self.y], axis=-1)

    @property
    def xyz(self) -> Array:
        return jnp.stack([self.x, self.y, self.z], axis=-1)

    @property
    def vel_xy(self) -> Array:
        return jnp.stack([self.vel_x, self.vel_y], axis=-1)

    @property
    def speed(self) -> Array:
        """Speed (m/s), -1 where invalid (Waymax convention)."""
        speed = jnp.sqrt(self.vel_x**2 + self.vel_y**2)
        return jnp.where(self.valid, speed, -1.0)

    @property
    def vel_yaw(self) -> Array:
        """Heading of the velocity vector (rad), -1 where invalid."""
        return jnp.where(self.valid, jnp.arctan2(self.vel_y, self.vel_x), -1.0)

    @property
    def bbox_corners(self) -> Array:
        """``(..., 4, 2)`` box corners: front-right first, then counter-clockwise."""
        return bbox_corners(self.x, self.y, self.length, self.width, self.yaw)

    def at(self, t: Array | int) -> Trajectory:
        """The step ``t`` of every field, dropping the time axis: ``(..., num_objects)``.

        ``t`` is a scalar or has the batch shape ``(...)``.
        """
        return jax.tree.map(lambda a: take_time(a, t), self)

    def set_at(self, t: Array | int, step: Trajectory) -> Trajectory:
        """Writes a single step ``(..., num_objects)`` into time index ``t``."""
        return jax.tree.map(lambda a, s: put_time(a, t, s), self, step)


@struct.dataclass
class ObjectMetadata(_ArrayTree):
    """Per-object static information, shape ``(..., num_objects)``.

    Attributes:
      ids: track id.
      object_types: :class:`ObjectType`; -1 for padding.
      is_sdc: the self-driving car (exactly one expected).
      is_modeled: WOMD ``tracks_to_predict == 1``.
      is_valid: the slot holds a real object at some step (``tracks_to_predict != -1``).
      objects_of_interest: WOMD ``objects_of_interest == 1``.
      is_controlled: unused by the environments (control comes from the config), kept for
        parity with Waymax.
    """

    ids: Array
    object_types: Array
    is_sdc: Array
    is_modeled: Array
    is_valid: Array
    objects_of_interest: Array
    is_controlled: Array

    _INT_FIELDS = ("ids", "object_types")
    _BOOL_FIELDS = ("is_sdc", "is_modeled", "is_valid", "objects_of_interest", "is_controlled")

    @property
    def num_objects(self) -> int:
        return self.shape[-1]


@struct.dataclass
class RoadgraphPoints(_ArrayTree):
    """Roadgraph samples, shape ``(..., num_points)``.

    Attributes:
      x, y, z: sample position (m).
      dir_x, dir_y, dir_z: unit vector to the next sample of the same polyline (0 at ends).
      types: :class:`RoadType`; -1 for padding.
      ids: polyline (map feature) id.
      valid: the sample is real.
    """

    x: Array
    y: Array
    z: Array
    dir_x: Array
    dir_y: Array
    dir_z: Array
    types: Array
    ids: Array
    valid: Array

    _FLOAT_FIELDS = ("x", "y", "z", "dir_x", "dir_y", "dir_z")
    _INT_FIELDS = ("types", "ids")
    _BOOL_FIELDS = ("valid",)

    @property
    def num_points(self) -> int:
        return self.shape[-1]

    @property
    def xy(self) -> Array:
        return jnp.stack([self.x, self.y], axis=-1)

    @property
    def dir_xy(self) -> Array:
        return jnp.stack([self.dir_x, self.dir_y], axis=-1)


@struct.dataclass
class TrafficLights(_ArrayTree):
    """Traffic-light states, shape ``(..., num_traffic_lights, num_timesteps)``.

    Attributes:
      x, y, z: stop point at the start of the controlled lane (m).
      state: :class:`TrafficLightState`; -1 for padding.
      lane_ids: id of the controlled lane.
      valid: the light is observed at that step.
    """

    x: Array
    y: Array
    z: Array
    state: Array
    lane_ids: Array
    valid: Array

    _FLOAT_FIELDS = ("x", "y", "z")
    _INT_FIELDS = ("state", "lane_ids")
    _BOOL_FIELDS = ("valid",)

    @property
    def xy(self) -> Array:
        return jnp.stack([self.x, self.y], axis=-1)

    def at(self, t: Array | int) -> TrafficLights:
        return jax.tree.map(lambda a: take_time(a, t), self)


@struct.dataclass
class Paths(_ArrayTree):
    """SDC route candidates (``sdc_paths``), shape ``(..., num_paths, num_points_per_path)``.

    ``on_route`` has shape ``(..., num_paths, 1)``.
    """

    x: Array
    y: Array
    z: Array
    arc_length: Array
    ids: Array
    valid: Array
    on_route: Array

    _FLOAT_FIELDS = ("x", "y", "z", "arc_length")
    _INT_FIELDS = ("ids",)
    _BOOL_FIELDS = ("valid", "on_route")

    @property
    def xy(self) -> Array:
        return jnp.stack([self.x, self.y], axis=-1)


@struct.dataclass
class SimulatorState:
    """The whole simulator state for one scenario (or a batch of them).

    Attributes:
      sim_trajectory: ``(..., N, T)`` simulated states; entries after ``timestep`` invalid.
      log_trajectory: ``(..., N, T)`` logged states.
      log_traffic_light: ``(..., 16, T)`` logged traffic lights.
      object_metadata: ``(..., N)``.
      timestep: int32, index of the last executed step; a scalar after ``reset`` (all
        scenarios of a batch share one clock, as in Waymax) or of shape ``(...)``.
      roadgraph_points: ``(..., P)``.
      sdc_paths: optional ``(..., num_paths, points)`` route candidates.
      road_edge_index: optional precomputed offroad acceleration structure
        (:class:`diffdrive.sim.metrics.RoadEdgeIndex`); built by ``reset`` when the
        environment asks for it.
    """

    sim_trajectory: Trajectory
    log_trajectory: Trajectory
    log_traffic_light: TrafficLights
    object_metadata: ObjectMetadata
    timestep: Array
    roadgraph_points: RoadgraphPoints
    sdc_paths: Paths | None = None
    road_edge_index: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Batch shape ``(...)``."""
        return self.object_metadata.shape[:-1]

    @property
    def batch_dims(self) -> tuple[int, ...]:
        return self.shape

    @property
    def num_objects(self) -> int:
        return self.object_metadata.num_objects

    @property
    def num_timesteps(self) -> int:
        return self.log_trajectory.num_timesteps

    @property
    def remaining_timesteps(self) -> Array:
        return self.num_timesteps - self.timestep - 1

    @property
    def is_done(self) -> Array:
        return self.timestep + 1 >= self.num_timesteps

    @property
    def current_sim_trajectory(self) -> Trajectory:
        """``(..., N, 1)`` slice at ``timestep``, as Waymax returns it."""
        return jax.tree.map(lambda a: a[..., None], self.sim_trajectory.at(self.timestep))

    @property
    def current_log_trajectory(self) -> Trajectory:
        return jax.tree.map(lambda a: a[..., None], self.log_trajectory.at(self.timestep))

    @property
    def sdc_index(self) -> Array:
        """``(...)`` index of the SDC (0 when there is none, as ``top_k`` gives)."""
        return jnp.argmax(self.object_metadata.is_sdc, axis=-1)


@struct.dataclass
class Action:
    """Actions for every object: ``data`` ``(..., N, action_dim)``, ``valid`` ``(..., N, 1)``."""

    data: Array
    valid: Array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[:-1])


@struct.dataclass
class TrajectoryUpdate:
    """What a dynamics model may change: pose, velocity and validity, each ``(..., N)``."""

    x: Array
    y: Array
    yaw: Array
    vel_x: Array
    vel_y: Array
    valid: Array

    def as_action(self) -> Action:
        """Packs into a 5-D :class:`Action` ``[x, y, yaw, vel_x, vel_y]`` (state dynamics)."""
        data = jnp.stack([self.x, self.y, self.yaw, self.vel_x, self.vel_y], axis=-1)
        return Action(data=data, valid=self.valid[..., None])


@struct.dataclass
class MetricResult:
    """A masked metric: ``value`` float32 and ``valid`` bool of one shape."""

    value: Array
    valid: Array

    def masked_value(self, fill: float = 0.0) -> Array:
        return jnp.where(self.valid, self.value, fill)


# --------------------------------------------------------------------------------------
# Array helpers
# --------------------------------------------------------------------------------------


def take_time(a: Array, t: Array | int) -> Array:
    """``a[..., t]`` with ``t`` a scalar or of shape ``a.shape[:-2]`` (per batch element)."""
    t = jnp.asarray(t, jnp.int32)
    if t.ndim == 0:
        return jax.lax.dynamic_index_in_dim(a, t, axis=-1, keepdims=False)
    idx = jnp.broadcast_to(
        t.reshape(t.shape + (1,) * (a.ndim - 1 - t.ndim) + (1,)), a.shape[:-1] + (1,)
    )
    return jnp.take_along_axis(a, idx, axis=-1)[..., 0]


def put_time(a: Array, t: Array | int, value: Array) -> Array:
    """``a.at[..., t].set(value)`` with ``t`` scalar or batched like :func:`take_time`."""
    t = jnp.asarray(t, jnp.int32)
    value = value.astype(a.dtype)
    if t.ndim == 0:
        return jax.lax.dynamic_update_index_in_dim(a, value, t, axis=-1)
    hit = jnp.arange(a.shape[-1]) == t.reshape(t.shape + (1,) * (a.ndim - t.ndim))
    return jnp.where(hit, value[..., None], a)


def bbox_corners(x: Array, y: Array, length: Array, width: Array, yaw: Array) -> Array:
    """``(..., 4, 2)`` corners of oriented boxes (front-right first, counter-clockwise)."""
    c, s = jnp.cos(yaw), jnp.sin(yaw)
    hl_c, hl_s = 0.5 * length * c, 0.5 * length * s
    hw_c, hw_s = 0.5 * width * c, 0.5 * width * s
    dx = jnp.stack([hl_c + hw_s, hl_c - hw_s, -hl_c - hw_s, -hl_c + hw_s], axis=-1)
    dy = jnp.stack([hl_s - hw_c, hl_s + hw_c, -hl_s + hw_c, -hl_s - hw_c], axis=-1)
    return jnp.stack([x[..., None] + dx, y[..., None] + dy], axis=-1)


def masked_mean(x: Array, valid: Array, axis: int = -1) -> Array:
    """Mean over valid entries along ``axis``, -1 where none is valid, broadcast back."""
    total = jnp.sum(jnp.where(valid, x, 0.0), axis=axis, keepdims=True)
    count = jnp.sum(valid, axis=axis, keepdims=True)
    mean = jnp.where(count > 0, total / jnp.maximum(count, 1), -1.0)
    return jnp.broadcast_to(mean, x.shape)


def select_by_onehot(data: Array, onehot: Array, keepdims: bool = False) -> Array:
    """``sum_i data_i * onehot_i`` over the last axis (zeros when ``onehot`` is all False)."""
    return jnp.sum(data * onehot.astype(data.dtype), axis=-1, keepdims=keepdims)


def filter_topk_roadgraph_points(rg: RoadgraphPoints, ref_xy: Array, k: int) -> RoadgraphPoints:
    """The ``k`` valid points nearest to ``ref_xy`` (``(..., 2)``), nearest first.

    Invalid points rank at +inf. ``k`` larger than the number of points is an error;
    ``k`` equal to it returns ``rg`` unchanged (Waymax's behaviour).
    """
    num_points = rg.num_points
    if k > num_points:
        raise ValueError(f"roadgraph top-k: k={k} exceeds the {num_points} roadgraph points")
    if k == num_points:
        return rg
    d = jnp.linalg.norm(rg.xy - ref_xy[..., None, :], axis=-1)
    d = jnp.where(rg.valid, d, jnp.inf)
    _, idx = jax.lax.top_k(-d, k)
    return jax.tree.map(lambda a: jnp.take_along_axis(a, idx, axis=-1), rg)


def stack_states(states: Sequence[Any]) -> Any:
    """Stacks pytrees along a new leading batch axis (numpy or jax leaves)."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)


# --------------------------------------------------------------------------------------
# Validation (host side, on concrete arrays)
# --------------------------------------------------------------------------------------

_DTYPE_KIND = {"float": "f", "int": "i", "bool": "b"}


def _check_fields(obj: _ArrayTree, name: str, expected_shape: tuple[int, ...]) -> None:
    for kind, fields in (
        ("float", obj._FLOAT_FIELDS),
        ("int", obj._INT_FIELDS),
        ("bool", obj._BOOL_FIELDS),
    ):
        for field in fields:
            arr = getattr(obj, field)
            shape = tuple(np.shape(arr))
            if field == "on_route":
                want = expected_shape[:-1] + (1,)
            else:
                want = expected_shape
            if shape != want:
                raise ValueError(f"{name}.{field}: expected shape {want}, got {shape}")
            dt = np.dtype(getattr(arr, "dtype", np.asarray(arr).dtype))
            if dt.kind != _DTYPE_KIND[kind]:
                raise ValueError(f"{name}.{field}: expected a {kind} array, got dtype {dt}")
            if kind == "float" and not isinstance(arr, jax.core.Tracer):
                a = np.asarray(arr)
                if np.isnan(a).any():
                    where = tuple(int(i) for i in np.argwhere(np.isnan(a))[0])
                    raise ValueError(f"{name}.{field}: NaN at index {where}")


def validate(state: SimulatorState) -> SimulatorState:
    """Checks shapes, dtypes and NaNs of every field; raises ``ValueError`` naming the field.

    Returns the state unchanged so it can be chained. Call it on host data (decoded
    scenarios, user-built states), not inside traced code.
    """
    meta = state.object_metadata
    batch = tuple(meta.shape[:-1])
    num_objects = meta.shape[-1] if meta.shape else 0
    if not meta.shape:
        raise ValueError("object_metadata.ids: expected shape (..., num_objects), got ()")
    # The step count most log fields agree on; the odd field out is the one reported.
    lengths = [np.shape(getattr(state.log_trajectory, f))[-1:] for f in Trajectory.field_names()]
    num_t = max(set(lengths), key=lengths.count)[0] if any(lengths) else 0
    _check_fields(meta, "object_metadata", batch + (num_objects,))
    _check_fields(state.log_trajectory, "log_trajectory", batch + (num_objects, num_t))
    _check_fields(state.sim_trajectory, "sim_trajectory", batch + (num_objects, num_t))
    tl = state.log_traffic_light
    num_tl = tl.shape[-2] if len(tl.shape) >= 2 else 0
    _check_fields(tl, "log_traffic_light", batch + (num_tl, num_t))
    rg = state.roadgraph_points
    _check_fields(rg, "roadgraph_points", batch + (rg.shape[-1] if rg.shape else 0,))
    if state.sdc_paths is not None:
        p = state.sdc_paths
        _check_fields(p, "sdc_paths", batch + tuple(p.shape[-2:]))
    ts = np.shape(state.timestep)
    if ts not in ((), batch):
        raise ValueError(f"timestep: expected shape () or {batch}, got {ts}")
    return state


def check_batch_dims(name: str, value: Any, batch: tuple[int, ...]) -> None:
    """Raises if a pytree's leaves do not start with ``batch``."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(value):
        shape = tuple(np.shape(leaf))
        if shape[: len(batch)] != batch:
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)}: expected leading batch dims {batch}, "
                f"got shape {shape}"
            )


# --------------------------------------------------------------------------------------
# Flat-array exchange format: keys "<field>/<subfield>", as in waymax_state/*.npz
# --------------------------------------------------------------------------------------

_FLAT_GROUPS = {
    "log_trajectory": Trajectory,
    "object_metadata": ObjectMetadata,
    "roadgraph_points": RoadgraphPoints,
    "log_traffic_light": TrafficLights,
}
_FLAT_DTYPES = {"f": np.float32, "i": np.int32, "b": np.bool_}


def _group_from_flat(cls, arrays, group: str, source: str):
    kw = {}
    for kind, fields in (("f", cls._FLOAT_FIELDS), ("i", cls._INT_FIELDS), ("b", cls._BOOL_FIELDS)):
        for field in fields:
            key = f"{group}/{field}"
            if key not in arrays:
                raise KeyError(f"{source}: missing array {key!r}")
            kw[field] = np.asarray(arrays[key]).astype(_FLAT_DTYPES[kind])
    return cls(**kw)


def initial_sim_trajectory(log: Trajectory) -> Trajectory:
    """Waymax's loader output: zeros everywhere except t = 0, copied from the log."""
    first = log.at(0)
    zeros = jax.tree.map(jnp.zeros_like, log)
    return zeros.set_at(0, first)


def state_from_flat_arrays(arrays, source: str = "arrays") -> SimulatorState:
    """Builds a state (``timestep = 0``) from a mapping ``"<field>/<subfield>" -> array``.

    The mapping is what ``np.load`` returns for ``waymax_state/*.npz`` and for the
    decoder conformance file; ``source`` names it in error messages.
    """
    groups = {g: _group_from_flat(c, arrays, g, source) for g, c in _FLAT_GROUPS.items()}
    log = groups["log_trajectory"]
    batch = log.shape[:-2]
    return SimulatorState(
        sim_trajectory=initial_sim_trajectory(log),
        log_trajectory=jax.tree.map(jnp.asarray, log),
        log_traffic_light=jax.tree.map(jnp.asarray, groups["log_traffic_light"]),
        object_metadata=jax.tree.map(jnp.asarray, groups["object_metadata"]),
        timestep=jnp.zeros(batch, jnp.int32),
        roadgraph_points=jax.tree.map(jnp.asarray, groups["roadgraph_points"]),
    )


def state_to_flat_arrays(state: SimulatorState) -> dict[str, np.ndarray]:
    """Inverse of :func:`state_from_flat_arrays` (the log, metadata, roadgraph and lights)."""
    out = {}
    for group in _FLAT_GROUPS:
        obj = getattr(state, group)
        for field in obj.field_names():
            out[f"{group}/{field}"] = np.asarray(getattr(obj, field))
    out["timestep"] = np.asarray(state.timestep)
    return out
