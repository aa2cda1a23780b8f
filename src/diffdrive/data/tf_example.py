"""WOMD motion ``tf.train.Example`` records: parse, decode as Waymax does, and write.

* :func:`parse_example` turns serialised ``tf.train.Example`` bytes into
  ``{key: np.ndarray}`` (float32 for ``float_list``, int64 for ``int64_list``, an object
  array of ``bytes`` for ``bytes_list``; packed and unpacked encodings both read).
* :func:`decode_womd_example` reproduces Waymax's loader (``tf.io.parse_example`` with
  fixed shapes, then ``preprocess_womd_example`` and the ``womd_factories``) bit for bit
  and returns a :class:`~diffdrive.data.types.DecodedScenario` whose ``arrays`` use the
  flat ``"<group>/<field>"`` keys of :mod:`diffdrive.sim.datatypes`.
* :func:`read_tf_example_file` streams decoded scenarios from a file, ``name@N`` or glob.
* :func:`encode_tf_example` writes a scenario back into the format Waymax reads (all 72
  WOMD keys), so decoded or generated scenarios can be exported.

Feature layout (A = 128 objects, R = ``max_num_rg_points``, L = 16 traffic lights; each
of past/current/future has n = 10/1/80 steps): ``state/{id,type}`` float [A];
``state/{is_sdc,tracks_to_predict,objects_of_interest}`` int64 [A];
``state/<t>/{x,y,z,bbox_yaw,velocity_x,velocity_y,vel_yaw,speed,length,width,height}``
float [A, n]; ``state/<t>/{timestamp_micros,valid}`` int64 [A, n];
``roadgraph_samples/{xyz,dir}`` float [R, 3]; ``roadgraph_samples/{type,id,valid}`` int64
[R, 1]; ``traffic_light_state/<t>/{state,valid,id}`` int64 [n, L];
``traffic_light_state/<t>/{x,y,z}`` float [n, L]; ``traffic_light_state/<t>/timestamp_micros``
int64 [n]. Units: metres, radians, metres per second, microseconds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from diffdrive.data import protowire
from diffdrive.data.tfrecord import OnError, PathSpec, SkipStats, iter_records, write_tfrecord
from diffdrive.data.types import DecodedScenario, ScenarioDecodeError
from diffdrive.sim import datatypes

NUM_OBJECTS = 128
"""Object rows in a WOMD tf.Example; Waymax always parses all of them."""
NUM_TRAFFIC_LIGHTS = datatypes.NUM_TRAFFIC_LIGHTS
TIME_SPLITS = (("past", 10), ("current", 1), ("future", 80))
"""The three time blocks of a record and their lengths (10 + 1 + 80 = 91 steps)."""
NUM_TIMESTEPS = sum(n for _, n in TIME_SPLITS)
DEFAULT_MAX_NUM_RG_POINTS = 20000
"""Roadgraph samples per record in WOMD v1.0/v1.1 (v1.2 and later use 30000)."""

STATE_FLOAT_FIELDS = (
    "x", "y", "z", "bbox_yaw", "velocity_x", "velocity_y", "vel_yaw", "speed",
    "length", "width", "height",
)  # fmt: skip
STATE_INT_FIELDS = ("timestamp_micros", "valid")
TRAFFIC_LIGHT_INT_FIELDS = ("state", "valid", "id")
TRAFFIC_LIGHT_FLOAT_FIELDS = ("x", "y", "z")

# -1 and 0..19: code 4 is unused in WOMD but has its slot in Waymax's road-type one-hot.
_VALID_ROAD_TYPES = np.arange(-1, datatypes.NUM_ROAD_TYPES, dtype=np.int64)
_VALID_OBJECT_TYPES = np.array([-1] + [int(t) for t in datatypes.ObjectType], np.int64)
_VALID_LIGHT_STATES = np.array([-1] + [int(s) for s in datatypes.TrafficLightState], np.int64)
_INT32 = np.iinfo(np.int32)


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """A fixed-length feature as ``tf.io.FixedLenFeature`` declares it.

    Attributes:
      kind: ``"float"`` (``float_list``) or ``"int64"`` (``int64_list``).
      shape: the shape the flat value list is reshaped to (row-major).
    """

    kind: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def womd_feature_spec(max_num_rg_points: int = DEFAULT_MAX_NUM_RG_POINTS) -> dict[str, FeatureSpec]:
    """The features Waymax parses from a WOMD motion record (``get_features_description``).

    Args:
      max_num_rg_points: roadgraph samples per record (20000 for WOMD v1.0/v1.1, 30000
        for v1.2+). A record must hold exactly this many.

    Returns:
      ``{key: FeatureSpec}`` for the 5 roadgraph, 5 per-object, 39 per-step object and
      21 traffic-light keys (70 in all; ``scenario/id`` and ``state/difficulty_level``
      are in the files but Waymax does not parse them).
    """
    r = int(max_num_rg_points)
    spec = {
        "roadgraph_samples/xyz": FeatureSpec("float", (r, 3)),
        "roadgraph_samples/dir": FeatureSpec("float", (r, 3)),
        "roadgraph_samples/type": FeatureSpec("int64", (r, 1)),
        "roadgraph_samples/id": FeatureSpec("int64", (r, 1)),
        "roadgraph_samples/valid": FeatureSpec("int64", (r, 1)),
        "state/id": FeatureSpec("float", (NUM_OBJECTS,)),
        "state/type": FeatureSpec("float", (NUM_OBJECTS,)),
        "state/is_sdc": FeatureSpec("int64", (NUM_OBJECTS,)),
        "state/tracks_to_predict": FeatureSpec("int64", (NUM_OBJECTS,)),
        "state/objects_of_interest": FeatureSpec("int64", (NUM_OBJECTS,)),
    }
    for split, steps in TIME_SPLITS:
        for field in STATE_FLOAT_FIELDS:
            spec[f"state/{split}/{field}"] = FeatureSpec("float", (NUM_OBJECTS, steps))
        for field in STATE_INT_FIELDS:
            spec[f"state/{split}/{field}"] = FeatureSpec("int64", (NUM_OBJECTS, steps))
        for field in TRAFFIC_LIGHT_INT_FIELDS:
            spec[f"traffic_light_state/{split}/{field}"] = FeatureSpec(
                "int64", (steps, NUM_TRAFFIC_LIGHTS)
            )
        for field in TRAFFIC_LIGHT_FLOAT_FIELDS:
            spec[f"traffic_light_state/{split}/{field}"] = FeatureSpec(
                "float", (steps, NUM_TRAFFIC_LIGHTS)
            )
        spec[f"traffic_light_state/{split}/timestamp_micros"] = FeatureSpec("int64", (steps,))
    return spec


# ----------------------------------------------------------------------------- parsing

_KIND_BY_FIELD = {1: "bytes", 2: "float", 3: "int64"}
_LIST_NAME = {"bytes": "bytes_list", "float": "float_list", "int64": "int64_list"}


def _kind_of(array: np.ndarray) -> str:
    if array.dtype == np.float32:
        return "float"
    if array.dtype == np.int64:
        return "int64"
    return "bytes"


def _parse_value_list(kind: str, message: memoryview) -> list[Any]:
    """The value chunks of a BytesList/FloatList/Int64List (packed or not)."""
    parts: list[Any] = []
    for field, wire, value in protowire.iter_fields(message):
        if field != 1:
            continue  # unknown field: ignored, as protobuf parsers do
        if kind == "float":
            if wire == protowire.LENGTH_DELIMITED:
                parts.append(protowire.packed_floats(value))
            elif wire == protowire.FIXED32:
                parts.append(np.frombuffer(value, "<f4"))
            else:
                raise protowire.WireError(f"float_list value with wire type {wire}")
        elif kind == "int64":
            if wire == protowire.LENGTH_DELIMITED:
                parts.append(protowire.packed_varints_array(value))
            elif wire == protowire.VARINT:
                parts.append(np.array([protowire.to_signed64(value)], np.int64))
            else:
                raise protowire.WireError(f"int64_list value with wire type {wire}")
        else:
            if wire != protowire.LENGTH_DELIMITED:
                raise protowire.WireError(f"bytes_list value with wire type {wire}")
            parts.append(bytes(value))
    return parts


def _parse_feature(message: memoryview) -> np.ndarray:
    kind = None
    parts: list[Any] = []
    for field, wire, value in protowire.iter_fields(message):
        if field not in _KIND_BY_FIELD:
            continue
        if wire != protowire.LENGTH_DELIMITED:
            raise protowire.WireError(f"Feature field {field} with wire type {wire}")
        this_kind = _KIND_BY_FIELD[field]
        if kind is not None and this_kind != kind:
            raise protowire.WireError(
                f"Feature holds both a {_LIST_NAME[kind]} and a {_LIST_NAME[this_kind]}"
            )
        kind = this_kind
        parts.extend(_parse_value_list(kind, value))
    if kind == "bytes":
        out = np.empty(len(parts), dtype=object)
        out[:] = parts
        return out
    if kind == "int64":
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
    # float_list, or a Feature with no list set (read as an empty float list)
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def parse_example(
    data: bytes | memoryview, *, source: str = "<bytes>", record_index: int | None = None
) -> dict[str, np.ndarray]:
    """Parses a serialised ``tf.train.Example`` into flat numpy arrays.

    Args:
      data: the message bytes (one TFRecord payload).
      source: file name for error messages.
      record_index: record index for error messages.

    Returns:
      ``{feature key: 1-D array}``: float32 for ``float_list``, int64 for ``int64_list``,
      an object array of ``bytes`` for ``bytes_list``. A Feature with no list set comes
      back as an empty float32 array.

    Raises:
      ScenarioDecodeError: malformed protobuf, a key given twice, or a Feature with two
        different list kinds; names the feature key where one is known.
    """
    out: dict[str, np.ndarray] = {}
    key: str | None = None
    try:
        for field, wire, features in protowire.iter_fields(data):
            if field != 1:
                continue
            if wire != protowire.LENGTH_DELIMITED:
                raise protowire.WireError(f"Example.features with wire type {wire}")
            for entry_field, entry_wire, entry in protowire.iter_fields(features):
                if entry_field != 1:
                    continue
                if entry_wire != protowire.LENGTH_DELIMITED:
                    raise protowire.WireError(f"Features.feature with wire type {entry_wire}")
                key, feature = None, memoryview(b"")
                for part_field, _, part in protowire.iter_fields(entry):
                    if part_field == 1:
                        key = bytes(part).decode("utf-8")
                    elif part_field == 2:
                        feature = part
                if key is None:
                    raise protowire.WireError("a Features map entry has no key")
                if key in out:
                    raise ScenarioDecodeError(
                        source, record_index, key, "the feature key appears twice"
                    )
                out[key] = _parse_feature(feature)
                key = None
    except protowire.WireError as error:
        raise ScenarioDecodeError(
            source, record_index, key, f"malformed tf.train.Example: {error}"
        ) from None
    except UnicodeDecodeError as error:
        raise ScenarioDecodeError(
            source, record_index, None, f"a feature key is not UTF-8: {error}"
        ) from None
    return out


# ----------------------------------------------------------------------------- decoding


def _halving_sum(x: np.ndarray) -> np.ndarray:
    """Sum over the last axis by repeated halving (``v[i] + v[i + h]``), zero-padding odd sizes."""
    while x.shape[-1] > 1:
        if x.shape[-1] % 2:
            x = np.concatenate([x, np.zeros((*x.shape[:-1], 1), x.dtype)], axis=-1)
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


_XLA_CPU_REDUCE_WINDOW = 32


def xla_cpu_sum(x: np.ndarray) -> np.ndarray:
    """Float32 sum over the last axis in the order XLA's CPU backend (used by Waymax) adds.

    XLA rewrites a reduction longer than 32 into windows of 32 ("same" padding: the
    zeros split before and after), sums each window by halving, then reduces the window
    sums the same way. Matching this order bit for bit is what makes the box sizes equal
    Waymax's; checked on the real WOMD record (all 384 size rows, partly valid ones too).
    """
    n = x.shape[-1]
    if n <= _XLA_CPU_REDUCE_WINDOW:
        return _halving_sum(x)
    num_windows = -(-n // _XLA_CPU_REDUCE_WINDOW)
    padding = num_windows * _XLA_CPU_REDUCE_WINDOW - n
    pad_width = [(0, 0)] * (x.ndim - 1) + [(padding // 2, padding - padding // 2)]
    windows = np.pad(x, pad_width).reshape((*x.shape[:-1], num_windows, _XLA_CPU_REDUCE_WINDOW))
    return xla_cpu_sum(_halving_sum(windows))


def waymax_masked_mean(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Waymax's ``masked_mean`` over the last axis, float32, broadcast back to ``x.shape``.

    Args:
      x: ``(..., T)`` float32 values.
      valid: ``(..., T)`` bool.

    Returns:
      ``(..., T)``: the mean over valid steps, -1 where no step is valid.
    """
    x = np.asarray(x, np.float32)
    total = xla_cpu_sum(np.where(valid, x, np.float32(0)))
    count = np.sum(valid, axis=-1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(count == 0, np.float32(-1), total / count).astype(np.float32)
    return np.broadcast_to(mean[..., None], x.shape).copy()


def wrap_yaws(yaw: np.ndarray) -> np.ndarray:
    """``((yaw + pi) mod 2 pi) - pi`` in float32 (floor mod), as Waymax's loader does."""
    pi = np.float32(np.pi)
    return (np.remainder(yaw + pi, np.float32(2 * np.pi)) - pi).astype(np.float32)


class _Decoder:
    """Holds the source location so every check can name file, record and field."""

    def __init__(self, source: str, record_index: int):
        self.source, self.record_index = source, record_index

    def fail(self, field: str | None, reason: str) -> ScenarioDecodeError:
        return ScenarioDecodeError(self.source, self.record_index, field, reason)

    def fixed(self, features: Mapping[str, np.ndarray], key: str, spec: FeatureSpec):
        """``tf.io.FixedLenFeature`` semantics: present, right list kind, exact length."""
        shape_text = f"[{', '.join(str(d) for d in spec.shape)}]"
        if key not in features:
            raise self.fail(
                key, f"missing feature; expected {_LIST_NAME[spec.kind]} of shape {shape_text}"
            )
        value = features[key]
        if value.size != spec.size:
            hint = ""
            if key.startswith("roadgraph_samples/") and value.size % spec.shape[-1] == 0:
                hint = (
                    f" (the record has {value.size // spec.shape[-1]} roadgraph samples; "
                    f"max_num_rg_points is {spec.shape[0]})"
                )
            raise self.fail(
                key,
                f"expected {spec.size} values (shape {shape_text}), got {value.size}{hint}",
            )
        kind = _kind_of(value)
        if kind != spec.kind and value.size:
            raise self.fail(
                key,
                f"expected a {_LIST_NAME[spec.kind]} of shape {shape_text}, got a "
                f"{_LIST_NAME[kind]}",
            )
        return value.reshape(spec.shape)

    def to_int32(self, key: str, values: np.ndarray) -> np.ndarray:
        """Casts to int32 as Waymax does, refusing values the cast would change."""
        if values.dtype.kind == "f":
            if not np.all(np.isfinite(values)) or np.any(values != np.trunc(values)):
                bad = values[~(np.isfinite(values) & (values == np.trunc(values)))][0]
                raise self.fail(key, f"expected whole numbers, found {bad.item()!r}")
        if values.size and (values.min() < _INT32.min or values.max() > _INT32.max):
            bad = values[(values < _INT32.min) | (values > _INT32.max)][0]
            raise self.fail(key, f"value {bad.item()!r} does not fit in int32")
        return values.astype(np.int32)

    def check_codes(self, key: str, values: np.ndarray, allowed: np.ndarray, what: str):
        """Refuses codes outside ``allowed`` (a contiguous range of ints)."""
        unknown = ~np.isin(values, allowed)
        if unknown.any():
            where = tuple(int(i) for i in np.argwhere(unknown)[0])
            raise self.fail(
                key,
                f"unknown {what} {values[where].item()!r} at index {where} (known: "
                f"{allowed[0]} to {allowed[-1]})",
            )


def decode_womd_example(
    data: bytes | memoryview | Mapping[str, np.ndarray],
    *,
    max_num_rg_points: int = DEFAULT_MAX_NUM_RG_POINTS,
    max_num_objects: int | None = None,
    source: str = "<bytes>",
    record_index: int = 0,
) -> DecodedScenario:
    """Decodes one WOMD motion tf.Example exactly as Waymax's data loader does.

    Steps (Waymax ``preprocess_serialized_womd_data`` and ``womd_factories``):

    1. fixed-shape parsing of the 70 features of :func:`womd_feature_spec` (all 128
       object rows; extra keys such as ``scenario/id`` are not part of it);
    2. past | current | future concatenated to 91 steps; ``bbox_yaw`` wrapped to
       [-pi, pi) in float32;
    3. with ``max_num_objects``, only the first rows of every ``state/`` key are kept
       (like Waymax, this can drop the SDC if it sits further down);
    4. trajectory: x, y, z, vel_x = velocity_x, vel_y = velocity_y, yaw = bbox_yaw,
       valid = valid != 0, timestamps as int32; length/width/height replaced by each
       object's mean over its valid steps (-1 if never valid), repeated over all steps;
    5. metadata: is_valid = tracks_to_predict != -1, is_modeled = tracks_to_predict == 1,
       is_sdc = is_sdc == 1, objects_of_interest == 1, ids/types cast to int32,
       is_controlled all False;
    6. roadgraph: xyz and dir split, the singleton axis of type/id/valid dropped;
    7. traffic lights: axes swapped to (16, 91) (paired with agent steps by index).

    Beyond Waymax, values it would silently mangle are refused: non-integral or
    out-of-range ids/types, int64 values beyond int32, unknown road types (not -1 or
    0..19), object types (not -1 or 0..4) and light states (not -1 or 0..8).

    Args:
      data: serialised ``tf.train.Example`` bytes, or the output of :func:`parse_example`.
      max_num_rg_points: roadgraph samples the record must hold (20000 or 30000).
      max_num_objects: keep only the first this many objects (``None``: all 128).
      source: file name for errors and the result's ``source``.
      record_index: record index for errors and the result.

    Returns:
      A :class:`DecodedScenario` (format ``tf_example``) with arrays
      ``log_trajectory/*`` (N, 91), ``object_metadata/*`` (N,), ``roadgraph_points/*``
      (R,), ``log_traffic_light/*`` (16, 91) and ``timestep`` () int32, N = 128 or
      ``max_num_objects``.

    Raises:
      ScenarioDecodeError: naming the feature key (and the expected shape) that is
        missing, misshaped, of the wrong list kind or holds an invalid value.
    """
    dec = _Decoder(source, record_index)
    if isinstance(data, Mapping):
        features = data
    else:
        features = parse_example(data, source=source, record_index=record_index)
    raw = {
        key: dec.fixed(features, key, spec)
        for key, spec in womd_feature_spec(max_num_rg_points).items()
    }
    for split, _ in TIME_SPLITS:  # checked per key so that errors name the exact feature
        dec.to_int32(f"state/{split}/timestamp_micros", raw[f"state/{split}/timestamp_micros"])
        dec.to_int32(f"traffic_light_state/{split}/id", raw[f"traffic_light_state/{split}/id"])
        dec.check_codes(
            f"traffic_light_state/{split}/state",
            raw[f"traffic_light_state/{split}/state"],
            _VALID_LIGHT_STATES,
            "traffic-light state",
        )

    def state_all(field: str) -> np.ndarray:
        return np.concatenate([raw[f"state/{split}/{field}"] for split, _ in TIME_SPLITS], -1)

    def light_all(field: str) -> np.ndarray:  # (91, 16) -> (16, 91)
        parts = [raw[f"traffic_light_state/{split}/{field}"] for split, _ in TIME_SPLITS]
        return np.concatenate(parts, axis=0).T

    keep = slice(None) if max_num_objects is None else slice(0, int(max_num_objects))
    if max_num_objects is not None and max_num_objects < 1:
        raise ValueError(f"max_num_objects must be positive, got {max_num_objects}")

    arrays: dict[str, np.ndarray] = {}
    valid = state_all("valid")[keep] != 0
    for ours, theirs in (("x", "x"), ("y", "y"), ("z", "z"), ("vel_x", "velocity_x"),
                         ("vel_y", "velocity_y")):  # fmt: skip
        arrays[f"log_trajectory/{ours}"] = state_all(theirs)[keep].astype(np.float32)
    arrays["log_trajectory/yaw"] = wrap_yaws(state_all("bbox_yaw")[keep])
    for size in ("length", "width", "height"):
        arrays[f"log_trajectory/{size}"] = waymax_masked_mean(state_all(size)[keep], valid)
    arrays["log_trajectory/timestamp_micros"] = state_all("timestamp_micros")[keep].astype(np.int32)
    arrays["log_trajectory/valid"] = valid

    tracks_to_predict = raw["state/tracks_to_predict"][keep]
    arrays["object_metadata/ids"] = dec.to_int32("state/id", raw["state/id"][keep])
    object_types = dec.to_int32("state/type", raw["state/type"][keep])
    dec.check_codes("state/type", object_types, _VALID_OBJECT_TYPES, "object type")
    arrays["object_metadata/object_types"] = object_types
    arrays["object_metadata/is_sdc"] = raw["state/is_sdc"][keep] == 1
    arrays["object_metadata/is_modeled"] = tracks_to_predict == 1
    arrays["object_metadata/is_valid"] = tracks_to_predict != -1
    arrays["object_metadata/objects_of_interest"] = raw["state/objects_of_interest"][keep] == 1
    arrays["object_metadata/is_controlled"] = np.zeros(tracks_to_predict.shape, bool)

    xyz, direction = raw["roadgraph_samples/xyz"], raw["roadgraph_samples/dir"]
    for axis, name in enumerate("xyz"):
        arrays[f"roadgraph_points/{name}"] = np.ascontiguousarray(xyz[:, axis], np.float32)
        arrays[f"roadgraph_points/dir_{name}"] = np.ascontiguousarray(
            direction[:, axis], np.float32
        )
    road_types = raw["roadgraph_samples/type"][:, 0]
    dec.check_codes("roadgraph_samples/type", road_types, _VALID_ROAD_TYPES, "road type")
    arrays["roadgraph_points/types"] = road_types.astype(np.int32)
    arrays["roadgraph_points/ids"] = dec.to_int32(
        "roadgraph_samples/id", raw["roadgraph_samples/id"][:, 0]
    )
    arrays["roadgraph_points/valid"] = raw["roadgraph_samples/valid"][:, 0] != 0

    for field in TRAFFIC_LIGHT_FLOAT_FIELDS:
        arrays[f"log_traffic_light/{field}"] = np.ascontiguousarray(light_all(field), np.float32)
    arrays["log_traffic_light/state"] = np.ascontiguousarray(light_all("state"), np.int32)
    arrays["log_traffic_light/lane_ids"] = np.ascontiguousarray(light_all("id"), np.int32)
    arrays["log_traffic_light/valid"] = np.ascontiguousarray(light_all("valid") != 0)
    arrays["timestep"] = np.zeros((), np.int32)

    assumptions = []
    scenario_id = _scenario_id(features)
    if scenario_id is None:
        scenario_id = f"{os.path.basename(source)}#{record_index}"
        assumptions.append(
            f"The record has no scenario/id; the id {scenario_id!r} was made from the file "
            "name and record index."
        )
    light_times = np.concatenate(
        [raw[f"traffic_light_state/{split}/timestamp_micros"] for split, _ in TIME_SPLITS]
    )
    note = _light_timing_note(arrays, light_times)
    if note:
        assumptions.append(note)
    return DecodedScenario(
        scenario_id=scenario_id,
        format="tf_example",
        arrays=arrays,
        source=source,
        record_index=record_index,
        assumptions=tuple(assumptions),
    )


def _scenario_id(features: Mapping[str, np.ndarray]) -> str | None:
    value = features.get("scenario/id")
    if value is None or value.dtype != object or value.size != 1:
        return None
    try:
        return bytes(value[0]).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(value[0]).hex()


def _light_timing_note(arrays: Mapping[str, np.ndarray], light_times: np.ndarray) -> str | None:
    """A sentence when light and SDC timestamps disagree (Waymax pairs them by index)."""
    is_sdc = arrays["object_metadata/is_sdc"]
    if not is_sdc.any():
        return None
    sdc = int(np.argmax(is_sdc))
    sdc_valid = arrays["log_trajectory/valid"][sdc]
    sdc_times = arrays["log_trajectory/timestamp_micros"][sdc].astype(np.int64)
    gap = np.abs(sdc_times - light_times)[sdc_valid]
    if gap.size == 0 or gap.max() <= 1:
        return None
    return (
        "Traffic-light states were paired with agent steps by index, as Waymax does, "
        f"although their timestamps differ from the SDC's by up to {int(gap.max())} us."
    )


def read_tf_example_file(
    spec: PathSpec,
    max_num_rg_points: int = DEFAULT_MAX_NUM_RG_POINTS,
    *,
    max_num_objects: int | None = None,
    on_error: OnError = "raise",
    stats: SkipStats | None = None,
) -> Iterator[DecodedScenario]:
    """Streams decoded WOMD scenarios from a TFRecord file, ``name@N`` spec or glob.

    Args:
      spec: see :func:`diffdrive.data.tfrecord.expand_paths`.
      max_num_rg_points: roadgraph samples per record (20000 or 30000).
      max_num_objects: keep only the first this many objects (``None``: all 128).
      on_error: ``"raise"``, or ``"skip"`` to leave out records whose framing or content
        is bad, counting them in ``stats`` (see :func:`~diffdrive.data.tfrecord.iter_records`).
      stats: collects what was skipped.

    Yields:
      One :class:`DecodedScenario` per record, in file order.
    """
    stats = stats if stats is not None else SkipStats()
    for record in iter_records(spec, on_error=on_error, stats=stats):
        try:
            yield decode_womd_example(
                record.data,
                max_num_rg_points=max_num_rg_points,
                max_num_objects=max_num_objects,
                source=record.file,
                record_index=record.index,
            )
        except ScenarioDecodeError as error:
            if on_error == "raise":
                raise
            stats.add(error)


# ----------------------------------------------------------------------------- writing


def serialize_example(features: Mapping[str, Any]) -> bytes:
    """Serialises ``{key: values}`` as a ``tf.train.Example`` (keys in sorted order).

    Float arrays become packed ``float_list`` (float32), integer and bool arrays packed
    ``int64_list``, and ``bytes``/``str`` (or sequences or object arrays of them)
    ``bytes_list``; so ``serialize_example(parse_example(data))`` re-encodes a record.
    """
    entries = []
    for key in sorted(features):
        value = features[key]
        if isinstance(value, (bytes, str)):
            value = [value]
        if isinstance(value, np.ndarray) and value.dtype == object:
            value = value.ravel().tolist()  # a bytes_list as parse_example returns it
        if isinstance(value, (list, tuple)) and all(isinstance(v, (bytes, str)) for v in value):
            items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value]
            body = b"".join(protowire.encode_bytes_field(1, v) for v in items)
            feature = protowire.encode_bytes_field(1, body)
        else:
            array = np.asarray(value)
            if array.dtype.kind == "f":
                payload = np.ascontiguousarray(array, "<f4").tobytes()
                feature = protowire.encode_bytes_field(2, protowire.encode_bytes_field(1, payload))
            elif array.dtype.kind in "iub":
                payload = protowire.encode_packed_varints_array(array.astype(np.int64))
                feature = protowire.encode_bytes_field(3, protowire.encode_bytes_field(1, payload))
            else:
                raise TypeError(f"feature {key!r}: cannot serialise dtype {array.dtype}")
        key_field = protowire.encode_bytes_field(1, key.encode("utf-8"))
        entry = key_field + protowire.encode_bytes_field(2, feature)  # a map<string, Feature> entry
        entries.append(protowire.encode_bytes_field(1, entry))
    return protowire.encode_bytes_field(1, b"".join(entries))


