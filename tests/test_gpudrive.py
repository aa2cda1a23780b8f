"""Tests for diffdrive.data.gpudrive on every real GPUDrive (49) and Nocturne (4) JSON file."""

from __future__ import annotations

import collections
import gzip
import json

import numpy as np
import pytest

from diffdrive.data import gpudrive
from diffdrive.data.types import ScenarioDecodeError
from diffdrive.sim import datatypes

GPUDRIVE = "womd/gpudrive_json"
NOCTURNE = "womd/nocturne_json"


def _load(path):
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:
        return json.load(f)


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


@pytest.fixture(scope="module")
def every_file(shared_data):
    """(path, decoded scenario) for all 53 files."""
    out = []
    for path in sorted((shared_data / GPUDRIVE).glob("*.json.gz")):
        out.append((path, next(gpudrive.read_gpudrive_file(path))))
    for path in sorted((shared_data / NOCTURNE).glob("*.json")):
        out.append((path, next(gpudrive.read_nocturne_file(path))))
    return out


def test_every_file_decodes(every_file):
    assert len(every_file) == 53
    for path, decoded in every_file:
        a = decoded.arrays
        assert decoded.format == ("gpudrive_json" if path.name.endswith(".gz") else "nocturne_json")
        assert decoded.source == str(path) and decoded.scenario_id
        assert a["log_trajectory/x"].shape == (128, 91), path.name
        assert a["roadgraph_points/x"].shape == (20000,), path.name
        assert a["log_traffic_light/state"].shape == (16, 91), path.name
        assert a["object_metadata/is_sdc"][0] and a["object_metadata/is_sdc"].sum() == 1
        assert a["log_trajectory/valid"][0].all(), "the SDC is valid at every step"
        yaw = a["log_trajectory/yaw"][a["log_trajectory/valid"]]
        assert yaw.min() >= -np.float32(np.pi) and yaw.max() < np.pi
        assert (a["log_trajectory/x"][~a["log_trajectory/valid"]] == -1).all()
        assert a["roadgraph_points/valid"].sum() > 0
        assert set(np.unique(a["roadgraph_points/types"])) <= datatypes.VALID_ROAD_TYPES | {-1}
        assert decoded.assumptions
    datatypes.validate(every_file[0][1].to_state())


def test_headings_follow_the_direction_of_motion(every_file):
    """The unit rule (ids -> radians, else degrees) gives headings along the motion."""
    checked = 0
    for path, decoded in every_file:
        a = decoded.arrays
        valid, x, y = (a[f"log_trajectory/{k}"] for k in ("valid", "x", "y"))
        dx, dy = np.diff(x, axis=1), np.diff(y, axis=1)
        vehicle = (a["object_metadata/object_types"] == 1)[:, None]
        moving = valid[:, 1:] & valid[:, :-1] & (np.hypot(dx, dy) > 0.5) & vehicle
        if moving.sum() < 10:
            continue
        error = np.abs(_wrap(a["log_trajectory/yaw"][:, :-1] - np.arctan2(dy, dx)))[moving]
        assert np.median(error) < 0.1, path.name
        checked += 1
    assert checked >= 45


