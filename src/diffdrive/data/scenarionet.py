"""ScenarioNet / MetaDrive scenario pickles (``*.pkl``) -> DecodedScenario.

A ScenarioNet pickle is a plain dict (``shared/data/FORMATS.md`` section 6). Pickles are
data from outside, so they are only ever loaded with :class:`RestrictedUnpickler`, which
admits numpy array reconstruction, numpy dtypes and scalars, and builtin containers, and
refuses every other global (``os.system``, ``builtins.eval``, ...) before anything runs.

Several vintages are read:

* ScenarioNet (``metadata`` with ``ts``, ``sdc_id``, ``current_time_index``, per-track
  ``length``/``width``/``height``, traffic-light states as ``LANE_STATE_*`` strings);
* MetaDrive 0.3 (``state.size`` ``(T, 3)``, ``sdc_track_index``/``ts`` at the top level,
  traffic lights as per-step integer codes with ``lane`` 0 where absent, ``CROSS_WALK``);
* the earliest MetaDrive format (``map`` instead of ``map_features``, ``sdc_index`` into
  the track order, ``state`` one ``(T, 10)`` array: x, y, z, length, width, height,
  heading, vel_x, vel_y, valid; lower-case, subtype-less map kinds).

Conversion: tracks (SDC from ``sdc_id``), box sizes the mean over valid steps (as Waymax),
map features with WOMD type names mapped to the tf.Example codes, traffic lights, and time
brought to 91 steps at 10 Hz. Sources sampled at 10 Hz are windowed with
:func:`diffdrive.data.select.time_window` (e.g. the first 9.1 s of a 20 s scenario); other
sample periods are linearly resampled onto a 10 Hz grid. Every such step is stated in the
scenario's assumptions.
"""

from __future__ import annotations

import builtins
import codecs
import collections
import io
import os
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diffdrive.data import select
from diffdrive.data.types import DecodedScenario, ScenarioDecodeError
from diffdrive.sim import datatypes
from diffdrive.sim.datatypes import ObjectType, RoadType

FORMAT = "scenarionet"
DEFAULT_MAX_OBJECTS = 128
DEFAULT_MAX_NUM_RG_POINTS = 20000
PERIOD_TOLERANCE = 0.05
"""Relative deviation of the median sample period from 0.1 s still read step by step."""

# --------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------


def _allowed_globals() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray, numeric

    allowed: dict[tuple[str, str], Any] = {}
    # Pickles written by numpy 1.x name numpy.core, by numpy 2.x numpy._core.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "bool", "str"):
        allowed[("builtins", name)] = getattr(builtins, name)
    allowed[("builtins", "complex")] = complex
    # Protocol 2 pickles store bytes as _codecs.encode(text, "latin1"): a pure conversion.
    allowed[("_codecs", "encode")] = codecs.encode
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("collections", "defaultdict")] = collections.defaultdict
    return allowed


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _allowed_globals()
"""``(module, name)`` -> object: the only globals a scenario pickle may reference."""


class ForbiddenPickleError(ScenarioDecodeError):
    """A pickle referenced a global outside :data:`ALLOWED_GLOBALS`; nothing was run."""

    def __init__(self, file: str, module: str, name: str):
        self.forbidden = f"{module}.{name}"
        super().__init__(
            file,
            None,
            None,
            f"refused to unpickle: the pickle references {self.forbidden!r}, which is not an "
            "allowed numpy or builtin container type (scenario pickles need nothing else)",
        )


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only builds numpy arrays, dtypes, scalars and plain containers.

    ``find_class`` is the only way a pickle reaches Python objects by name; anything not
    in :data:`ALLOWED_GLOBALS` raises :class:`ForbiddenPickleError` naming the file and
    the refused ``module.name``, before any of it is imported or called.
    """

    def __init__(self, stream, source: str):
        super().__init__(stream)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise ForbiddenPickleError(self.source, module, name)
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenPickleError(self.source, "<persistent id>", repr(pid)[:40])


def load_pickle(data: bytes, source: str = "<pickle>") -> Any:
    """Unpickles ``data`` with :class:`RestrictedUnpickler`.

    Raises:
      ForbiddenPickleError: the pickle references a global that is not allowed.
      ScenarioDecodeError: the bytes are not a readable pickle.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except ScenarioDecodeError:
        raise
    except Exception as err:  # a corrupt pickle can fail in many ways
        raise ScenarioDecodeError(source, None, None, f"not a readable pickle ({err!r})") from None


