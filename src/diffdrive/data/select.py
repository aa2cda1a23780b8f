"""Building, selecting and padding flat scenario arrays (the readers' shared toolkit).

Every reader produces the flat ``"<group>/<field>"`` arrays of
:func:`diffdrive.sim.datatypes.state_from_flat_arrays`: ``log_trajectory/*`` ``(N, T)``,
``object_metadata/*`` ``(N,)``, ``roadgraph_points/*`` ``(P,)`` and ``log_traffic_light/*``
``(L, T)``. This module holds what the readers share:

* :func:`build_object_arrays` turns per-object tracks into ``log_trajectory`` and
  ``object_metadata`` arrays the way Waymax's loader does (yaw wrapped, box size the mean
  over valid steps, -1 at invalid steps);
* :func:`select_objects` keeps at most ``max_objects`` objects, the SDC first, then the
  objects nearest the SDC; it pads with invalid slots when there are fewer;
* :func:`polylines_to_roadgraph` flattens map polylines into roadgraph points with WOMD's
  ``dir`` and :func:`pad_roadgraph` cuts (nearest to the SDC, like Waymax's top-k) or pads
  them to a fixed count;
* :func:`traffic_lights_to_arrays` assigns traffic lights to the 16 WOMD slots;
* name tables from the WOMD enum names to their integer codes.

Invalid entries follow Waymax: every number -1 (float -1.0, int -1) and every mask False.
All functions work on numpy arrays on the host, never on traced values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from diffdrive.sim import datatypes
from diffdrive.sim.datatypes import ObjectType, RoadType, TrafficLightState

CURRENT_STEP = datatypes.INIT_STEPS - 1
"""Index of the "current" step of a WOMD scenario (10: after 10 history steps)."""

TRAJECTORY = "log_trajectory"
METADATA = "object_metadata"
ROADGRAPH = "roadgraph_points"
TRAFFIC_LIGHT = "log_traffic_light"

_KIND_DTYPE = {"f": np.float32, "i": np.int32, "b": np.bool_}


def _group_fields(cls: type) -> list[tuple[str, str]]:
    return (
        [(f, "f") for f in cls._FLOAT_FIELDS]
        + [(f, "i") for f in cls._INT_FIELDS]
        + [(f, "b") for f in cls._BOOL_FIELDS]
    )


_GROUP_CLASSES = {
    TRAJECTORY: datatypes.Trajectory,
    METADATA: datatypes.ObjectMetadata,
    ROADGRAPH: datatypes.RoadgraphPoints,
    TRAFFIC_LIGHT: datatypes.TrafficLights,
}


def _invalid_group(group: str, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    out = {}
    for field, kind in _group_fields(_GROUP_CLASSES[group]):
        dtype = _KIND_DTYPE[kind]
        out[f"{group}/{field}"] = (
            np.zeros(shape, dtype) if kind == "b" else np.full(shape, -1, dtype)
        )
    return out


def _fill_value(array: np.ndarray):
    return False if array.dtype == np.bool_ else -1


# --------------------------------------------------------------------------------------
# WOMD names -> codes
# --------------------------------------------------------------------------------------

OBJECT_TYPE_BY_NAME: dict[str, int] = {
    "UNSET": ObjectType.UNSET,
    "VEHICLE": ObjectType.VEHICLE,
    "PEDESTRIAN": ObjectType.PEDESTRIAN,
    "CYCLIST": ObjectType.CYCLIST,
    "OTHER": ObjectType.OTHER,
}
"""Upper-case object type names (WOMD ``Track.ObjectType`` without the ``TYPE_`` prefix)."""

ROAD_TYPE_BY_NAME: dict[str, int] = {
    "LANE_UNDEFINED": RoadType.LANE_UNDEFINED,
    "LANE_FREEWAY": RoadType.LANE_FREEWAY,
    "LANE_SURFACE_STREET": RoadType.LANE_SURFACE_STREET,
    "LANE_BIKE_LANE": RoadType.LANE_BIKE_LANE,
    "ROAD_LINE_UNKNOWN": RoadType.ROAD_LINE_UNKNOWN,
    "ROAD_LINE_BROKEN_SINGLE_WHITE": RoadType.ROAD_LINE_BROKEN_SINGLE_WHITE,
    "ROAD_LINE_SOLID_SINGLE_WHITE": RoadType.ROAD_LINE_SOLID_SINGLE_WHITE,
    "ROAD_LINE_SOLID_DOUBLE_WHITE": RoadType.ROAD_LINE_SOLID_DOUBLE_WHITE,
    "ROAD_LINE_BROKEN_SINGLE_YELLOW": RoadType.ROAD_LINE_BROKEN_SINGLE_YELLOW,
    "ROAD_LINE_BROKEN_DOUBLE_YELLOW": RoadType.ROAD_LINE_BROKEN_DOUBLE_YELLOW,
    "ROAD_LINE_SOLID_SINGLE_YELLOW": RoadType.ROAD_LINE_SOLID_SINGLE_YELLOW,
    "ROAD_LINE_SOLID_DOUBLE_YELLOW": RoadType.ROAD_LINE_SOLID_DOUBLE_YELLOW,
    "ROAD_LINE_PASSING_DOUBLE_YELLOW": RoadType.ROAD_LINE_PASSING_DOUBLE_YELLOW,
    "ROAD_EDGE_UNKNOWN": RoadType.ROAD_EDGE_UNKNOWN,
    "ROAD_EDGE_BOUNDARY": RoadType.ROAD_EDGE_BOUNDARY,
    "ROAD_EDGE_MEDIAN": RoadType.ROAD_EDGE_MEDIAN,
    "STOP_SIGN": RoadType.STOP_SIGN,
    "CROSSWALK": RoadType.CROSSWALK,
    "SPEED_BUMP": RoadType.SPEED_BUMP,
}
"""WOMD map element names (as ScenarioNet writes them) -> ``roadgraph_samples/type`` codes."""

DRIVEWAY_CODE = 20
"""GPUDrive's code for WOMD v1.2 driveways; Waymax has no such type, so readers drop them."""