@pytest.mark.parametrize(
    "name",
    [
        f"{GPUDRIVE}/tl_tfrecord-00000-of-00150_2af8a17d6cee3f8.json.gz",  # ids, metadata, lights
        f"{GPUDRIVE}/maps.50_tfrecord-00079-of-01000_207.json.gz",  # 200 objects, old
        f"{GPUDRIVE}/debug_gpudrive_tfrecord-00002-of-00150_9c52d259d258d6a3.json.gz",  # heights
        f"{NOCTURNE}/tests_state_test.json",  # column layout
    ],
)
def test_objects_match_the_json(shared_data, name):
    path = shared_data / name
    raw = _load(path)
    decoded = gpudrive.decode_gpudrive(path.read_bytes(), str(path))
    a = decoded.arrays
    objects = raw["objects"]
    has_ids = "id" in objects[0]
    index_of = {o["id"]: i for i, o in enumerate(objects)} if has_ids else None
    slots = np.flatnonzero(a["object_metadata/is_valid"])
    assert len(slots) == min(128, len(objects))
    for slot in slots:
        track_id = int(a["object_metadata/ids"][slot])
        obj = objects[index_of[track_id] if has_ids else track_id]
        pos, vel = obj["position"], obj["velocity"]
        if isinstance(pos, dict):
            px, py = np.array(pos["x"]), np.array(pos["y"])
            vx, vy = np.array(vel["x"]), np.array(vel["y"])
        else:
            px, py = np.array([p["x"] for p in pos]), np.array([p["y"] for p in pos])
            vx, vy = np.array([v["x"] for v in vel]), np.array([v["y"] for v in vel])
        valid = np.array(obj["valid"], bool)
        np.testing.assert_array_equal(a["log_trajectory/valid"][slot], valid)
        for key, want in (("x", px), ("y", py), ("vel_x", vx), ("vel_y", vy)):
            np.testing.assert_array_equal(
                a[f"log_trajectory/{key}"][slot][valid], np.float32(want[valid]), err_msg=key
            )
        heading = np.array(obj["heading"], float)[valid]
        heading = heading if has_ids else np.deg2rad(heading)
        got = a["log_trajectory/yaw"][slot][valid]
        np.testing.assert_allclose(np.cos(got), np.cos(heading), atol=1e-5)
        np.testing.assert_allclose(np.sin(got), np.sin(heading), atol=1e-5)
        assert a["log_trajectory/length"][slot, 0] == np.float32(obj["length"])
        assert a["log_trajectory/width"][slot, 0] == np.float32(obj["width"])
        want_height = obj.get(
            "height", gpudrive.NOMINAL_HEIGHT_M[int(a["object_metadata/object_types"][slot])]
        )
        assert a["log_trajectory/height"][slot, 0] == np.float32(want_height)
        kind = {"vehicle": 1, "pedestrian": 2, "cyclist": 3}[obj["type"]]
        assert a["object_metadata/object_types"][slot] == kind
    if len(objects) > 128:
        assert any(f"{len(objects)} objects" in s for s in decoded.assumptions)


def test_metadata_sets_sdc_modeled_and_interest(shared_data):
    path = shared_data / GPUDRIVE / "debug_gpudrive_tfrecord-00000-of-00150_6d2a107f2e8390a.json.gz"
    raw = _load(path)
    a = gpudrive.decode_gpudrive(path.read_bytes(), str(path)).arrays
    meta, objects = raw["metadata"], raw["objects"]
    assert a["object_metadata/ids"][0] == objects[meta["sdc_track_index"]]["id"]
    modeled = {objects[t["track_index"]]["id"] for t in meta["tracks_to_predict"]}
    assert set(a["object_metadata/ids"][a["object_metadata/is_modeled"]].tolist()) == modeled
    interest = set(a["object_metadata/ids"][a["object_metadata/objects_of_interest"]].tolist())
    assert interest == set(meta["objects_of_interest"]) and interest


def test_files_without_metadata_take_the_last_object_as_sdc(shared_data):
    path = shared_data / NOCTURNE / "data_intersection_scenario.json"
    raw = _load(path)
    decoded = gpudrive.decode_nocturne(path.read_text(), str(path))
    a = decoded.arrays
    last = len(raw["objects"]) - 1
    assert a["object_metadata/ids"][0] == last  # ids are file indices in this vintage
    np.testing.assert_array_equal(
        a["log_trajectory/x"][0], np.float32([p["x"] for p in raw["objects"][last]["position"]])
    )
    text = " ".join(decoded.assumptions)
    for expected in ("last object", "degrees", "no track ids", "no box heights", "no z"):
        assert expected in text, expected
    assert not a["object_metadata/is_modeled"].any()


