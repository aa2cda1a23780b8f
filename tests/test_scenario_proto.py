"""Tests for diffdrive.data.scenario_proto against the real WOMD Scenario protos.

Expected values come from the protos themselves, decoded here independently, field by
field, with the plain ``protowire.iter_fields`` walker.
"""

from __future__ import annotations

import collections
import struct

import numpy as np
import pytest

from diffdrive.data import protowire as pw
from diffdrive.data import scenario_proto
from diffdrive.data.tfrecord import SkipStats, iter_records, write_tfrecord
from diffdrive.data.types import ScenarioDecodeError
from diffdrive.sim import datatypes

FILES = ("motion_data_one_scenario.tfrecord", "womd_scenario_input.tfrecord")


def _records(path):
    return (record.data for record in iter_records(str(path)))


@pytest.fixture(scope="module", params=FILES)
def case(request, shared_data):
    path = shared_data / "womd" / "scenario_proto" / request.param
    record = next(_records(path))
    decoded = scenario_proto.decode_scenario_proto(record, str(path), 0)
    return record, decoded, _reference(record)


def _fields(buf):
    grouped = collections.defaultdict(list)
    for field, _, value in pw.iter_fields(buf):
        grouped[field].append(value)
    return grouped


def _point(buf):
    f = _fields(buf)
    return [pw.fixed64_double(f[k][0]) if k in f else 0.0 for k in (1, 2, 3)]


def _reference(record):
    """Independent plain decode of the fields the tests compare."""
    top = _fields(record)
    ref = {"timestamps": [pw.fixed64_double(v) for v in top[1]]}
    ref["sdc_track_index"] = top[6][0]
    ref["objects_of_interest"] = [int(v) for v in top[4]]
    ref["tracks_to_predict"] = [_fields(m)[1][0] for m in top[11]]
    tracks = []
    for message in top[2]:
        f = _fields(message)
        states = []
        for s in f[3]:
            g = _fields(s)

            def get(field, kind, g=g):
                if field not in g:
                    return 0.0
                raw = g[field][-1]
                return pw.fixed64_double(raw) if kind == "d" else pw.fixed32_float(raw)

            states.append(
                {
                    "x": get(2, "d"),
                    "y": get(3, "d"),
                    "z": get(4, "d"),
                    "length": get(5, "f"),
                    "width": get(6, "f"),
                    "height": get(7, "f"),
                    "yaw": get(8, "f"),
                    "vel_x": get(9, "f"),
                    "vel_y": get(10, "f"),
                    "valid": bool(g[11][0]) if 11 in g else False,
                }
            )
        tracks.append({"id": f[1][0], "type": f[2][0] if 2 in f else 0, "states": states})
    ref["tracks"] = tracks
    points_per_code = collections.Counter()
    features_per_code = collections.Counter()
    for message in top[8]:
        f = _fields(message)
        for kind, (poly_field, type_field, offset) in {
            3: (8, 2, 0),
            4: (2, 1, 5),
            5: (2, 1, 14),
            8: (1, None, 18),
            9: (1, None, 19),
        }.items():
            if kind in f:
                g = _fields(f[kind][0])
                code = offset + (g[type_field][0] if type_field in g else 0)
                points_per_code[code] += len(g[poly_field])
                features_per_code[code] += 1
        if 7 in f:
            points_per_code[17] += 1
            features_per_code[17] += 1
    ref["points_per_code"] = points_per_code
    ref["features_per_code"] = features_per_code
    lights = []  # per step: {lane: (state, stop point)}
    for message in top[7]:
        step = {}
        for lane_state in _fields(message)[1]:
            g = _fields(lane_state)
            step[g[1][0]] = (g[2][0] if 2 in g else 0, _point(g[3][0]))
        lights.append(step)
    ref["lights"] = lights
    return ref


