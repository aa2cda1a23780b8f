"""Evaluation engine, aggregation, baselines and the ``diffdrive eval run`` command."""

from __future__ import annotations

import argparse
import json
import math
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffdrive.data import batching
from diffdrive.data.synthetic import SyntheticConfig, generate_scenario
from diffdrive.eval import aggregate, baselines, rollouts
from diffdrive.eval import cli as eval_cli
from diffdrive.sim import dynamics, env

from .conftest import SHARED

SMALL = SyntheticConfig(max_objects=8, num_roadgraph_points=2000, num_vehicles=(3, 6))
REAL = {
    "tf_example": SHARED / "conformance" / "waymax_decoded_tf_example.npz",
    "scenario_50": SHARED / "data" / "womd" / "waymax_state" / "scenario_50.npz",
}


@pytest.fixture(scope="module")
def synthetic():
    return [generate_scenario(seed, SMALL) for seed in (0, 1, 2)]


def _batches(scenarios, batch_size):
    return rollouts.batches_with_ids(
        scenarios, batch_size, max_objects=8, num_roadgraph_points=2000
    )


def _evaluate(name, scenarios, setting="planning", batch_size=8, **kw):
    b = baselines.make_baseline(name, setting)
    environment = rollouts.make_environment(setting, b.dynamics)
    return rollouts.evaluate(environment, b.actor, None, _batches(scenarios, batch_size), **kw)


# ----------------------------------------------------------------------------- aggregate


def _hand_stats():
    """2 modes x 2 scenarios x 3 steps; see test_aggregate_by_hand for the expected values."""
    nan = np.nan
    ld = np.array(
        [
            [[1.0, 2.0, 3.0], [4.0, 100.0, 2.0]],  # mode 0
            [[0.5, 1.5, nan], [5.0, 0.0, 5.0]],  # mode 1
        ]
    )
    valid = np.array([[[1, 1, 1], [1, 0, 1]], [[1, 1, 1], [1, 0, 1]]], bool)
    overlap = np.array([[[0, 0, 0], [0, 1, 0]], [[1, 0, 0], [1, 0, 0]]])
    offroad = np.array([[[0, 1, 0], [1, 0, 0]], [[0, 0, 0], [0, 1, 0]]])
    return aggregate.step_stats(ld, overlap, offroad, valid)


def test_aggregate_by_hand():
    stats = _hand_stats()
    # Scenario 0: mode 0 ADE 2 (offroad), mode 1 ADE (0.5 + 1.5) / 2 = 1 (the NaN at a valid
    # step is skipped, as nanmean does; overlap). Scenario 1: step 1 invalid (its overlap and
    # its 100 m do not count): mode 0 ADE 3 (offroad), mode 1 ADE 5 (overlap).
    np.testing.assert_allclose(stats.ade, [[2.0, 3.0], [1.0, 5.0]])
    np.testing.assert_array_equal(stats.valid_steps, [[3, 2], [3, 2]])
    np.testing.assert_array_equal(stats.ld_count, [[3, 2], [2, 2]])
    np.testing.assert_array_equal(aggregate.select_modes(stats.ade), [1, 0])
    s = aggregate.summarize(stats)
    m = s["metrics"]
    assert m["ade"] == pytest.approx((1.0 + 3.0) / 2)
    assert m["overlap_rate"] == pytest.approx(0.5)  # mode 1 of scenario 0 overlaps
    assert m["offroad_rate"] == pytest.approx(0.5)  # mode 0 of scenario 1 is offroad
    assert m["overlap_step_rate"] == pytest.approx(1 / 5)  # 1 event in 3 + 2 valid steps
    assert m["offroad_step_rate"] == pytest.approx(1 / 5)
    assert m["max_log_divergence"] == pytest.approx((1.5 + 4.0) / 2)
    mean = s["per_mode_mean"]
    assert mean["ade"] == pytest.approx((2 + 3 + 1 + 5) / 4)
    assert mean["overlap_rate"] == pytest.approx(0.5)
    assert mean["offroad_rate"] == pytest.approx(0.5)
    assert mean["overlap_step_rate"] == pytest.approx(2 / 10)
    assert s["counts"] == {
        "scenarios": 2,
        "skipped_no_sdc": 0,
        "skipped_no_valid_steps": 0,
        "evaluated": 2,
        "evaluated_objects": 2,
        "valid_steps": 5,
        "num_modes": 2,
    }
    recs = aggregate.per_scenario_records(stats, ["a", "b"])
    assert [r["mode"] for r in recs] == [1, 0]
    assert recs[0]["overlap"] == 1.0 and recs[1]["offroad"] == 1.0
    assert recs[1]["ade_per_mode"] == pytest.approx([3.0, 5.0])


