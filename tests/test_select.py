"""Tests for diffdrive.data.select: object selection, roadgraph packing, traffic-light slots."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from diffdrive.data import select
from diffdrive.sim import datatypes


def _objects(xy_at_10, valid=None, num_steps=91, sdc=0, modeled=()):
    """Flat arrays for objects standing still at the given xy (valid everywhere by default)."""
    xy = np.asarray(xy_at_10, np.float64)
    n = len(xy)
    if valid is None:
        valid = np.ones((n, num_steps), bool)
    x = np.repeat(xy[:, :1], num_steps, axis=1)
    y = np.repeat(xy[:, 1:], num_steps, axis=1)
    zeros = np.zeros((n, num_steps))
    return select.build_object_arrays(
        x=x,
        y=y,
        z=zeros,
        yaw=zeros,
        vel_x=zeros,
        vel_y=zeros,
        length=np.full(n, 4.0),
        width=np.full(n, 2.0),
        height=np.full(n, 1.5),
        valid=valid,
        timestamps_micros=np.arange(num_steps) * 100_000,
        ids=np.arange(100, 100 + n),
        object_types=np.ones(n),
        is_sdc=np.arange(n) == sdc,
        is_modeled=np.isin(np.arange(n), modeled),
    )


def test_build_object_arrays_follows_waymax_loader():
    valid = np.array([[True, False, True], [False, False, False]])
    length = np.array([[4.0, 100.0, 5.0], [3.0, 3.0, 3.0]])
    yaw = np.array([[np.pi, 3 * np.pi / 2, -np.pi - 0.1], [0.0, 0.0, 0.0]])
    ones = np.ones((2, 3))
    out = select.build_object_arrays(
        x=ones * 7,
        y=ones,
        z=ones,
        yaw=yaw,
        vel_x=ones,
        vel_y=ones,
        length=length,
        width=ones * 2,
        height=np.array([1.2, 1.3]),
        valid=valid,
        timestamps_micros=np.array([0, 100_000, 200_000]),
        ids=[5, 6],
        object_types=[1, 2],
        is_sdc=[True, False],
    )
    # Mean over valid steps only (4 and 5), broadcast over time; -1 for never-valid objects.
    np.testing.assert_allclose(out["log_trajectory/length"][0], [4.5, 4.5, 4.5])
    np.testing.assert_array_equal(out["log_trajectory/length"][1], [-1, -1, -1])
    np.testing.assert_allclose(out["log_trajectory/height"][0], [1.2] * 3, rtol=1e-6)
    np.testing.assert_array_equal(out["log_trajectory/height"][1], [-1] * 3)
    np.testing.assert_array_equal(out["log_trajectory/x"][0], [7, -1, 7])
    np.testing.assert_array_equal(out["log_trajectory/timestamp_micros"][0], [0, -1, 200_000])
    np.testing.assert_array_equal(out["log_trajectory/timestamp_micros"][1], [-1, -1, -1])
    # Yaw wrapped like Waymax (jnp floor-mod in float32).
    want = np.asarray(datatypes.wrap_yaws(jnp.asarray(yaw[0], jnp.float32)))
    np.testing.assert_array_equal(out["log_trajectory/yaw"][0][[0, 2]], want[[0, 2]])
    assert out["log_trajectory/yaw"].dtype == np.float32
    assert out["object_metadata/is_valid"].all()
    assert not out["object_metadata/is_controlled"].any()
    assert out["object_metadata/ids"].dtype == np.int32
    # The result makes a valid simulator state.
    datatypes.validate(
        datatypes.state_from_flat_arrays(
            out | select.empty_roadgraph(4) | select.empty_traffic_lights(3)
        )
    )


def test_wrap_yaw_range_and_values():
    yaw = np.linspace(-20, 20, 4001)
    wrapped = select.wrap_yaw(yaw)
    assert wrapped.min() >= -np.float32(np.pi) and wrapped.max() < np.pi
    np.testing.assert_allclose(np.cos(wrapped), np.cos(yaw), atol=2e-5)
    np.testing.assert_allclose(np.sin(wrapped), np.sin(yaw), atol=2e-5)


def test_select_objects_pads_and_moves_sdc_first():
    arrays = _objects([[0, 0], [1, 0], [2, 0]], sdc=2)
    arrays["roadgraph_points/x"] = np.arange(3, dtype=np.float32)  # passes through
    out, kept = select.select_objects(arrays, 5)
    np.testing.assert_array_equal(kept, [2, 0, 1])
    np.testing.assert_array_equal(out["object_metadata/ids"], [102, 100, 101, -1, -1])
    np.testing.assert_array_equal(out["object_metadata/is_sdc"], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["object_metadata/is_valid"], [1, 1, 1, 0, 0])
    assert out["log_trajectory/x"].shape == (5, 91)
    assert (out["log_trajectory/x"][3:] == -1).all()
    assert not out["log_trajectory/valid"][3:].any()
    assert (out["object_metadata/object_types"][3:] == -1).all()
    np.testing.assert_array_equal(out["roadgraph_points/x"], arrays["roadgraph_points/x"])
    for key in arrays:
        if key.startswith(("log_trajectory/", "object_metadata/")):
            assert out[key].shape[0] == 5, key
            assert out[key].dtype == arrays[key].dtype, key


def test_select_objects_ranks_by_distance_then_invalid_then_never_valid():
    num_steps = 91
    valid = np.ones((7, num_steps), bool)
    valid[4, 10] = False  # invalid now; nearest valid steps 9 and 11 -> takes 9 (earlier)
    valid[5, :] = False  # never valid
    valid[6, :60] = False  # appears late, far away at its first valid step
    xy = np.array([[0, 0], [50, 0], [10, 0], [30, 0], [1, 0], [0.5, 0], [2, 0]], float)
    arrays = _objects(xy, valid=valid, sdc=0)
    arrays["log_trajectory/x"][4, 9] = 3.0  # position at its nearest valid step
    out, kept = select.select_objects(arrays, 6)
    # SDC, then valid-now by distance (10, 30, 50), then invalid-now by distance
    # (object 6 at 2 m, object 4 at 3 m); never-valid object 5 is dropped.
    np.testing.assert_array_equal(kept, [0, 2, 3, 1, 6, 4])
    np.testing.assert_array_equal(out["object_metadata/ids"], 100 + kept)
    np.testing.assert_array_equal(out["log_trajectory/x"], arrays["log_trajectory/x"][kept])
    ranking = select.object_ranking(arrays)
    np.testing.assert_array_equal(ranking, [0, 2, 3, 1, 6, 4, 5])


def test_select_objects_keeps_modeled_and_breaks_ties_by_index():
    xy = np.array([[0, 0], [5, 0], [0, 5], [100, 0], [-5, 0]], float)
    arrays = _objects(xy, sdc=0, modeled=(3,))
    _, kept = select.select_objects(arrays, 3)
    np.testing.assert_array_equal(kept, [0, 3, 1])  # modeled first, then tie 1/2/4 by index
    _, kept = select.select_objects(arrays, 3, keep_modeled=False)
    np.testing.assert_array_equal(kept, [0, 1, 2])


def test_select_objects_needs_one_sdc_to_reduce():
    arrays = _objects([[0, 0], [1, 0], [2, 0]], sdc=-1)
    with pytest.raises(ValueError, match="exactly one SDC"):
        select.select_objects(arrays, 2)
    _, kept = select.select_objects(arrays, 3)  # no reduction: fine without an SDC
    np.testing.assert_array_equal(kept, [0, 1, 2])
    with pytest.raises(ValueError, match="at least 1"):
        select.select_objects(arrays, 0)


def test_select_objects_on_real_waymax_arrays(shared_data):
    arrays = dict(np.load(shared_data.parent / "conformance" / "waymax_decoded_tf_example.npz"))
    out, kept = select.select_objects(arrays, 32)
    sdc = int(np.argmax(arrays["object_metadata/is_sdc"]))
    assert kept[0] == sdc and out["object_metadata/is_sdc"][0]
    valid_now = arrays["log_trajectory/valid"][:, 10]
    modeled = arrays["object_metadata/is_modeled"]
    assert set(np.flatnonzero(modeled)) <= set(kept)
    dist = np.hypot(
        arrays["log_trajectory/x"][:, 10] - arrays["log_trajectory/x"][sdc, 10],
        arrays["log_trajectory/y"][:, 10] - arrays["log_trajectory/y"][sdc, 10],
    )
    by_distance = [i for i in kept[1:] if not modeled[i]]
    dropped = np.setdiff1d(np.arange(128), kept)
    assert valid_now[by_distance].all()
    assert dist[by_distance].max() <= dist[dropped[valid_now[dropped]]].min()
    assert np.all(np.diff(dist[by_distance]) >= 0)


def test_polylines_to_roadgraph_directions():
    lane = np.array([[0, 0, 0], [1, 0, 0], [1, 2, 0], [1, 2, 0]], float)
    sign = np.array([[5, 5]], float)  # 2-D input, single point
    out = select.polylines_to_roadgraph([(lane, 2, 7), (sign, 17, 9)])
    np.testing.assert_array_equal(out["roadgraph_points/ids"], [7, 7, 7, 7, 9])
    np.testing.assert_array_equal(out["roadgraph_points/types"], [2, 2, 2, 2, 17])
    np.testing.assert_array_equal(out["roadgraph_points/dir_x"], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["roadgraph_points/dir_y"], [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(out["roadgraph_points/z"], [0, 0, 0, 0, 0])
    assert out["roadgraph_points/valid"].all()
    assert out["roadgraph_points/x"].dtype == np.float32
    empty = select.polylines_to_roadgraph([])
    assert empty["roadgraph_points/x"].shape == (0,)
    with pytest.raises(ValueError, match="shape"):
        select.polylines_to_roadgraph([(np.zeros((3, 4)), 2, 1)])
    with pytest.raises(ValueError, match="int32"):
        select.polylines_to_roadgraph([(lane, 2, 2**40)])


def test_polyline_directions_match_womd_dir(shared_data):
    """Recomputing dir from the real roadgraph reproduces WOMD's own dir field."""
    arrays = np.load(shared_data / "womd" / "waymax_state" / "scenario_50.npz")
    ids = arrays["roadgraph_points/ids"]
    xyz = np.stack([arrays[f"roadgraph_points/{a}"] for a in "xyz"], axis=-1)
    polylines = []
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    for begin, end in zip(starts, np.r_[starts[1:], len(ids)]):
        polylines.append((xyz[begin:end], arrays["roadgraph_points/types"][begin], ids[begin]))
    out = select.polylines_to_roadgraph(polylines)
    for axis in ("dir_x", "dir_y", "dir_z"):
        # The last polyline was cut by WOMD at 20000 points: its last dir is not zero there.
        np.testing.assert_allclose(
            out[f"roadgraph_points/{axis}"][:-1],
            arrays[f"roadgraph_points/{axis}"][:-1],
            atol=2e-3,
        )
    np.testing.assert_array_equal(out["roadgraph_points/x"], arrays["roadgraph_points/x"])