def test_shapes_dtypes_and_state(case):
    _, decoded, _ = case
    a = decoded.arrays
    assert decoded.format == "scenario_proto"
    assert a["log_trajectory/x"].shape == (128, 91)
    assert a["object_metadata/ids"].shape == (128,)
    assert a["roadgraph_points/x"].shape == (20000,)
    assert a["log_traffic_light/state"].shape == (16, 91)
    datatypes.validate(decoded.to_state())
    yaw = a["log_trajectory/yaw"][a["log_trajectory/valid"]]
    assert yaw.min() >= -np.float32(np.pi) and yaw.max() < np.pi


def test_every_track_state_matches_the_proto(case):
    _, decoded, ref = case
    a = decoded.arrays
    by_id = {t["id"]: t for t in ref["tracks"]}
    kept = a["object_metadata/ids"][a["object_metadata/is_valid"]]
    assert len(kept) == min(128, len(ref["tracks"]))
    assert len(set(kept.tolist())) == len(kept)
    stamps = np.round(np.asarray(ref["timestamps"]) * 1e6)
    for slot, track_id in enumerate(kept):
        track = by_id[int(track_id)]
        assert a["object_metadata/object_types"][slot] == track["type"]
        valid = np.array([s["valid"] for s in track["states"]])
        np.testing.assert_array_equal(a["log_trajectory/valid"][slot], valid)
        for name in ("x", "y", "z", "vel_x", "vel_y"):
            want = np.array([s[name] for s in track["states"]], np.float32)
            got = a[f"log_trajectory/{name}"][slot]
            np.testing.assert_array_equal(got[valid], want[valid], err_msg=f"{track_id} {name}")
            assert (got[~valid] == -1).all()
        heading = np.array([s["yaw"] for s in track["states"]], np.float32)
        np.testing.assert_allclose(
            np.cos(a["log_trajectory/yaw"][slot][valid]), np.cos(heading[valid]), atol=1e-6
        )
        np.testing.assert_allclose(
            np.sin(a["log_trajectory/yaw"][slot][valid]), np.sin(heading[valid]), atol=1e-6
        )
        for name in ("length", "width", "height"):
            values = np.array([s[name] for s in track["states"]])[valid]
            np.testing.assert_allclose(a[f"log_trajectory/{name}"][slot], values.mean(), rtol=1e-6)
        got_stamps = a["log_trajectory/timestamp_micros"][slot]
        np.testing.assert_array_equal(got_stamps[valid], stamps[valid])
        assert (got_stamps[~valid] == -1).all()


def test_sdc_modeled_and_interest_flags(case):
    _, decoded, ref = case
    a = decoded.arrays
    sdc_id = ref["tracks"][ref["sdc_track_index"]]["id"]
    assert a["object_metadata/is_sdc"][0] and a["object_metadata/is_sdc"].sum() == 1
    assert a["object_metadata/ids"][0] == sdc_id
    modeled_ids = {ref["tracks"][i]["id"] for i in ref["tracks_to_predict"]}
    got = set(a["object_metadata/ids"][a["object_metadata/is_modeled"]].tolist())
    assert got == modeled_ids and modeled_ids
    got = set(a["object_metadata/ids"][a["object_metadata/objects_of_interest"]].tolist())
    assert got == set(ref["objects_of_interest"]) & set(a["object_metadata/ids"].tolist())
    assert not a["object_metadata/is_controlled"].any()


def test_selection_keeps_nearest_when_more_than_128_tracks(shared_data):
    path = shared_data / "womd" / "scenario_proto" / "womd_scenario_input.tfrecord"
    record = next(_records(path))
    ref = _reference(record)
    assert len(ref["tracks"]) == 257
    a = scenario_proto.decode_scenario_proto(record, str(path), 0).arrays
    sdc = ref["tracks"][ref["sdc_track_index"]]["states"][10]
    kept = set(a["object_metadata/ids"].tolist())
    modeled = {ref["tracks"][i]["id"] for i in ref["tracks_to_predict"]}

    def dist(track):
        # Position at the valid step nearest in time to step 10 (the earlier one on ties).
        steps = [t for t, s in enumerate(track["states"]) if s["valid"]]
        step = min(steps, key=lambda t: (abs(t - 10), t))
        s = track["states"][step]
        return np.hypot(s["x"] - sdc["x"], s["y"] - sdc["y"])

    valid_now = [t for t in ref["tracks"] if t["states"][10]["valid"]]
    assert {t["id"] for t in valid_now} <= kept  # fewer than 128 are valid now
    later = [
        t
        for t in ref["tracks"]
        if not t["states"][10]["valid"] and any(s["valid"] for s in t["states"])
    ]
    kept_later = [t for t in later if t["id"] in kept and t["id"] not in modeled]
    dropped = [t for t in later if t["id"] not in kept]
    assert kept_later and dropped
    assert max(map(dist, kept_later)) <= min(map(dist, dropped))
    assert any("257 tracks" in s for s in scenario_proto.decode_scenario_proto(record).assumptions)