# --------------------------------------------------------------------------------------
# Decoding helpers
# --------------------------------------------------------------------------------------

_POLYGON_CODES = {RoadType.CROSSWALK, RoadType.SPEED_BUMP, select.DRIVEWAY_CODE}
_MAP_NAME_ALIASES = {"CROSS_WALK": RoadType.CROSSWALK, "DRIVEWAY": select.DRIVEWAY_CODE}
_OLD_MAP_KINDS = {"center_lane": "lane", "road_line": "road_line", "road_edge": "road_edge"}


class _Where:
    def __init__(self, file: str, record: int):
        self.file, self.record = file, record

    def error(self, field: str | None, reason: str) -> ScenarioDecodeError:
        return ScenarioDecodeError(self.file, self.record, field, reason)


def _array(value: Any, where: _Where, path: str, shape_tail: tuple = (), length=None):
    """``value`` as float64 ``(T, *shape_tail)``; ``(T, 1)`` is squeezed to ``(T,)``."""
    try:
        a = np.asarray(value, np.float64)
    except (TypeError, ValueError) as err:
        raise where.error(path, f"not numeric ({err})") from None
    if not shape_tail and a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1 + len(shape_tail) or a.shape[1:] != shape_tail:
        want = ("T", *shape_tail)
        raise where.error(path, f"shape {a.shape}, expected {want}")
    if length is not None and len(a) != length:
        raise where.error(path, f"{len(a)} steps, expected {length}")
    return a


def _as_int_id(key: Any) -> int | None:
    try:
        value = int(key)
    except (TypeError, ValueError):
        return None
    if isinstance(key, float) or not np.iinfo(np.int32).min <= value <= np.iinfo(np.int32).max:
        return None
    return value


def _decode_track(key: Any, track: Any, num_steps: int, where: _Where):
    path = f"tracks[{key!r}]"
    if not isinstance(track, Mapping) or "state" not in track or "type" not in track:
        raise where.error(path, "expected a dict with 'type' and 'state'")
    state = track["state"]
    if isinstance(state, np.ndarray):  # earliest MetaDrive: (T, 10)
        s = _array(state, where, f"{path}.state", (10,), num_steps)
        out = {
            "x": s[:, 0],
            "y": s[:, 1],
            "z": s[:, 2],
            "length": s[:, 3],
            "width": s[:, 4],
            "height": s[:, 5],
            "yaw": s[:, 6],
            "vel_x": s[:, 7],
            "vel_y": s[:, 8],
            "valid": s[:, 9] > 0,
        }
    elif isinstance(state, Mapping):
        for name in ("position", "heading", "velocity", "valid"):
            if name not in state:
                raise where.error(f"{path}.state.{name}", "missing")
        position = np.asarray(state["position"])
        dims = position.shape[1:] if position.ndim == 2 else ()
        if dims not in ((2,), (3,)):
            raise where.error(f"{path}.state.position", f"shape {position.shape}")
        position = _array(position, where, f"{path}.state.position", dims, num_steps)
        velocity = _array(state["velocity"], where, f"{path}.state.velocity", (2,), num_steps)
        out = {
            "x": position[:, 0],
            "y": position[:, 1],
            "z": position[:, 2] if dims == (3,) else np.zeros(num_steps),
            "yaw": _array(state["heading"], where, f"{path}.state.heading", (), num_steps),
            "vel_x": velocity[:, 0],
            "vel_y": velocity[:, 1],
            "valid": _array(state["valid"], where, f"{path}.state.valid", (), num_steps) > 0,
        }
        if "size" in state:
            size = _array(state["size"], where, f"{path}.state.size", (3,), num_steps)
            out["length"], out["width"], out["height"] = size[:, 0], size[:, 1], size[:, 2]
        else:
            for name in ("length", "width", "height"):
                if name not in state:
                    raise where.error(f"{path}.state.{name}", "missing (and no 'size')")
                out[name] = _array(state[name], where, f"{path}.state.{name}", (), num_steps)
        out["no_z"] = dims == (2,)
    else:
        raise where.error(f"{path}.state", f"a {type(state).__name__}")
    kind = track["type"]
    if isinstance(kind, (int, np.integer)) and 0 <= int(kind) < len(ObjectType):
        out["type"], out["type_name"] = int(kind), None
    elif isinstance(kind, str):
        name = kind.upper()
        if name in select.OBJECT_TYPE_BY_NAME:
            out["type"], out["type_name"] = int(select.OBJECT_TYPE_BY_NAME[name]), None
        else:  # static objects and other non-WOMD categories (TRAFFIC_CONE, ...)
            out["type"], out["type_name"] = int(ObjectType.OTHER), name
    else:
        raise where.error(f"{path}.type", f"unknown object type {kind!r}")
    valid = out["valid"]
    for name in ("x", "y", "yaw", "vel_x", "vel_y", "length", "width", "height"):
        if not np.isfinite(out[name][valid]).all():
            raise where.error(f"{path}.state", f"non-finite {name} at a valid step")
    return out


