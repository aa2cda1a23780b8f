"""Tests for diffdrive.data.scenarionet on every real ScenarioNet/MetaDrive pickle."""

from __future__ import annotations

import collections
import os
import pickle

import numpy as np
import pytest

from diffdrive.data import scenarionet
from diffdrive.data.types import ScenarioDecodeError
from diffdrive.sim import datatypes

WOMD = "scenarionet/womd_metadrive"
NEW_WOMD = f"{WOMD}/2a1e44d405a6833f__sd_training.tfrecord-00000-of-01000_2a1e44d405a6833f.pkl"
OVERPASS = "scenarionet/overpass/sd_waymo_v1.2_eb4b91b10ca94ff2.pkl"
NUSCENES = "scenarionet/nuscenes_0/sd_nuscenes_v1.0-mini_scene-0061.pkl"
INT_LIGHTS = f"{WOMD}/4d320edc9cb801a3__2.pkl"  # MetaDrive 0.3: integer light codes, size
OLD_FORMAT = f"{WOMD}/1446dc44bd6fd420__1.pkl"  # top-level ts and sdc_track_index
EARLIEST = f"{WOMD}/850c48d8bbfa008f__test.pkl"  # (T, 10) states, 'map', sdc_index


def _raw(shared_data, name):
    return scenarionet.load_pickle((shared_data / name).read_bytes(), name)


def _decode(shared_data, name, **kwargs):
    path = shared_data / name
    return next(scenarionet.read_scenarionet_file(path, **kwargs))


def _track_arrays(track, key="position"):
    state = track["state"]
    if isinstance(state, np.ndarray):
        return {
            "x": state[:, 0],
            "y": state[:, 1],
            "z": state[:, 2],
            "length": state[:, 3],
            "yaw": state[:, 6],
            "vel_x": state[:, 7],
            "vel_y": state[:, 8],
            "valid": state[:, 9] > 0,
        }
    pos = np.asarray(state[key])
    vel = np.asarray(state["velocity"])
    size = state.get("size")
    length = np.asarray(size)[:, 0] if size is not None else np.asarray(state["length"])
    return {
        "x": pos[:, 0],
        "y": pos[:, 1],
        "z": pos[:, 2],
        "length": length.reshape(-1),
        "yaw": np.asarray(state["heading"]).reshape(-1),
        "vel_x": vel[:, 0],
        "vel_y": vel[:, 1],
        "valid": np.asarray(state["valid"]).reshape(-1) > 0,
    }


def test_every_scenario_pickle_decodes(shared_data):
    root = shared_data / "scenarionet"
    files = scenarionet.find_scenarionet_files(root)
    assert len(files) == 25
    assert not any(os.path.basename(f).startswith("dataset_") for f in files)
    for path in files:
        decoded = next(scenarionet.read_scenarionet_file(path))
        a = decoded.arrays
        assert decoded.format == "scenarionet" and decoded.source == path
        assert a["log_trajectory/x"].shape == (128, 91)
        assert a["roadgraph_points/x"].shape == (20000,)
        assert a["log_traffic_light/state"].shape == (16, 91)
        assert a["object_metadata/is_sdc"][0] and a["object_metadata/is_sdc"].sum() == 1
        assert a["log_trajectory/valid"][0, 10], f"{path}: SDC invalid at the current step"
        yaw = a["log_trajectory/yaw"][a["log_trajectory/valid"]]
        assert yaw.min() >= -np.float32(np.pi) and yaw.max() < np.pi
        # Every kept object exists in the 91 steps.
        is_valid = a["object_metadata/is_valid"]
        assert a["log_trajectory/valid"][is_valid].any(axis=1).all()
        assert set(np.unique(a["roadgraph_points/types"])) <= datatypes.VALID_ROAD_TYPES | {-1}
        stamps = a["log_trajectory/timestamp_micros"][0]
        assert stamps[0] == 0 and 99_000 < np.median(np.diff(stamps)) < 101_000
    datatypes.validate(next(scenarionet.read_scenarionet_file(files[0])).to_state())


def test_dataset_index_files_are_refused_clearly(shared_data):
    path = shared_data / "scenarionet/nuscenes_1/dataset_summary.pkl"
    with pytest.raises(ScenarioDecodeError, match="dataset index"):
        next(scenarionet.read_scenarionet_file(path))