def test_map_feature_and_point_counts_per_type(case):
    _, decoded, ref = case
    a = decoded.arrays
    valid = a["roadgraph_points/valid"]
    types, counts = np.unique(a["roadgraph_points/types"][valid], return_counts=True)
    assert dict(zip(types.tolist(), counts.tolist())) == dict(ref["points_per_code"])
    features = collections.Counter()
    ids = a["roadgraph_points/ids"][valid]
    for code in types:
        features[int(code)] = len(np.unique(ids[a["roadgraph_points/types"][valid] == code]))
    assert features == ref["features_per_code"]
    assert (a["roadgraph_points/types"][~valid] == -1).all()
    # dir is a unit vector to the next point of the same feature, zero at its end.
    xyz = np.stack([a[f"roadgraph_points/{k}"] for k in "xyz"], axis=-1)[valid]
    direction = np.stack([a[f"roadgraph_points/dir_{k}"] for k in "xyz"], axis=-1)[valid]
    same = ids[1:] == ids[:-1]
    step = xyz[1:] - xyz[:-1]
    cos = np.sum(step * direction[:-1], axis=-1) / np.maximum(np.linalg.norm(step, axis=-1), 1e-9)
    assert np.all(cos[same & (np.linalg.norm(step, axis=-1) > 1e-3)] > 0.999)
    assert np.all(direction[:-1][~same] == 0) and np.all(direction[-1] == 0)


def test_traffic_lights_per_step(case):
    _, decoded, ref = case
    a = decoded.arrays
    lanes_seen = list(dict.fromkeys(lane for step in ref["lights"] for lane in step))
    assert len(lanes_seen) <= 16
    for slot, lane in enumerate(lanes_seen):
        for t, step in enumerate(ref["lights"]):
            if lane in step:
                state, point = step[lane]
                assert a["log_traffic_light/valid"][slot, t]
                assert a["log_traffic_light/state"][slot, t] == state
                assert a["log_traffic_light/lane_ids"][slot, t] == lane
                np.testing.assert_array_equal(
                    [a[f"log_traffic_light/{k}"][slot, t] for k in "xyz"],
                    np.float32(point),
                )
            else:
                assert not a["log_traffic_light/valid"][slot, t]
                assert a["log_traffic_light/state"][slot, t] == -1
    assert not a["log_traffic_light/valid"][len(lanes_seen) :].any()


# ------------------------------------------------------------------ synthetic protos


def _f64(field, value):
    return pw.encode_key(field, pw.FIXED64) + struct.pack("<d", value)


def _f32(field, value):
    return pw.encode_key(field, pw.FIXED32) + struct.pack("<f", value)


def _state(x, valid=True, reverse=False):
    parts = [_f64(2, x), _f64(3, 2 * x), _f64(4, 0.5), _f32(5, 4.0), _f32(6, 2.0)]
    parts += [_f32(7, 1.5), _f32(8, 4.0), _f32(9, 1.0), _f32(10, 0.0)]
    parts.append(pw.encode_varint_field(11, int(valid)))
    return b"".join(reversed(parts) if reverse else parts)


def _track(track_id, steps, object_type=1, reverse_from=None, x0=0.0):
    out = pw.encode_varint_field(1, track_id) + pw.encode_varint_field(2, object_type)
    for t in range(steps):
        reverse = reverse_from is not None and t >= reverse_from
        out += pw.encode_bytes_field(3, _state(x0 + t, reverse=reverse))
    return out


