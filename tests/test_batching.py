"""Padding, stacking, shuffling and prefetching of decoded scenarios."""

from __future__ import annotations

import threading

import jax
import numpy as np
import pytest

from diffdrive.data import batching
from diffdrive.data.types import DecodedScenario, ScenarioDecodeError
from diffdrive.sim import datatypes


def make_scenario(
    index: int,
    num_objects: int = 4,
    num_steps: int = 91,
    num_points: int = 30,
    num_lights: int = 2,
    sdc: int | None = 0,
) -> DecodedScenario:
    """Objects on a line along x (object i at x = 10 i), all valid; ids = 1000*index + i."""
    a = batching.invalid_arrays(num_objects, num_steps, num_points, num_lights)
    t = np.arange(num_steps, dtype=np.float32)
    for i in range(num_objects):
        a["log_trajectory/x"][i] = 10.0 * i + t
        a["log_trajectory/y"][i] = float(index)
        a["log_trajectory/z"][i] = 0.0
        a["log_trajectory/yaw"][i] = 0.0
        a["log_trajectory/vel_x"][i] = 10.0
        a["log_trajectory/vel_y"][i] = 0.0
        a["log_trajectory/length"][i] = 4.0
        a["log_trajectory/width"][i] = 2.0
        a["log_trajectory/height"][i] = 1.5
        a["log_trajectory/timestamp_micros"][i] = np.arange(num_steps) * 100_000
        a["log_trajectory/valid"][i] = True
    a["object_metadata/ids"][:] = 1000 * index + np.arange(num_objects)
    a["object_metadata/object_types"][:] = 1
    a["object_metadata/is_valid"][:] = True
    if sdc is not None:
        a["object_metadata/is_sdc"][sdc] = True
    a["roadgraph_points/x"][:] = np.arange(num_points, dtype=np.float32)
    a["roadgraph_points/y"][:] = 0.0
    a["roadgraph_points/z"][:] = 0.0
    a["roadgraph_points/dir_x"][:] = 1.0
    a["roadgraph_points/dir_y"][:] = 0.0
    a["roadgraph_points/dir_z"][:] = 0.0
    a["roadgraph_points/types"][:] = 15
    a["roadgraph_points/ids"][:] = 7
    a["roadgraph_points/valid"][:] = True
    a["log_traffic_light/state"][:] = 4
    a["log_traffic_light/valid"][:] = True
    return DecodedScenario(f"s{index}", "synthetic", a, source=f"mem{index}", record_index=index)


def test_pad_values_follow_waymax_invalid_fill():
    s = make_scenario(0, num_objects=3, num_points=50, num_lights=2)
    out, notes = batching.pad_arrays(s.arrays, 5, 80, None, 16)
    assert notes == []
    assert out["log_trajectory/x"].shape == (5, 91)
    assert out["object_metadata/ids"].shape == (5,)
    assert out["roadgraph_points/x"].shape == (80,)
    assert out["log_traffic_light/state"].shape == (16, 91)
    for key in batching.canonical_keys():
        a, orig = out[key], s.arrays[key]
        assert a.dtype == batching.key_dtype(key)
        region = tuple(slice(0, n) for n in orig.shape)
        np.testing.assert_array_equal(a[region], orig.astype(a.dtype), err_msg=key)
        pad = np.ones(a.shape, bool)
        pad[region] = False
        want = False if a.dtype == np.bool_ else -1
        assert np.all(a[pad] == want), key


def test_pad_cuts_and_pads_time_axis():
    s = make_scenario(0, num_steps=95)
    out, notes = batching.pad_arrays(s.arrays, 4, 30, num_timesteps=91)
    assert out["log_trajectory/x"].shape == (4, 91)
    assert out["log_traffic_light/state"].shape == (16, 91)
    assert notes == ["Cut the log from 95 to 91 steps."]
    out, _ = batching.pad_arrays(make_scenario(0, num_steps=80).arrays, 4, 30, num_timesteps=91)
    assert not out["log_trajectory/valid"][:, 80:].any()
    assert (out["log_trajectory/x"][:, 80:] == -1).all()


def test_batch_shapes_and_equal_to_state_from_flat_arrays():
    scenarios = [make_scenario(i, num_objects=2 + i, num_points=10 * (i + 1)) for i in range(3)]
    state = batching.batch_scenarios(scenarios)
    assert state.log_trajectory.x.shape == (3, 4, 91)
    assert state.sim_trajectory.x.shape == (3, 4, 91)
    assert state.object_metadata.is_sdc.shape == (3, 4)
    assert state.roadgraph_points.x.shape == (3, 30)
    assert state.log_traffic_light.state.shape == (3, 16, 91)
    assert state.timestep.shape == (3,)
    datatypes.validate(state)
    flat = batching.stack_arrays([batching.pad_arrays(s.arrays, 4, 30)[0] for s in scenarios])
    ref = datatypes.state_from_flat_arrays(flat)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(ref), jax.tree_util.tree_leaves(state)
    ):
        assert isinstance(b, np.ndarray)
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=jax.tree_util.keystr(path))
    # Object 2 of scenario 0 is padding: invalid everywhere, -1 coordinates.
    assert not state.log_trajectory.valid[0, 2:].any()
    assert (state.log_trajectory.x[0, 2:] == -1).all()
    assert (state.object_metadata.ids[0, 2:] == -1).all()
    assert not state.roadgraph_points.valid[0, 10:].any()


