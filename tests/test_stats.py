"""Dataset statistics, dataset comparison and scenario filters on hand-checkable inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from diffdrive.data import filters, stats
from diffdrive.data.types import DecodedScenario
from tests.test_batching import make_scenario


def sdc_track(speed, yaw, valid=None, sid="t") -> DecodedScenario:
    """One SDC (object 0) with the given per-step speed (m/s, along yaw) and yaw (rad)."""
    speed, yaw = np.asarray(speed, np.float32), np.asarray(yaw, np.float32)
    s = make_scenario(0, num_objects=2, num_steps=len(speed))
    a = s.arrays
    a["log_trajectory/vel_x"][0] = speed * np.cos(yaw)
    a["log_trajectory/vel_y"][0] = speed * np.sin(yaw)
    a["log_trajectory/yaw"][0] = yaw
    if valid is not None:
        a["log_trajectory/valid"][0] = valid
    return DecodedScenario(sid, "synthetic", a)


def test_constant_speed_straight_line():
    r = stats.scenario_stats(sdc_track(np.full(91, 10.0), np.full(91, 0.3)))
    assert r["sdc_speed_mean"] == pytest.approx(10.0, abs=1e-5)
    assert r["sdc_speed_max"] == pytest.approx(10.0, abs=1e-5)
    assert r["sdc_accel_mean_abs"] == pytest.approx(0.0, abs=1e-4)
    assert r["sdc_yaw_rate_mean_abs"] == pytest.approx(0.0, abs=1e-6)


def test_constant_acceleration_and_turn_rate_across_the_wrap():
    t = np.arange(21) * 0.1
    yaw = np.mod(3.0 + 0.5 * t + np.pi, 2 * np.pi) - np.pi  # passes +pi at t ~ 0.28 s
    r = stats.scenario_stats(sdc_track(2.0 * t, yaw))
    assert r["sdc_speed_mean"] == pytest.approx(2.0, abs=1e-5)  # mean of 2 t over 0..2 s
    assert r["sdc_speed_max"] == pytest.approx(4.0, abs=1e-5)
    assert r["sdc_accel_mean_abs"] == pytest.approx(2.0, abs=1e-4)
    assert r["sdc_yaw_rate_mean_abs"] == pytest.approx(0.5, abs=1e-4)
    series = stats.sdc_series(sdc_track(2.0 * t, yaw))
    assert series["sdc_accel"].shape == (20,)
    np.testing.assert_allclose(series["sdc_yaw_rate"], 0.5, atol=1e-4)


def test_only_consecutive_valid_steps_count():
    speed = np.array([0.0, 1.0, 50.0, 3.0, 4.0])
    valid = np.array([True, True, False, True, True])
    series = stats.sdc_series(sdc_track(speed, np.zeros(5), valid))
    np.testing.assert_allclose(series["sdc_speed"], [0, 1, 3, 4], atol=1e-6)
    np.testing.assert_allclose(series["sdc_accel"], [10.0, 10.0], atol=1e-4)  # pairs (0,1), (3,4)


def test_counts_and_roadgraph_density():
    s = make_scenario(0, num_objects=4, num_steps=20, num_points=200)
    a = s.arrays
    a["log_trajectory/valid"][3, 10] = False  # object 3 not valid at the current step
    a["log_trajectory/valid"][2] = False
    a["object_metadata/is_valid"][2] = False  # object 2 never exists
    # The SDC is at (10, 0) at step 10. 100 valid points within 50 m (x in 0..99 -> |dx|
    # <= 50 for x <= 60: use y to push points out), 50 outside, 50 invalid inside.
    a["roadgraph_points/x"][:] = 10.0
    a["roadgraph_points/y"][:100] = np.linspace(-49, 49, 100)
    a["roadgraph_points/y"][100:150] = 51.0
    a["roadgraph_points/y"][150:] = 0.0
    a["roadgraph_points/valid"][150:] = False
    r = stats.scenario_stats(s)
    assert r["num_objects"] == 3
    assert r["num_valid_objects"] == 2
    assert r["num_roadgraph_points"] == 150
    assert r["roadgraph_density"] == pytest.approx(100.0)  # points per hectare


def test_no_sdc_gives_nan_and_is_left_out_of_comparisons():
    no_sdc = make_scenario(0, sdc=None)
    r = stats.scenario_stats(no_sdc)
    assert math.isnan(r["sdc_speed_mean"]) and math.isnan(r["roadgraph_density"])
    assert r["num_objects"] == 4
    a = stats.dataset_stats([no_sdc, sdc_track(np.full(11, 3.0), np.zeros(11))])
    b = stats.dataset_stats([sdc_track(np.full(11, 5.0), np.zeros(11))])
    cmp = stats.compare_datasets(a, b)
    assert cmp["per_scenario"]["sdc_speed_mean"]["n_a"] == 1
    assert cmp["per_scenario"]["sdc_speed_mean"]["wasserstein"] == pytest.approx(2.0)


def test_compare_datasets_means_std_wasserstein_and_json(tmp_path):
    a = [sdc_track(np.full(11, v), np.zeros(11), sid=f"a{v}") for v in (1.0, 2.0, 3.0)]
    b = [sdc_track(np.full(11, v), np.zeros(11), sid=f"b{v}") for v in (2.0, 3.0, 4.0)]
    cmp = stats.compare_datasets(a, b, "real", "synthetic")
    assert cmp["a"] == {"name": "real", "num_scenarios": 3}
    sp = cmp["per_scenario"]["sdc_speed_mean"]
    assert sp["mean_a"] == pytest.approx(2.0) and sp["mean_b"] == pytest.approx(3.0)
    assert sp["std_a"] == pytest.approx(np.std([1, 2, 3]), rel=1e-5)
    assert sp["wasserstein"] == pytest.approx(1.0, rel=1e-5)
    assert cmp["per_step"]["sdc_speed"]["n_a"] == 33
    assert cmp["per_scenario"]["num_objects"]["wasserstein"] == 0.0
    out = tmp_path / "cmp.json"
    stats.write_json(cmp, out)
    text = out.read_text()
    assert json.loads(text) == cmp and ": " not in text and "NaN" not in text
    assert set(cmp["per_scenario"]) == set(stats.SCENARIO_STATS)


def test_filters_and_counts():
    keep = make_scenario(0)
    keep.arrays["object_metadata/objects_of_interest"][1] = True
    no_sdc = make_scenario(1, sdc=None)
    no_ooi = make_scenario(2)
    slow = sdc_track(np.full(91, 1.5), np.zeros(91), sid="slow")
    slow.arrays["object_metadata/objects_of_interest"][0] = True
    assert filters.has_sdc(keep) and not filters.has_sdc(no_sdc)
    assert filters.has_objects_of_interest(keep) and not filters.has_objects_of_interest(no_ooi)
    assert filters.mean_sdc_speed(keep) == pytest.approx(10.0)
    fstats = filters.FilterStats()
    chain = [*filters.interactive_filters(), filters.min_mean_sdc_speed(2.0)]
    kept = list(filters.apply_filters([keep, no_sdc, no_ooi, slow], chain, fstats))
    assert [s.scenario_id for s in kept] == ["s0"]
    assert fstats.as_dict() == {
        "seen": 4,
        "kept": 1,
        "dropped": {"has_sdc": 1, "has_objects_of_interest": 1, "sdc_speed_above_2": 1},
    }