def test_pad_roadgraph_pads_and_cuts_like_waymax_topk():
    rng = np.random.default_rng(0)
    rg = select.polylines_to_roadgraph(
        [(rng.uniform(-50, 50, size=(40, 3)), 2, i) for i in range(5)]
    )
    padded = select.pad_roadgraph(rg, 230, ref_xy=np.zeros(2))
    assert padded["roadgraph_points/x"].shape == (230,)
    assert (padded["roadgraph_points/types"][200:] == -1).all()
    assert not padded["roadgraph_points/valid"][200:].any()

    arrays = _objects([[3.0, -4.0], [0, 0]], sdc=0) | rg
    notes = []
    cut = select.pad_roadgraph(arrays, 50, notes=notes)
    assert len(notes) == 1 and "200 roadgraph points" in notes[0]
    assert cut["log_trajectory/x"] is arrays["log_trajectory/x"]
    points = datatypes.RoadgraphPoints(**{k.split("/")[1]: jnp.asarray(v) for k, v in rg.items()})
    topk = datatypes.filter_topk_roadgraph_points(points, jnp.array([3.0, -4.0]), 50)
    assert set(np.asarray(topk.x).tolist()) == set(cut["roadgraph_points/x"].tolist())
    # Original order kept: ids never decrease, so polylines stay contiguous.
    assert np.all(np.diff(cut["roadgraph_points/ids"]) >= 0)
    with pytest.raises(ValueError, match="one SDC"):
        select.pad_roadgraph(rg, 10)