@pytest.mark.parametrize("name", [NEW_WOMD, OVERPASS, NUSCENES, INT_LIGHTS, OLD_FORMAT, EARLIEST])
def test_tracks_match_the_pickle(shared_data, name):
    raw = _raw(shared_data, name)
    decoded = _decode(shared_data, name)
    a = decoded.arrays
    keys = list(raw["tracks"])
    int_ids = all(str(k).lstrip("-").isdigit() for k in keys)
    slots = np.flatnonzero(a["object_metadata/is_valid"])
    for slot in slots:
        track_id = int(a["object_metadata/ids"][slot])
        key = next(k for k in keys if int(k) == track_id) if int_ids else keys[track_id]
        want = {k: v[:91] for k, v in _track_arrays(raw["tracks"][key]).items()}
        valid = want["valid"]
        np.testing.assert_array_equal(a["log_trajectory/valid"][slot], valid, err_msg=str(key))
        for field in ("x", "y", "z", "vel_x", "vel_y"):
            np.testing.assert_array_equal(
                a[f"log_trajectory/{field}"][slot][valid], np.float32(want[field][valid])
            )
        got = a["log_trajectory/yaw"][slot][valid]
        np.testing.assert_allclose(np.cos(got), np.cos(want["yaw"][valid]), atol=2e-6)
        np.testing.assert_allclose(np.sin(got), np.sin(want["yaw"][valid]), atol=2e-6)
        np.testing.assert_allclose(
            a["log_trajectory/length"][slot, 0], want["length"][valid].mean(), rtol=1e-6
        )
    # Tracks never valid in the first 91 steps are dropped, all others kept (<= 128).
    exists = [k for k in keys if _track_arrays(raw["tracks"][k])["valid"][:91].any()]
    assert len(slots) == min(128, len(exists))


def test_sdc_modeled_and_interest(shared_data):
    raw = _raw(shared_data, NEW_WOMD)
    a = _decode(shared_data, NEW_WOMD).arrays
    meta = raw["metadata"]
    assert a["object_metadata/ids"][0] == int(meta["sdc_id"])
    modeled = {int(k) for k in meta["tracks_to_predict"]}
    assert set(a["object_metadata/ids"][a["object_metadata/is_modeled"]].tolist()) == modeled
    interest = {int(k) for k in meta["objects_of_interest"]}
    assert set(a["object_metadata/ids"][a["object_metadata/objects_of_interest"]].tolist()) == (
        interest
    )
    # The earliest format gives the SDC as an index into the track order.
    raw = _raw(shared_data, EARLIEST)
    a = _decode(shared_data, EARLIEST).arrays
    assert a["object_metadata/ids"][0] == int(list(raw["tracks"])[raw["sdc_index"]])


def test_map_points_per_type(shared_data):
    raw = _raw(shared_data, NEW_WOMD)
    decoded = _decode(shared_data, NEW_WOMD, max_num_rg_points=40000)
    a = decoded.arrays
    names = {"CROSSWALK": 18, "SPEED_BUMP": 19, "STOP_SIGN": 17, "LANE_SURFACE_STREET": 2}
    names |= {"ROAD_EDGE_BOUNDARY": 15, "ROAD_EDGE_MEDIAN": 16}
    names |= {"ROAD_LINE_BROKEN_SINGLE_WHITE": 6, "ROAD_LINE_SOLID_SINGLE_WHITE": 7}
    names |= {"ROAD_LINE_SOLID_SINGLE_YELLOW": 11, "ROAD_LINE_SOLID_DOUBLE_YELLOW": 12}
    want = collections.Counter()
    for feature in raw["map_features"].values():
        if feature["type"] == "DRIVEWAY":
            continue
        code = names[feature["type"]]
        geometry = feature.get("polygon") if code in (18, 19) else feature.get("polyline")
        want[code] += 1 if code == 17 else len(geometry)
    valid = a["roadgraph_points/valid"]
    types, counts = np.unique(a["roadgraph_points/types"][valid], return_counts=True)
    assert dict(zip(types.tolist(), counts.tolist())) == dict(want)
    assert any("Dropped 37 driveways" in s for s in decoded.assumptions)
    # With the default 20000 points, the points nearest the SDC are kept.
    cut = _decode(shared_data, NEW_WOMD)
    assert cut.arrays["roadgraph_points/valid"].all()
    assert any("nearest to the SDC" in s for s in cut.assumptions)