def _points_per_code(raw, typed):
    counts = collections.Counter()
    for road in raw["roads"]:
        if typed:
            code = int(road["map_element_id"])
        else:
            code = {"lane": 2, "road_line": 5, "road_edge": 15, "stop_sign": 17}.get(road["type"])
            code = code or {"crosswalk": 18, "speed_bump": 19, "driveway": 20}[road["type"]]
        if code != 20:
            counts[code] += len(road["geometry"])
    return counts


@pytest.mark.parametrize(
    ("name", "typed"),
    [
        ("debug_gpudrive_tfrecord-00001-of-00150_b5f53fa2db40a6b4.json.gz", True),
        ("tfrecord-00002-of-01000_407.json.gz", True),
        ("data_10_tfrecord-00004-of-01000_378.json.gz", False),
    ],
)
def test_road_points_per_type(shared_data, name, typed):
    path = shared_data / GPUDRIVE / name
    raw = _load(path)
    decoded = gpudrive.decode_gpudrive(path.read_bytes(), str(path))
    a = decoded.arrays
    valid = a["roadgraph_points/valid"]
    want = _points_per_code(raw, typed)
    assert sum(want.values()) < 20000  # not cut
    types, counts = np.unique(a["roadgraph_points/types"][valid], return_counts=True)
    assert dict(zip(types.tolist(), counts.tolist())) == dict(want)
    untyped_note = any("only their kind" in s for s in decoded.assumptions)
    assert untyped_note == (not typed)
    driveways = sum(r["type"] == "driveway" for r in raw["roads"])
    assert any(f"Dropped {driveways} driveways" in s for s in decoded.assumptions) == bool(
        driveways
    )
    if typed:
        ids = {int(r["id"]) for r in raw["roads"] if r["type"] != "driveway"}
        assert set(np.unique(a["roadgraph_points/ids"][valid]).tolist()) == ids


def test_traffic_lights_match_the_json(shared_data):
    path = shared_data / GPUDRIVE / "tl_tfrecord-00000-of-00150_2af8a17d6cee3f8.json.gz"
    raw = _load(path)
    a = gpudrive.decode_gpudrive(path.read_bytes(), str(path)).arrays
    codes = {"unknown": 0, "arrow_stop": 1, "arrow_caution": 2, "arrow_go": 3, "stop": 4}
    codes |= {"caution": 5, "go": 6, "flashing_stop": 7, "flashing_caution": 8}
    lights = raw["tl_states"]
    assert 0 < len(lights) <= 16
    for slot, (lane, light) in enumerate(lights.items()):
        steps = light["time_index"]
        assert (a["log_traffic_light/lane_ids"][slot, steps] == int(lane)).all()
        np.testing.assert_array_equal(
            a["log_traffic_light/state"][slot, steps], [codes[s] for s in light["state"]]
        )
        np.testing.assert_array_equal(a["log_traffic_light/x"][slot, steps], np.float32(light["x"]))
        np.testing.assert_array_equal(a["log_traffic_light/z"][slot, steps], np.float32(light["z"]))
        unseen = np.setdiff1d(np.arange(91), steps)
        assert not a["log_traffic_light/valid"][slot, unseen].any()
        assert (a["log_traffic_light/state"][slot, unseen] == -1).all()
    assert not a["log_traffic_light/valid"][len(lights) :].any()


# ------------------------------------------------------------------ synthetic scenarios


def _object(kind="vehicle", steps=91, valid=True, x0=0.0, **extra):
    return {
        "position": [{"x": x0 + t, "y": 2.0, "z": 0.5} for t in range(steps)],
        "velocity": [{"x": 10.0, "y": 0.0} for _ in range(steps)],
        "heading": [0.5] * steps,
        "valid": [valid] * steps,
        "length": 4.5,
        "width": 2.0,
        "height": 1.6,
        "type": kind,
        **extra,
    }