def test_traffic_lights_to_arrays_slots_and_fill():
    steps = 5
    a = select.TrafficLightSeries(
        lane_id=42,
        state=np.array([4, 4, 6, 0, 0]),
        valid=np.array([1, 1, 1, 0, 0], bool),
        xyz=np.tile([1.0, 2.0, 3.0], (steps, 1)),
    )
    seen_once = np.array([1, 0, 0, 0, 0], bool)
    lights = [a] + [
        select.TrafficLightSeries(
            i,
            np.full(steps, 6),
            seen_once if i in (103, 107) else np.ones(steps, bool),
            np.zeros((steps, 3)),
        )
        for i in range(100, 117)
    ]
    notes = []
    out = select.traffic_lights_to_arrays(lights, num_steps=steps, notes=notes)
    np.testing.assert_array_equal(out["log_traffic_light/state"][0], [4, 4, 6, -1, -1])
    np.testing.assert_array_equal(out["log_traffic_light/lane_ids"][0], [42, 42, 42, -1, -1])
    np.testing.assert_array_equal(out["log_traffic_light/x"][0], [1, 1, 1, -1, -1])
    # The two lights seen at one step only are dropped; the others keep their order.
    kept = out["log_traffic_light/lane_ids"][:, 0]
    assert kept.tolist() == [42, 100, 101, 102, 104, 105, 106, *range(108, 117)]
    assert out["log_traffic_light/state"].shape == (16, steps)
    assert len(notes) == 1 and "[103, 107]" in notes[0]
    bad = select.TrafficLightSeries(1, np.full(steps, 9), np.ones(steps, bool), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="unknown states"):
        select.traffic_lights_to_arrays([bad], num_steps=steps)
    empty = select.empty_traffic_lights()
    assert empty["log_traffic_light/state"].shape == (16, 91)
    assert (empty["log_traffic_light/state"] == -1).all()


@pytest.mark.parametrize(
    ("num_source", "current", "want_start", "want_count", "num_notes"),
    [
        (91, 10, 0, 91, 0),
        (91, None, 0, 91, 0),
        (199, None, 0, 91, 1),  # 20 s scenario -> first 9.1 s
        (199, 0, 0, 91, 1),
        (199, 50, 40, 91, 1),  # current index lands on step 10
        (80, 10, 0, 80, 1),  # short: padded
    ],
)
def test_time_window(num_source, current, want_start, want_count, num_notes):
    start, count, notes = select.time_window(num_source, current)
    assert (start, count, len(notes)) == (want_start, want_count, num_notes)
    if current is not None and current >= 10:
        assert current - start == 10