def _resample(times: np.ndarray, grid: np.ndarray, track: dict) -> dict:
    """Linear interpolation of a track onto ``grid`` (s); valid where both neighbours are."""
    out = dict(track)
    num = len(times)
    right = np.clip(np.searchsorted(times, grid, side="right"), 1, num - 1)
    left = right - 1
    span = times[right] - times[left]
    weight = np.clip((grid - times[left]) / np.where(span > 0, span, 1.0), 0.0, 1.0)
    inside = (grid >= times[0] - 1e-9) & (grid <= times[-1] + 1e-9)
    exact_left = np.isclose(grid, times[left], atol=1e-6)
    exact_right = np.isclose(grid, times[right], atol=1e-6)
    valid = track["valid"]
    out["valid"] = inside & np.where(
        exact_left,
        valid[left],
        np.where(exact_right, valid[right], valid[left] & valid[right]),
    )
    for name in ("x", "y", "z", "vel_x", "vel_y", "length", "width", "height"):
        a = track[name]
        out[name] = a[left] + weight * (a[right] - a[left])
    turn = select.wrap_yaw(track["yaw"][right] - track["yaw"][left]).astype(np.float64)
    out["yaw"] = track["yaw"][left] + weight * turn
    return out


def _map_code(fid: Any, feature: Mapping, where: _Where, counts: dict) -> int | None:
    """The roadgraph code of a map feature (None: dropped driveway)."""
    path = f"map_features[{fid!r}].type"
    kind = feature.get("type")
    if isinstance(kind, Mapping):
        # Early MetaDrive pickles stored speed bumps with a self-referencing 'type' (and
        # dropped crosswalks, or marked them 'sign': 'cross_walk'); the polygons are
        # about 1 m deep, like WOMD speed bumps.
        counts["self_ref"] += 1
        return int(RoadType.SPEED_BUMP)
    if kind is None:
        if feature.get("sign") == "cross_walk":
            return int(RoadType.CROSSWALK)
        raise where.error(path, "missing")
    if not isinstance(kind, str):
        raise where.error(path, f"unknown map feature type {kind!r}")
    if kind in _OLD_MAP_KINDS:
        counts["untyped"] += 1
        return int(select.UNTYPED_ROAD_CODES[_OLD_MAP_KINDS[kind]])
    name = kind.upper()
    code = select.ROAD_TYPE_BY_NAME.get(name, _MAP_NAME_ALIASES.get(name))
    if code is None:
        raise where.error(path, f"unknown map feature type {kind!r}")
    if code == select.DRIVEWAY_CODE:
        counts["driveway"] += 1
        return None
    return int(code)