def _points(field, xyz):
    return b"".join(
        pw.encode_bytes_field(field, _f64(1, p[0]) + _f64(2, p[1]) + _f64(3, p[2])) for p in xyz
    )


def _scenario(steps=91, current=10, tracks=None, extra=b"", sdc=0, packed_times=True):
    times = struct.pack(f"<{steps}d", *(0.1 * np.arange(steps)))
    out = pw.encode_bytes_field(5, b"synthetic")
    if packed_times:
        out += pw.encode_bytes_field(1, times)
    else:
        out += b"".join(_f64(1, 0.1 * t) for t in range(steps))
    for track in tracks if tracks is not None else [_track(7, steps), _track(8, steps, 2)]:
        out += pw.encode_bytes_field(2, track)
    out += pw.encode_varint_field(6, sdc) + pw.encode_varint_field(10, current)
    return out + extra


def test_synthetic_scenario_slow_path_equals_fast_path():
    fast = scenario_proto.decode_scenario_proto(_scenario(), max_num_rg_points=10)
    tracks = [_track(7, 91, reverse_from=40), _track(8, 91, 2, reverse_from=0)]
    slow = scenario_proto.decode_scenario_proto(
        _scenario(tracks=tracks, packed_times=False), max_num_rg_points=10
    )
    for key, value in fast.arrays.items():
        np.testing.assert_array_equal(slow.arrays[key], value, err_msg=key)
    a = fast.arrays
    np.testing.assert_array_equal(a["log_trajectory/x"][0, :3], [0, 1, 2])
    np.testing.assert_allclose(a["log_trajectory/yaw"][0, 0], 4.0 - 2 * np.pi, rtol=1e-6)
    np.testing.assert_array_equal(a["object_metadata/object_types"][:3], [1, 2, -1])


def test_synthetic_map_types_stop_sign_and_driveway():
    lane = pw.encode_varint_field(2, 1) + _points(8, [[0, 0, 0], [1, 0, 0]])
    line = pw.encode_varint_field(1, 8) + _points(2, [[0, 1, 0], [1, 1, 0]])
    edge = pw.encode_varint_field(1, 2) + _points(2, [[0, 2, 0]])
    stop = pw.encode_bytes_field(2, _f64(1, 5.0) + _f64(2, 6.0) + _f64(3, 7.0))
    polygon = _points(1, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    features = [(3, lane), (4, line), (5, edge), (7, stop), (8, polygon), (9, polygon)]
    features.append((10, polygon))
    extra = b"".join(
        pw.encode_bytes_field(8, pw.encode_varint_field(1, 100 + i) + pw.encode_bytes_field(k, m))
        for i, (k, m) in enumerate(features)
    )
    decoded = scenario_proto.decode_scenario_proto(_scenario(extra=extra), max_num_rg_points=20)
    a = decoded.arrays
    np.testing.assert_array_equal(
        a["roadgraph_points/types"][:14], [1, 1, 13, 13, 16, 17, 18, 18, 18, 18, 19, 19, 19, 19]
    )
    np.testing.assert_array_equal(a["roadgraph_points/ids"][:6], [100, 100, 101, 101, 102, 103])
    np.testing.assert_array_equal([a[f"roadgraph_points/{k}"][5] for k in "xyz"], [5.0, 6.0, 7.0])
    assert (a["roadgraph_points/types"][14:] == -1).all()
    assert any("driveway" in s for s in decoded.assumptions)


def test_long_scenario_is_windowed_on_current_time_index():
    steps = 120
    decoded = scenario_proto.decode_scenario_proto(
        _scenario(steps=steps, current=25), max_num_rg_points=4
    )
    a = decoded.arrays
    # Step 15 becomes step 0 so that current index 25 lands on step 10.
    np.testing.assert_array_equal(a["log_trajectory/x"][0, [0, 10, 90]], [15, 25, 105])
    np.testing.assert_array_equal(a["log_trajectory/timestamp_micros"][0, :2], [1500000, 1600000])
    assert any("120 steps" in s for s in decoded.assumptions)
    short = scenario_proto.decode_scenario_proto(_scenario(steps=50, current=10))
    assert short.arrays["log_trajectory/valid"][0, :50].all()
    assert not short.arrays["log_trajectory/valid"][:, 50:].any()
    assert any("padded invalid" in s for s in short.assumptions)


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda s: s[:-3], "Scenario", "malformed"),
        (lambda s: s + pw.encode_varint_field(2, 3), "tracks", "wire type"),
        (lambda s: s + pw.encode_varint_field(6, 5), "sdc_track_index", "not one of"),
        (
            lambda s: s + pw.encode_bytes_field(2, _track(9, 90)),
            "tracks[2].states",
            "90 states",
        ),
        (
            lambda s: s + pw.encode_bytes_field(2, _track(9, 91, object_type=7)),
            "tracks[2].object_type",
            "unknown object type",
        ),
        (
            lambda s: s + pw.encode_bytes_field(11, pw.encode_varint_field(1, 9)),
            "tracks_to_predict[0].track_index",
            "not a track index",
        ),
        (
            lambda s: (
                s
                + pw.encode_bytes_field(
                    8, pw.encode_varint_field(1, 1) + pw.encode_bytes_field(4, b"\x08\x09")
                )
            ),
            "map_features[0].road_line.type",
            "unknown road_line type 9",
        ),
        (
            lambda s: s + pw.encode_bytes_field(8, pw.encode_varint_field(1, 1)),
            "map_features[0]",
            "none of the known geometry",
        ),
        (
            lambda s: s + pw.encode_bytes_field(2, _track(9, 90) + _f32(3, 1.0)),
            "tracks[2].states",
            "wire type",
        ),
    ],
)
def test_bad_input_names_file_record_and_field(mutate, field, reason):
    data = mutate(_scenario())
    with pytest.raises(ScenarioDecodeError) as info:
        scenario_proto.decode_scenario_proto(data, "some.tfrecord", 3)
    err = info.value
    assert (err.file, err.record, err.field) == ("some.tfrecord", 3, field)
    assert reason in err.reason
    assert "some.tfrecord, record 3" in str(err)