UNTYPED_ROAD_CODES: dict[str, int] = {
    "lane": RoadType.LANE_SURFACE_STREET,
    "road_line": RoadType.ROAD_LINE_UNKNOWN,
    "road_edge": RoadType.ROAD_EDGE_BOUNDARY,
    "stop_sign": RoadType.STOP_SIGN,
    "crosswalk": RoadType.CROSSWALK,
    "speed_bump": RoadType.SPEED_BUMP,
}
"""Codes for map features that only carry their kind (older GPUDrive/Nocturne JSON, old
MetaDrive pickles), whose subtypes are lost. Lanes become surface-street lanes (the common
WOMD lane type), road lines ``ROAD_LINE_UNKNOWN``, and road edges ``ROAD_EDGE_BOUNDARY``:
Waymax's offroad metric only counts types 15 and 16 as edges, so ``ROAD_EDGE_UNKNOWN``
(14) would silently disable it. Readers state this in the scenario's assumptions."""

UNTYPED_ROAD_ASSUMPTION = (
    "Map features carry only their kind, not their WOMD subtype: lanes were typed "
    "LANE_SURFACE_STREET (2), road lines ROAD_LINE_UNKNOWN (5) and road edges "
    "ROAD_EDGE_BOUNDARY (15, so that the offroad metric counts them)."
)

TRAFFIC_LIGHT_STATE_BY_NAME: dict[str, int] = {
    "UNKNOWN": TrafficLightState.UNKNOWN,
    "ARROW_STOP": TrafficLightState.ARROW_STOP,
    "ARROW_CAUTION": TrafficLightState.ARROW_CAUTION,
    "ARROW_GO": TrafficLightState.ARROW_GO,
    "STOP": TrafficLightState.STOP,
    "CAUTION": TrafficLightState.CAUTION,
    "GO": TrafficLightState.GO,
    "FLASHING_STOP": TrafficLightState.FLASHING_STOP,
    "FLASHING_CAUTION": TrafficLightState.FLASHING_CAUTION,
}
"""Signal state names (WOMD ``LANE_STATE_*`` without the prefix) -> codes."""