def _decode_map(scenario: Mapping, where: _Where, notes: list[str]):
    features = scenario.get("map_features", scenario.get("map"))
    if not isinstance(features, Mapping):
        raise where.error("map_features", "missing")
    counts = {"self_ref": 0, "untyped": 0, "driveway": 0, "no_id": 0}
    polylines = []
    for index, (fid, feature) in enumerate(features.items()):
        path = f"map_features[{fid!r}]"
        if not isinstance(feature, Mapping):
            raise where.error(path, f"a {type(feature).__name__}, not a dict")
        code = _map_code(fid, feature, where, counts)
        if code is None:
            continue
        if code == RoadType.STOP_SIGN:
            position = feature.get("position", feature.get("pos"))
            if position is None:
                raise where.error(f"{path}.position", "stop sign without a position")
            points = np.asarray(position, np.float64).reshape(1, -1)
        else:
            order = ("polygon", "polyline") if code in _POLYGON_CODES else ("polyline",)
            geometry = next((feature[k] for k in order if k in feature), None)
            if geometry is None:
                raise where.error(f"{path}.{order[0]}", "missing")
            points = np.asarray(geometry, np.float64)
        if points.ndim != 2 or points.shape[1] not in (2, 3) or not np.isfinite(points).all():
            raise where.error(path, f"bad geometry of shape {points.shape}")
        feature_id = _as_int_id(fid)
        if feature_id is None:
            feature_id = index
            counts["no_id"] += 1
        polylines.append((points, code, feature_id))
    if counts["untyped"]:
        notes.append(select.UNTYPED_ROAD_ASSUMPTION)
    if counts["self_ref"]:
        notes.append(
            f"{counts['self_ref']} polygons of an early MetaDrive pickle have no usable type "
            "(a self-referencing 'type'); read as speed bumps, the polygon kind such pickles "
            "kept besides crosswalks."
        )
    if counts["driveway"]:
        notes.append(f"Dropped {counts['driveway']} driveways: Waymax has no road type for them.")
    if counts["no_id"]:
        notes.append(
            f"{counts['no_id']} map features have non-integer ids; their id is their index."
        )
    notes.append(
        "Roadgraph points are the map features' own points (lanes as their center "
        "polylines, crosswalk and speed-bump polygons as their corners, a stop sign as one "
        "point), not resampled."
    )
    return polylines


def _light_state_code(value: Any, where: _Where, path: str) -> int:
    if isinstance(value, (int, np.integer)):
        code = int(value)
        if not 0 <= code < len(datatypes.TrafficLightState):
            raise where.error(path, f"unknown signal state {code}")
        return code
    name = str(value).upper().removeprefix("LANE_STATE_")
    if name not in select.TRAFFIC_LIGHT_STATE_BY_NAME:
        raise where.error(path, f"unknown signal state {value!r}")
    return int(select.TRAFFIC_LIGHT_STATE_BY_NAME[name])


def _decode_lights(scenario: Mapping, num_steps: int, where: _Where):
    """``(lane, state (T,), valid (T,), xyz (T, 3))`` per light, at the source's steps."""
    states = scenario.get("dynamic_map_states") or {}
    if isinstance(states, list):
        # Early pickles hold [{}] or [[{}]] here: no traffic lights were converted.
        flat = [x for item in states for x in (item if isinstance(item, list) else [item])]
        if any(flat):
            raise where.error("dynamic_map_states", "a non-empty list (unknown layout)")
        return []
    if not isinstance(states, Mapping):
        raise where.error("dynamic_map_states", f"a {type(states).__name__}")
    lights = []
    for key, light in states.items():
        path = f"dynamic_map_states[{key!r}]"
        if not isinstance(light, Mapping) or not isinstance(light.get("state"), Mapping):
            raise where.error(f"{path}.state", "missing")
        state = light["state"]
        values = state.get("object_state")
        if values is None or len(values) != num_steps:
            raise where.error(f"{path}.state.object_state", f"expected {num_steps} steps")
        lane = light.get("lane")
        if lane is None or isinstance(lane, np.ndarray):
            lane = key
        lane = _as_int_id(lane)
        if lane is None:
            raise where.error(f"{path}.lane", "not an integer lane id")
        codes = np.full(num_steps, -1, np.int64)
        if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
            # MetaDrive 0.3: integer codes, with the per-step 'lane' set only where the
            # light was observed (0 elsewhere).
            lanes = _array(state.get("lane"), where, f"{path}.state.lane", (), num_steps)
            valid = lanes == lane
            for t in np.flatnonzero(valid):
                codes[t] = _light_state_code(values[t], where, f"{path}.state.object_state")
        else:
            valid = np.array([v is not None for v in values])
            for t in np.flatnonzero(valid):
                codes[t] = _light_state_code(values[t], where, f"{path}.state.object_state")
        stop = state.get("stop_point", light.get("stop_point"))
        if stop is None:
            raise where.error(f"{path}.stop_point", "missing")
        stop = np.asarray(stop, np.float64)
        if stop.shape == (3,):
            stop = np.tile(stop, (num_steps, 1))
        elif stop.shape != (num_steps, 3):
            raise where.error(f"{path}.stop_point", f"shape {stop.shape}")
        lights.append((lane, codes, valid, stop))
    return lights