def test_string_traffic_light_states(shared_data):
    raw = _raw(shared_data, NEW_WOMD)
    a = _decode(shared_data, NEW_WOMD).arrays
    codes = {"LANE_STATE_UNKNOWN": 0, "LANE_STATE_STOP": 4, "LANE_STATE_GO": 6}
    codes |= {"LANE_STATE_CAUTION": 5, "LANE_STATE_ARROW_STOP": 1}
    lights = list(raw["dynamic_map_states"].values())
    assert 0 < len(lights) <= 16
    for slot, light in enumerate(lights):
        states = light["state"]["object_state"]
        assert a["log_traffic_light/lane_ids"][slot, 0] == int(light["lane"])
        for t, state in enumerate(states):
            if state is None:
                assert not a["log_traffic_light/valid"][slot, t]
            else:
                assert a["log_traffic_light/state"][slot, t] == codes[state]
        np.testing.assert_array_equal(
            a["log_traffic_light/x"][slot, 0], np.float32(light["stop_point"][0])
        )


def test_integer_traffic_light_states(shared_data):
    raw = _raw(shared_data, INT_LIGHTS)
    a = _decode(shared_data, INT_LIGHTS).arrays
    lights = raw["dynamic_map_states"]
    assert len(lights) == 12
    for slot, (key, light) in enumerate(lights.items()):
        state = light["state"]
        seen = np.asarray(state["lane"][:91]) == int(key)
        np.testing.assert_array_equal(a["log_traffic_light/valid"][slot], seen)
        np.testing.assert_array_equal(
            a["log_traffic_light/state"][slot][seen], np.asarray(state["object_state"][:91])[seen]
        )
        np.testing.assert_array_equal(
            a["log_traffic_light/y"][slot][seen], np.float32(state["stop_point"][:91, 1][seen])
        )


def test_long_scenarios_keep_the_first_91_steps(shared_data):
    decoded = _decode(shared_data, OVERPASS)
    text = " ".join(decoded.assumptions)
    assert "199 steps; kept steps 0..90" in text
    assert "current time index 0" in text
    decoded = _decode(shared_data, NUSCENES)
    assert any("191 steps" in s and "first 9.1 s" in s for s in decoded.assumptions)
    assert any("no road edges" in s for s in decoded.assumptions)
    assert any("TRAFFIC_CONE" in s and "OTHER" in s for s in decoded.assumptions)


def test_other_sample_periods_are_resampled_to_10hz(shared_data):
    """A 5 Hz copy of a 10 Hz scene decodes to (almost) the 10 Hz result."""
    raw = _raw(shared_data, NEW_WOMD)
    slow = dict(raw)
    slow["metadata"] = dict(raw["metadata"], ts=np.asarray(raw["metadata"]["ts"])[::2])
    slow["metadata"]["current_time_index"] = 5
    slow["tracks"] = {}
    for key, track in raw["tracks"].items():
        state = {k: np.asarray(v)[::2] for k, v in track["state"].items()}
        slow["tracks"][key] = dict(track, state=state)
    slow["dynamic_map_states"] = {}
    fast = scenarionet.decode_scenarionet(raw, "fast").arrays
    decoded = scenarionet.decode_scenarionet(slow, "slow")
    a = decoded.arrays
    assert any("resampled" in s for s in decoded.assumptions)
    np.testing.assert_array_equal(a["object_metadata/ids"][0], fast["object_metadata/ids"][0])
    # 5 Hz samples at 10 Hz steps 0, 2, 4, ...: the grid starts 1 s before step 5 (time
    # 1.0 s), so output step k is source time k * 0.1 s.
    both = a["log_trajectory/valid"][0] & fast["log_trajectory/valid"][0]
    assert both.sum() >= 80
    even = np.zeros(91, bool)
    even[::2] = True
    x, fx = a["log_trajectory/x"][0], fast["log_trajectory/x"][0]
    np.testing.assert_allclose(x[both & even], fx[both & even], atol=0.02)
    np.testing.assert_allclose(x[both & ~even], fx[both & ~even], atol=0.3)
    stamps = a["log_trajectory/timestamp_micros"][0]
    np.testing.assert_allclose(np.diff(stamps[both]), 100_000 * np.diff(np.flatnonzero(both)))


