"""Data parallelism (``diffdrive.distributed``): 4 devices agree with 1.

JAX fixes its device count at import and this process has one CPU device, so the
multi-device runs happen in ``tests/distributed_worker.py``, started once per module
with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (it compares a mesh of one
device with a mesh of four inside that process). The checkpoint it writes from four
devices is resumed here, on one. The ``slow`` test runs a real two-process job
(``jax.distributed.initialize`` on localhost, two CPU devices per process).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

from diffdrive import distributed
from diffdrive.data import cache
from diffdrive.train import loop

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "distributed_worker.py"
sys.path.insert(0, str(HERE))
import distributed_worker as worker  # noqa: E402


def _env(num_devices: int) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={num_devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    out = tmp_path_factory.mktemp("four_devices")
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out)],
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "results.json").read_text())
    assert report["device_count"] == 4
    return out, report


def test_train_step_on_four_devices_equals_one_device(four_devices):
    out, report = four_devices
    params = np.load(out / "train_step.npz")
    # The gradient is summed across devices in another order: equal to float tolerance.
    np.testing.assert_allclose(params["four"], params["one"], rtol=1e-5, atol=1e-7)
    assert not np.array_equal(params["one"], worker.flat_params(_initial_params()))
    one, four = report["train_step_metrics"]["one"], report["train_step_metrics"]["four"]
    assert one.keys() == four.keys()
    for k in one:
        np.testing.assert_allclose(four[k], one[k], rtol=1e-5, err_msg=k)


def _initial_params():
    return loop.create_train_state(worker.train_config(), 10).params


@pytest.mark.parametrize("name, labels", [("policy", ("one", "four")), ("cv_pad", ("four",))])
def test_sharded_evaluation_is_identical_to_one_device(four_devices, name, labels):
    # policy: a sampling policy, K = 2 (random draws must not depend on the sharding);
    # cv_pad: batches of 3 padded to 4 for the mesh, the padding dropped.
    out, report = four_devices
    summaries = report[f"eval_{name}"]
    arrays = np.load(out / f"eval_{name}.npz")
    assert summaries["none"]["counts"]["evaluated"] == 6
    for label in labels:
        assert summaries[label] == summaries["none"], label
        assert report["eval_ids"][f"{name}_{label}"] == report["eval_ids"][f"{name}_none"]
        for k in ("log_divergence", "overlap", "offroad", "valid"):
            np.testing.assert_array_equal(arrays[f"{label}_{k}"], arrays[f"none_{k}"])
    assert arrays["none_valid"].any()


def test_checkpoint_saved_on_four_devices_resumes_on_one(four_devices, tmp_path):
    out, report = four_devices
    assert jax.device_count() == 1
    assert report["killed_step"] == 4
    run = tmp_path / "run4"
    shutil.copytree(out / "run4", run)
    config = worker.train_config(epochs=2, checkpoint_every=2, keep_checkpoints=2)
    resumed = loop.train(config, worker.scenarios(), run, progress=False)
    assert resumed.completed and int(resumed.state.step) == 6
    # The first epoch's record was written by the 4-device run and carried over.
    assert [h["step"] for h in resumed.history] == [3, 6]
    full = report["full4_history"]
    for mine, theirs in zip(resumed.history, full):
        np.testing.assert_allclose(mine["loss"], theirs["loss"], rtol=1e-4)
    expected = np.load(out / "full4.npz")["params"]
    got = worker.flat_params(resumed.state.params)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert (run / "policy").exists()


def test_bad_device_counts_are_refused_clearly(four_devices):
    _, report = four_devices
    assert "batch size 6 is not a multiple of the 4 devices" in report["indivisible_error"]
    assert "5 devices requested, but only 4" in report["too_many_devices_error"]
    with pytest.raises(ValueError, match="positive integer"):
        distributed.make_mesh(0)


def test_eval_cli_devices(four_devices, capsys):
    _, report = four_devices
    one, four = report["cli_eval_1"], report["cli_eval_4"]
    assert one["metrics"] == four["metrics"] and one["counts"] == four["counts"]
    assert one["counts"]["scenarios"] == 5
    # This process has one device: asking for more is refused with the reason.
    from diffdrive.cli import main as cli_main

    argv = ["eval", "run", "--data", "synthetic:2:0:small", "--no-progress", "--devices"]
    assert cli_main([*argv, "2"]) == 2
    assert "2 devices requested, but only 1" in capsys.readouterr().err
    assert cli_main([*argv, "zero"]) == 2
    assert "positive integer or 'all'" in capsys.readouterr().err


def test_process_shares_partition_the_dataset(tmp_path):
    for n in (0, 1, 7, 12):
        for count in (1, 2, 3, 5):
            shares = [list(distributed.process_split(n, p, count)) for p in range(count)]
            flat = sorted(i for s in shares for i in s)
            assert flat == list(range(n)), (n, count)  # complete and disjoint
    with pytest.raises(ValueError, match="outside"):
        distributed.process_split(4, 2, 2)

    files = [f"train.tfrecord-{i:05d}-of-00007" for i in range(7)]
    parts = [distributed.process_subset(files, p, 3) for p in range(3)]
    assert parts[0] == files[0::3] and sorted(f for part in parts for f in part) == files

    scenarios = worker.scenarios()[:5]
    c = cache.build_cache(
        scenarios,
        tmp_path / "c",
        shard_size=2,
        max_objects=8,
        num_roadgraph_points=500,
        progress=False,
    )
    views = [distributed.process_subset(c, p, 2) for p in range(2)]
    ids = [v[i].scenario_id for v in views for i in range(len(v))]
    assert sorted(ids) == sorted(s.scenario_id for s in scenarios)
    assert [v[0].scenario_id for v in views] == [scenarios[0].scenario_id, scenarios[1].scenario_id]
    assert views[1].settings == c.settings  # what BatchSource reads

    view = distributed.process_subset(tuple(range(10)), 1, 4)
    assert list(view) == [1, 5, 9]
    generic = distributed.SubsetView(range(10), [3, 8])
    assert list(generic) == [3, 8] and generic.settings is None


def test_single_process_helpers():
    mesh = distributed.make_mesh(1)
    assert distributed.num_shards(mesh) == 1
    assert distributed.process_rows(6, mesh) == slice(0, 6)
    assert distributed.padded_size(5, mesh) == 5 and distributed.padded_size(5, None) == 5
    batch = {"x": np.arange(6.0).reshape(3, 2), "t": np.int32(10)}
    sharded = distributed.shard_batch(batch, mesh, process_local=True)
    np.testing.assert_array_equal(np.asarray(sharded["x"]), batch["x"])
    assert sharded["t"].shape == () and sharded["x"].sharding.spec == jax.sharding.PartitionSpec(
        "data"
    )
    assert not distributed.initialize_from_env(num_processes=1)
    with pytest.raises(ValueError, match="coordinator address"):
        distributed.initialize_from_env(num_processes=2, process_id=0)
    with pytest.raises(ValueError, match="outside"):
        distributed.initialize_from_env("localhost:1", num_processes=2, process_id=2)


def test_paper_profile_distributed_section():
    raw = yaml.safe_load((HERE.parent / "params" / "paper.yaml").read_text())
    settings = distributed.DistributedSettings.from_mapping(raw["distributed"])
    assert settings == distributed.DistributedSettings()  # every value automatic
    with pytest.raises(ValueError, match=r"distributed\.gpus"):
        distributed.DistributedSettings.from_mapping({"gpus": 8})
    with pytest.raises(ValueError, match="integer"):
        distributed.DistributedSettings.from_mapping({"devices": "8"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_and_evaluate_like_one_device(four_devices, tmp_path):
    # A real multi-process job: each process holds 2 of the 4 devices, reads its own rows
    # of the global batch and gets the whole, replicated result.
    out, _ = four_devices
    address = f"localhost:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path), "--multiprocess", str(p), "2", address],
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for p in range(2)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=900)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all(proc.returncode == 0 for proc in procs), "\n".join(logs)[-4000:]
    one = np.load(out / "train_step.npz")["one"]
    evaluation = np.load(out / "eval_policy.npz")
    results = [np.load(tmp_path / f"process{p}.npz") for p in range(2)]
    assert [list(r["rows"]) for r in results] == [[0, 2], [2, 4]]
    np.testing.assert_array_equal(results[0]["params"], results[1]["params"])
    np.testing.assert_allclose(results[0]["params"], one, rtol=1e-5, atol=1e-7)
    for r in results:
        for k in ("log_divergence", "overlap", "offroad", "valid"):
            np.testing.assert_array_equal(r[f"eval_{k}"], evaluation[f"none_{k}"])