def _sdc_key(scenario: Mapping, keys: list, where: _Where) -> Any:
    metadata = scenario.get("metadata") or {}
    by_str = {str(k): k for k in keys}
    for field, value in (
        ("metadata.sdc_id", metadata.get("sdc_id")),
        ("sdc_track_index", scenario.get("sdc_track_index")),
    ):
        if value is not None:
            if str(value) not in by_str:
                raise where.error(field, f"{value!r} is not a track id")
            return by_str[str(value)]
    if scenario.get("sdc_index") is not None:  # earliest format: index into track order
        index = _as_int_id(scenario["sdc_index"])
        if index is None or not 0 <= index < len(keys):
            raise where.error("sdc_index", f"{scenario['sdc_index']!r} is not a track index")
        return keys[index]
    raise where.error("metadata.sdc_id", "missing: the SDC cannot be told")


def _time_grid(scenario: Mapping, num_source_steps: int, where: _Where, notes: list[str]):
    """The source times ``(T_src,)`` (s), the 91 output times, and the window.

    Returns:
      ``(times, grid, window)``: ``window`` is ``(start, count)`` (source steps
      ``[start, start + count)`` are output steps ``[0, count)``) for sources sampled at
      10 Hz, or None when the tracks must be resampled onto ``grid``.
    """
    metadata = scenario.get("metadata") or {}
    num_steps = datatypes.NUM_TIMESTEPS
    times = metadata.get("ts", scenario.get("ts"))
    if times is None:
        times = np.arange(num_source_steps) * datatypes.TIME_INTERVAL
        notes.append("The pickle has no timestamps ('ts'); assumed 10 Hz from step 0.")
    times = _array(times, where, "metadata.ts", (), num_source_steps)
    if num_source_steps > 1 and not (np.diff(times) > 0).all():
        raise where.error("metadata.ts", "timestamps do not increase")
    period = float(np.median(np.diff(times))) if num_source_steps > 1 else 0.1
    current = metadata.get("current_time_index")
    if current is not None:
        current = _as_int_id(current)
        if current is None or not 0 <= current < num_source_steps:
            raise where.error(
                "metadata.current_time_index",
                f"{metadata['current_time_index']!r} is not one of {num_source_steps} steps",
            )
    if abs(period / datatypes.TIME_INTERVAL - 1.0) <= PERIOD_TOLERANCE:
        start, count, window_notes = select.time_window(num_source_steps, current, num_steps)
        notes += window_notes
        return times, times[start : start + count], (start, count)
    # Output step 10 (Waymax's current step) lands on the source's current time.
    origin = times[0] if current is None else max(times[current] - 1.0, times[0])
    grid = origin + datatypes.TIME_INTERVAL * np.arange(num_steps)
    notes.append(
        f"The source is sampled every {period:.3f} s; resampled linearly onto 10 Hz from "
        f"t = {origin - times[0]:.2f} s (valid where both neighbours are valid; traffic "
        "lights take the nearest sample)."
    )
    return times, grid, None


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def decode_scenarionet(
    data: bytes | Mapping[str, Any],
    source: str = "<pickle>",
    record_index: int = 0,
    *,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    max_num_rg_points: int = DEFAULT_MAX_NUM_RG_POINTS,
) -> DecodedScenario:
    """Decodes one ScenarioNet/MetaDrive scenario into Waymax-style flat arrays.

    Args:
      data: the pickle's bytes (unpickled with :class:`RestrictedUnpickler`), or the dict.
      source: file name used in errors and in the result.
      record_index: index of the scenario within its source (0 for these files).
      max_objects: object slots ``N`` (SDC first; nearest to the SDC when cut).
      max_num_rg_points: roadgraph points ``P`` (nearest to the SDC when cut).

    Returns:
      A :class:`DecodedScenario` with ``log_trajectory/*`` ``(N, 91)``,
      ``object_metadata/*`` ``(N,)``, ``roadgraph_points/*`` ``(P,)`` and
      ``log_traffic_light/*`` ``(16, 91)``; the time window and anything assumed are in
      ``assumptions``.

    Raises:
      ForbiddenPickleError: the pickle references a global outside the allow list.
      ScenarioDecodeError: unreadable or inconsistent content (names file, record, field).
    """
    where = _Where(source, record_index)
    scenario = load_pickle(data, source) if isinstance(data, (bytes, bytearray)) else data
    if not isinstance(scenario, Mapping) or "tracks" not in scenario:
        if isinstance(scenario, Mapping) and all(str(k).endswith(".pkl") for k in scenario):
            reason = "a ScenarioNet dataset index (dataset_summary/mapping), not a scenario"
        else:
            reason = "not a scenario dict (no 'tracks')"
        raise where.error(None, reason)
    tracks = scenario["tracks"]
    if not isinstance(tracks, Mapping) or not tracks:
        raise where.error("tracks", "missing or empty")
    metadata = scenario.get("metadata") or {}
    notes: list[str] = []

    keys = list(tracks)
    first = tracks[keys[0]].get("state") if isinstance(tracks[keys[0]], Mapping) else None
    if isinstance(first, Mapping):
        first = first.get("position")
    if first is None:
        raise where.error(f"tracks[{keys[0]!r}].state", "missing")
    num_source_steps = len(first)
    num_steps = datatypes.NUM_TIMESTEPS
    times, grid, window = _time_grid(scenario, num_source_steps, where, notes)
    resample = window is None
    start, count = window if window is not None else (0, num_steps)
    decoded, other_types = [], set()
    for key in keys:
        track = _decode_track(key, tracks[key], num_source_steps, where)
        if resample:
            track = _resample(times, grid, track)
        else:
            for name, value in list(track.items()):
                if isinstance(value, np.ndarray):
                    padded = np.full(num_steps, False if value.dtype == bool else -1.0)
                    padded[:count] = value[start : start + count]
                    track[name] = padded.astype(value.dtype)
        if track["type_name"]:
            other_types.add(track["type_name"])
        decoded.append(track)
    if other_types:
        notes.append(f"Object types {sorted(other_types)} have no WOMD type; typed OTHER (4).")
    if any(t.get("no_z") for t in decoded):
        notes.append("Some tracks have 2-D positions; their z is 0.")

    sdc_key = _sdc_key(scenario, keys, where)
    present = [i for i, t in enumerate(decoded) if t["valid"].any() or keys[i] == sdc_key]
    if not decoded[keys.index(sdc_key)]["valid"].any():
        raise where.error(f"tracks[{sdc_key!r}]", "the SDC is never valid in the 91 steps")
    if len(present) < len(keys):
        notes.append(
            f"Dropped {len(keys) - len(present)} tracks that are not valid at any of the "
            "91 steps kept."
        )
    ids = [_as_int_id(keys[i]) for i in present]
    if any(i is None for i in ids):
        ids = present
        notes.append("Track ids are not integers; ids are the tracks' index in the file.")
    modeled_keys = {str(k) for k in (metadata.get("tracks_to_predict") or {})}
    interest_keys = {str(k) for k in (metadata.get("objects_of_interest") or [])}
    for field, wanted in (
        ("metadata.tracks_to_predict", modeled_keys),
        ("metadata.objects_of_interest", interest_keys),
    ):
        unknown = sorted(wanted - {str(k) for k in keys})
        if unknown:
            raise where.error(field, f"track ids {unknown} are not tracks")

    def stack(name: str) -> np.ndarray:
        return np.stack([decoded[i][name] for i in present])

    step_micros = np.round((grid - times[0]) * 1e6).astype(np.int64)
    timestamps = np.full(num_steps, -1, np.int64)
    timestamps[: len(step_micros)] = step_micros
    arrays = select.build_object_arrays(
        **{n: stack(n) for n in ("x", "y", "z", "yaw", "vel_x", "vel_y")},
        length=stack("length"),
        width=stack("width"),
        height=stack("height"),
        valid=stack("valid"),
        timestamps_micros=timestamps,
        ids=ids,
        object_types=[decoded[i]["type"] for i in present],
        is_sdc=[keys[i] == sdc_key for i in present],
        is_modeled=[str(keys[i]) in modeled_keys for i in present],
        objects_of_interest=[str(keys[i]) in interest_keys for i in present],
    )
    if len(present) > max_objects:
        notes.append(
            f"The scenario has {len(present)} tracks; kept {max_objects}: the SDC, the tracks "
            "to predict, then the nearest to the SDC at step 10."
        )
    polylines = _decode_map(scenario, where, notes)
    try:
        arrays, _ = select.select_objects(arrays, max_objects, select.CURRENT_STEP)
        rg = select.polylines_to_roadgraph(polylines)
        arrays.update(rg)
        arrays = select.pad_roadgraph(arrays, max_num_rg_points, notes=notes)
    except ValueError as err:
        raise where.error("tracks", str(err)) from None
    if not np.isin(rg["roadgraph_points/types"], [15, 16]).any():
        notes.append("The map has no road edges (types 15/16): offroad cannot be measured.")

    series = []
    for lane, codes, valid, stop in _decode_lights(scenario, num_source_steps, where):
        if resample:
            # Signal states are not interpolated: each step takes the nearest sample.
            nearest = np.abs(times[None, :] - grid[:, None]).argmin(axis=1)
            codes, valid, stop = codes[nearest], valid[nearest], stop[nearest]
        else:
            window = slice(start, start + count)
            codes = np.concatenate([codes[window], np.full(num_steps - count, -1)])
            valid = np.concatenate([valid[window], np.zeros(num_steps - count, bool)])
            stop = np.concatenate([stop[window], np.full((num_steps - count, 3), -1.0)])
        series.append(select.TrafficLightSeries(lane, codes, valid, stop))
    try:
        arrays.update(select.traffic_lights_to_arrays(series, num_steps, notes=notes))
    except ValueError as err:
        raise where.error("dynamic_map_states", str(err)) from None
    if series:
        notes.append("Each traffic light (controlled lane) has one fixed slot, in file order.")
    if metadata.get("dataset") == "nuscenes":
        notes.append(
            "nuScenes: agents other than the ego are 2 Hz annotations that ScenarioNet "
            "interpolated linearly to 10 Hz."
        )
    scenario_id = metadata.get("scenario_id", scenario.get("id", Path(source).stem))
    return DecodedScenario(
        scenario_id=str(scenario_id),
        format=FORMAT,
        arrays=arrays,
        source=source,
        record_index=record_index,
        assumptions=tuple(notes),
    )


INDEX_FILES = frozenset({"dataset_summary.pkl", "dataset_mapping.pkl"})
"""ScenarioNet dataset index files (no scenario inside)."""


def find_scenarionet_files(root: str | os.PathLike) -> list[str]:
    """Scenario pickles under ``root`` (recursively, sorted), index files left out."""
    root = Path(root)
    if root.is_file():
        return [str(root)]
    return [str(p) for p in sorted(root.rglob("*.pkl")) if p.name not in INDEX_FILES]


def read_scenarionet_file(
    path: str | os.PathLike,
    *,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    max_num_rg_points: int = DEFAULT_MAX_NUM_RG_POINTS,
) -> Iterator[DecodedScenario]:
    """Reads one ScenarioNet pickle (one scenario) through the restricted unpickler.

    Args:
      path: the ``.pkl`` file.
      max_objects, max_num_rg_points: see :func:`decode_scenarionet`.

    Yields:
      The file's scenario (record index 0).
    """
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except OSError as err:
        raise ScenarioDecodeError(source, None, None, f"cannot read ({err})") from None
    yield decode_scenarionet(
        data, source, 0, max_objects=max_objects, max_num_rg_points=max_num_rg_points
    )
