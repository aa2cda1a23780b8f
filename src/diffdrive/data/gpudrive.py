"""GPUDrive and Nocturne scenario JSON (``*.json.gz`` / ``*.json``) -> DecodedScenario.

Both are one WOMD scenario per file (``shared/data/FORMATS.md`` section 6):
``{name, scenario_id?, objects, roads, tl_states, metadata?}``. The files come in
vintages, all handled here:

* per-step lists ``[{x, y, z?}, ...]`` or columns ``{x: [...], y: [...]}`` (Nocturne's
  ``tests_state_test.json``);
* headings in radians when objects carry their WOMD track ``id`` (newer GPUDrive), in
  degrees otherwise (Nocturne's converter writes ``math.degrees``);
* road types as WOMD codes (``map_element_id``) or only as kind strings, whose subtypes are
  then lost (see :data:`diffdrive.data.select.UNTYPED_ROAD_CODES`);
* an SDC index in ``metadata``, or none: the last object is then taken as the SDC (it is
  the SDC in every file that has metadata, and in the Scenario protos);
* no timestamps and, in older files, no box height and no z.

What a file lacks is filled by a stated rule and listed in the scenario's assumptions.
Invalid steps hold sentinels (-10000 or 0.0001) in the files; they become -1 here.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diffdrive.data import select
from diffdrive.data.types import DecodedScenario, ScenarioDecodeError
from diffdrive.sim import datatypes
from diffdrive.sim.datatypes import ObjectType, RoadType

GPUDRIVE_FORMAT = "gpudrive_json"
NOCTURNE_FORMAT = "nocturne_json"
DEFAULT_MAX_OBJECTS = 128
DEFAULT_MAX_NUM_RG_POINTS = 20000

NOMINAL_HEIGHT_M: dict[int, float] = {
    ObjectType.UNSET: 1.5,
    ObjectType.VEHICLE: 1.5,
    ObjectType.PEDESTRIAN: 1.75,
    ObjectType.CYCLIST: 1.75,
    ObjectType.OTHER: 1.5,
}
"""Box heights (m) used when a file has none (older files); stated in the assumptions."""

_OBJECT_TYPES = {
    "unset": ObjectType.UNSET,
    "vehicle": ObjectType.VEHICLE,
    "pedestrian": ObjectType.PEDESTRIAN,
    "cyclist": ObjectType.CYCLIST,
    "other": ObjectType.OTHER,
}
# Road kind -> the codes its map_element_id may take.
_KIND_CODES = {
    "lane": range(0, 4),
    "road_line": range(5, 14),
    "road_edge": range(14, 17),
    "stop_sign": (RoadType.STOP_SIGN,),
    "crosswalk": (RoadType.CROSSWALK,),
    "speed_bump": (RoadType.SPEED_BUMP,),
    "driveway": (select.DRIVEWAY_CODE,),
}
_GZIP_MAGIC = b"\x1f\x8b"


class _Where:
    def __init__(self, file: str, record: int):
        self.file, self.record = file, record

    def error(self, field: str | None, reason: str) -> ScenarioDecodeError:
        return ScenarioDecodeError(self.file, self.record, field, reason)


def _load_json(data: bytes | str | Mapping[str, Any], where: _Where) -> Mapping[str, Any]:
    """Parses JSON text or (gzipped) bytes; a mapping is returned as is."""
    if isinstance(data, Mapping):
        return data
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data)
            if data[:2] == _GZIP_MAGIC:
                data = gzip.decompress(data)
            data = data.decode("utf-8")
        scenario = json.loads(data)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise where.error(None, f"not a readable scenario JSON ({err})") from None
    if not isinstance(scenario, Mapping):
        raise where.error(None, f"top level is a {type(scenario).__name__}, not an object")
    return scenario


def _series(value: Any, num_steps: int | None, axes: str, where: _Where, path: str):
    """``(T, len(axes))`` float array from ``[{x, y}, ...]`` or ``{x: [...], y: [...]}``.

    Missing axes are NaN (the caller decides what that means).
    """
    try:
        if isinstance(value, Mapping):
            columns = [value.get(axis) for axis in axes]
            length = len(next(c for c in columns if c is not None))
            out = np.array(
                [np.full(length, np.nan) if c is None else c for c in columns], np.float64
            ).T
        elif isinstance(value, list):
            out = np.array(
                [[p.get(axis, np.nan) for axis in axes] for p in value], np.float64
            ).reshape(len(value), len(axes))
        else:
            raise TypeError(f"a {type(value).__name__}")
    except (TypeError, ValueError, AttributeError, StopIteration) as err:
        raise where.error(path, f"expected per-step {{{', '.join(axes)}}} values ({err})") from None
    if num_steps is not None and len(out) != num_steps:
        raise where.error(path, f"{len(out)} steps, expected {num_steps}")
    return out


def _numbers(value: Any, num_steps: int, where: _Where, path: str, dtype=np.float64):
    try:
        out = np.asarray(value, dtype)
    except (TypeError, ValueError) as err:
        raise where.error(path, f"expected {num_steps} numbers ({err})") from None
    if out.shape != (num_steps,):
        raise where.error(path, f"shape {out.shape}, expected ({num_steps},)")
    return out


def _int(value: Any, where: _Where, path: str) -> int:
    try:
        number = int(value)
        if isinstance(value, float) and number != value:
            raise ValueError("not an integer")
    except (TypeError, ValueError) as err:
        raise where.error(path, f"expected an integer, got {value!r} ({err})") from None
    if not np.iinfo(np.int32).min <= number <= np.iinfo(np.int32).max:
        raise where.error(path, f"{number} does not fit int32")
    return number


def _decode_objects(scenario: Mapping, where: _Where, heading_unit: str, notes: list[str]):
    objects = scenario.get("objects")
    if not isinstance(objects, list) or not objects:
        raise where.error("objects", "missing or empty: a scenario needs at least the SDC")
    first_valid = objects[0].get("valid") if isinstance(objects[0], Mapping) else None
    if not isinstance(first_valid, list):
        raise where.error("objects[0].valid", "missing per-step validity")
    num_steps = len(first_valid)
    with_ids = [isinstance(o, Mapping) and "id" in o for o in objects]
    if any(with_ids) and not all(with_ids):
        raise where.error("objects", "some objects carry an 'id' and some do not")
    has_ids = all(with_ids)
    if heading_unit == "auto":
        heading_unit = "rad" if has_ids else "deg"
        notes.append(
            "Headings read as radians (objects carry track ids: the GPUDrive vintage)."
            if has_ids
            else "Headings read as degrees (objects carry no track ids: the Nocturne-converter "
            "vintage, which writes math.degrees)."
        )
    elif heading_unit not in ("rad", "deg"):
        raise ValueError(f"heading_unit must be 'auto', 'rad' or 'deg', got {heading_unit!r}")
    count = len(objects)
    pos = np.zeros((count, num_steps, 3))
    vel = np.zeros((count, num_steps, 2))
    heading = np.zeros((count, num_steps))
    valid = np.zeros((count, num_steps), bool)
    length, width, height = np.zeros(count), np.zeros(count), np.full(count, np.nan)
    types, ids = np.zeros(count, np.int64), np.arange(count, dtype=np.int64)
    for i, obj in enumerate(objects):
        path = f"objects[{i}]"
        if not isinstance(obj, Mapping):
            raise where.error(path, f"a {type(obj).__name__}, not an object")
        for key in ("position", "heading", "velocity", "valid", "length", "width", "type"):
            if key not in obj:
                raise where.error(f"{path}.{key}", "missing")
        valid[i] = _numbers(obj["valid"], num_steps, where, f"{path}.valid", bool)
        pos[i] = _series(obj["position"], num_steps, "xyz", where, f"{path}.position")
        vel[i] = _series(obj["velocity"], num_steps, "xy", where, f"{path}.velocity")
        heading[i] = _numbers(obj["heading"], num_steps, where, f"{path}.heading")
        for name, target in (("length", length), ("width", width), ("height", height)):
            if name in obj:
                try:
                    target[i] = float(obj[name])
                except (TypeError, ValueError) as err:
                    raise where.error(f"{path}.{name}", f"not a number ({err})") from None
        kind = obj["type"]
        if not isinstance(kind, str) or kind.lower() not in _OBJECT_TYPES:
            raise where.error(f"{path}.type", f"unknown object type {kind!r}")
        types[i] = _OBJECT_TYPES[kind.lower()]
        if has_ids:
            ids[i] = _int(obj["id"], where, f"{path}.id")
    if not has_ids:
        notes.append("Objects carry no track ids; ids are their index in the file.")
    xy_ok = np.isfinite(pos[..., :2]).all(axis=-1) & np.isfinite(vel).all(axis=-1)
    bad = valid & ~(xy_ok & np.isfinite(heading))
    if bad.any():
        i, t = np.argwhere(bad)[0]
        raise where.error(f"objects[{i}]", f"missing or non-finite value at valid step {t}")
    z_missing = np.isnan(pos[..., 2]) & valid
    if z_missing[valid].all():
        pos[..., 2] = 0.0
        notes.append("Object positions have no z; z set to 0.")
    elif z_missing.any():
        i, t = np.argwhere(z_missing)[0]
        raise where.error(f"objects[{i}].position", f"no z at valid step {t}, unlike others")
    if np.isnan(height).all():
        height = np.array([NOMINAL_HEIGHT_M[int(t)] for t in types])
        notes.append(
            "The file has no box heights; used nominal ones: "
            + ", ".join(f"{ObjectType(k).name.lower()} {v} m" for k, v in NOMINAL_HEIGHT_M.items())
            + "."
        )
    elif np.isnan(height).any():
        raise where.error(f"objects[{int(np.argmax(np.isnan(height)))}].height", "missing")
    notes.append(
        "Box length, width and height are one value per object as stored (the converters "
        "take the last valid step's size), not Waymax's mean over valid steps."
    )
    if heading_unit == "deg":
        heading = np.deg2rad(heading)
    return {
        "x": pos[..., 0],
        "y": pos[..., 1],
        "z": pos[..., 2],
        "yaw": heading,
        "vel_x": vel[..., 0],
        "vel_y": vel[..., 1],
        "length": length,
        "width": width,
        "height": height,
        "valid": valid,
        "ids": ids,
        "object_types": types,
    }, has_ids


def _decode_flags(scenario, objects: dict, has_ids: bool, where: _Where, notes: list[str]):
    count = objects["valid"].shape[0]
    is_modeled = np.zeros(count, bool)
    interest = np.zeros(count, bool)
    metadata = scenario.get("metadata")
    if metadata is None:
        last = count - 1
        if objects["object_types"][last] != ObjectType.VEHICLE or not objects["valid"][last].all():
            raise where.error(
                "metadata",
                "missing, and the last object is not a vehicle valid at every step, so the "
                "SDC cannot be told",
            )
        notes.append(
            "The file has no metadata: took the last object (a vehicle valid at every step) "
            "as the SDC, as in every file that has metadata; no tracks to predict or objects "
            "of interest."
        )
        return np.arange(count) == last, is_modeled, interest
    if not isinstance(metadata, Mapping):
        raise where.error("metadata", f"a {type(metadata).__name__}, not an object")
    if "sdc_track_index" not in metadata:
        raise where.error("metadata.sdc_track_index", "missing")
    sdc = _int(metadata["sdc_track_index"], where, "metadata.sdc_track_index")
    if not 0 <= sdc < count:
        raise where.error("metadata.sdc_track_index", f"{sdc} is not one of {count} objects")
    for k, entry in enumerate(metadata.get("tracks_to_predict") or []):
        path = f"metadata.tracks_to_predict[{k}].track_index"
        if not isinstance(entry, Mapping) or "track_index" not in entry:
            raise where.error(path, "missing")
        index = _int(entry["track_index"], where, path)
        if not 0 <= index < count:
            raise where.error(path, f"{index} is not one of {count} objects")
        is_modeled[index] = True
    wanted = metadata.get("objects_of_interest") or []
    if wanted:
        if not has_ids:
            raise where.error("metadata.objects_of_interest", "objects carry no ids to match")
        wanted = [_int(v, where, "metadata.objects_of_interest") for v in wanted]
        unknown = sorted(set(wanted) - set(objects["ids"].tolist()))
        if unknown:
            raise where.error("metadata.objects_of_interest", f"ids {unknown} are not objects")
        interest = np.isin(objects["ids"], wanted)
    return np.arange(count) == sdc, is_modeled, interest


def _decode_roads(scenario: Mapping, where: _Where, notes: list[str]):
    roads = scenario.get("roads")
    if not isinstance(roads, list):
        raise where.error("roads", "missing")
    polylines, driveways, untyped, without_ids, without_z = [], 0, 0, 0, 0
    for i, road in enumerate(roads):
        path = f"roads[{i}]"
        if not isinstance(road, Mapping) or "geometry" not in road or "type" not in road:
            raise where.error(path, "expected an object with 'geometry' and 'type'")
        kind = road["type"]
        if kind not in _KIND_CODES:
            raise where.error(f"{path}.type", f"unknown road type {kind!r}")
        if "map_element_id" in road:
            code = _int(road["map_element_id"], where, f"{path}.map_element_id")
            if code not in _KIND_CODES[kind]:
                raise where.error(f"{path}.map_element_id", f"code {code} is not a {kind}")
        elif kind == "driveway":
            code = select.DRIVEWAY_CODE
        else:
            code = select.UNTYPED_ROAD_CODES[kind]
            untyped += 1
        if code == select.DRIVEWAY_CODE:
            driveways += 1
            continue
        xyz = _series(road["geometry"], None, "xyz", where, f"{path}.geometry")
        if not np.isfinite(xyz[:, :2]).all():
            raise where.error(f"{path}.geometry", "missing or non-finite x/y")
        if np.isnan(xyz[:, 2]).any():
            if not np.isnan(xyz[:, 2]).all():
                raise where.error(f"{path}.geometry", "z on some points only")
            xyz[:, 2] = 0.0
            without_z += 1
        if "id" in road:
            feature_id = _int(road["id"], where, f"{path}.id")
        else:
            feature_id = i
            without_ids += 1
        polylines.append((xyz, code, feature_id))
    if untyped:
        notes.append(select.UNTYPED_ROAD_ASSUMPTION)
    if without_ids:
        notes.append(f"{without_ids} roads carry no feature id; their id is their index.")
    if without_z:
        notes.append(f"{without_z} roads have no z; z set to 0.")
    if driveways:
        notes.append(f"Dropped {driveways} driveways: Waymax has no road type for them.")
    notes.append(
        "Roadgraph points are the roads' own points in file order (crosswalk and speed-bump "
        "polygons as their corners, a stop sign as one point), not resampled."
    )
    return polylines


def _decode_traffic_lights(scenario: Mapping, num_steps: int, where: _Where, notes: list[str]):
    states = scenario.get("tl_states") or {}
    if not isinstance(states, Mapping):
        raise where.error("tl_states", f"a {type(states).__name__}, not an object")
    lights, without_z = [], 0
    for key, light in states.items():
        path = f"tl_states[{key!r}]"
        lane = _int(key, where, path)
        if not isinstance(light, Mapping) or "state" not in light:
            raise where.error(f"{path}.state", "missing")
        names = light["state"]
        steps = light.get("time_index", list(range(len(names))))
        if not isinstance(names, list) or not isinstance(steps, list) or len(steps) != len(names):
            raise where.error(path, "state and time_index must be lists of one length")
        steps = [_int(step, where, f"{path}.time_index[{k}]") for k, step in enumerate(steps)]
        for k, step in enumerate(steps):
            if not 0 <= step < num_steps:
                raise where.error(f"{path}.time_index[{k}]", f"step {step} of {num_steps}")
        series = select.TrafficLightSeries(
            lane_id=lane,
            state=np.full(num_steps, -1, np.int64),
            valid=np.zeros(num_steps, bool),
            xyz=np.full((num_steps, 3), -1.0),
        )
        if light.get("z") is None:
            without_z += 1
        for axis, name in enumerate("xyz"):
            values = light.get(name)
            if values is None and name == "z":
                values = [0.0] * len(names)
            series.xyz[steps, axis] = _numbers(values, len(names), where, f"{path}.{name}")
        for k, (step, name) in enumerate(zip(steps, names)):
            code = select.TRAFFIC_LIGHT_STATE_BY_NAME.get(str(name).upper())
            if code is None:
                raise where.error(f"{path}.state[{k}]", f"unknown signal state {name!r}")
            series.state[step], series.valid[step] = code, True
        lights.append(series)
    if without_z:
        notes.append(f"{without_z} traffic-light stop points have no z; z set to 0.")
    return lights


def decode_gpudrive(
    data: bytes | str | Mapping[str, Any],
    source: str = "<json>",
    record_index: int = 0,
    *,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    max_num_rg_points: int = DEFAULT_MAX_NUM_RG_POINTS,
    heading_unit: str = "auto",
    format_name: str = GPUDRIVE_FORMAT,
) -> DecodedScenario:
    """Decodes one GPUDrive/Nocturne scenario JSON into Waymax-style flat arrays.

    Args:
      data: the file's bytes (gzipped or not), its text, or the parsed object.
      source: file name used in errors and in the result.
      record_index: index of the scenario within its source (0 for these files).
      max_objects: object slots ``N`` (SDC first; nearest to the SDC when cut).
      max_num_rg_points: roadgraph points ``P`` (nearest to the SDC when cut).
      heading_unit: ``"auto"`` (radians if objects carry ids, else degrees), ``"rad"`` or
        ``"deg"``.
      format_name: the format recorded in the result (``gpudrive_json`` or
        ``nocturne_json``).

    Returns:
      A :class:`DecodedScenario` with ``log_trajectory/*`` ``(N, 91)``,
      ``object_metadata/*`` ``(N,)``, ``roadgraph_points/*`` ``(P,)`` and
      ``log_traffic_light/*`` ``(16, 91)``; what the file lacks is in ``assumptions``.

    Raises:
      ScenarioDecodeError: the JSON is unreadable or inconsistent; the message names the
        file, record and field (e.g. ``objects[3].velocity``).
    """
    where = _Where(source, record_index)
    scenario = _load_json(data, where)
    notes: list[str] = []
    objects, has_ids = _decode_objects(scenario, where, heading_unit, notes)
    is_sdc, is_modeled, interest = _decode_flags(scenario, objects, has_ids, where, notes)
    num_source_steps = objects["valid"].shape[1]
    num_steps = datatypes.NUM_TIMESTEPS
    start, count, window_notes = select.time_window(num_source_steps, None, num_steps)
    notes += window_notes
    notes.append("The file has no timestamps; step k is at k * 0.1 s (10 Hz).")

    def window(a: np.ndarray, fill) -> np.ndarray:
        out = np.full((a.shape[0], num_steps), fill, a.dtype)
        out[:, :count] = a[:, start : start + count]
        return out

    per_step = ("x", "y", "z", "yaw", "vel_x", "vel_y")
    arrays = select.build_object_arrays(
        **{name: window(objects[name], -1.0) for name in per_step},
        length=objects["length"],
        width=objects["width"],
        height=objects["height"],
        valid=window(objects["valid"], False),
        timestamps_micros=np.arange(start, start + num_steps) * datatypes.TIMESTEP_MICROS_INTERVAL,
        ids=objects["ids"],
        object_types=objects["object_types"],
        is_sdc=is_sdc,
        is_modeled=is_modeled,
        objects_of_interest=interest,
    )
    num_objects = len(is_sdc)
    if num_objects > max_objects:
        notes.append(
            f"The file has {num_objects} objects; kept {max_objects}: the SDC, the tracks to "
            "predict, then the nearest to the SDC at step 10."
        )
    polylines = _decode_roads(scenario, where, notes)
    try:
        arrays, _ = select.select_objects(arrays, max_objects, select.CURRENT_STEP)
        arrays.update(select.polylines_to_roadgraph(polylines))
        arrays = select.pad_roadgraph(arrays, max_num_rg_points, notes=notes)
    except ValueError as err:
        raise where.error("objects", str(err)) from None
    lights = []
    for light in _decode_traffic_lights(scenario, num_source_steps, where, notes):
        cut = select.TrafficLightSeries(
            light.lane_id,
            np.full(num_steps, -1, np.int64),
            np.zeros(num_steps, bool),
            np.full((num_steps, 3), -1.0),
        )
        cut.state[:count] = light.state[start : start + count]
        cut.valid[:count] = light.valid[start : start + count]
        cut.xyz[:count] = light.xyz[start : start + count]
        lights.append(cut)
    arrays.update(select.traffic_lights_to_arrays(lights, num_steps, notes=notes))
    if lights:
        notes.append("Each traffic light (controlled lane) has one fixed slot, in file order.")
    scenario_id = scenario.get("scenario_id") or str(scenario.get("name") or Path(source).name)
    return DecodedScenario(
        scenario_id=str(scenario_id).removesuffix(".json"),
        format=format_name,
        arrays=arrays,
        source=source,
        record_index=record_index,
        assumptions=tuple(notes),
    )


def decode_nocturne(
    data: bytes | str | Mapping[str, Any],
    source: str = "<json>",
    record_index: int = 0,
    *,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    max_num_rg_points: int = DEFAULT_MAX_NUM_RG_POINTS,
    heading_unit: str = "auto",
) -> DecodedScenario:
    """:func:`decode_gpudrive` recording the format as ``nocturne_json``."""
    return decode_gpudrive(
        data,
        source,
        record_index,
        max_objects=max_objects,
        max_num_rg_points=max_num_rg_points,
        heading_unit=heading_unit,
        format_name=NOCTURNE_FORMAT,
    )


def read_gpudrive_file(
    path: str | os.PathLike,
    *,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    max_num_rg_points: int = DEFAULT_MAX_NUM_RG_POINTS,
    heading_unit: str = "auto",
    format_name: str = GPUDRIVE_FORMAT,
) -> Iterator[DecodedScenario]:
    """Reads one GPUDrive/Nocturne JSON file (``.json`` or ``.json.gz``): one scenario.

    Args:
      path: the file.
      max_objects, max_num_rg_points, heading_unit, format_name: see
        :func:`decode_gpudrive`.

    Yields:
      The file's scenario (record index 0).
    """
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except OSError as err:
        raise ScenarioDecodeError(source, None, None, f"cannot read ({err})") from None
    yield decode_gpudrive(
        data,
        source,
        0,
        max_objects=max_objects,
        max_num_rg_points=max_num_rg_points,
        heading_unit=heading_unit,
        format_name=format_name,
    )


def read_nocturne_file(
    path: str | os.PathLike,
    *,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    max_num_rg_points: int = DEFAULT_MAX_NUM_RG_POINTS,
    heading_unit: str = "auto",
) -> Iterator[DecodedScenario]:
    """:func:`read_gpudrive_file` recording the format as ``nocturne_json``."""
    return read_gpudrive_file(
        path,
        max_objects=max_objects,
        max_num_rg_points=max_num_rg_points,
        heading_unit=heading_unit,
        format_name=NOCTURNE_FORMAT,
    )
