"""WOMD ``Scenario`` protos (``scenario.proto``/``map.proto``, proto2) -> DecodedScenario.

The protos are decoded by field number with :mod:`diffdrive.data.protowire` (no generated
code, no TensorFlow); field numbers are those of ``shared/data/FORMATS.md`` section 4. The
per-step ``ObjectState`` and ``MapPoint`` messages, which make up most of a record, are
decoded in bulk with numpy when their bytes have the usual fixed layout, and one by one
otherwise, with the same result.

The conversion to Waymax's arrays follows the tf.Example path where WOMD defines it:

* objects: the SDC (``sdc_track_index``) first, at most ``max_objects`` tracks (more are
  reduced with :func:`diffdrive.data.select.select_objects`: tracks to predict, then the
  nearest to the SDC); x, y, z, yaw (``heading``, wrapped to [-pi, pi)), velocity and
  validity per step; length/width/height the mean over valid steps; timestamps from
  ``timestamps_seconds``; ``is_modeled`` from ``tracks_to_predict``;
  ``objects_of_interest`` from the listed track ids;
* roadgraph: every map feature's points in feature order, typed with the tf.Example codes
  (lane 0-3, road line 5-13, road edge 14-16, stop sign 17, crosswalk 18, speed bump 19),
  ``dir`` to the next point of the same feature; driveways are dropped (Waymax has no
  type for them); more than ``max_num_rg_points`` points are cut to those nearest the SDC;
* traffic lights: one fixed slot per controlled lane (first appearance), state and stop
  point per step from ``dynamic_map_states``.

A scenario whose length is not 91 steps is windowed by
:func:`diffdrive.data.select.time_window`: 91 steps with ``current_time_index`` on step 10
(longer ones are cut, shorter ones padded with invalid steps), stated in the assumptions.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

import numpy as np

from diffdrive.data import protowire as pw
from diffdrive.data import select
from diffdrive.data.tfrecord import OnError, PathSpec, SkipStats, iter_records
from diffdrive.data.types import DecodedScenario, ScenarioDecodeError
from diffdrive.sim import datatypes

FORMAT = "scenario_proto"
DEFAULT_MAX_OBJECTS = 128
DEFAULT_MAX_NUM_RG_POINTS = 20000

_F64, _F32, _VARINT = pw.FIXED64, pw.FIXED32, pw.VARINT

# Field number -> (name, wire type) of the fixed-width messages decoded in bulk.
_OBJECT_STATE_SCHEMA = {
    2: ("center_x", _F64),
    3: ("center_y", _F64),
    4: ("center_z", _F64),
    5: ("length", _F32),
    6: ("width", _F32),
    7: ("height", _F32),
    8: ("heading", _F32),
    9: ("velocity_x", _F32),
    10: ("velocity_y", _F32),
    11: ("valid", _VARINT),
}
_MAP_POINT_SCHEMA = {1: ("x", _F64), 2: ("y", _F64), 3: ("z", _F64)}

# MapFeature oneof field -> (name, polyline field number in that message, type field or
# None, type code offset, number of enum values or None).
_FEATURE_KINDS = {
    3: ("lane", 8, 2, 0, 4),
    4: ("road_line", 2, 1, 5, 9),
    5: ("road_edge", 2, 1, 14, 3),
    7: ("stop_sign", None, None, int(datatypes.RoadType.STOP_SIGN), None),
    8: ("crosswalk", 1, None, int(datatypes.RoadType.CROSSWALK), None),
    9: ("speed_bump", 1, None, int(datatypes.RoadType.SPEED_BUMP), None),
    10: ("driveway", 1, None, select.DRIVEWAY_CODE, None),
}
_STOP_SIGN, _DRIVEWAY = 7, 10
_NUM_OBJECT_TYPES = 5  # Track.ObjectType: 0 unset .. 4 other
_INT32 = np.iinfo(np.int32)


class _Record:
    """One serialized Scenario: its bytes, and where it came from (for error messages).

    Nested messages are handled as ``(start, end)`` byte offsets into :attr:`data`, so that
    many small messages can be gathered with one numpy indexing operation.
    """

    def __init__(self, data: bytes, file: str, record: int):
        self.data = data
        self.u8 = np.frombuffer(data, np.uint8)
        self.file, self.record = file, record

    def error(self, field: str, reason: str) -> ScenarioDecodeError:
        return ScenarioDecodeError(self.file, self.record, field, reason)

    def expect(self, wire: int, want: int, path: str) -> None:
        if wire != want:
            raise self.error(path, f"wire type {wire}, expected {want}")

    def int32(self, value: int, path: str) -> int:
        value = pw.to_signed64(value)
        if not _INT32.min <= value <= _INT32.max:
            raise self.error(path, f"value {value} does not fit int32")
        return value

    def _varint(self, pos: int, end: int, path: str) -> tuple[int, int]:
        data = self.data
        if pos < end and data[pos] < 0x80:  # the common one-byte case, inline
            return data[pos], pos + 1
        try:
            value, new_pos = pw.read_varint(data, pos)
        except pw.WireError as err:
            raise self.error(path, f"malformed protobuf: {err}") from None
        if new_pos > end:
            raise self.error(path, f"malformed protobuf: varint at byte {pos} overruns")
        return value, new_pos

    def scan(self, start: int, end: int, path: str) -> list[tuple[int, int, int, int]]:
        """The fields of the message in ``data[start:end]``.

        Returns:
          ``(field, wire, a, b)`` per field: for varints ``a`` is the value (unsigned), for
          the other wire types ``data[a:b]`` is the value's bytes.
        """
        data = self.data
        out = []
        pos = start
        while pos < end:
            # One-byte varints (almost every key and length) are decoded inline for speed.
            key = data[pos]
            if key < 0x80:
                pos += 1
            else:
                key, pos = self._varint(pos, end, path)
            field, wire = key >> 3, key & 7
            if field == 0:
                raise self.error(path, f"malformed protobuf: field number 0 at byte {pos}")
            if wire == pw.VARINT:
                value, pos = self._varint(pos, end, path)
                out.append((field, wire, value, pos))
                continue
            if wire == pw.LENGTH_DELIMITED:
                if pos < end and data[pos] < 0x80:
                    size = data[pos]
                    pos += 1
                else:
                    size, pos = self._varint(pos, end, path)
            elif wire == pw.FIXED64:
                size = 8
            elif wire == pw.FIXED32:
                size = 4
            else:
                raise self.error(path, f"malformed protobuf: unsupported wire type {wire}")
            if pos + size > end:
                raise self.error(path, f"malformed protobuf: field {field} overruns its message")
            out.append((field, wire, pos, pos + size))
            pos += size
        return out

    def double(self, start: int) -> float:
        return struct.unpack_from("<d", self.data, start)[0]

    def float(self, start: int) -> float:
        return struct.unpack_from("<f", self.data, start)[0]


# --------------------------------------------------------------------------------------
# Bulk decoding of fixed-width messages
# --------------------------------------------------------------------------------------


def _fixed_layout(rec: _Record, start: int, end: int, schema: dict) -> list[tuple] | None:
    """Byte layout of one message if every field is fixed-width (varints of one byte).

    Returns ``[(key_offset, key_bytes, field, wire, value_offset), ...]`` (offsets relative
    to ``start``) or None when the message has a length-delimited field, a longer varint,
    a wire type other than the schema's, or is malformed: such messages go through the
    one-by-one decoder, which also reports errors.
    """
    data = rec.data
    layout = []
    pos = start
    while pos < end:
        key = data[pos]
        if key & 0x80:
            return None  # field numbers >= 16: not in these schemas
        field, wire = key >> 3, key & 7
        if field in schema and schema[field][1] != wire:
            return None
        size = {_F64: 8, _F32: 4, _VARINT: 1}.get(wire)
        if field == 0 or size is None or pos + 1 + size > end:
            return None
        if wire == _VARINT and data[pos + 1] & 0x80:
            return None
        layout.append((pos - start, bytes([key]), field, wire, pos + 1 - start))
        pos += 1 + size
    return layout


def _decode_one(rec: _Record, start: int, end: int, schema, out, row: int, path: str) -> None:
    for field, wire, a, _ in rec.scan(start, end, path):
        if field not in schema:
            continue  # unknown fields are skipped, as protobuf does
        name, want = schema[field]
        rec.expect(wire, want, f"{path}.{name}")
        if wire == _F64:
            out[name][row] = rec.double(a)
        elif wire == _F32:
            out[name][row] = rec.float(a)
        else:
            out[name][row] = pw.to_signed64(a)


def _decode_messages(
    rec: _Record, spans: Sequence[tuple[int, int]], schema: dict, path_of
) -> dict[str, np.ndarray]:
    """Decodes many small messages of one type into ``name -> (n,) float64`` arrays.

    Absent fields read as 0, the proto2 default. Messages are grouped by byte length; a
    group whose first message has a fixed-width layout is checked byte for byte against it
    and decoded with numpy, the rest one by one (with the same result).

    Args:
      rec: the record holding the messages.
      spans: ``(start, end)`` byte offsets of each message.
      schema: field number -> (name, wire type).
      path_of: ``index -> str`` path of a message, for errors.
    """
    count = len(spans)
    out = {name: np.zeros(count, np.float64) for name, _ in schema.values()}
    if count == 0:
        return out
    bounds = np.asarray(spans, np.int64).reshape(count, 2)
    starts, lengths = bounds[:, 0], bounds[:, 1] - bounds[:, 0]
    one_by_one: list[np.ndarray] = []
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        first = int(starts[rows[0]])
        layout = _fixed_layout(rec, first, first + int(length), schema)
        if layout is None:
            one_by_one.append(rows)
            continue
        block = rec.u8[starts[rows, None] + np.arange(length)]  # (rows, length) bytes
        match = np.ones(len(rows), bool)
        for key_offset, key_bytes, _, wire, value_offset in layout:
            match &= block[:, key_offset] == key_bytes[0]
            if wire == _VARINT:
                match &= block[:, value_offset] < 0x80
        one_by_one.append(rows[~match])
        good, block = rows[match], block[match]
        for _, _, field, wire, value_offset in layout:
            if field not in schema:
                continue
            name = schema[field][0]
            if wire == _F64:
                values = block[:, value_offset : value_offset + 8].copy().view("<f8")[:, 0]
            elif wire == _F32:
                values = block[:, value_offset : value_offset + 4].copy().view("<f4")[:, 0]
            else:
                values = block[:, value_offset]
            out[name][good] = values
    for row in np.concatenate(one_by_one):
        start, end = int(bounds[row, 0]), int(bounds[row, 1])
        _decode_one(rec, start, end, schema, out, int(row), path_of(int(row)))
    return out


def _repeated_scalars(rec: _Record, wire: int, a: int, b: int, path: str, kind: str) -> list:
    """One element (unpacked) or all elements (packed) of a repeated scalar field."""
    if kind == "double":
        if wire == _F64:
            return [rec.double(a)]
        rec.expect(wire, pw.LENGTH_DELIMITED, path)
        try:
            return pw.packed_doubles(rec.data[a:b]).tolist()
        except pw.WireError as err:
            raise rec.error(path, str(err)) from None
    if wire == _VARINT:
        return [pw.to_signed64(a)]
    rec.expect(wire, pw.LENGTH_DELIMITED, path)
    try:
        return pw.packed_varints(rec.data[a:b])
    except pw.WireError as err:
        raise rec.error(path, str(err)) from None


# --------------------------------------------------------------------------------------
# Scenario
# --------------------------------------------------------------------------------------


class _RawScenario:
    """The top-level fields of a Scenario; nested messages as ``(start, end)`` spans."""

    def __init__(self):
        self.scenario_id = ""
        self.timestamps: list[float] = []
        self.tracks: list[tuple[int, int]] = []
        self.dynamic_map_states: list[tuple[int, int]] = []
        self.map_features: list[tuple[int, int]] = []
        self.sdc_track_index: int | None = None
        self.current_time_index: int | None = None
        self.objects_of_interest: list[int] = []
        self.tracks_to_predict: list[tuple[int, int]] = []


def _parse_scenario(rec: _Record) -> _RawScenario:
    raw = _RawScenario()
    ld = pw.LENGTH_DELIMITED
    for field, wire, a, b in rec.scan(0, len(rec.data), "Scenario"):
        if field == 1:
            raw.timestamps += _repeated_scalars(rec, wire, a, b, "timestamps_seconds", "double")
        elif field == 2:
            rec.expect(wire, ld, "tracks")
            raw.tracks.append((a, b))
        elif field == 4:
            raw.objects_of_interest += _repeated_scalars(
                rec, wire, a, b, "objects_of_interest", "int"
            )
        elif field == 5:
            rec.expect(wire, ld, "scenario_id")
            try:
                raw.scenario_id = rec.data[a:b].decode("utf-8")
            except UnicodeDecodeError as err:
                raise rec.error("scenario_id", f"not UTF-8: {err}") from None
        elif field == 6:
            rec.expect(wire, _VARINT, "sdc_track_index")
            raw.sdc_track_index = rec.int32(a, "sdc_track_index")
        elif field == 7:
            rec.expect(wire, ld, "dynamic_map_states")
            raw.dynamic_map_states.append((a, b))
        elif field == 8:
            rec.expect(wire, ld, "map_features")
            raw.map_features.append((a, b))
        elif field == 10:
            rec.expect(wire, _VARINT, "current_time_index")
            raw.current_time_index = rec.int32(a, "current_time_index")
        elif field == 11:
            rec.expect(wire, ld, "tracks_to_predict")
            raw.tracks_to_predict.append((a, b))
        # Other fields (lidar, camera tokens, fields unknown here) are skipped.
    return raw


def _decode_tracks(rec: _Record, raw: _RawScenario, num_steps: int):
    """Track ids ``(N,)``, types ``(N,)`` and ObjectState fields ``(N, T)``."""
    ids, types, states = [], [], []
    for index, (start, end) in enumerate(raw.tracks):
        path = f"tracks[{index}]"
        track_id, object_type, num_states = 0, 0, 0
        for field, wire, a, b in rec.scan(start, end, path):
            if field == 1:
                rec.expect(wire, _VARINT, f"{path}.id")
                track_id = rec.int32(a, f"{path}.id")
            elif field == 2:
                rec.expect(wire, _VARINT, f"{path}.object_type")
                object_type = pw.to_signed64(a)
                if not 0 <= object_type < _NUM_OBJECT_TYPES:
                    raise rec.error(f"{path}.object_type", f"unknown object type {object_type}")
            elif field == 3:
                rec.expect(wire, pw.LENGTH_DELIMITED, f"{path}.states")
                states.append((a, b))
                num_states += 1
        if num_states != num_steps:
            raise rec.error(
                f"{path}.states",
                f"{num_states} states, but the scenario has {num_steps} timestamps",
            )
        ids.append(track_id)
        types.append(object_type)
    num_tracks = len(ids)

    def path_of(row: int) -> str:
        return f"tracks[{row // num_steps}].states[{row % num_steps}]"

    fields = _decode_messages(rec, states, _OBJECT_STATE_SCHEMA, path_of)
    fields = {name: a.reshape(num_tracks, num_steps) for name, a in fields.items()}
    return np.asarray(ids, np.int64), np.asarray(types, np.int64), fields


def _decode_map(rec: _Record, raw: _RawScenario, notes: list[str]):
    """``(xyz (n, 3), type code, feature id)`` per map feature, in feature order."""
    features = []  # (feature index, kind field, type code, feature id)
    points: list[tuple[int, int]] = []
    point_owner: list[int] = []
    for index, (start, end) in enumerate(raw.map_features):
        path = f"map_features[{index}]"
        feature_id, kind, body = None, None, None
        for field, wire, a, b in rec.scan(start, end, path):
            if field == 1:
                rec.expect(wire, _VARINT, f"{path}.id")
                feature_id = pw.to_signed64(a)
            elif field in _FEATURE_KINDS:
                rec.expect(wire, pw.LENGTH_DELIMITED, f"{path}.{_FEATURE_KINDS[field][0]}")
                kind, body = field, (a, b)  # a oneof: the last one set wins
        if kind is None:
            raise rec.error(path, "map feature has none of the known geometry fields")
        if feature_id is None:
            raise rec.error(f"{path}.id", "missing")
        name, polyline_field, type_field, offset, num_values = _FEATURE_KINDS[kind]
        path = f"{path}.{name}"
        code, position = offset, None
        for field, wire, a, b in rec.scan(body[0], body[1], path):
            if field == type_field:
                rec.expect(wire, _VARINT, f"{path}.type")
                subtype = pw.to_signed64(a)
                if not 0 <= subtype < num_values:
                    raise rec.error(f"{path}.type", f"unknown {name} type {subtype}")
                code = offset + subtype
            elif field == polyline_field:
                rec.expect(wire, pw.LENGTH_DELIMITED, f"{path}.polyline")
                points.append((a, b))
                point_owner.append(len(features))
            elif kind == _STOP_SIGN and field == 2:
                rec.expect(wire, pw.LENGTH_DELIMITED, f"{path}.position")
                position = (a, b)  # a singular field: the last one wins
        if kind == _STOP_SIGN:
            if position is None:
                raise rec.error(f"{path}.position", "stop sign without a position")
            points.append(position)
            point_owner.append(len(features))
        features.append((index, kind, code, feature_id))

    def path_of(row: int) -> str:
        return f"map_features[{features[point_owner[row]][0]}] point"

    decoded = _decode_messages(rec, points, _MAP_POINT_SCHEMA, path_of)
    xyz = np.stack([decoded["x"], decoded["y"], decoded["z"]], axis=-1)
    counts = np.bincount(np.asarray(point_owner, np.int64), minlength=len(features))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    polylines, driveways = [], 0
    for (index, kind, code, feature_id), start, count in zip(features, starts, counts):
        if kind == _DRIVEWAY:
            driveways += 1
            continue
        if not np.isfinite(xyz[start : start + count]).all():
            raise rec.error(f"map_features[{index}]", "non-finite coordinates")
        if not _INT32.min <= feature_id <= _INT32.max:
            raise rec.error(f"map_features[{index}].id", f"{feature_id} does not fit int32")
        polylines.append((xyz[start : start + count], code, feature_id))
    if driveways:
        notes.append(
            f"Dropped {driveways} driveway map features: Waymax has no road type for them."
        )
    return polylines


def _decode_traffic_lights(
    rec: _Record, raw: _RawScenario, num_steps: int
) -> list[select.TrafficLightSeries]:
    if raw.dynamic_map_states and len(raw.dynamic_map_states) != num_steps:
        raise rec.error(
            "dynamic_map_states",
            f"{len(raw.dynamic_map_states)} steps, but the scenario has {num_steps} timestamps",
        )
    entries = []  # (step, lane, state, stop point span or None, path)
    for step, (start, end) in enumerate(raw.dynamic_map_states):
        for field, wire, a, b in rec.scan(start, end, f"dynamic_map_states[{step}]"):
            if field != 1:
                continue
            path = f"dynamic_map_states[{step}].lane_states"
            rec.expect(wire, pw.LENGTH_DELIMITED, path)
            lane, state, stop = None, 0, None
            for sub, sub_wire, sub_a, sub_b in rec.scan(a, b, path):
                if sub == 1:
                    rec.expect(sub_wire, _VARINT, f"{path}.lane")
                    lane = pw.to_signed64(sub_a)
                elif sub == 2:
                    rec.expect(sub_wire, _VARINT, f"{path}.state")
                    state = pw.to_signed64(sub_a)
                elif sub == 3:
                    rec.expect(sub_wire, pw.LENGTH_DELIMITED, f"{path}.stop_point")
                    stop = (sub_a, sub_b)
            if lane is None:
                raise rec.error(f"{path}.lane", "missing")
            if not 0 <= state < len(datatypes.TrafficLightState):
                raise rec.error(f"{path}.state", f"unknown signal state {state}")
            if not _INT32.min <= lane <= _INT32.max:
                raise rec.error(f"{path}.lane", f"{lane} does not fit int32")
            entries.append((step, lane, state, stop, path))
    with_stop = [i for i, entry in enumerate(entries) if entry[3] is not None]
    decoded = _decode_messages(
        rec,
        [entries[i][3] for i in with_stop],
        _MAP_POINT_SCHEMA,
        lambda row: f"{entries[with_stop[row]][4]}.stop_point",
    )
    stop_points = np.zeros((len(entries), 3))  # an absent stop point is (0, 0, 0)
    stop_points[with_stop] = np.stack([decoded["x"], decoded["y"], decoded["z"]], axis=-1)
    lights: dict[int, select.TrafficLightSeries] = {}
    for (step, lane, state, _, _), point in zip(entries, stop_points):
        if lane not in lights:
            lights[lane] = select.TrafficLightSeries(
                lane_id=lane,
                state=np.full(num_steps, -1, np.int64),
                valid=np.zeros(num_steps, bool),
                xyz=np.full((num_steps, 3), -1.0),
            )
        light = lights[lane]
        light.state[step], light.valid[step], light.xyz[step] = state, True, point
    return list(lights.values())


def _window(light: select.TrafficLightSeries, start: int, count: int, num_steps: int):
    def cut(a: np.ndarray, fill) -> np.ndarray:
        out = np.full((num_steps, *a.shape[1:]), fill, a.dtype)
        out[:count] = a[start : start + count]
        return out

    return select.TrafficLightSeries(
        light.lane_id, cut(light.state, -1), cut(light.valid, False), cut(light.xyz, -1.0)
    )


def decode_scenario_proto(
    data: bytes | memoryview,
    source: str = "<bytes>",
    record_index: int = 0,
    *,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    max_num_rg_points: int = DEFAULT_MAX_NUM_RG_POINTS,
) -> DecodedScenario:
    """Decodes one serialized WOMD ``Scenario`` into Waymax-style flat arrays.

    Args:
      data: the serialized proto (one TFRecord record).
      source: file name used in errors and in the result.
      record_index: index of the record in that file.
      max_objects: object slots ``N`` of the result (SDC first, padded when fewer).
      max_num_rg_points: roadgraph points ``P`` of the result (nearest to the SDC when
        cut, padded when fewer).

    Returns:
      A :class:`DecodedScenario` with ``log_trajectory/*`` ``(N, 91)``,
      ``object_metadata/*`` ``(N,)``, ``roadgraph_points/*`` ``(P,)`` and
      ``log_traffic_light/*`` ``(16, 91)``.

    Raises:
      ScenarioDecodeError: malformed bytes or inconsistent content; the message names the
        file, record and field (e.g. ``tracks[3].states[17].valid``).
    """
    rec = _Record(bytes(data), source, record_index)
    raw = _parse_scenario(rec)
    num_source_steps = len(raw.timestamps)
    if num_source_steps == 0:
        raise rec.error("timestamps_seconds", "missing: the scenario has no time steps")
    if raw.sdc_track_index is None:
        raise rec.error("sdc_track_index", "missing")
    if not 0 <= raw.sdc_track_index < len(raw.tracks):
        raise rec.error(
            "sdc_track_index", f"{raw.sdc_track_index} is not one of {len(raw.tracks)} tracks"
        )
    notes: list[str] = []
    num_steps = datatypes.NUM_TIMESTEPS
    current = raw.current_time_index
    if current is None and num_source_steps == num_steps:
        current = select.CURRENT_STEP
        notes.append("current_time_index is missing; assumed 10, as in every WOMD scenario.")
    try:
        start, count, window_notes = select.time_window(num_source_steps, current, num_steps)
    except ValueError as err:
        raise rec.error("current_time_index", str(err)) from None
    notes += window_notes
    # Waymax treats output step 10 as the current one; objects and map points are chosen
    # around the SDC there.
    current_step = select.CURRENT_STEP

    ids, types, fields = _decode_tracks(rec, raw, num_source_steps)
    num_tracks = len(ids)

    def window(a: np.ndarray, fill) -> np.ndarray:
        out = np.full((num_tracks, num_steps), fill, a.dtype)
        out[:, :count] = a[:, start : start + count]
        return out

    valid = window(fields["valid"] != 0, False)
    timestamps = np.full(num_steps, -1, np.int64)
    timestamps[:count] = np.round(np.asarray(raw.timestamps[start : start + count]) * 1e6)
    is_modeled = np.zeros(num_tracks, bool)
    for index, (span_start, span_end) in enumerate(raw.tracks_to_predict):
        path = f"tracks_to_predict[{index}]"
        track_index = None
        for field, wire, a, _ in rec.scan(span_start, span_end, path):
            if field == 1:
                rec.expect(wire, _VARINT, f"{path}.track_index")
                track_index = pw.to_signed64(a)
        if track_index is None or not 0 <= track_index < num_tracks:
            raise rec.error(f"{path}.track_index", f"{track_index} is not a track index")
        is_modeled[track_index] = True
    unknown = sorted(set(raw.objects_of_interest) - set(ids.tolist()))
    if unknown:
        raise rec.error("objects_of_interest", f"track ids {unknown} are not in tracks")
    arrays = select.build_object_arrays(
        x=window(fields["center_x"], -1.0),
        y=window(fields["center_y"], -1.0),
        z=window(fields["center_z"], -1.0),
        yaw=window(fields["heading"], -1.0),
        vel_x=window(fields["velocity_x"], -1.0),
        vel_y=window(fields["velocity_y"], -1.0),
        length=window(fields["length"], -1.0),
        width=window(fields["width"], -1.0),
        height=window(fields["height"], -1.0),
        valid=valid,
        timestamps_micros=timestamps,
        ids=ids,
        object_types=types,
        is_sdc=np.arange(num_tracks) == raw.sdc_track_index,
        is_modeled=is_modeled,
        objects_of_interest=np.isin(ids, raw.objects_of_interest),
    )
    if num_tracks > max_objects:
        notes.append(
            f"The scenario has {num_tracks} tracks; kept {max_objects}: the SDC, the tracks to "
            "predict, then the nearest to the SDC at the current step."
        )
    try:
        arrays, _ = select.select_objects(arrays, max_objects, current_step)
    except ValueError as err:
        raise rec.error("tracks", str(err)) from None

    arrays.update(select.polylines_to_roadgraph(_decode_map(rec, raw, notes)))
    notes.append(
        "Roadgraph points are the map features' own points in feature order (crosswalk and "
        "speed-bump polygons as their corners, a stop sign as one point), not resampled."
    )
    try:
        arrays = select.pad_roadgraph(arrays, max_num_rg_points, current_step, notes=notes)
    except ValueError as err:
        raise rec.error("map_features", str(err)) from None

    lights = [
        _window(light, start, count, num_steps)
        for light in _decode_traffic_lights(rec, raw, num_source_steps)
    ]
    try:
        arrays.update(select.traffic_lights_to_arrays(lights, num_steps, notes=notes))
    except ValueError as err:
        raise rec.error("dynamic_map_states", str(err)) from None
    if lights:
        notes.append(
            "Each traffic light (controlled lane) has one fixed slot, by first appearance."
        )
    return DecodedScenario(
        scenario_id=raw.scenario_id,
        format=FORMAT,
        arrays=arrays,
        source=source,
        record_index=record_index,
        assumptions=tuple(notes),
    )


def read_scenario_proto_file(
    spec: PathSpec,
    *,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    max_num_rg_points: int = DEFAULT_MAX_NUM_RG_POINTS,
    on_error: OnError = "raise",
    stats: SkipStats | None = None,
) -> Iterator[DecodedScenario]:
    """Decodes every record of TFRecord files of WOMD ``Scenario`` protos.

    Args:
      spec: a path, ``name@N``, a glob or a list of those (see
        :func:`diffdrive.data.tfrecord.expand_paths`); records are framed and CRC-checked
        by :func:`diffdrive.data.tfrecord.iter_records`.
      max_objects, max_num_rg_points: see :func:`decode_scenario_proto`.
      on_error: ``"raise"``, or ``"skip"`` to leave out records whose framing or content is
        bad, counting them in ``stats``.
      stats: collects what was skipped.

    Yields:
      One :class:`DecodedScenario` per record, in file order.
    """
    stats = stats if stats is not None else SkipStats()
    for record in iter_records(spec, on_error=on_error, stats=stats):
        try:
            yield decode_scenario_proto(
                record.data,
                source=record.file,
                record_index=record.index,
                max_objects=max_objects,
                max_num_rg_points=max_num_rg_points,
            )
        except ScenarioDecodeError as error:
            if on_error == "raise":
                raise
            stats.add(error)
