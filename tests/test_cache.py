"""The preprocessed scenario cache: round trip, batches, resume, corruption."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from diffdrive.data import batching, cache, sources
from diffdrive.data.types import DecodedScenario
from tests.test_batching import make_scenario


def scenarios(n: int = 10) -> list[DecodedScenario]:
    """Varied sizes, random values, a few invalid steps and assumptions."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        s = make_scenario(i, num_objects=2 + i % 4, num_points=20 + 3 * i, num_lights=1 + i % 3)
        a = s.arrays
        a["log_trajectory/yaw"][:] = rng.uniform(-3, 3, a["log_trajectory/yaw"].shape)
        a["log_trajectory/valid"][:] = rng.random(a["log_trajectory/valid"].shape) > 0.2
        a["roadgraph_points/z"][:] = rng.normal(size=a["roadgraph_points/z"].shape)
        out.append(
            DecodedScenario(
                s.scenario_id,
                "synthetic",
                a,
                source=f"gen{i}.bin",
                record_index=i,
                assumptions=("made up",) if i % 2 else (),
            )
        )
    return out


def assert_same(a: DecodedScenario, b: DecodedScenario) -> None:
    assert (a.scenario_id, a.format, a.source, a.record_index, a.assumptions) == (
        b.scenario_id,
        b.format,
        b.source,
        b.record_index,
        b.assumptions,
    )
    assert set(b.arrays) == set(batching.canonical_keys())
    for key in batching.canonical_keys():
        x, y = np.asarray(a.arrays[key]), b.arrays[key]
        assert x.shape == y.shape and y.dtype == batching.key_dtype(key), key
        np.testing.assert_array_equal(x.astype(y.dtype), y, err_msg=key)


def build(tmp_path, items, name="c", **kw):
    kw = {"shard_size": 4, "max_objects": 6, "num_roadgraph_points": 64, "progress": False} | kw
    return cache.build_cache(items, tmp_path / name, **kw)


def test_round_trip_exact_and_index(tmp_path):
    items = scenarios(10)
    c = build(tmp_path, items)
    assert len(c) == 10 and c.num_shards == 3
    for a, b in zip(items, c):
        assert_same(a, b)
    assert_same(items[-1], c[-1])
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert index["scenarios"][3]["scenario_id"] == "s3"
    assert index["keys"]["log_trajectory/x"] == {"shape": [6, 91], "dtype": "<f4"}
    assert index["keys"]["roadgraph_points/valid"] == {"shape": [64], "dtype": "|b1"}
    assert [s["count"] for s in index["shards"]] == [4, 4, 2]
    assert len(index["content_hash"]) == 64
    shard0 = c.shard_arrays(0)
    assert isinstance(shard0["log_trajectory/x"], np.memmap)
    assert shard0["log_trajectory/x"].shape == (4, 6, 91)
    # Uncompressed fixed-size arrays: the files hold the data plus small .npy headers.
    data = sum(
        np.prod(spec["shape"]) * np.dtype(spec["dtype"]).itemsize for spec in index["keys"].values()
    )
    assert 0 < c.nbytes - 10 * data <= 3 * len(index["keys"]) * 256


def test_stream_mode_and_reader_registry(tmp_path):
    items = scenarios(5)
    build(tmp_path, items)
    streamed = cache.open_cache(tmp_path / "c", mode="stream", verify="full")
    assert not isinstance(streamed.shard_arrays(0)["log_trajectory/x"], np.memmap)
    for a, b in zip(items, streamed):
        assert_same(a, b)
    assert sources.detect_format(tmp_path / "c") == "cache"
    for a, b in zip(items, sources.read_scenarios([tmp_path / "c"])):
        assert_same(a, b)


def test_iter_batches_match_batching(tmp_path):
    items = scenarios(10)
    c = build(tmp_path, items)
    batches = list(c.iter_batches(3))
    assert [b.log_trajectory.x.shape[0] for b in batches] == [3, 3, 3, 1]
    ref = list(batching.iterate_batches(items, 3, max_objects=6, num_roadgraph_points=64))
    for b, r in zip(batches, ref):
        for x, y in zip(jax.tree_util.tree_leaves(b), jax.tree_util.tree_leaves(r)):
            np.testing.assert_array_equal(x, y)
    assert len(list(c.iter_batches(3, drop_remainder=True))) == 3
    orders = [
        [
            int(i) // 1000
            for b in c.iter_batches(3, shuffle_seed=s)
            for i in b.object_metadata.ids[:, 0]
        ]
        for s in (0, 0, 1)
    ]
    assert orders[0] == orders[1] and orders[0] != orders[2]
    assert sorted(orders[0]) == list(range(10)) and orders[0] != list(range(10))


