"""tf.train.Example parsing, the WOMD decoder (Waymax conformance) and the writer."""

from __future__ import annotations

import numpy as np
import pytest

from diffdrive.data import protowire, tf_example, tfrecord
from diffdrive.data.types import DecodedScenario, ScenarioDecodeError

REAL_RECORD = "womd/tf_example/motion_data_one_example.tfrecord"


@pytest.fixture(scope="module")
def real_record(shared_data) -> tfrecord.Record:
    (record,) = tfrecord.iter_records(shared_data / REAL_RECORD)
    return record


@pytest.fixture(scope="module")
def real_features(real_record) -> dict[str, np.ndarray]:
    return tf_example.parse_example(real_record.data)


@pytest.fixture(scope="module")
def real_decoded(real_record) -> DecodedScenario:
    return tf_example.decode_womd_example(
        real_record.data, source=real_record.file, record_index=real_record.index
    )


def _assert_same_arrays(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        value = np.asarray(value)
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape, key
        assert got[key].tobytes() == value.tobytes(), key  # bitwise, NaN-safe


def _example(*features: bytes) -> bytes:
    """A hand-assembled Example from ``(key, Feature bytes)`` map entries."""
    return protowire.encode_bytes_field(1, b"".join(features))


def _entry(key: str, feature: bytes) -> bytes:
    body = protowire.encode_bytes_field(1, key.encode()) + protowire.encode_bytes_field(2, feature)
    return protowire.encode_bytes_field(1, body)


# ----------------------------------------------------------------------------- wire helpers


def test_vectorised_varints_match_scalar_codec():
    values = np.array([0, 1, 127, 128, 300, -1, -2, 2**31, -(2**63), 2**63 - 1], np.int64)
    payload = protowire.encode_packed_varints_array(values)
    assert payload == b"".join(protowire.encode_varint(int(v)) for v in values)
    assert protowire.packed_varints_array(payload).tolist() == values.tolist()
    assert protowire.encode_packed_varints_array(np.array([-1])) == b"\xff" * 9 + b"\x01"
    with pytest.raises(protowire.WireError, match="truncated varint"):
        protowire.packed_varints_array(b"\x96")


# ----------------------------------------------------------------------------- parsing


def test_parse_packed_and_unpacked_lists():
    unpacked_floats = b"".join(
        protowire.encode_key(1, protowire.FIXED32) + np.float32(v).tobytes() for v in (1.5, -2.0)
    )
    unpacked_ints = b"".join(protowire.encode_varint_field(1, v) for v in (7, -1))
    packed_ints = protowire.encode_bytes_field(1, protowire.encode_packed_varints_array([3, -5]))
    packed_floats = protowire.encode_bytes_field(1, np.float32([0.25, 4]).tobytes())
    strings = protowire.encode_bytes_field(1, b"abc") + protowire.encode_bytes_field(1, b"")
    data = _example(
        _entry("uf", protowire.encode_bytes_field(2, unpacked_floats)),
        _entry("ui", protowire.encode_bytes_field(3, unpacked_ints)),
        _entry("pi", protowire.encode_bytes_field(3, packed_ints)),
        _entry("pf", protowire.encode_bytes_field(2, packed_floats)),
        _entry("b", protowire.encode_bytes_field(1, strings)),
        _entry("empty", b""),
    )
    parsed = tf_example.parse_example(data)
    assert parsed["uf"].dtype == np.float32 and parsed["uf"].tolist() == [1.5, -2.0]
    assert parsed["ui"].dtype == np.int64 and parsed["ui"].tolist() == [7, -1]
    assert parsed["pi"].tolist() == [3, -5]
    assert parsed["pf"].tolist() == [0.25, 4.0]
    assert parsed["b"].tolist() == [b"abc", b""]
    assert parsed["empty"].size == 0


def test_serialize_then_parse():
    features = {
        "f": np.float32([[1, 2], [3, 4]]),
        "i": np.array([-1, 0, 2**40]),
        "flag": np.array([True, False]),
        "s": "scenario",
    }
    parsed = tf_example.parse_example(tf_example.serialize_example(features))
    assert parsed["f"].tolist() == [1, 2, 3, 4]
    assert parsed["i"].tolist() == [-1, 0, 2**40]
    assert parsed["flag"].tolist() == [1, 0]
    assert parsed["s"].tolist() == [b"scenario"]


def test_parse_errors_name_the_key():
    twice = _example(
        _entry("k", protowire.encode_bytes_field(3, b"")),
        _entry("k", protowire.encode_bytes_field(3, b"")),
    )
    with pytest.raises(ScenarioDecodeError, match="appears twice") as info:
        tf_example.parse_example(twice, source="f.tfrecord", record_index=4)
    assert (info.value.file, info.value.record, info.value.field) == ("f.tfrecord", 4, "k")
    mixed = protowire.encode_bytes_field(2, b"") + protowire.encode_bytes_field(3, b"")
    with pytest.raises(ScenarioDecodeError, match="both a float_list and a int64_list") as info:
        tf_example.parse_example(_example(_entry("m", mixed)))
    assert info.value.field == "m"
    with pytest.raises(ScenarioDecodeError, match="malformed"):
        tf_example.parse_example(b"\x0a\x05\x0a\x03")  # a length running past the end


def test_real_record_has_the_72_womd_keys(real_features):
    spec = tf_example.womd_feature_spec(20000)
    assert len(spec) == 70
    assert set(real_features) == set(spec) | {"scenario/id", "state/difficulty_level"}
    for key, feature in spec.items():
        assert real_features[key].size == feature.size, key


# ----------------------------------------------------------------------------- decoding


def test_decoder_matches_waymax_exactly(real_decoded, shared_data):
    with np.load(shared_data.parent / "conformance" / "waymax_decoded_tf_example.npz") as ref:
        want = {key: ref[key] for key in ref.files}
    _assert_same_arrays(real_decoded.arrays, want)
    assert real_decoded.scenario_id == "a3bb37c25ce56418"
    assert real_decoded.format == "tf_example" and real_decoded.record_index == 0
    assert real_decoded.assumptions == ()  # light and SDC timestamps agree in this record
    assert real_decoded.to_state().num_objects == 128


def test_decoder_rules_on_the_real_record(real_decoded, real_features):
    arrays = real_decoded.arrays
    past_x = real_features["state/past/x"].reshape(128, 10)
    future_x = real_features["state/future/x"].reshape(128, 80)
    np.testing.assert_array_equal(arrays["log_trajectory/x"][:, :10], past_x)
    np.testing.assert_array_equal(arrays["log_trajectory/x"][:, 11:], future_x)
    yaw = arrays["log_trajectory/yaw"]
    assert yaw.min() >= -np.pi and yaw.max() < np.pi
    # Sizes are one value per object, repeated over the 91 steps.
    assert np.all(arrays["log_trajectory/length"] == arrays["log_trajectory/length"][:, :1])
    lights = real_features["traffic_light_state/current/state"]
    np.testing.assert_array_equal(arrays["log_traffic_light/state"][:, 10], lights)
    assert arrays["object_metadata/is_sdc"].sum() == 1


def test_waymax_masked_mean_by_hand():
    # 91 copies of 5.286 average to one ulp below 5.286 in Waymax's float32 order (object
    # 8 of the real record; the conformance file holds 5.2859993).
    size = np.float32(5.286)
    mean = tf_example.waymax_masked_mean(np.full((1, 91), size), np.ones((1, 91), bool))
    assert mean[0, 0] == np.nextafter(size, np.float32(0))
    x = np.float32([[1, 2, 3, 4], [5, 6, 7, 8]])
    valid = np.array([[True, False, True, False], [False] * 4])
    np.testing.assert_array_equal(
        tf_example.waymax_masked_mean(x, valid), [[2, 2, 2, 2], [-1, -1, -1, -1]]
    )


def test_wrap_yaws_by_hand():
    got = tf_example.wrap_yaws(np.float32([0.0, np.pi, -np.pi, 3 * np.pi / 2, -7.0]))
    want = np.float32([0.0, -np.pi, -np.pi, -np.pi / 2, -7.0 + 2 * np.pi])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_max_num_objects_truncates_like_waymax(real_record, real_decoded):
    small = tf_example.decode_womd_example(real_record.data, max_num_objects=50)
    for key, value in small.arrays.items():
        full = real_decoded.arrays[key]
        if key.startswith(("log_trajectory/", "object_metadata/")):
            assert value.shape[0] == 50
            np.testing.assert_array_equal(value, full[:50])
        else:
            np.testing.assert_array_equal(value, full)


def _decode_error(features: dict, **kwargs) -> ScenarioDecodeError:
    data = tf_example.serialize_example(features)
    with pytest.raises(ScenarioDecodeError) as info:
        tf_example.decode_womd_example(data, source="x.tfrecord", record_index=3, **kwargs)
    assert "x.tfrecord, record 3" in str(info.value)
    return info.value


def test_misshaped_feature_names_key_and_shape(real_features):
    features = dict(real_features)
    features["state/past/x"] = features["state/past/x"][:-1]
    error = _decode_error(features)
    assert error.field == "state/past/x"
    assert "expected 1280 values (shape [128, 10]), got 1279" in error.reason


def test_missing_and_wrongly_typed_features(real_features):
    features = dict(real_features)
    del features["traffic_light_state/future/valid"]
    error = _decode_error(features)
    assert error.field == "traffic_light_state/future/valid"
    assert "missing feature; expected int64_list of shape [80, 16]" in error.reason
    features = dict(real_features)
    features["state/id"] = features["state/id"].astype(np.int64)
    error = _decode_error(features)
    assert error.field == "state/id" and "expected a float_list" in error.reason


def test_more_roadgraph_samples_than_configured(real_record):
    with pytest.raises(ScenarioDecodeError) as info:
        tf_example.decode_womd_example(real_record.data, max_num_rg_points=30000)
    assert info.value.field == "roadgraph_samples/xyz"
    assert "the record has 20000 roadgraph samples; max_num_rg_points is 30000" in str(info.value)


def test_unknown_road_type(real_features):
    features = dict(real_features)
    types = features["roadgraph_samples/type"].copy()
    types[1234] = 20  # a driveway code, which Waymax's MapElementIds does not have
    features["roadgraph_samples/type"] = types
    error = _decode_error(features)
    assert error.field == "roadgraph_samples/type"
    assert "unknown road type 20 at index (1234,)" in error.reason


def test_values_waymax_would_mangle_are_refused(real_features):
    features = dict(real_features)
    ids = features["state/id"].copy()
    ids[5] = 2.5
    features["state/id"] = ids
    assert _decode_error(features).field == "state/id"
    features = dict(real_features)
    stamps = features["state/future/timestamp_micros"].copy()
    stamps[0] = 2**40
    features["state/future/timestamp_micros"] = stamps
    error = _decode_error(features)
    assert error.field == "state/future/timestamp_micros" and "int32" in error.reason


def test_unknown_traffic_light_state(real_features):
    features = dict(real_features)
    states = features["traffic_light_state/past/state"].copy()
    states[17] = 9  # codes are -1 and 0..8
    features["traffic_light_state/past/state"] = states
    error = _decode_error(features)
    assert error.field == "traffic_light_state/past/state"
    assert "unknown traffic-light state 9 at index (1, 1) (known: -1 to 8)" in error.reason


def test_light_timestamps_off_the_sdc_timeline_are_reported(real_features, real_decoded):
    features = dict(real_features)
    features["traffic_light_state/future/timestamp_micros"] = (
        features["traffic_light_state/future/timestamp_micros"] + 100_000
    )
    decoded = tf_example.decode_womd_example(features)
    _assert_same_arrays(decoded.arrays, real_decoded.arrays)  # still paired by index
    (note,) = decoded.assumptions
    assert "paired with agent steps by index" in note and "up to 100000 us" in note


def test_missing_scenario_id_is_an_assumption(real_features):
    features = {k: v for k, v in real_features.items() if k != "scenario/id"}
    decoded = tf_example.decode_womd_example(features, source="dir/f.tfrecord", record_index=2)
    assert decoded.scenario_id == "f.tfrecord#2"
    assert len(decoded.assumptions) == 1 and "no scenario/id" in decoded.assumptions[0]


# ----------------------------------------------------------------------------- writing


def test_encode_decode_round_trip_on_real_data(real_decoded, real_features):
    encoded = tf_example.encode_tf_example(real_decoded)
    rewritten = tf_example.parse_example(encoded)
    assert set(rewritten) == set(real_features)  # the same 72 keys
    for key, value in real_features.items():
        assert rewritten[key].dtype == value.dtype and rewritten[key].size == value.size, key
    again = tf_example.decode_womd_example(encoded)
    assert again.scenario_id == real_decoded.scenario_id
    _assert_same_arrays(again.arrays, real_decoded.arrays)
    # Also from a SimulatorState.
    from_state = tf_example.encode_tf_example(real_decoded.to_state(), "from-state")
    _assert_same_arrays(tf_example.decode_womd_example(from_state).arrays, real_decoded.arrays)


def test_written_file_reads_back(tmp_path, real_decoded):
    encoded = tf_example.encode_tf_example(real_decoded)
    path = tmp_path / "out.tfrecord"
    assert tfrecord.write_tfrecord(path, [encoded, encoded]) == 2
    scenarios = list(tf_example.read_tf_example_file(str(path)))
    assert [s.record_index for s in scenarios] == [0, 1]
    for scenario in scenarios:
        assert scenario.source == str(path)
        _assert_same_arrays(scenario.arrays, real_decoded.arrays)


def _small_scenario() -> dict[str, np.ndarray]:
    """3 objects, 5 roadgraph points and 2 lights; hand-checkable values."""
    steps = np.arange(91, dtype=np.float32)
    valid = np.ones((3, 91), bool)
    valid[2, 50:] = False
    arrays = {
        "log_trajectory/x": np.stack([steps, steps * 2, -steps]),
        "log_trajectory/y": np.zeros((3, 91), np.float32),
        "log_trajectory/z": np.ones((3, 91), np.float32),
        "log_trajectory/yaw": np.full((3, 91), 0.5, np.float32),
        "log_trajectory/vel_x": np.full((3, 91), 3, np.float32),
        "log_trajectory/vel_y": np.full((3, 91), 4, np.float32),
        "log_trajectory/length": np.full((3, 91), 4.8, np.float32),
        "log_trajectory/width": np.full((3, 91), 1.9, np.float32),
        "log_trajectory/height": np.full((3, 91), 1.5, np.float32),
        "log_trajectory/timestamp_micros": np.tile(np.arange(91, dtype=np.int32) * 100_000, (3, 1)),
        "log_trajectory/valid": valid,
        "object_metadata/ids": np.array([10, 11, 12], np.int32),
        "object_metadata/object_types": np.array([1, 2, 3], np.int32),
        "object_metadata/is_sdc": np.array([False, True, False]),
        "object_metadata/is_modeled": np.array([True, False, False]),
        "object_metadata/is_valid": np.array([True, True, True]),
        "object_metadata/objects_of_interest": np.array([False, False, True]),
        "object_metadata/is_controlled": np.zeros(3, bool),
        "roadgraph_points/x": np.arange(5, dtype=np.float32),
        "roadgraph_points/y": np.zeros(5, np.float32),
        "roadgraph_points/z": np.zeros(5, np.float32),
        "roadgraph_points/dir_x": np.array([1, 1, 1, 1, 0], np.float32),
        "roadgraph_points/dir_y": np.zeros(5, np.float32),
        "roadgraph_points/dir_z": np.zeros(5, np.float32),
        "roadgraph_points/types": np.array([2, 2, 2, 2, 2], np.int32),
        "roadgraph_points/ids": np.full(5, 7, np.int32),
        "roadgraph_points/valid": np.ones(5, bool),
        "log_traffic_light/x": np.full((2, 91), 3, np.float32),
        "log_traffic_light/y": np.full((2, 91), 4, np.float32),
        "log_traffic_light/z": np.zeros((2, 91), np.float32),
        "log_traffic_light/state": np.full((2, 91), 6, np.int32),
        "log_traffic_light/lane_ids": np.array([[7] * 91, [8] * 91], np.int32),
        "log_traffic_light/valid": np.ones((2, 91), bool),
    }
    arrays["log_trajectory/x"] = arrays["log_trajectory/x"].astype(np.float32)
    return arrays


def test_small_scenario_is_padded_and_derived_fields_written():
    small = _small_scenario()
    encoded = tf_example.encode_tf_example(small, "small", max_num_rg_points=10)
    features = tf_example.parse_example(encoded)
    speed = features["state/current/speed"]
    assert speed[:3].tolist() == [5.0, 5.0, 5.0] and speed[3:].tolist() == [-1.0] * 125
    vel_yaw = features["state/past/vel_yaw"].reshape(128, 10)
    np.testing.assert_allclose(vel_yaw[0], np.arctan2(4, 3), rtol=1e-6)
    assert features["state/tracks_to_predict"][:4].tolist() == [1, 0, 0, -1]
    future_valid = features["state/future/valid"].reshape(128, 80)
    assert future_valid[2].tolist() == [1] * 39 + [0] * 41  # step 50 is future index 39
    assert features["traffic_light_state/current/timestamp_micros"].tolist() == [1_000_000]

    decoded = tf_example.decode_womd_example(encoded, max_num_rg_points=10).arrays
    for key, value in small.items():
        rows = value.shape[0]
        np.testing.assert_array_equal(decoded[key][:rows], value, err_msg=key)
    assert decoded["object_metadata/ids"][3:].tolist() == [-1] * 125
    assert not decoded["object_metadata/is_valid"][3:].any()
    assert decoded["log_trajectory/x"][3:].tolist() == [[-1.0] * 91] * 125
    assert decoded["roadgraph_points/valid"].tolist() == [True] * 5 + [False] * 5
    assert decoded["roadgraph_points/types"][5:].tolist() == [-1] * 5
    assert decoded["log_traffic_light/state"][2:].tolist() == [[-1] * 91] * 14


def test_encoder_refuses_what_the_format_cannot_hold():
    small = _small_scenario()
    with pytest.raises(ValueError, match="6 roadgraph points, more than max_num_rg_points=5"):
        tf_example.encode_tf_example(
            {**small, **{k: np.concatenate([v, v[:1]]) for k, v in small.items()
                         if k.startswith("roadgraph_points/")}},
            "s",
            max_num_rg_points=5,
        )  # fmt: skip
    many = {
        k: np.repeat(v, 43, axis=0) if k.startswith(("log_trajectory/", "object_metadata/")) else v
        for k, v in small.items()
    }
    with pytest.raises(ValueError, match="129 objects, the format holds at most 128"):
        tf_example.encode_tf_example(many, "s", max_num_rg_points=10)
    bad = {**small, "object_metadata/is_valid": np.array([False, True, True])}
    with pytest.raises(ValueError, match="object 0 is modeled but not valid"):
        tf_example.encode_tf_example(bad, "s", max_num_rg_points=10)
    with pytest.raises(ValueError, match="missing array 'log_trajectory/vel_y'"):
        tf_example.encode_tf_example(
            {k: v for k, v in small.items() if k != "log_trajectory/vel_y"}, "s"
        )
    with pytest.raises(ValueError, match="scenario_id is required"):
        tf_example.encode_tf_example(small)


def test_sizes_are_written_so_waymax_reads_them_back_exactly():
    rng = np.random.default_rng(0)
    valid = rng.random((300, 91)) < rng.random((300, 1))
    raw = rng.uniform(0.3, 20, (300, 91)).astype(np.float32)
    target = tf_example.waymax_masked_mean(raw, valid)[:, 0]  # sizes Waymax can produce
    written = tf_example._sizes_that_decode_to(target, valid)
    np.testing.assert_array_equal(tf_example.waymax_masked_mean(written, valid)[:, 0], target)
    assert np.all(written[~valid] == -1)
    np.testing.assert_allclose(written[valid], np.broadcast_to(target[:, None], valid.shape)[valid],
                               rtol=1e-5)  # fmt: skip


# ----------------------------------------------------------------------------- files


def test_skip_mode_leaves_out_undecodable_records(tmp_path, real_features, real_decoded):
    good = tf_example.encode_tf_example(real_decoded)
    features = dict(real_features)
    types = features["roadgraph_samples/type"].copy()
    types[0] = 99
    features["roadgraph_samples/type"] = types
    bad = tf_example.serialize_example(features)
    path = tmp_path / "mixed.tfrecord"
    tfrecord.write_tfrecord(path, [good, bad, good])

    with pytest.raises(ScenarioDecodeError, match=r"record 1, field 'roadgraph_samples/type'"):
        list(tf_example.read_tf_example_file(str(path)))
    stats = tfrecord.SkipStats()
    scenarios = list(tf_example.read_tf_example_file(str(path), on_error="skip", stats=stats))
    assert [s.record_index for s in scenarios] == [0, 2]
    assert stats.skipped == 1 and stats.errors[0].field == "roadgraph_samples/type"


def test_reserialising_the_real_record_is_byte_identical(real_record, real_features):
    # The WOMD writer emits keys in sorted order with packed lists, as serialize_example
    # does, so parse -> serialize reproduces the record byte for byte.
    assert tf_example.serialize_example(real_features) == real_record.data


def test_write_tf_example_file_reads_back_and_is_atomic(tmp_path, real_decoded):
    small = _small_scenario()
    path = tmp_path / "export.tfrecord"
    written = tf_example.write_tf_example_file(
        path, [real_decoded, ("small", small)], max_num_rg_points=20000
    )
    assert written == 2
    first, second = tf_example.read_tf_example_file(str(path))
    assert (first.scenario_id, second.scenario_id) == (real_decoded.scenario_id, "small")
    assert (first.record_index, second.record_index) == (0, 1)
    _assert_same_arrays(first.arrays, real_decoded.arrays)
    for key, value in small.items():
        np.testing.assert_array_equal(second.arrays[key][: value.shape[0]], value, err_msg=key)
    # A scenario the format cannot hold fails the export and leaves the old file intact.
    before = path.read_bytes()
    too_many_points = {
        **small,
        **{k: np.tile(v, 4001) for k, v in small.items() if k.startswith("roadgraph_points/")},
    }
    with pytest.raises(ValueError, match="more than max_num_rg_points=20000"):
        tf_example.write_tf_example_file(path, [("small", small), ("big", too_many_points)])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.tfrecord"]