def test_aggregate_skips_scenarios_without_sdc_or_valid_steps():
    ld = np.array([[[1.0, 1.0], [9.0, 9.0], [7.0, 7.0]]])  # K=1, M=3, S=2
    valid = np.array([[[1, 1], [1, 1], [0, 0]]], bool)
    events = np.ones_like(ld)
    stats = aggregate.step_stats(ld, events, 0 * events, valid)
    s = aggregate.summarize(stats, include=np.array([True, False, True]))
    assert s["metrics"]["ade"] == 1.0 and s["metrics"]["overlap_rate"] == 1.0
    assert s["counts"]["skipped_no_sdc"] == 1 and s["counts"]["skipped_no_valid_steps"] == 1
    assert s["counts"]["evaluated"] == 1 and s["counts"]["valid_steps"] == 2
    recs = aggregate.per_scenario_records(stats, ["x", "y", "z"], np.array([True, False, True]))
    assert [r["evaluated"] for r in recs] == [True, False, False] and recs[1]["ade"] is None
    # Nothing evaluated: metrics are NaN in Python, null in JSON.
    empty = aggregate.summarize(stats, include=np.zeros(3, bool))
    assert math.isnan(empty["metrics"]["ade"])
    out = aggregate.results_dict(empty, aggregate.make_meta("tiny", "synthetic", 3))
    json.dumps(out, allow_nan=False)
    assert out["metrics"]["ade"] is None
    assert set(aggregate.make_meta()) >= {
        "profile",
        "dataset",
        "num_scenarios",
        "K",
        "commit",
        "generated_by",
    }


def test_aggregate_multi_agent_objects():
    # K=1, M=1, N=3 objects, S=2 steps. Object 2 is not controlled.
    ld = np.array([[[[1.0, 3.0], [4.0, 9.0], [100.0, 100.0]]]])
    valid = np.array([[[[1, 1], [1, 0], [1, 1]]]], bool)
    overlap = np.array([[[[0, 1], [0, 0], [1, 1]]]])
    offroad = np.array([[[[0, 0], [0, 1], [1, 1]]]])  # object 1 offroad only when invalid
    stats = aggregate.step_stats(ld, overlap, offroad, valid)
    mask = np.array([[True, True, False]])
    s = aggregate.summarize(stats, object_mask=mask)
    assert s["metrics"]["ade"] == pytest.approx((2.0 + 4.0) / 2)
    assert s["metrics"]["overlap_rate"] == pytest.approx(0.5)  # 1 of 2 objects
    assert s["metrics"]["offroad_rate"] == 0.0
    assert s["metrics"]["overlap_step_rate"] == pytest.approx(1 / 3)
    assert s["counts"]["evaluated_objects"] == 2
    # Concatenating stats with fewer objects pads with empty objects.
    both = aggregate.concat_stats(
        [
            stats,
            aggregate.step_stats(
                ld[:, :, :2], overlap[:, :, :2], offroad[:, :, :2], valid[:, :, :2]
            ),
        ]
    )
    assert both.shape == (1, 2, 3)
    s2 = aggregate.summarize(both, object_mask=np.array([[True, True, False], [True, True, False]]))
    assert s2["metrics"]["ade"] == pytest.approx(3.0)


def test_table_row_names():
    row = aggregate.table_row(aggregate.summarize(_hand_stats()), method="apg", num_rollouts=2)
    assert row["method"] == "apg" and row["num_rollouts"] == 2
    assert row["min_ade"] == row["ade"] == pytest.approx(2.0)
    assert row["min_overlap"] == pytest.approx(0.5)
    assert row["min_offroad_per_step"] == pytest.approx(0.2)


# ------------------------------------------------------------------------------ engine