def _flat_arrays(scenario: Any) -> dict[str, np.ndarray]:
    if isinstance(scenario, DecodedScenario):
        return {k: np.asarray(v) for k, v in scenario.arrays.items()}
    if isinstance(scenario, datatypes.SimulatorState):
        return datatypes.state_to_flat_arrays(scenario)
    if isinstance(scenario, Mapping):
        return {k: np.asarray(v) for k, v in scenario.items()}
    raise TypeError(
        "encode_tf_example takes flat arrays, a SimulatorState or a DecodedScenario, got "
        f"{type(scenario).__name__}"
    )


def _nudge(values: np.ndarray, ulps: int) -> np.ndarray:
    toward = np.float32(np.inf if ulps > 0 else -np.inf)
    out = values
    for _ in range(abs(ulps)):
        out = np.nextafter(out, toward)
    return out


def _reduction_windows(num_steps: int) -> list[tuple[int, int]]:
    """Step ranges of the 32-wide windows :func:`xla_cpu_sum` splits ``num_steps`` into."""
    if num_steps <= _XLA_CPU_REDUCE_WINDOW:
        return [(0, num_steps)]
    num_windows = -(-num_steps // _XLA_CPU_REDUCE_WINDOW)
    before = (num_windows * _XLA_CPU_REDUCE_WINDOW - num_steps) // 2
    return [
        (max(0, j * _XLA_CPU_REDUCE_WINDOW - before),
         min(num_steps, (j + 1) * _XLA_CPU_REDUCE_WINDOW - before))
        for j in range(num_windows)
    ]  # fmt: skip


def _sizes_that_decode_to(target: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-step sizes ``(N, T)`` whose Waymax mean (float32, XLA order) is exactly ``target``.

    Writing the size itself at every valid step need not give it back: the float32 sum
    of n copies divided by n can be an ulp off, and for some n and sizes no constant
    works at all. So, per object, first a constant a few ulps from the target is tried;
    failing that, every valid step holds the target except one, which is moved by
    eighths of an ulp of the sum. That step is tried in each reduction window in turn,
    because the last additions of the window sums can round in pairs and skip the sum
    needed. Objects for which nothing works keep the target everywhere and decode within
    a few ulps of it. Invalid steps hold -1.

    Args:
      target: ``(N,)`` float32 sizes (each object's decoded size).
      valid: ``(N, T)`` bool.
    """
    target = np.asarray(target, np.float32)
    written = np.where(valid, target[:, None], np.float32(-1))
    todo = np.flatnonzero(valid.any(axis=-1))  # never-valid objects decode to -1 anyway

    def attempt(rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Keeps candidates that decode exactly; returns the rows still unsolved."""
        row_valid = valid[rows]
        decoded = waymax_masked_mean(np.where(row_valid, candidates, np.float32(-1)), row_valid)
        hit = decoded[:, 0].view(np.int32) == target[rows].view(np.int32)
        written[rows[hit]] = np.where(row_valid[hit], candidates[hit], np.float32(-1))
        return rows[~hit]

    for ulps in (0, 1, -1, 2, -2, 3, -3):
        if todo.size == 0:
            return written
        constant = _nudge(target[todo], ulps)
        todo = attempt(todo, np.broadcast_to(constant[:, None], (todo.size, valid.shape[1])))
    for start, stop in _reduction_windows(valid.shape[1])[::-1]:
        for eighths in (k * sign for k in range(1, 33) for sign in (1, -1)):
            rows = todo[valid[todo, start:stop].any(axis=-1)]
            if rows.size == 0:
                break
            window = valid[rows, start:stop]
            position = stop - 1 - np.argmax(window[:, ::-1], axis=-1)  # last valid step in it
            count = valid[rows].sum(axis=-1).astype(np.float32)
            step = (np.spacing(np.abs(target[rows]) * count) / 8).astype(np.float32)
            candidates = np.broadcast_to(target[rows, None], window.shape[:1] + valid.shape[1:])
            candidates = candidates.copy()
            candidates[np.arange(rows.size), position] += np.float32(eighths) * step
            unsolved = attempt(rows, candidates)
            todo = np.setdiff1d(todo, np.setdiff1d(rows, unsolved))
    return written


def _require(arrays: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...] | None = None):
    if key not in arrays:
        raise ValueError(f"encode_tf_example: missing array {key!r}")
    value = np.asarray(arrays[key])
    if shape is not None and value.shape != shape:
        raise ValueError(f"encode_tf_example: {key!r} has shape {value.shape}, expected {shape}")
    return value


def _pad_rows(value: np.ndarray, rows: int, fill) -> np.ndarray:
    pad = [(0, rows - value.shape[0])] + [(0, 0)] * (value.ndim - 1)
    return np.pad(value, pad, constant_values=fill)


def encode_tf_example(
    scenario: Mapping[str, Any] | datatypes.SimulatorState | DecodedScenario,
    scenario_id: str | None = None,
    *,
    max_num_rg_points: int = DEFAULT_MAX_NUM_RG_POINTS,
) -> bytes:
    """Writes a scenario as a WOMD motion ``tf.train.Example`` that Waymax can load.

    The record has the 72 keys of the released files: ``scenario/id``, the 70 parsed
    features of :func:`womd_feature_spec` and ``state/difficulty_level``. Objects are
    padded to 128 rows (-1 values, ``tracks_to_predict`` -1), the roadgraph to
    ``max_num_rg_points`` samples (-1, valid 0) and lights to 16 (-1, valid 0). Decoding
    the result with :func:`decode_womd_example` gives the input arrays back exactly
    (padded), with these limits of the format:

    * box sizes are stored per step; an object whose size is constant over its valid
      steps is written so that Waymax's float32 mean returns it exactly, one whose size
      varies is written as given (and decodes to its mean); never-valid objects decode
      to -1;
    * ``is_controlled`` has no field and is not written;
    * ``vel_yaw``/``speed`` are derived from the velocity (-1 at invalid steps);
      ``state/difficulty_level`` is 0 for real objects and -1 for padding; light
      timestamps are the SDC's (step x 100000 us when there is no SDC).

    Args:
      scenario: flat ``"<group>/<field>"`` arrays (as in ``DecodedScenario.arrays``), an
        unbatched :class:`SimulatorState`, or a :class:`DecodedScenario`; trajectories
        ``(N, 91)`` with N <= 128, roadgraph ``(P,)`` with P <= ``max_num_rg_points``,
        lights ``(L, 91)`` with L <= 16.
      scenario_id: written to ``scenario/id``; defaults to a DecodedScenario's own id.
      max_num_rg_points: roadgraph samples in the record (20000 or 30000).

    Returns:
      The serialised ``tf.train.Example``.

    Raises:
      ValueError: missing or misshaped arrays, too many objects/points/lights, ids not
        exactly representable as float32, or objects modeled but not valid.
    """
    if scenario_id is None:
        if not isinstance(scenario, DecodedScenario):
            raise ValueError("encode_tf_example: scenario_id is required")
        scenario_id = scenario.scenario_id
    arrays = _flat_arrays(scenario)
    x = _require(arrays, "log_trajectory/x")
    if x.ndim != 2 or x.shape[1] != NUM_TIMESTEPS:
        raise ValueError(
            f"encode_tf_example: log_trajectory/x has shape {x.shape}, expected "
            f"(num_objects, {NUM_TIMESTEPS}) (an unbatched 91-step scenario)"
        )
    num_objects = x.shape[0]
    if num_objects > NUM_OBJECTS:
        raise ValueError(
            f"encode_tf_example: {num_objects} objects, the format holds at most {NUM_OBJECTS}"
        )
    traj = {
        name: _require(arrays, f"log_trajectory/{name}", x.shape)
        for name in datatypes.Trajectory.field_names()
    }
    meta = {
        name: _require(arrays, f"object_metadata/{name}", (num_objects,))
        for name in datatypes.ObjectMetadata.field_names()
    }
    num_points = _require(arrays, "roadgraph_points/x").shape
    if len(num_points) != 1:
        raise ValueError(f"encode_tf_example: roadgraph_points/x has shape {num_points}")
    if num_points[0] > max_num_rg_points:
        raise ValueError(
            f"encode_tf_example: {num_points[0]} roadgraph points, more than "
            f"max_num_rg_points={max_num_rg_points}"
        )
    road = {
        name: _require(arrays, f"roadgraph_points/{name}", num_points)
        for name in datatypes.RoadgraphPoints.field_names()
    }
    light_shape = _require(arrays, "log_traffic_light/x").shape
    if len(light_shape) != 2 or light_shape[1] != NUM_TIMESTEPS:
        raise ValueError(
            f"encode_tf_example: log_traffic_light/x has shape {light_shape}, expected "
            f"(num_lights, {NUM_TIMESTEPS})"
        )
    if light_shape[0] > NUM_TRAFFIC_LIGHTS:
        raise ValueError(
            f"encode_tf_example: {light_shape[0]} traffic lights, the format holds at most "
            f"{NUM_TRAFFIC_LIGHTS}"
        )
    lights = {
        name: _require(arrays, f"log_traffic_light/{name}", light_shape)
        for name in datatypes.TrafficLights.field_names()
    }

    is_valid = meta["is_valid"].astype(bool)
    is_modeled = meta["is_modeled"].astype(bool)
    if np.any(is_modeled & ~is_valid):
        bad = int(np.argmax(is_modeled & ~is_valid))
        raise ValueError(
            f"encode_tf_example: object {bad} is modeled but not valid; tracks_to_predict "
            "cannot express that"
        )
    ids = meta["ids"].astype(np.int64)
    if np.any(np.abs(ids) > 2**24):
        bad = int(ids[np.abs(ids) > 2**24][0])
        raise ValueError(
            f"encode_tf_example: object id {bad} cannot be stored exactly in the float "
            "state/id feature (|id| must be <= 2**24)"
        )

    valid = traj["valid"].astype(bool)
    features: dict[str, Any] = {"scenario/id": scenario_id}
    pad_objects = lambda a, fill=-1: _pad_rows(np.asarray(a), NUM_OBJECTS, fill)
    features["state/id"] = pad_objects(ids.astype(np.float32))
    features["state/type"] = pad_objects(meta["object_types"].astype(np.float32))
    features["state/is_sdc"] = pad_objects(meta["is_sdc"].astype(np.int64))
    features["state/tracks_to_predict"] = pad_objects(
        np.where(is_modeled, 1, np.where(is_valid, 0, -1))
    )
    features["state/objects_of_interest"] = pad_objects(
        meta["objects_of_interest"].astype(np.int64)
    )
    features["state/difficulty_level"] = pad_objects(np.zeros(num_objects, np.int64))

    per_step = {
        "x": traj["x"], "y": traj["y"], "z": traj["z"],
        "velocity_x": traj["vel_x"], "velocity_y": traj["vel_y"], "bbox_yaw": traj["yaw"],
    }  # fmt: skip
    vel_x = traj["vel_x"].astype(np.float32)
    vel_y = traj["vel_y"].astype(np.float32)
    per_step["speed"] = np.where(valid, np.hypot(vel_x, vel_y), -1)
    per_step["vel_yaw"] = np.where(valid, np.arctan2(vel_y, vel_x), -1)
    for size in ("length", "width", "height"):
        values = traj[size].astype(np.float32)
        first_valid = values[np.arange(num_objects), np.argmax(valid, axis=1)]
        constant = np.all(~valid | (values == first_valid[:, None]), axis=1)
        exact = _sizes_that_decode_to(first_valid, valid)
        per_step[size] = np.where(constant[:, None], exact, np.where(valid, values, -1))
    per_step = {k: pad_objects(np.asarray(v, np.float32)) for k, v in per_step.items()}
    per_step["timestamp_micros"] = pad_objects(traj["timestamp_micros"].astype(np.int64))
    per_step["valid"] = pad_objects(valid.astype(np.int64), 0)

    if meta["is_sdc"].any():
        light_times = traj["timestamp_micros"][int(np.argmax(meta["is_sdc"]))].astype(np.int64)
    else:
        light_times = np.arange(NUM_TIMESTEPS, dtype=np.int64) * datatypes.TIMESTEP_MICROS_INTERVAL
    # Lights are stored time-major: (91, 16).
    pad_lights = lambda a, fill=-1: _pad_rows(np.asarray(a), NUM_TRAFFIC_LIGHTS, fill).T
    light_steps = {
        "x": pad_lights(lights["x"].astype(np.float32)),
        "y": pad_lights(lights["y"].astype(np.float32)),
        "z": pad_lights(lights["z"].astype(np.float32)),
        "state": pad_lights(lights["state"].astype(np.int64)),
        "id": pad_lights(lights["lane_ids"].astype(np.int64)),
        "valid": pad_lights(lights["valid"].astype(np.int64), 0),
    }

    start = 0
    for split, steps in TIME_SPLITS:
        window = slice(start, start + steps)
        for field, values in per_step.items():
            features[f"state/{split}/{field}"] = values[:, window]
        for field, values in light_steps.items():
            features[f"traffic_light_state/{split}/{field}"] = values[window]
        features[f"traffic_light_state/{split}/timestamp_micros"] = light_times[window]
        start += steps

    pad_points = lambda a, fill=-1: _pad_rows(np.asarray(a), max_num_rg_points, fill)
    features["roadgraph_samples/xyz"] = pad_points(
        np.stack([road["x"], road["y"], road["z"]], -1).astype(np.float32)
    )
    features["roadgraph_samples/dir"] = pad_points(
        np.stack([road["dir_x"], road["dir_y"], road["dir_z"]], -1).astype(np.float32)
    )
    features["roadgraph_samples/type"] = pad_points(road["types"].astype(np.int64)[:, None])
    features["roadgraph_samples/id"] = pad_points(road["ids"].astype(np.int64)[:, None])
    features["roadgraph_samples/valid"] = pad_points(road["valid"].astype(np.int64)[:, None], 0)
    return serialize_example(features)


def write_tf_example_file(
    path: str | os.PathLike,
    scenarios: Iterable[DecodedScenario | tuple[str, Any]],
    *,
    max_num_rg_points: int = DEFAULT_MAX_NUM_RG_POINTS,
) -> int:
    """Writes scenarios as a TFRecord of WOMD motion tf.Examples (atomically).

    Args:
      path: output file; replaced only once every record is written.
      scenarios: :class:`DecodedScenario` objects (their own ids are written), or
        ``(scenario_id, scenario)`` pairs where ``scenario`` is anything
        :func:`encode_tf_example` takes (flat arrays or an unbatched SimulatorState).
      max_num_rg_points: roadgraph samples per record (20000 or 30000).

    Returns:
      The number of records written.

    Raises:
      ValueError: a scenario the format cannot hold (see :func:`encode_tf_example`); the
        file is then left as it was.
    """

    def encoded() -> Iterator[bytes]:
        for item in scenarios:
            if isinstance(item, DecodedScenario):
                yield encode_tf_example(item, max_num_rg_points=max_num_rg_points)
            else:
                scenario_id, scenario = item
                yield encode_tf_example(scenario, scenario_id, max_num_rg_points=max_num_rg_points)

    return write_tfrecord(path, encoded())