def test_bad_object_state_is_reported_with_its_path():
    state = _state(1.0)[:-2] + pw.encode_bytes_field(11, b"\x01")  # valid as bytes
    track = pw.encode_varint_field(1, 9) + b"".join(
        pw.encode_bytes_field(3, state if t == 4 else _state(t)) for t in range(91)
    )
    data = _scenario(tracks=[_track(7, 91), track])
    with pytest.raises(ScenarioDecodeError) as info:
        scenario_proto.decode_scenario_proto(data, "f", 0)
    assert info.value.field == "tracks[1].states[4].valid"


def test_missing_sdc_index_is_an_error():
    data = _scenario().replace(pw.encode_varint_field(6, 0), b"")
    with pytest.raises(ScenarioDecodeError, match="sdc_track_index"):
        scenario_proto.decode_scenario_proto(data)


def test_read_file_yields_every_record(shared_data):
    path = shared_data / "womd" / "scenario_proto" / "motion_data_one_scenario.tfrecord"
    decoded = list(scenario_proto.read_scenario_proto_file(path, max_objects=100))
    assert [d.record_index for d in decoded] == [0]
    assert decoded[0].scenario_id == "637f20cafde22ff8"
    assert decoded[0].arrays["log_trajectory/x"].shape == (100, 91)
    assert decoded[0].source == str(path)


def test_read_file_skips_bad_records_when_asked(tmp_path):
    path = tmp_path / "mixed.tfrecord"
    write_tfrecord(str(path), [_scenario(), _scenario()[:-3], _scenario(steps=95)])
    with pytest.raises(ScenarioDecodeError) as info:
        list(scenario_proto.read_scenario_proto_file(path))
    assert (info.value.file, info.value.record) == (str(path), 1)
    stats = SkipStats()
    decoded = list(scenario_proto.read_scenario_proto_file(path, on_error="skip", stats=stats))
    assert [d.record_index for d in decoded] == [0, 2]
    assert stats.skipped == 1 and stats.errors[0].record == 1
