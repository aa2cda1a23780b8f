"""The ``diffdrive data`` command line: inspect, convert, generate, stats."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from diffdrive import cli
from diffdrive.data import cache, sources
from diffdrive.sim import metrics
from tests.test_batching import make_scenario

INSPECT_KEYS = {
    "file",
    "scenario_id",
    "format",
    "num_objects",
    "num_valid_objects",
    "sdc_index",
    "num_steps",
    "num_roadgraph_points",
    "valid_steps",
    "overlap_steps",
    "offroad_steps",
}

# One real file per format (the inspect test reads each; ~1-2 s per scenario on a CPU).
REAL_FILES = {
    "tf_example": "womd/tf_example/motion_data_one_example.tfrecord",
    "scenario_proto": "womd/scenario_proto/motion_data_one_scenario.tfrecord",
    "gpudrive_json": "womd/gpudrive_json/data_10_tfrecord-00001-of-01000_49.json.gz",
    "nocturne_json": "womd/nocturne_json/data_example_scenario.json",
    "scenarionet": "scenarionet/womd_metadrive/dd0c8c27fdd6ef59__0.pkl",
    "waymax_state": "womd/waymax_state/scenario_50.npz",
}


def run_json(capsys, argv) -> list[dict]:
    """Runs the CLI in-process; returns its JSON lines (stderr is kept in ``run_json.err``)."""
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    run_json.err = captured.err
    return [json.loads(line) for line in captured.out.splitlines()]


def hand_made_scenario_file(tmp_path):
    """Three boxes (4 m x 2 m) over 10 steps and a road edge along y = -5 (road above it).

    * object 0 stays at (0, 0), valid at all 10 steps;
    * object 1 is at (20, 0), except at steps 2-4 at (1, 0) (overlapping object 0) and at
      steps 7-8 at (20, -10) (right of the edge: offroad); valid at all steps;
    * object 2 is at (-30, 0) at steps 0-4 (valid), then at (0, 0) on top of object 0 but
      invalid (steps 5-9), which counts for nobody.
    """
    s = make_scenario(0, num_objects=3, num_steps=10, num_points=101, num_lights=1)
    a = s.arrays
    a["log_trajectory/x"][:] = np.array([0.0, 20.0, -30.0])[:, None]
    a["log_trajectory/y"][:] = 0.0
    a["log_trajectory/vel_x"][:] = 0.0
    a["log_trajectory/x"][1, 2:5] = 1.0
    a["log_trajectory/y"][1, 7:9] = -10.0
    a["log_trajectory/x"][2, 5:] = 0.0
    a["log_trajectory/valid"][2, 5:] = False
    a["roadgraph_points/x"][:] = np.arange(-50, 51, dtype=np.float32)
    a["roadgraph_points/y"][:] = -5.0
    path = tmp_path / "hand_made.npz"
    np.savez(path, **a)
    return path, a


def test_inspect_counts_match_hand_count_and_metrics(tmp_path, capsys):
    path, _ = hand_made_scenario_file(tmp_path)
    (rec,) = run_json(capsys, ["data", "inspect", str(path), "--json"])
    assert set(rec) == INSPECT_KEYS
    assert rec["valid_steps"] == [10, 10, 5]
    assert rec["overlap_steps"] == [3, 3, 0]
    assert rec["offroad_steps"] == [0, 2, 0]
    assert (rec["num_objects"], rec["num_valid_objects"], rec["sdc_index"]) == (3, 3, 0)
    assert (rec["num_steps"], rec["num_roadgraph_points"]) == (10, 101)
    assert rec["format"] == "waymax_state" and rec["scenario_id"] == "hand_made"
    # The same counts, step by step, from the simulator core's one-step metrics.
    state = next(sources.read_scenarios(path)).to_state()
    ov = np.zeros(3, int)
    off = np.zeros(3, int)
    for t in range(10):
        step = state.log_trajectory.at(t)
        valid = np.asarray(step.valid)
        ov += (np.asarray(metrics.overlap(step).value) > 0) & valid
        off += (np.asarray(metrics.offroad(step, state.roadgraph_points).value) > 0) & valid
    assert ov.tolist() == rec["overlap_steps"] and off.tolist() == rec["offroad_steps"]


@pytest.mark.parametrize("with_edges", [True, False])
def test_offroad_roadgraph_subset_gives_identical_counts(with_edges):
    """Edge samples + their predecessors + sample 0 are all offroad ever reads."""
    rng = np.random.default_rng(1)
    s = make_scenario(0, num_objects=12, num_steps=6, num_points=400, num_lights=1)
    a = s.arrays
    a["log_trajectory/x"][:] = rng.uniform(-30, 30, (12, 6))
    a["log_trajectory/y"][:] = rng.uniform(-30, 30, (12, 6))
    a["log_trajectory/yaw"][:] = rng.uniform(-3, 3, (12, 6))
    a["log_trajectory/valid"][:] = rng.random((12, 6)) > 0.2
    # 20 polylines of 20 points: random walks with random types (lanes, lines, edges,
    # type-14 edges) and some invalid points; ids repeat so that a lane can precede an
    # edge of the same id.
    xy = np.cumsum(rng.normal(0, 1.5, (20, 20, 2)), axis=1) + rng.uniform(-30, 30, (20, 1, 2))
    a["roadgraph_points/x"][:] = xy[..., 0].ravel()
    a["roadgraph_points/y"][:] = xy[..., 1].ravel()
    d = np.diff(xy, axis=1, append=xy[:, -1:])
    d /= np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-9)
    a["roadgraph_points/dir_x"][:] = d[..., 0].ravel()
    a["roadgraph_points/dir_y"][:] = d[..., 1].ravel()
    types = rng.choice([2, 6, 14, 15, 16] if with_edges else [2, 6, 14], 20)
    a["roadgraph_points/types"][:] = np.repeat(types, 20)
    a["roadgraph_points/ids"][:] = np.repeat(rng.integers(0, 6, 20), 20)
    a["roadgraph_points/valid"][:] = rng.random(400) > 0.1
    subset = cli.offroad_roadgraph_subset(a)
    assert subset.size < 400 and subset[0] == 0
    state = s.to_state()
    full = metrics.log_replay_event_counts(state.log_trajectory, state.roadgraph_points)
    got = cli.log_event_counts(s)
    for key in ("valid_steps", "overlap_steps", "offroad_steps"):
        np.testing.assert_array_equal(got[key], np.asarray(full[key]), err_msg=key)
    assert np.asarray(full["offroad_steps"]).sum() > 0


def test_inspect_human_output(tmp_path, capsys):
    path, _ = hand_made_scenario_file(tmp_path)
    assert cli.main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hand_made" in out and "[waymax_state]" in out
    assert "valid steps" in out and "(SDC)" in out


def test_inspect_real_files_all_formats(shared_data, capsys, golden):
    files = {f: shared_data / p for f, p in REAL_FILES.items()}
    recs = run_json(capsys, ["data", "inspect", "--json", *map(str, files.values())])
    assert sorted({r["format"] for r in recs}) == sorted(files)
    for r in recs:
        assert set(r) == INSPECT_KEYS
        n = r["num_objects"]
        assert len(r["valid_steps"]) == len(r["overlap_steps"]) == len(r["offroad_steps"]) == n
        v, o, f = (np.asarray(r[k]) for k in ("valid_steps", "overlap_steps", "offroad_steps"))
        assert (o <= v).all() and (f <= v).all() and (v <= r["num_steps"]).all()
        assert r["num_valid_objects"] == int((v > 0).sum())
        assert r["sdc_index"] is None or 0 <= r["sdc_index"] < n
    # Against real Waymax's log-replay counts (conformance golden, per-step sums).
    for g in golden["real_scenarios"]:
        name = g["source"].split(":", 1)[1]
        match = [r for r in recs if r["file"].endswith(name)]
        if not match:
            continue
        (r,) = match
        gl = g["log_replay_all_objects"]
        assert r["sdc_index"] == g["sdc_index"] and r["num_objects"] == g["num_objects"]
        assert sum(r["valid_steps"]) == sum(gl["num_valid_per_t"])
        assert sum(r["overlap_steps"]) == sum(gl["num_overlapping_valid_per_t"])
        assert sum(r["offroad_steps"]) == sum(gl["num_offroad_valid_per_t"])


def test_convert_then_inspect_cache(shared_data, tmp_path, capsys):
    src = [shared_data / REAL_FILES["tf_example"], shared_data / REAL_FILES["waymax_state"]]
    out = tmp_path / "womd"
    argv = [
        "data",
        "convert",
        *map(str, src),
        "--out",
        str(out),
        "--max-objects",
        "32",
        "--num-steps",
        "91",
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    assert "wrote 2 scenarios" in capsys.readouterr().out
    c = cache.open_cache(out, verify="full")
    assert c.scenario_ids == ["a3bb37c25ce56418", "scenario_50"]
    first = c[0]
    assert first.format == "tf_example"
    assert first.arrays["object_metadata/is_sdc"][0]  # SDC kept first among 32 of 128
    assert any("Kept 32 of 128" in a for a in first.assumptions)
    recs = run_json(capsys, ["data", "inspect", "--json", str(out)])
    assert [r["scenario_id"] for r in recs] == c.scenario_ids
    assert recs[0]["num_objects"] == 32 and recs[0]["sdc_index"] == 0
    assert recs[1]["num_objects"] == 32 and recs[1]["num_valid_objects"] == 18
    # Running it again without --overwrite is a clear error.
    assert cli.main(argv) == 2
    assert "already holds a finished cache" in capsys.readouterr().err


def test_generate_and_inspect_generated_cache(tmp_path, capsys):
    out = tmp_path / "syn"
    argv = [
        "data",
        "generate",
        "--out",
        str(out),
        "--num",
        "3",
        "--seed",
        "5",
        "--preset",
        "small",
        "--shard-size",
        "2",
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    assert "wrote 3 scenarios in 2 shards" in capsys.readouterr().out
    c = cache.open_cache(out, verify="full")
    assert c.scenario_ids == ["synthetic-5", "synthetic-6", "synthetic-7"]
    assert c.settings["max_objects"] == 16 and c.settings["num_roadgraph_points"] == 2000
    recs = run_json(capsys, ["data", "inspect", "--json", str(out)])
    assert len(recs) == 3 and all(r["format"] == "synthetic" for r in recs)
    for r, s in zip(recs, c):
        assert set(r) == INSPECT_KEYS and r["sdc_index"] == 0
        assert r["valid_steps"] == s.arrays["log_trajectory/valid"].sum(-1).tolist()
        # The generator verifies that the SDC's log never overlaps or leaves the road.
        assert r["overlap_steps"][0] == 0 and r["offroad_steps"][0] == 0
        state = s.to_state()
        full = metrics.log_replay_event_counts(state.log_trajectory, state.roadgraph_points)
        for key in ("valid_steps", "overlap_steps", "offroad_steps"):
            assert r[key] == np.asarray(full[key]).tolist(), key
    assert (
        cli.main(
            ["data", "generate", "--out", str(tmp_path / "x"), "--num", "1", "--preset", "nope"]
        )
        == 2
    )
    assert "unknown synthetic preset 'nope'" in capsys.readouterr().err


def test_decode_error_exit_code_and_skip_bad(shared_data, tmp_path, capsys):
    raw = bytearray((shared_data / REAL_FILES["tf_example"]).read_bytes())
    raw[5000] ^= 0xFF  # inside the record's data: its CRC no longer matches
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(bytes(raw))
    good, _ = hand_made_scenario_file(tmp_path)
    assert cli.main(["data", "inspect", "--json", "--format", "tf_example", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "ScenarioDecodeError" in err and "bad.tfrecord, record 0" in err
    recs = run_json(capsys, ["data", "inspect", "--json", "--skip-bad", str(bad), str(good)])
    assert [r["scenario_id"] for r in recs] == ["hand_made"]
    assert "1 record skipped" in run_json.err and "field 'data crc'" in run_json.err
    out = tmp_path / "c"
    assert (
        cli.main(
            [
                "data",
                "convert",
                str(bad),
                str(good),
                "--out",
                str(out),
                "--skip-bad",
                "--roadgraph-points",
                "128",
                "--no-progress",
            ]
        )
        == 0
    )
    assert len(cache.open_cache(out)) == 1
    assert cli.main(["data", "inspect", str(tmp_path / "nothing.xyz")]) == 2


def test_stats_compare_command(tmp_path, capsys):
    a = cache.build_cache(
        [make_scenario(i) for i in range(3)],
        tmp_path / "a",
        progress=False,
        max_objects=4,
        num_roadgraph_points=30,
    )
    b = cache.build_cache(
        [make_scenario(i, num_objects=3) for i in range(2)],
        tmp_path / "b",
        progress=False,
        max_objects=4,
        num_roadgraph_points=30,
    )
    out = tmp_path / "cmp.json"
    assert (
        cli.main(
            [
                "data",
                "stats",
                str(a.path),
                "--against",
                str(b.path),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    cmp = json.loads(out.read_text())
    assert cmp["a"]["num_scenarios"] == 3 and cmp["b"]["num_scenarios"] == 2
    no = cmp["per_scenario"]["num_objects"]
    assert (no["mean_a"], no["mean_b"], no["wasserstein"]) == (4.0, 3.0, 1.0)
    assert cmp["per_scenario"]["sdc_speed_mean"]["mean_a"] == pytest.approx(10.0)


def test_module_entry_point_and_groups():
    r = subprocess.run(
        [sys.executable, "-m", "diffdrive.cli", "data", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0
    for cmd in ("inspect", "convert", "generate", "stats"):
        assert cmd in r.stdout
    calls = []
    cli.register_group(
        "demo",
        "a test group",
        lambda sub: sub.add_parser("hello").set_defaults(func=lambda a: calls.append(a) or 0),
    )
    try:
        assert cli.main(["demo", "hello"]) == 0 and len(calls) == 1
    finally:
        cli._GROUPS.pop("demo")


def test_format_detection_and_directory_expansion(shared_data, tmp_path):
    tf = (shared_data / REAL_FILES["tf_example"]).read_bytes()
    proto = (shared_data / REAL_FILES["scenario_proto"]).read_bytes()
    # No helpful extension: the first record decides.
    (tmp_path / "train.tfrecord-00000-of-00001").write_bytes(tf)
    (tmp_path / "scenarios.dat").write_bytes(proto)
    assert sources.detect_format(tmp_path / "train.tfrecord-00000-of-00001") == "tf_example"
    assert sources.detect_format(tmp_path / "scenarios.dat") == "scenario_proto"
    (tmp_path / "junk.tfrecord").write_bytes(b"\x05" + b"\x00" * 7 + b"garbage!" * 3)
    with pytest.raises(sources.FormatError, match=r"junk\.tfrecord"):
        sources.detect_format(tmp_path / "junk.tfrecord")
    assert cli.main(["data", "inspect", str(tmp_path / "junk.tfrecord")]) == 2
    for name, fmt in [
        ("a.json.gz", "gpudrive_json"),
        ("b.json", "nocturne_json"),
        ("c.pkl", "scenarionet"),
        ("d.npz", "waymax_state"),
    ]:
        (tmp_path / name).write_bytes(b"")
        assert sources.detect_format(tmp_path / name) == fmt
    files = sources.expand_paths([shared_data / "scenarionet" / "nuscenes_4"])
    assert [f.rsplit("/", 1)[1] for f in files] == [
        "sd_nuscenes_v1.0-mini_scene-1094.pkl",
        "sd_nuscenes_v1.0-mini_scene-1100.pkl",
    ]
    assert sources.detect_format("synthetic:3:1") == "synthetic"
    with pytest.raises(sources.FormatError, match="unknown format 'nope'"):
        sources.get_reader("nope")