# --------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------


def wrap_yaw(yaw: np.ndarray) -> np.ndarray:
    """Wraps angles (rad) to [-pi, pi) in float32, exactly as Waymax's loader does."""
    yaw = np.asarray(yaw, np.float32)
    pi = np.float32(np.pi)
    return np.mod(yaw + pi, np.float32(2 * np.pi)) - pi


def empty_object_arrays(
    num_objects: int, num_steps: int = datatypes.NUM_TIMESTEPS
) -> dict[str, np.ndarray]:
    """All-invalid ``log_trajectory`` ``(N, T)`` and ``object_metadata`` ``(N,)`` arrays."""
    out = _invalid_group(TRAJECTORY, (num_objects, num_steps))
    out.update(_invalid_group(METADATA, (num_objects,)))
    return out


def masked_mean_per_object(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(N,)`` mean of ``values`` ``(N, T)`` over each row's valid steps, -1 if none."""
    values = np.asarray(values, np.float64)
    count = valid.sum(axis=-1)
    total = np.where(valid, values, 0.0).sum(axis=-1)
    mean = np.where(count > 0, total / np.maximum(count, 1), -1.0)
    return mean.astype(np.float32)


def build_object_arrays(
    *,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    yaw: np.ndarray,
    vel_x: np.ndarray,
    vel_y: np.ndarray,
    length: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    valid: np.ndarray,
    timestamps_micros: np.ndarray,
    ids: np.ndarray,
    object_types: np.ndarray,
    is_sdc: np.ndarray,
    is_modeled: np.ndarray | None = None,
    objects_of_interest: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-object tracks -> ``log_trajectory/*`` ``(N, T)`` and ``object_metadata/*`` ``(N,)``.

    Follows Waymax's loader: ``yaw`` is wrapped to [-pi, pi); every per-step field is -1
    where ``valid`` is False; ``length``, ``width`` and ``height`` become one value per
    object, the mean over its valid steps (-1 if it is never valid), repeated over time.
    Every given object is real, so ``is_valid`` is True and ``is_controlled`` False.

    Args:
      x, y, z: ``(N, T)`` position (m).
      yaw: ``(N, T)`` box heading (rad), any range.
      vel_x, vel_y: ``(N, T)`` velocity (m/s).
      length, width, height: ``(N, T)`` per-step box size (m), averaged over valid steps,
        or ``(N,)`` one size per object, used as is.
      valid: ``(N, T)`` bool.
      timestamps_micros: ``(T,)`` or ``(N, T)`` time of each step (us).
      ids: ``(N,)`` track ids; object_types: ``(N,)`` :class:`ObjectType` codes.
      is_sdc, is_modeled, objects_of_interest: ``(N,)`` bool (the last two default False).

    Returns:
      The flat arrays (float32, int32, bool).
    """
    valid = np.asarray(valid, bool)
    num_objects, num_steps = valid.shape
    out: dict[str, np.ndarray] = {}

    def per_step(name: str, values: np.ndarray, dtype) -> None:
        values = np.broadcast_to(np.asarray(values), (num_objects, num_steps))
        out[f"{TRAJECTORY}/{name}"] = np.where(valid, values, -1).astype(dtype)

    per_step("x", x, np.float32)
    per_step("y", y, np.float32)
    per_step("z", z, np.float32)
    per_step("yaw", wrap_yaw(yaw), np.float32)
    per_step("vel_x", vel_x, np.float32)
    per_step("vel_y", vel_y, np.float32)
    per_step("timestamp_micros", timestamps_micros, np.int32)
    for name, size in (("length", length), ("width", width), ("height", height)):
        size = np.asarray(size)
        if size.ndim == 2:
            size = masked_mean_per_object(size, valid)
        else:
            size = np.where(valid.any(axis=-1), size, -1.0)
        out[f"{TRAJECTORY}/{name}"] = np.repeat(size.astype(np.float32)[:, None], num_steps, axis=1)
    out[f"{TRAJECTORY}/valid"] = valid.copy()

    def flags(values: np.ndarray | None) -> np.ndarray:
        return np.zeros(num_objects, bool) if values is None else np.asarray(values, bool)

    out[f"{METADATA}/ids"] = np.asarray(ids, np.int32)
    out[f"{METADATA}/object_types"] = np.asarray(object_types, np.int32)
    out[f"{METADATA}/is_sdc"] = flags(is_sdc)
    out[f"{METADATA}/is_modeled"] = flags(is_modeled)
    out[f"{METADATA}/is_valid"] = np.ones(num_objects, bool)
    out[f"{METADATA}/objects_of_interest"] = flags(objects_of_interest)
    out[f"{METADATA}/is_controlled"] = np.zeros(num_objects, bool)
    for key, a in out.items():
        if a.shape[0] != num_objects:
            raise ValueError(f"{key}: expected {num_objects} objects, got shape {a.shape}")
    return out


def _sdc_reference_xy(arrays: Mapping[str, np.ndarray], sdc: int, current_step: int):
    """The SDC's xy at ``current_step``, else at its valid step nearest in time."""
    valid = np.asarray(arrays[f"{TRAJECTORY}/valid"][sdc], bool)
    if not valid.any():
        raise ValueError(f"the SDC (object {sdc}) is never valid; cannot rank objects by distance")
    step = _nearest_valid_step(valid[None], current_step)[0]
    return np.array(
        [arrays[f"{TRAJECTORY}/x"][sdc, step], arrays[f"{TRAJECTORY}/y"][sdc, step]], np.float64
    )


def _nearest_valid_step(valid: np.ndarray, current_step: int) -> np.ndarray:
    """``(N,)`` valid step nearest in time to ``current_step`` (the earlier one on ties).

    Rows without a valid step get ``current_step`` (callers check validity separately).
    """
    steps = np.arange(valid.shape[-1])
    # Distance 2|t - c| plus 1 for later steps breaks ties toward the earlier step.
    cost = 2 * np.abs(steps - current_step) + (steps > current_step)
    cost = np.where(valid, cost, np.iinfo(np.int64).max)
    best = np.argmin(cost, axis=-1)
    return np.where(valid.any(axis=-1), best, min(current_step, valid.shape[-1] - 1))


def object_ranking(
    arrays: Mapping[str, np.ndarray],
    current_step: int = CURRENT_STEP,
    keep_modeled: bool = True,
) -> np.ndarray:
    """Object indices in selection order: SDC, (modeled,) then by distance to the SDC.

    The ranking keys, compared in order (ties keep the source order, so it is
    deterministic):

    1. the SDC first;
    2. with ``keep_modeled``, objects with ``is_modeled`` (WOMD ``tracks_to_predict``),
       which WOMD's metrics need;
    3. objects valid at ``current_step``, by xy distance to the SDC there;
    4. objects invalid at ``current_step`` but valid at some step, by the distance from
       their position at the valid step nearest in time to ``current_step``;
    5. objects never valid, last.

    The SDC's reference position is its position at ``current_step`` (or at its valid step
    nearest in time if it is invalid then).

    Returns:
      ``(N,)`` int64 permutation of the object indices.

    Raises:
      ValueError: there is not exactly one SDC, or the SDC is never valid.
    """
    is_sdc = np.asarray(arrays[f"{METADATA}/is_sdc"], bool)
    if is_sdc.sum() != 1:
        raise ValueError(f"object selection needs exactly one SDC, found {int(is_sdc.sum())}")
    sdc = int(np.argmax(is_sdc))
    valid = np.asarray(arrays[f"{TRAJECTORY}/valid"], bool)
    num_objects, num_steps = valid.shape
    current_step = min(max(current_step, 0), num_steps - 1)
    ref = _sdc_reference_xy(arrays, sdc, current_step)
    step = _nearest_valid_step(valid, current_step)
    rows = np.arange(num_objects)
    x = np.asarray(arrays[f"{TRAJECTORY}/x"], np.float64)[rows, step]
    y = np.asarray(arrays[f"{TRAJECTORY}/y"], np.float64)[rows, step]
    distance = np.hypot(x - ref[0], y - ref[1])
    group = np.where(valid[:, current_step], 2, np.where(valid.any(axis=-1), 3, 4))
    distance = np.where(group == 4, 0.0, distance)
    if keep_modeled and f"{METADATA}/is_modeled" in arrays:
        group = np.where(np.asarray(arrays[f"{METADATA}/is_modeled"], bool), 1, group)
    group[sdc] = 0
    # lexsort sorts by the last key first; the index makes ties deterministic.
    return np.lexsort((rows, distance, group))


def select_objects(
    arrays: Mapping[str, np.ndarray],
    max_objects: int,
    current_step: int = CURRENT_STEP,
    keep_modeled: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Keeps at most ``max_objects`` objects, SDC first; pads to exactly ``max_objects``.

    With more than ``max_objects`` objects, the kept objects are the first ones of
    :func:`object_ranking` (the SDC, the modeled objects when ``keep_modeled``, then the
    nearest to the SDC at ``current_step``; objects invalid at that step rank after the
    valid ones by their nearest-in-time valid position, never-valid ones last), in that
    order. With ``max_objects`` or fewer, every object is kept, the SDC moved to slot 0
    (if there is one) and the others left in source order. Missing slots are padded with
    -1 numbers and False masks.

    Args:
      arrays: flat arrays with ``log_trajectory/*`` ``(N, T)`` and ``object_metadata/*``
        ``(N,)``; other keys are passed through unchanged.
      max_objects: number of object slots of the result.
      current_step: the step whose positions rank the objects.
      keep_modeled: rank ``is_modeled`` objects right after the SDC.

    Returns:
      ``(arrays, kept_indices)``: the new flat arrays with ``max_objects`` slots, and the
      ``(num_kept,)`` source index of each kept object (slot ``i`` holds source object
      ``kept_indices[i]``; slots from ``num_kept`` on are padding).

    Raises:
      ValueError: ``max_objects < 1``, or a reduction is needed and there is not exactly
        one valid SDC.
    """
    if max_objects < 1:
        raise ValueError(f"max_objects must be at least 1, got {max_objects}")
    valid = np.asarray(arrays[f"{TRAJECTORY}/valid"])
    num_objects = valid.shape[0]
    if num_objects > max_objects:
        kept = object_ranking(arrays, current_step, keep_modeled)[:max_objects]
    else:
        is_sdc = np.asarray(arrays[f"{METADATA}/is_sdc"], bool)
        order = np.arange(num_objects)
        if is_sdc.any():
            sdc = int(np.argmax(is_sdc))
            order = np.concatenate([[sdc], order[order != sdc]])
        kept = order
    kept = kept.astype(np.int64)
    out = dict(arrays)
    for key, a in arrays.items():
        if not key.startswith((f"{TRAJECTORY}/", f"{METADATA}/")):
            continue
        a = np.asarray(a)[kept]
        if len(kept) < max_objects:
            pad = np.full((max_objects - len(kept), *a.shape[1:]), _fill_value(a), a.dtype)
            a = np.concatenate([a, pad], axis=0)
        out[key] = a
    return out, kept


# --------------------------------------------------------------------------------------
# Roadgraph
# --------------------------------------------------------------------------------------


def empty_roadgraph(num_points: int) -> dict[str, np.ndarray]:
    """All-invalid ``roadgraph_points/*`` arrays of ``num_points`` points."""
    return _invalid_group(ROADGRAPH, (num_points,))


def polyline_directions(xyz: np.ndarray) -> np.ndarray:
    """``(n, 3)`` unit vectors from each point to the next one of the same polyline.

    Zero for the last point, for a single point, and where two consecutive points coincide
    (as in WOMD's ``roadgraph_samples/dir``).
    """
    xyz = np.asarray(xyz, np.float64)
    out = np.zeros_like(xyz)
    if len(xyz) >= 2:
        step = np.diff(xyz, axis=0)
        norm = np.linalg.norm(step, axis=-1, keepdims=True)
        out[:-1] = np.where(norm > 0, step / np.where(norm > 0, norm, 1.0), 0.0)
    return out


def polylines_to_roadgraph(
    polylines: Sequence[tuple[np.ndarray, int, int]],
) -> dict[str, np.ndarray]:
    """Flattens map features into roadgraph points, polyline after polyline.

    Args:
      polylines: ``(xyz, type, id)`` per feature: ``xyz`` ``(n, 3)`` (or ``(n, 2)``, z = 0)
        points in order, ``type`` its :class:`RoadType` code, ``id`` its map feature id.

    Returns:
      ``roadgraph_points/*`` arrays of ``sum(n)`` points, all valid, with ``dir`` the unit
      vector to the next point of the same polyline (zero at its last point).

    Raises:
      ValueError: a polyline is not ``(n, 2|3)``, holds NaN/inf, or an id/type does not fit
        int32.
    """
    xyz_parts, dir_parts, type_parts, id_parts = [], [], [], []
    int32 = np.iinfo(np.int32)
    for index, (points, road_type, feature_id) in enumerate(polylines):
        points = np.asarray(points, np.float64)
        if points.ndim != 2 or points.shape[1] not in (2, 3):
            raise ValueError(f"polyline {index} (id {feature_id}): shape {points.shape}")
        if points.shape[1] == 2:
            points = np.concatenate([points, np.zeros((len(points), 1))], axis=1)
        if not np.isfinite(points).all():
            raise ValueError(f"polyline {index} (id {feature_id}): non-finite coordinates")
        for what, value in (("id", feature_id), ("type", road_type)):
            if not int32.min <= int(value) <= int32.max:
                raise ValueError(f"polyline {index}: {what} {value} does not fit int32")
        xyz_parts.append(points)
        dir_parts.append(polyline_directions(points))
        type_parts.append(np.full(len(points), int(road_type), np.int32))
        id_parts.append(np.full(len(points), int(feature_id), np.int32))
    if not xyz_parts:
        return empty_roadgraph(0)
    xyz = np.concatenate(xyz_parts).astype(np.float32)
    direction = np.concatenate(dir_parts).astype(np.float32)
    out = {
        f"{ROADGRAPH}/x": xyz[:, 0],
        f"{ROADGRAPH}/y": xyz[:, 1],
        f"{ROADGRAPH}/z": xyz[:, 2],
        f"{ROADGRAPH}/dir_x": direction[:, 0],
        f"{ROADGRAPH}/dir_y": direction[:, 1],
        f"{ROADGRAPH}/dir_z": direction[:, 2],
        f"{ROADGRAPH}/types": np.concatenate(type_parts),
        f"{ROADGRAPH}/ids": np.concatenate(id_parts),
        f"{ROADGRAPH}/valid": np.ones(len(xyz), bool),
    }
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def pad_roadgraph(
    arrays: Mapping[str, np.ndarray],
    num_points: int,
    current_step: int = CURRENT_STEP,
    ref_xy: np.ndarray | None = None,
    notes: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Brings ``roadgraph_points/*`` to exactly ``num_points`` points.

    Fewer points are padded at the end with -1/False. With more, the ``num_points`` valid
    points nearest (in xy) to the reference position are kept, as Waymax's
    ``filter_topk_roadgraph_points`` would choose them, but in their original order so
    that polylines stay contiguous; ``dir`` is not recomputed, so the last kept point of a
    cut polyline still points to its dropped successor (as in WOMD's own truncated
    tf.Examples). The reference is ``ref_xy`` if given, else the SDC's position at
    ``current_step`` (its nearest-in-time valid position if invalid then).

    Args:
      arrays: flat arrays with ``roadgraph_points/*`` ``(P,)``; with no ``ref_xy``, also
        ``log_trajectory/*`` and ``object_metadata/is_sdc``. Other keys pass through.
      num_points: the number of points of the result.
      current_step: the step of the SDC position used as reference.
      ref_xy: ``(2,)`` explicit reference position (m).
      notes: if given, one sentence is appended when points are dropped (for the
        scenario's assumptions).

    Returns:
      New flat arrays.

    Raises:
      ValueError: a cut is needed and no reference position can be found.
    """
    if num_points < 0:
        raise ValueError(f"num_points must be >= 0, got {num_points}")
    out = dict(arrays)
    total = int(np.shape(arrays[f"{ROADGRAPH}/x"])[0])
    keys = [k for k in arrays if k.startswith(f"{ROADGRAPH}/")]
    if total <= num_points:
        for key in keys:
            a = np.asarray(arrays[key])
            pad = np.full((num_points - total,), _fill_value(a), a.dtype)
            out[key] = np.concatenate([a, pad])
        return out
    if ref_xy is None:
        is_sdc = np.asarray(arrays.get(f"{METADATA}/is_sdc", np.zeros(0)), bool)
        if is_sdc.sum() != 1:
            raise ValueError(
                f"cutting the roadgraph to {num_points} points needs one SDC as reference, "
                f"found {int(is_sdc.sum())}"
            )
        num_steps = np.shape(arrays[f"{TRAJECTORY}/valid"])[1]
        step = min(max(current_step, 0), num_steps - 1)
        ref_xy = _sdc_reference_xy(arrays, int(np.argmax(is_sdc)), step)
    ref_xy = np.asarray(ref_xy, np.float64)
    x = np.asarray(arrays[f"{ROADGRAPH}/x"], np.float64)
    y = np.asarray(arrays[f"{ROADGRAPH}/y"], np.float64)
    distance = np.hypot(x - ref_xy[0], y - ref_xy[1])
    distance = np.where(np.asarray(arrays[f"{ROADGRAPH}/valid"], bool), distance, np.inf)
    nearest = np.sort(np.argsort(distance, kind="stable")[:num_points])
    for key in keys:
        out[key] = np.asarray(arrays[key])[nearest]
    if notes is not None:
        notes.append(
            f"The map has {total} roadgraph points; kept the {num_points} nearest to the SDC "
            "(xy distance at the current step, like Waymax's top-k), in their original order."
        )
    return out


# --------------------------------------------------------------------------------------
# Traffic lights
# --------------------------------------------------------------------------------------


def empty_traffic_lights(
    num_steps: int = datatypes.NUM_TIMESTEPS,
    num_lights: int = datatypes.NUM_TRAFFIC_LIGHTS,
) -> dict[str, np.ndarray]:
    """All-invalid ``log_traffic_light/*`` arrays ``(num_lights, num_steps)``."""
    return _invalid_group(TRAFFIC_LIGHT, (num_lights, num_steps))


@dataclasses.dataclass
class TrafficLightSeries:
    """One traffic light (the signal of one lane) over time.

    Attributes:
      lane_id: id of the controlled lane.
      state: ``(T,)`` :class:`TrafficLightState` codes (ignored where not valid).
      valid: ``(T,)`` bool, the light is observed at that step.
      xyz: ``(T, 3)`` stop point (m).
    """

    lane_id: int
    state: np.ndarray
    valid: np.ndarray
    xyz: np.ndarray


def traffic_lights_to_arrays(
    lights: Sequence[TrafficLightSeries],
    num_steps: int = datatypes.NUM_TIMESTEPS,
    num_lights: int = datatypes.NUM_TRAFFIC_LIGHTS,
    notes: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Gives each light a fixed slot, in the given order, and fills ``log_traffic_light/*``.

    Every number is -1 and ``valid`` False at steps where a light is not observed, and in
    unused slots. (WOMD's tf.Examples instead pack each step's lights into the first
    slots, so a slot may change lanes over time; here one slot is one lane.) With more
    than ``num_lights`` lights, the ``num_lights`` observed at the most steps are kept
    (the earlier one on ties), still in the given order, with a note.

    Args:
      lights: the lights, ``(T,)`` series each, ``T == num_steps``.
      num_steps: steps ``T``.
      num_lights: slots (16 in WOMD).
      notes: sentences about dropped lights are appended here if given.

    Returns:
      ``log_traffic_light/*`` arrays ``(num_lights, num_steps)``.

    Raises:
      ValueError: a series does not have ``num_steps`` steps or holds an unknown state.
    """
    out = empty_traffic_lights(num_steps, num_lights)
    if len(lights) > num_lights:
        observed = np.array([np.count_nonzero(light.valid) for light in lights])
        keep = np.sort(np.argsort(-observed, kind="stable")[:num_lights])
        dropped = [lights[i].lane_id for i in range(len(lights)) if i not in set(keep)]
        lights = [lights[i] for i in keep]
        if notes is not None:
            notes.append(
                f"The scenario has {len(lights) + len(dropped)} traffic lights; kept the "
                f"{num_lights} observed at the most steps and dropped those of lanes {dropped}."
            )
    valid_states = {int(s) for s in TrafficLightState}
    for slot, light in enumerate(lights):
        valid = np.asarray(light.valid, bool)
        state = np.asarray(light.state)
        xyz = np.asarray(light.xyz, np.float64)
        shapes_ok = valid.shape == state.shape == (num_steps,) and xyz.shape == (num_steps, 3)
        if not shapes_ok:
            raise ValueError(
                f"traffic light of lane {light.lane_id}: expected {num_steps} steps, got "
                f"state {state.shape}, valid {valid.shape}, xyz {xyz.shape}"
            )
        bad = sorted({int(s) for s in state[valid]} - valid_states)
        if bad:
            raise ValueError(f"traffic light of lane {light.lane_id}: unknown states {bad}")
        out[f"{TRAFFIC_LIGHT}/state"][slot] = np.where(valid, state, -1)
        out[f"{TRAFFIC_LIGHT}/lane_ids"][slot] = np.where(valid, int(light.lane_id), -1)
        for axis, name in enumerate("xyz"):
            out[f"{TRAFFIC_LIGHT}/{name}"][slot] = np.where(valid, xyz[:, axis], -1.0)
        out[f"{TRAFFIC_LIGHT}/valid"][slot] = valid
    return out


# --------------------------------------------------------------------------------------
# Time window
# --------------------------------------------------------------------------------------


def time_window(
    num_source_steps: int,
    current_time_index: int | None,
    num_steps: int = datatypes.NUM_TIMESTEPS,
    current_step: int = CURRENT_STEP,
) -> tuple[int, int, list[str]]:
    """Which source steps make the ``num_steps`` output steps.

    The window starts ``current_step`` steps before the source's current time index (so
    that it lands on ``current_step``, as in WOMD), or at 0 when that would be negative or
    the index is unknown. Source steps after the window are cut; a window running past the
    source's end is padded with invalid steps.

    Returns:
      ``(start, count, notes)``: source steps ``[start, start + count)`` fill output steps
      ``[0, count)``; ``notes`` holds one sentence per crop or pad (empty when the source
      already has exactly the window).
    """
    if num_source_steps < 1:
        raise ValueError("the scenario has no time steps")
    start = 0 if current_time_index is None else max(current_time_index - current_step, 0)
    if start >= num_source_steps:
        raise ValueError(
            f"current_time_index {current_time_index} is past the last of {num_source_steps} steps"
        )
    count = min(num_steps, num_source_steps - start)
    notes = []
    if start > 0 or count < num_source_steps:
        kept = f"The source has {num_source_steps} steps; kept steps {start}..{start + count - 1}"
        if current_time_index is None:
            notes.append(f"{kept} (the first {count / 10:g} s at 10 Hz).")
        elif start > 0:
            notes.append(
                f"{kept} so that its current time index {current_time_index} becomes step "
                f"{current_step}."
            )
        else:
            notes.append(
                f"{kept}; its current time index {current_time_index} is step "
                f"{current_time_index}, while Waymax treats step {current_step} as current."
            )
    if count < num_steps:
        notes.append(
            f"Only {count} steps available; steps {count}..{num_steps - 1} are padded invalid."
        )
    return start, count, notes