# ------------------------------------------------------------------ security


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("how", ["reduce", "global_opcode", "eval"])
def test_malicious_pickles_are_refused_before_anything_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    if how == "reduce":
        data = pickle.dumps({"tracks": {"1": _Evil(marker)}})
        forbidden = f"{os.system.__module__}.system"
    elif how == "global_opcode":
        data = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
        forbidden = "os.system"
    else:
        data = b"cbuiltins\neval\n(S'open(\"" + str(marker).encode() + b'", "w")\'\ntR.'
        forbidden = "builtins.eval"
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    with pytest.raises(scenarionet.ForbiddenPickleError) as info:
        next(scenarionet.read_scenarionet_file(path))
    assert info.value.forbidden == forbidden
    assert str(path) in str(info.value) and forbidden in str(info.value)
    assert isinstance(info.value, ScenarioDecodeError)
    assert not marker.exists()


def test_allowed_content_still_loads_and_corrupt_pickles_are_errors():
    value = {"a": np.arange(3.0), "b": [np.float32(1.5), (1, 2)], "c": collections.OrderedDict()}
    for protocol in (2, 4, 5):
        loaded = scenarionet.load_pickle(pickle.dumps(value, protocol=protocol))
        np.testing.assert_array_equal(loaded["a"], value["a"])
        assert loaded["b"][0] == np.float32(1.5)
    with pytest.raises(ScenarioDecodeError, match="not a readable pickle"):
        scenarionet.load_pickle(pickle.dumps(value)[:-10], "cut.pkl")


# ------------------------------------------------------------------ bad content


def _minimal():
    steps = 91
    state = {
        "position": np.zeros((steps, 3)),
        "heading": np.zeros(steps),
        "velocity": np.zeros((steps, 2)),
        "valid": np.ones(steps, bool),
        "length": np.full(steps, 4.0),
        "width": np.full(steps, 2.0),
        "height": np.full(steps, 1.5),
    }
    return {
        "id": "mini",
        "metadata": {"sdc_id": "5", "ts": np.arange(steps) * 0.1},
        "tracks": {"5": {"type": "VEHICLE", "state": state}},
        "map_features": {"1": {"type": "ROAD_EDGE_BOUNDARY", "polyline": np.zeros((2, 3))}},
        "dynamic_map_states": {},
    }


def _with(path, value):
    scenario = _minimal()
    target = scenario
    keys = path.split("/")
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return scenario


@pytest.mark.parametrize(
    ("scenario", "field", "reason"),
    [
        (_with("metadata/sdc_id", "9"), "metadata.sdc_id", "not a track id"),
        (_with("map_features/1/type", "GUARDRAIL"), "map_features['1'].type", "unknown"),
        (_with("tracks/5/type", 3.5), "tracks['5'].type", "unknown object type"),
        (
            _with("tracks/5/state/velocity", np.zeros((90, 2))),
            "tracks['5'].state.velocity",
            "90 steps",
        ),
        (
            _with(
                "dynamic_map_states",
                {
                    "3": {
                        "lane": 3,
                        "stop_point": np.zeros(3),
                        "state": {"object_state": ["X"] * 91},
                    }
                },
            ),
            "dynamic_map_states['3'].state.object_state",
            "unknown signal state",
        ),
        (_with("metadata/ts", np.zeros(91)), "metadata.ts", "do not increase"),
        (
            _with("metadata/current_time_index", 500),
            "metadata.current_time_index",
            "not one of 91 steps",
        ),
    ],
)
def test_bad_content_names_file_record_and_field(scenario, field, reason):
    with pytest.raises(ScenarioDecodeError) as info:
        scenarionet.decode_scenarionet(scenario, "bad.pkl", 0)
    assert (info.value.file, info.value.record, info.value.field) == ("bad.pkl", 0, field)
    assert reason in info.value.reason


def test_minimal_scenario_decodes():
    decoded = scenarionet.decode_scenarionet(_minimal(), "mini.pkl")
    a = decoded.arrays
    assert a["object_metadata/ids"][0] == 5 and a["object_metadata/is_sdc"][0]
    np.testing.assert_array_equal(a["roadgraph_points/types"][:3], [15, 15, -1])
    assert decoded.scenario_id == "mini"