def test_modes_noise_free_deterministic_and_padding(synthetic):
    one = _evaluate("expert", synthetic, batch_size=3)
    # The second batch of this run is padded to 2 and the padding dropped; same numbers.
    split = _evaluate("expert", synthetic, batch_size=2, num_modes=2)
    assert split.scenario_ids == one.scenario_ids == ["synthetic-0", "synthetic-1", "synthetic-2"]
    assert split.stats.shape == (2, 3)
    np.testing.assert_allclose(split.stats.ade[0], one.stats.ade[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split.stats.ade[1], split.stats.ade[0])  # deterministic actor
    np.testing.assert_array_equal(split.stats.valid_steps, 80)
    assert split.timing["steady_scenarios"] == 1 and split.timing["scenarios_per_s"] > 0
    assert one.summary()["metrics"]["ade"] < 0.5


def test_min_over_modes_picks_the_best_rollout(synthetic):
    expert = env.expert_actor(dynamics.InvertibleBicycleModel(), sdc_only=True)

    def jittery(view, actor_state, key):
        action, actor_state = expert(view, actor_state, key)
        kick = 1.5 * jax.random.normal(key, action.data.shape) * jnp.array([1.0, 0.02])
        return action.replace(data=action.data + kick), actor_state + 1

    seen = []

    def init(state):  # called on the tiled, reset state
        seen.append((state.shape, state.timestep.shape, state.sim_trajectory.valid.shape))
        return jnp.zeros(state.shape, jnp.int32)

    environment = rollouts.make_environment("planning")
    res = rollouts.evaluate(
        environment, jittery, init, _batches(synthetic[:2], 2), num_modes=3,
        key=jax.random.PRNGKey(3), keep_steps=True,
    )  # fmt: skip
    assert seen == [((6,), (), (6, 8, 91))]  # K * B rows, one shared clock
    ade = res.stats.ade  # (3 modes, 2 scenarios)
    assert np.ptp(ade, axis=0).min() > 1e-3  # the modes differ
    s = res.summary()
    best = ade.argmin(axis=0)
    assert s["metrics"]["ade"] == pytest.approx(ade.min(axis=0).mean())
    assert s["per_mode_mean"]["ade"] == pytest.approx(ade.mean())
    chosen_off = (res.stats.offroad_steps[best, [0, 1]] > 0).mean()
    assert s["metrics"]["offroad_rate"] == pytest.approx(chosen_off)
    assert [r["mode"] for r in res.per_scenario()] == best.tolist()
    # The kept per-step records reduce to the same stats.
    again = aggregate.step_stats(
        **{k: res.steps[k] for k in ("log_divergence", "overlap", "offroad", "valid")}
    )
    np.testing.assert_allclose(again.ade, ade)
    assert res.steps["log_divergence"].shape == (3, 2, 80)


def test_noise_moves_only_the_sdc_by_the_requested_std(synthetic):
    # Log replay snaps back to the log each step, so the divergence is |noise| exactly:
    # Rayleigh with mean std * sqrt(pi / 2).
    std = 0.5
    res = _evaluate("log_replay", synthetic[:2], num_modes=4, dynamics_noise_std=std)
    assert res.summary()["per_mode_mean"]["ade"] == pytest.approx(
        std * math.sqrt(math.pi / 2), abs=0.06
    )
    # Other objects keep replaying their log.
    b = baselines.make_baseline("log_replay", "planning")
    noisy = rollouts.with_position_noise(rollouts.make_environment("planning", b.dynamics), std)
    state = noisy.reset(synthetic[0].to_state())
    out = jax.jit(
        lambda s: noisy.rollout(
            s, b.actor, 80, key=jax.random.PRNGKey(0), metric_names=(), with_rewards=False
        )
    )(state)
    sdc = int(state.sdc_index)
    log = state.log_trajectory
    others = np.asarray(log.valid[:, 11:]).copy()
    others[sdc] = False
    np.testing.assert_allclose(
        np.asarray(out.trajectory.x[:, 1:])[others], np.asarray(log.x[:, 11:])[others]
    )
    dx = np.asarray(out.trajectory.x[sdc, 1:] - log.x[sdc, 11:])
    assert 0.3 < dx.std() < 0.7
    # Multi-agent: every controlled object gets the noise.
    multi = _evaluate(
        "log_replay", synthetic[:2], setting="multi_agent", num_modes=2, dynamics_noise_std=std
    )
    assert multi.summary()["per_mode_mean"]["ade"] == pytest.approx(
        std * math.sqrt(math.pi / 2), abs=0.06
    )


def test_noise_increases_expert_ade(synthetic):
    plain = _evaluate("expert", synthetic[:2], num_modes=2)
    ades = [
        _evaluate("expert", synthetic[:2], num_modes=2, dynamics_noise_std=std).summary()[
            "per_mode_mean"
        ]["ade"]
        for std in (0.0, 0.2, 1.0)
    ]
    assert ades[0] == plain.summary()["per_mode_mean"]["ade"]  # std 0 is the plain run
    assert ades[0] < ades[1] < ades[2]
    assert ades[2] > 3 * ades[1] > 3 * ades[0]


def test_scenario_without_sdc_is_skipped(synthetic):
    arrays = dict(synthetic[0].arrays)
    arrays["object_metadata/is_sdc"] = np.zeros_like(arrays["object_metadata/is_sdc"])
    no_sdc = type(synthetic[0])("no-sdc", "synthetic", arrays)
    res = _evaluate("expert", [synthetic[1], no_sdc], num_modes=1)
    np.testing.assert_array_equal(res.has_sdc, [True, False])
    s = res.summary()
    assert s["counts"]["skipped_no_sdc"] == 1 and s["counts"]["evaluated"] == 1
    assert s["metrics"]["ade"] == pytest.approx(res.stats.ade[0, 0])


def test_batches_accept_plain_states(synthetic):
    states = batching.iterate_batches(synthetic[:2], 2, max_objects=8, num_roadgraph_points=2000)
    b = baselines.make_baseline("constant_velocity", "planning")
    res = rollouts.evaluate(rollouts.make_environment("planning"), b.actor, None, states)
    assert res.scenario_ids == ["batch0:0", "batch0:1"]
    assert res.summary()["counts"]["evaluated"] == 2
    with pytest.raises(ValueError, match="unknown baseline"):
        baselines.make_baseline("oracle")
    with pytest.raises(ValueError, match="unknown setting"):
        rollouts.make_environment("crowd")


# ------------------------------------------------------------------- real scenarios


def _real_scenarios():
    from diffdrive.data import sources

    for p in REAL.values():
        if not p.exists():
            pytest.skip(f"{p} not found: the real scenarios live in ../shared")
    return list(sources.read_scenarios([str(p) for p in REAL.values()], format="waymax_state"))


def _real_eval(name, setting):
    b = baselines.make_baseline(name, setting)
    environment = rollouts.make_environment(setting, b.dynamics)
    batches = rollouts.batches_with_ids(_real_scenarios(), 2)
    return rollouts.evaluate(environment, b.actor, None, batches)


@pytest.mark.slow
def test_baselines_on_real_scenarios():
    expert = _real_eval("expert", "planning")
    assert expert.scenario_ids == ["waymax_decoded_tf_example", "scenario_50"]
    ade = expert.stats.ade[0]
    # Waymax: mean log divergence 0.32 m (max 0.48) and 0.017 m.
    assert ade[0] < 0.5 and expert.stats.ld_max[0, 0] < 0.5 and ade[1] < 0.05
    np.testing.assert_array_equal(expert.stats.valid_steps, 80)
    replay = _real_eval("log_replay", "planning")
    np.testing.assert_array_equal(replay.stats.ld_sum, 0.0)
    np.testing.assert_array_equal(replay.stats.ld_count, 80)
    cv = _real_eval("constant_velocity", "planning")
    assert np.all(cv.stats.ade[0] > ade + 0.5)
    s = cv.summary()["metrics"]
    assert s["ade"] > 5 * expert.summary()["metrics"]["ade"]


@pytest.mark.slow
def test_multi_agent_on_real_scenarios():
    replay = _real_eval("log_replay", "multi_agent")
    mask = replay.controlled
    # Controlled: objects valid at the end of warm-up (step 10).
    scen = _real_scenarios()
    for i, sc in enumerate(scen):
        at10 = np.asarray(sc.arrays["log_trajectory/valid"])[:, 10]
        np.testing.assert_array_equal(mask[i, : at10.size], at10)
    assert np.all(replay.stats.ld_sum[0][mask] == 0.0)
    assert replay.summary()["metrics"]["ade"] == 0.0
    expert = _real_eval("expert", "multi_agent")
    s = expert.summary()
    assert s["counts"]["evaluated_objects"] == int(mask.sum()) - int(
        (replay.stats.ld_count[0][mask] == 0).sum()
    )
    assert 0.0 < s["metrics"]["ade"] < 0.5


# --------------------------------------------------------------------------------- CLI


def _cli(argv):
    parser = argparse.ArgumentParser()
    eval_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


_CLI_DATA = ["--data", "synthetic:2:0:small", "--max-objects", "8", "--roadgraph-points", "2000"]


def test_cli_run_writes_results(tmp_path, capsys):
    out = tmp_path / "r" / "cv.json"
    code = _cli(["run", *_CLI_DATA, "--actor", "log_replay", "--modes", "2", "--out", str(out),
                 "--per-scenario", "--profile", "tiny", "--no-progress"])  # fmt: skip
    assert code == 0
    res = json.loads(out.read_text())
    assert res["meta"]["profile"] == "tiny" and res["meta"]["K"] == 2
    assert res["meta"]["actor"] == "log_replay" and res["meta"]["num_scenarios"] == 2
    assert res["metrics"]["ade"] == 0.0 and res["counts"]["evaluated"] == 2
    assert len(res["per_scenario"]) == 2
    assert "minADE 0.0000" in capsys.readouterr().out
    assert _cli(["run", *_CLI_DATA, "--modes", "0", "--no-progress"]) == 2


def test_cli_policy_actor(monkeypatch, tmp_path, capsys):
    # Missing module: a clear error.
    missing = types.ModuleType("diffdrive.train")
    monkeypatch.setitem(sys.modules, "diffdrive.train", missing)
    monkeypatch.setitem(sys.modules, "diffdrive.train.apg", None)
    assert _cli(["run", *_CLI_DATA, "--checkpoint", str(tmp_path), "--no-progress"]) == 1
    assert "diffdrive.train.apg" in capsys.readouterr().err

    # A stand-in module: whatever make_policy_actor returns is evaluated.
    calls = {}

    def make_policy_actor(checkpoint, preset=None, sample=False):
        calls.update(checkpoint=checkpoint, preset=preset, sample=sample)
        expert = env.expert_actor(dynamics.InvertibleBicycleModel(), sdc_only=True)
        return expert, lambda batch_shape=None, state=None: None

    apg = types.ModuleType("diffdrive.train.apg")
    apg.make_policy_actor = make_policy_actor
    missing.apg = apg
    monkeypatch.setitem(sys.modules, "diffdrive.train.apg", apg)
    out = tmp_path / "p.json"
    code = _cli(["run", *_CLI_DATA, "--checkpoint", "ckpt", "--preset", "tiny", "--modes", "2",
                 "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    assert calls == {"checkpoint": "ckpt", "preset": "tiny", "sample": True}
    res = json.loads(out.read_text())
    assert res["meta"]["actor"] == "policy" and res["metrics"]["ade"] < 0.5


def test_sdc_offroad_after_the_scan_equals_the_rollout_metric(synthetic):
    def turn(view, actor_state, key):  # a constant left turn that leaves the road
        data = jnp.broadcast_to(jnp.array([1.0, 0.08]), view.current.x.shape[:-1] + (2,))
        return env.Action(data=data, valid=jnp.ones(data.shape[:-1] + (1,), bool)), actor_state

    # Reference: the environment's own per-step offroad, with the exact gridded index.
    model = dynamics.InvertibleBicycleModel()
    reference = env.PlanningAgentEnvironment(model, env.EnvironmentConfig())
    indexed = reference.reset(batching.batch_scenarios(synthetic[:2]))
    evaluation = rollouts.make_environment("planning")
    plain = evaluation.reset(batching.batch_scenarios(synthetic[:2]))
    assert plain.road_edge_index is None  # planning evaluation: brute force after the scan

    def both(indexed, plain):
        out = reference.rollout(indexed, turn, 80, with_rewards=False)
        return (
            out.metrics["offroad"].value > 0,
            rollouts.sdc_offroad(evaluation, plain, out.trajectory),
            rollouts.sdc_offroad(evaluation, plain, out.trajectory, max_edge_points=8),
            rollouts.sdc_offroad(reference, indexed, out.trajectory),
        )

    expected, subset, full, gridded = jax.jit(both)(indexed, plain)
    assert np.asarray(expected).sum() > 20  # the test drives offroad
    for got in (subset, full, gridded):  # road-edge subset, overflow to all points, grid
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    rg = jax.tree.map(lambda a: a[0], plain.roadgraph_points)
    edges = int(np.sum(np.asarray(rg.valid) & np.isin(np.asarray(rg.types), (15, 16))))
    sub, overflow = rollouts.offroad_subset(rg, 2000)
    assert not overflow and edges <= int(np.sum(np.asarray(sub.valid))) <= 2 * edges + 1
    assert bool(rollouts.offroad_subset(rg, 8)[1])