def test_sdc_kept_first_when_more_objects_than_slots():
    # 10 objects on a line, x = 10 i at t = 0; the SDC is object 6 (x = 60 + t).
    s = make_scenario(3, num_objects=10, sdc=6)
    out, notes = batching.pad_arrays(s.arrays, 4, 30)
    ids = out["object_metadata/ids"]
    assert ids[0] == 3006 and out["object_metadata/is_sdc"][0]
    assert out["object_metadata/is_sdc"].sum() == 1
    # The others are the nearest to the SDC at the current step: objects 5 and 7 (10 m),
    # then 4 (20 m; 8 is as near and 4 comes first in source order).
    assert sorted(ids[1:].tolist()) == [3004, 3005, 3007]
    assert any("Kept 4 of 10 objects" in n for n in notes)
    np.testing.assert_array_equal(out["log_trajectory/x"][0], s.arrays["log_trajectory/x"][6])
    state = batching.batch_scenarios([s], max_objects=4)
    assert state.object_metadata.is_sdc[0, 0]
    assert int(state.sdc_index[0]) == 0


def test_roadgraph_cut_keeps_points_nearest_the_sdc():
    s = make_scenario(0, num_points=100, sdc=0)  # SDC at x = 10 at the current step
    out, notes = batching.pad_arrays(s.arrays, 4, 20)
    x = out["roadgraph_points/x"]
    assert x.shape == (20,)
    assert set(x.tolist()) == set(range(0, 20))  # |x - 10| <= 10, nearest 20 points
    assert notes and "100 roadgraph points" in notes[0]


def test_scenario_without_sdc_cannot_be_reduced():
    s = make_scenario(0, num_objects=6, sdc=None)
    with pytest.raises(ScenarioDecodeError, match=r"mem0, record 0, field 'object_metadata"):
        batching.pad_arrays(s.arrays, 4, 30, scenario=s)


def test_bad_arrays_named_in_errors():
    s = make_scenario(0)
    bad = dict(s.arrays)
    del bad["roadgraph_points/types"]
    with pytest.raises(ScenarioDecodeError, match="roadgraph_points/types"):
        batching.batch_scenarios([DecodedScenario("x", "synthetic", bad, source="f.bin")])
    bad = dict(s.arrays)
    bad["log_trajectory/yaw"] = bad["log_trajectory/yaw"][:, :5]
    with pytest.raises(ScenarioDecodeError, match=r"f\.bin.*log_trajectory/yaw.*shape"):
        batching.batch_scenarios([DecodedScenario("x", "synthetic", bad, source="f.bin")])
    with pytest.raises(ScenarioDecodeError, match="steps"):
        batching.batch_scenarios([s, make_scenario(1, num_steps=50)])


def _ids(batches) -> list[int]:
    """Scenario index of every batch row, in order (ids are 1000 * index + object)."""
    return [int(i) // 1000 for b in batches for i in b.object_metadata.ids[:, 0]]


def test_iterate_batches_sizes_order_and_shuffle():
    scenarios = [make_scenario(i, num_objects=1 + i % 3) for i in range(10)]
    batches = list(batching.iterate_batches(scenarios, 4, max_objects=3, num_roadgraph_points=32))
    assert [b.log_trajectory.x.shape for b in batches] == [(4, 3, 91)] * 2 + [(2, 3, 91)]
    assert _ids(batches) == list(range(10))
    dropped = list(batching.iterate_batches(scenarios, 4, drop_remainder=True, max_objects=3))
    assert len(dropped) == 2
    shuffled = [
        _ids(batching.iterate_batches(scenarios, 3, shuffle_seed=seed, max_objects=3))
        for seed in (0, 0, 1)
    ]
    assert shuffled[0] == shuffled[1] != list(range(10))
    assert shuffled[0] != shuffled[2]
    assert all(sorted(o) == list(range(10)) for o in shuffled)
    # A plain iterator is shuffled through a bounded buffer, still a permutation.
    streamed = _ids(
        batching.iterate_batches(
            iter(scenarios), 4, shuffle_seed=0, max_objects=3, shuffle_buffer=4
        )
    )
    assert sorted(streamed) == list(range(10)) and streamed != list(range(10))


def test_prefetch_loader_moves_batches_to_device_in_order():
    scenarios = [make_scenario(i) for i in range(6)]
    host = list(batching.iterate_batches(scenarios, 2, max_objects=4, num_roadgraph_points=30))
    with batching.PrefetchLoader(
        batching.iterate_batches(scenarios, 2, max_objects=4, num_roadgraph_points=30),
        buffer_size=2,
    ) as loader:
        got = list(loader)
    assert len(got) == 3
    for h, g in zip(host, got):
        assert isinstance(g.log_trajectory.x, jax.Array)
        for a, b in zip(jax.tree_util.tree_leaves(h), jax.tree_util.tree_leaves(g)):
            np.testing.assert_array_equal(a, np.asarray(b))


def test_prefetch_loader_runs_ahead_and_stops_early():
    produced = []
    started = threading.Event()

    def gen():
        for i in range(100):
            produced.append(i)
            started.set()
            yield {"i": np.array(i)}

    loader = batching.PrefetchLoader(gen(), buffer_size=3, to_device=False)
    it = iter(loader)
    assert int(next(it)["i"]) == 0
    started.wait(5)
    loader.close()
    assert not loader._thread.is_alive()
    assert len(produced) < 10  # bounded queue: the producer did not run away


def test_prefetch_loader_reraises_producer_errors():
    def gen():
        yield {"a": np.zeros(2)}
        raise ScenarioDecodeError("bad.tfrecord", 3, "state/x", "truncated")

    loader = batching.PrefetchLoader(gen(), to_device=False)
    it = iter(loader)
    next(it)
    with pytest.raises(ScenarioDecodeError, match=r"bad\.tfrecord, record 3"):
        next(it)