def _scenario(steps=91, **extra):
    return {
        "name": "synthetic.json",
        "objects": [_object("pedestrian", steps, x0=5.0), _object("vehicle", steps)],
        "roads": [
            {"geometry": [{"x": 0, "y": 0}, {"x": 1, "y": 0}], "type": "road_edge"},
            {"geometry": [{"x": 3, "y": 3}], "type": "stop_sign"},
        ],
        "tl_states": {},
        **extra,
    }


def test_inputs_as_gzip_bytes_text_or_dict_agree():
    scenario = _scenario()
    text = json.dumps(scenario)
    results = [
        gpudrive.decode_gpudrive(x, max_num_rg_points=8)
        for x in (scenario, text, text.encode(), gzip.compress(text.encode()))
    ]
    for other in results[1:]:
        for key, value in results[0].arrays.items():
            np.testing.assert_array_equal(other.arrays[key], value)
    a = results[0].arrays
    np.testing.assert_array_equal(a["object_metadata/object_types"][:3], [1, 2, -1])
    np.testing.assert_allclose(a["log_trajectory/yaw"][0, 0], np.deg2rad(0.5), atol=1e-6)
    np.testing.assert_array_equal(a["roadgraph_points/types"][:4], [15, 15, 17, -1])
    np.testing.assert_array_equal(a["log_trajectory/timestamp_micros"][0, :3], [0, 100000, 200000])


def test_long_scenarios_keep_the_first_91_steps_and_units_can_be_forced():
    decoded = gpudrive.decode_gpudrive(_scenario(steps=120), heading_unit="rad")
    a = decoded.arrays
    np.testing.assert_array_equal(a["log_trajectory/x"][0, [0, 90]], [0, 90])
    assert any("120 steps" in s for s in decoded.assumptions)
    np.testing.assert_allclose(a["log_trajectory/yaw"][0, 0], 0.5)


def _bad(**changes):
    scenario = _scenario()
    for key, value in changes.items():
        scenario[key] = value
    return scenario


@pytest.mark.parametrize(
    ("scenario", "field", "reason"),
    [
        (_bad(objects=[]), "objects", "empty"),
        (
            _bad(objects=[_object(), {**_object(), "velocity": [{"x": 1, "y": 1}] * 90}]),
            "objects[1].velocity",
            "90 steps",
        ),
        (_bad(objects=[_object("truck"), _object()]), "objects[0].type", "unknown object type"),
        (_bad(objects=[_object(), _object("pedestrian")]), "metadata", "SDC cannot be told"),
        (
            _bad(metadata={"sdc_track_index": 5}),
            "metadata.sdc_track_index",
            "not one of 2 objects",
        ),
        (
            _bad(roads=[{"geometry": [{"x": 0, "y": 0}], "type": "road"}]),
            "roads[0].type",
            "unknown road type",
        ),
        (
            _bad(roads=[{"geometry": [{"x": 0, "y": 0}], "type": "lane", "map_element_id": 15}]),
            "roads[0].map_element_id",
            "is not a lane",
        ),
        (
            _bad(tl_states={"7": {"state": ["red"], "x": [0], "y": [0], "time_index": [3]}}),
            "tl_states['7'].state[0]",
            "unknown signal state",
        ),
        (
            _bad(tl_states={"7": {"state": ["go"], "x": [0], "y": [0], "time_index": [95]}}),
            "tl_states['7'].time_index[0]",
            "step 95",
        ),
    ],
)
def test_bad_input_names_file_record_and_field(scenario, field, reason):
    with pytest.raises(ScenarioDecodeError) as info:
        gpudrive.decode_gpudrive(scenario, "bad.json", 0)
    assert (info.value.file, info.value.record, info.value.field) == ("bad.json", 0, field)
    assert reason in info.value.reason


def test_unreadable_json_is_an_error():
    with pytest.raises(ScenarioDecodeError, match="not a readable scenario JSON"):
        gpudrive.decode_gpudrive(b"{not json", "x.json")
    with pytest.raises(ScenarioDecodeError, match="not a readable scenario JSON"):
        gpudrive.decode_gpudrive(b"\x1f\x8b broken gzip", "x.json.gz")