def test_selection_recorded_when_objects_exceed_slots(tmp_path):
    s = make_scenario(0, num_objects=9, sdc=5)
    c = build(tmp_path, [s], max_objects=4, num_roadgraph_points=16)
    got = c[0]
    assert got.arrays["object_metadata/ids"][0] == 5
    assert got.arrays["object_metadata/is_sdc"][0]
    assert got.arrays["log_trajectory/x"].shape == (4, 91)
    assert got.arrays["roadgraph_points/x"].shape == (16,)
    assert any("Kept 4 of 9 objects" in a for a in got.assumptions)
    assert any("roadgraph points" in a for a in got.assumptions)


class Interrupted(Exception):
    pass


def interrupted(items, after):
    for i, s in enumerate(items):
        if i == after:
            raise Interrupted
        yield s


def test_interrupted_build_resumes(tmp_path):
    items = scenarios(10)
    with pytest.raises(Interrupted):
        build(tmp_path, interrupted(items, 9))
    out = tmp_path / "c"
    assert sorted(p.name for p in out.iterdir()) == ["build.json", "shard_00000", "shard_00001"]
    with pytest.raises(cache.CacheError, match="did not finish"):
        cache.open_cache(out)
    before = {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "shard_00000").iterdir()
    }
    # Other settings or other input are refused rather than mixed in.
    with pytest.raises(cache.CacheError, match="other settings"):
        build(tmp_path, items, max_objects=7)
    with pytest.raises(cache.CacheError, match="not the same input"):
        build(tmp_path, items[1:])
    c = build(tmp_path, items)
    after = {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "shard_00000").iterdir()
    }
    assert before == after  # completed shards were not rewritten
    fresh = build(tmp_path, items, name="fresh")
    assert c.index["content_hash"] == fresh.index["content_hash"]
    for a, b in zip(items, c):
        assert_same(a, b)
    with pytest.raises(FileExistsError):
        build(tmp_path, items)
    assert len(build(tmp_path, items[:3], overwrite=True)) == 3


def test_corrupt_truncated_and_missing_shards_detected(tmp_path):
    build(tmp_path, scenarios(6))
    out = tmp_path / "c"
    victim = out / "shard_00001" / "log_trajectory.yaw.npy"
    raw = bytearray(victim.read_bytes())
    raw[-5] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(cache.CacheError, match=r"shard_00001/log_trajectory\.yaw\.npy.*corrupt"):
        cache.open_cache(out, verify="full")
    lazy = cache.open_cache(out)  # lazy: caught on first read of that shard
    assert lazy[0].scenario_id == "s0"
    with pytest.raises(cache.CacheError, match="corrupt"):
        lazy[4]
    victim.write_bytes(bytes(raw[:-100]))
    with pytest.raises(cache.CacheError, match=r"log_trajectory\.yaw\.npy: \d+ bytes"):
        cache.open_cache(out, verify="none")
    victim.unlink()
    with pytest.raises(cache.CacheError, match="shard file is missing"):
        cache.open_cache(out, verify="none")
    (out / "shard_00001" / "meta.json").rename(out / "meta.bak")
    with pytest.raises(cache.CacheError, match="shard meta is missing"):
        cache.open_cache(out)


def test_edited_index_detected(tmp_path):
    build(tmp_path, scenarios(3))
    path = tmp_path / "c" / "index.json"
    index = json.loads(path.read_text())
    index["scenarios"][1]["scenario_id"] = "forged"
    path.write_text(json.dumps(index))
    with pytest.raises(cache.CacheError, match="content hash mismatch"):
        cache.open_cache(tmp_path / "c")
    path.write_text("{not json")
    with pytest.raises(cache.CacheError, match="not valid JSON"):
        cache.open_cache(tmp_path / "c")


def test_real_tf_example_round_trip(shared_data, tmp_path):
    path = shared_data / "womd" / "tf_example" / "motion_data_one_example.tfrecord"
    items = list(sources.read_scenarios(path))
    c = cache.build_cache(items, tmp_path / "womd", progress=False)
    assert len(c) == 1
    assert_same(items[0], c[0])
    state = next(c.iter_batches(1))
    assert state.log_trajectory.x.shape == (1, 128, 91)
    assert state.roadgraph_points.x.shape == (1, 20000)
