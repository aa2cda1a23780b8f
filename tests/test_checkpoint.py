"""Checkpoints: a killed run resumes bitwise; the exported policy; the ``train`` CLI."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json

import jax
import numpy as np
import pytest

from diffdrive.data import batching, cache, synthetic
from diffdrive.data.sources import synthetic_config
from diffdrive.train import apg, checkpoint, loop
from diffdrive.train import cli as train_cli
from diffdrive.train.config import TrainConfig

# The shapes of tests/test_apg.py (8 objects, 500 roadgraph points, batches of 4), so the
# train step compiled there is reused here.
SCENARIOS = synthetic_config("small", max_objects=8, num_roadgraph_points=500, num_vehicles=(2, 4))


@functools.lru_cache(maxsize=1)
def scenarios():
    return [synthetic.generate_scenario(100 + i, SCENARIOS) for i in range(12)]


def _assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _without_time(history):
    return [{k: v for k, v in h.items() if k != "time_s"} for h in history]


def test_killed_run_resumes_to_bitwise_identical_parameters(tmp_path):
    # 12 scenarios, batches of 4: 3 steps per epoch, 9 steps; checkpoints every 2 steps
    # and at each epoch's end (2, 3, 4, 6, 8, 9).
    cfg = TrainConfig.tiny(epochs=3, checkpoint_every=2, keep_checkpoints=2)
    data = scenarios()
    straight = loop.train(cfg, data, tmp_path / "straight", progress=False)
    assert straight.completed and straight.total_steps == 9

    # "Kill" after 5 steps: the last checkpoint is step 4, in the middle of epoch 2.
    killed = loop.train(cfg, data, tmp_path / "resumed", progress=False, stop_after_steps=5)
    assert not killed.completed and int(killed.state.step) == 5
    ckpt = checkpoint.Checkpointer(tmp_path / "resumed" / "checkpoints")
    assert ckpt.latest_step() == 4 and ckpt.all_steps() == [3, 4]
    ckpt.close()
    assert not (tmp_path / "resumed" / "policy").exists()
    metrics = json.loads((tmp_path / "resumed" / loop.METRICS_NAME).read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1]

    resumed = loop.train(cfg, data, tmp_path / "resumed", progress=False)
    assert resumed.completed
    _assert_trees_equal(resumed.state.params, straight.state.params)
    _assert_trees_equal(resumed.state.opt_state, straight.state.opt_state)
    assert int(resumed.state.step) == int(straight.state.step) == 9
    # The per-epoch metrics (data order and PRNG keys included) are the same too.
    assert _without_time(resumed.history) == _without_time(straight.history)
    on_disk = json.loads((tmp_path / "resumed" / loop.METRICS_NAME).read_text())
    assert _without_time(on_disk["epochs"]) == _without_time(straight.history)

    # The exported policy is the final parameters.
    _, params, model_cfg = checkpoint.load_policy(tmp_path / "resumed")
    assert model_cfg == cfg.model
    _assert_trees_equal(params, straight.state.params)
    assert checkpoint.load_train_config(tmp_path / "resumed") == cfg

    # A different config cannot resume from these checkpoints.
    other = dataclasses.replace(cfg, peak_lr=1e-4)
    with pytest.raises(ValueError, match="different config"):
        loop.train(other, data, tmp_path / "resumed", progress=False)


def test_batches_are_a_pure_function_of_seed_epoch_and_index():
    data = scenarios()
    a = loop.BatchSource(data, 4, seed=7)
    b = loop.BatchSource(data, 4, seed=7)
    assert a.steps_per_epoch == 3
    _assert_trees_equal(a.batch(2, 1), b.batch(2, 1))
    assert sorted(np.concatenate([a.order(0)])) == list(range(12))
    assert not np.array_equal(a.order(0), a.order(1))
    assert not np.array_equal(a.order(0), loop.BatchSource(data, 4, seed=8).order(0))
    assert a.batch(0, 0).sim_trajectory is None  # training never reads it


def test_config_round_trips_through_json():
    cfg = TrainConfig.tiny(dynamics_kwargs=(("clip_actions", True),), epochs=5)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, max_agents=None))
    data = json.loads(json.dumps(checkpoint.config_to_dict(cfg)))
    assert checkpoint.config_from_dict(TrainConfig, data) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        checkpoint.config_from_dict(TrainConfig, {**data, "nonsense": 1})


def test_train_cli_on_a_scenario_cache(tmp_path, capsys):
    c = cache.build_cache(
        scenarios()[:8],
        tmp_path / "cache",
        shard_size=4,
        max_objects=8,
        num_roadgraph_points=500,
        progress=False,
    )
    assert len(c) == 8
    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "run"
    argv = ["apg", "--data", str(tmp_path / "cache"), "--preset", "tiny", "--epochs", "1"]
    argv += ["--out", str(out), "--no-progress", "--json"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["completed"] and summary["steps"] == 2 and summary["scenarios"] == 8
    assert np.isfinite(summary["last_epoch"]["loss"])
    assert (out / "policy" / checkpoint.CONFIG_NAME).exists()
    assert checkpoint.load_train_config(out) == TrainConfig.tiny(epochs=1)
    # What `diffdrive eval run --actor policy --checkpoint DIR` loads.
    actor, init = apg.make_policy_actor(checkpoint=str(out), sample=True)
    assert callable(actor) and init((2,)).shape == (2, TrainConfig.tiny().model.hidden_size)
    # The same parameters drive every object in the multi-agent setting (one carry each).
    _, init_all = apg.make_policy_actor(checkpoint=str(out), setting="multi_agent")
    state = batching.state_from_flat_batch(batching.stack_arrays([c.padded_arrays(0)]))
    assert init_all(state).shape == (1, 8, TrainConfig.tiny().model.hidden_size)
    with pytest.raises(ValueError, match="unknown setting"):
        apg.make_policy_actor(checkpoint=str(out), setting="platoon")
    # The same command again finds the finished run and does nothing more; with
    # --no-resume it starts over (and, being deterministic, ends at the same parameters).
    assert args.func(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["steps"] == 2 and again["last_epoch"] == summary["last_epoch"]
    _, first_params, _ = checkpoint.load_policy(out)
    args = parser.parse_args([*argv, "--no-resume"])
    assert args.func(args) == 0
    fresh = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert fresh["completed"] and fresh["steps"] == 2
    _assert_trees_equal(checkpoint.load_policy(out)[1], first_params)
