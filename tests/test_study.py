"""The APG study: variant configs from params, the split, minADE@k, the claims, a tiny run."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from diffdrive.eval import aggregate, apg_study
from diffdrive.train import study

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _study(**variants) -> study.StudyConfig:
    return study.study_from_dict(
        {
            "preset": "tiny",
            "num_train": 4,
            "train": {"epochs": 3, "batch_size": 2},
            "variants": variants or {"apg": {}},
        }
    )


def test_variant_overrides_layer_preset_shared_then_own():
    s = _study(
        apg={},
        bc={"algorithm": "bc", "epochs": 5},
        half={"rollout_steps": 40},
        way={"model": {"route": "waypoint"}},
        awm={"awm_recipe": True},
    )
    apg = study.variant_config(s, "apg")
    assert (apg.algorithm, apg.epochs, apg.batch_size, apg.model.hidden_size) == ("apg", 3, 2, 32)
    assert study.variant_config(s, "bc").epochs == 5  # own beats shared
    assert study.variant_config(s, "half").rollout_steps == 40
    assert study.variant_config(s, "way").model.route == "waypoint"
    awm = study.variant_config(s, "awm")
    # with_awm_recipe halves the epochs (ceil), adds the entropy bonus and the variance floor
    assert (awm.epochs, awm.entropy_weight, awm.model.log_std_min) == (2, 0.01, -3.0)


def test_multi_agent_variant_resolves_with_its_transformer():
    s = _study(
        ma={"setting": "multi_agent", "train_agents": 4, "model": {"agent_encoder": "transformer"}}
    )
    c = study.variant_config(s, "ma")
    assert (c.setting, c.train_agents, c.model.agent_encoder) == ("multi_agent", 4, "transformer")


def test_bad_variants_are_named():
    with pytest.raises(
        ValueError, match=r"apg.variants.bad.*unknown TrainConfig fields \['epoch'\]"
    ):
        _study(bad={"epoch": 3})
    with pytest.raises(ValueError, match=r"unknown ModelConfig fields \['routing'\]"):
        _study(bad={"model": {"routing": "none"}})
    with pytest.raises(ValueError, match=r"apg: unknown keys \['variant'\]"):
        study.study_from_dict({"variant": {}})
    with pytest.raises(KeyError, match="unknown APG variant 'nope'"):
        study.variant_config(_study(), "nope")


def test_profiles_define_every_study_table_variant():
    for profile in ("tiny", "default", "paper"):
        s = study.load_study(ROOT / "params" / f"{profile}.yaml")
        needed = {v for vs in apg_study.TABLE_VARIANTS.values() for v in vs}
        assert needed <= set(s.variants), profile
        for name in s.variants:
            study.variant_config(s, name)
        apg_study.eval_config(s.eval)


def test_split_counts_and_fraction():
    assert study.split(10, 8) == (range(8), range(8, 10))
    assert study.split(10, 0.9) == (range(9), range(9, 10))
    with pytest.raises(ValueError, match="leaves no test scenarios"):
        study.split(10, 10)


def _stats(ade: np.ndarray) -> aggregate.ModeStats:
    """ModeStats (K, M) with one valid step per scenario at the given divergence."""
    ones = np.ones_like(ade)
    zeros = np.zeros_like(ade)
    return aggregate.ModeStats(ade, ones, ade, ones, zeros, zeros)


def test_min_ade_at_k_uses_the_first_k_rollouts():
    # 3 rollouts x 2 scenarios: minADE@1 = mean(4, 2) = 3; @2 = mean(1, 2) = 1.5; @3 = mean(1, 0.5)
    ade = np.array([[4.0, 2.0], [1.0, 3.0], [5.0, 0.5]])
    stats = _stats(ade)
    got = [aggregate.summarize(apg_study.take_modes(stats, k))["metrics"]["ade"] for k in (1, 2, 3)]
    np.testing.assert_allclose(got, [3.0, 1.5, 0.75])
    with pytest.raises(ValueError, match=r"outside 1\.\.3"):
        apg_study.take_modes(stats, 4)


def _tables(apg_ade=1.0, bc_ade=2.0, noisy_apg=1.05, noisy_bc=3.0):
    single = [
        {"method": "apg", "num_rollouts": 4, "min_ade": apg_ade, "overlap": 0.1, "offroad": 0.0},
        {"method": "bc", "num_rollouts": 4, "min_ade": bc_ade, "overlap": 0.2, "offroad": 0.1},
        {"method": "apg_reactive", "num_rollouts": 1, "ade": 2.0},
        {"method": "constant_velocity_reactive", "num_rollouts": 1, "ade": 5.0},
    ]
    noise = [
        {"method": "apg", "noise_std": 0.0, "ade": 1.0},
        {"method": "apg", "noise_std": 0.2, "ade": noisy_apg},
        {"method": "bc", "noise_std": 0.0, "ade": 2.0},
        {"method": "bc", "noise_std": 0.2, "ade": noisy_bc},
    ]
    return {"apg_single_agent": single, "apg_noise_robustness": noise}


def test_claims_follow_the_numbers():
    claims = {c["claim"]: c["holds"] for c in apg_study.check_claims(_tables())}
    assert claims["Planning: APG has a lower min_ade than BC (min over 4 rollouts)"]
    assert claims["Planning: APG has a lower overlap than BC (min over 4 rollouts)"]
    assert claims["Planning: the reactive APG policy tracks the log better than constant velocity"]
    tolerate = [k for k in claims if k.startswith("APG tolerates 20 cm")]
    assert tolerate and claims[tolerate[0]]
    flipped = {c["claim"]: c["holds"] for c in apg_study.check_claims(_tables(3.0, 2.0, 1.5, 2.1))}
    assert not flipped["Planning: APG has a lower min_ade than BC (min over 4 rollouts)"]
    assert not flipped[tolerate[0]]  # 1.0 -> 1.5 is a 50% drop
    assert not flipped["BC degrades more than APG under 20 cm of noise"]


def test_claims_table_renders_every_claim():
    claims = apg_study.check_claims(_tables())
    md = apg_study.claims_markdown(claims)
    assert md.count("\n") == len(claims) + 1


@pytest.fixture(scope="module")
def tiny_study_run(tmp_path_factory):
    """Two variants trained on 4 tiny synthetic scenarios, evaluated on 2."""
    from diffdrive.data import cache, sources

    root = tmp_path_factory.mktemp("study")
    scenarios = list(sources.read_scenarios("synthetic:6:0:small"))
    cache.build_cache(
        scenarios,
        root / "cache",
        shard_size=4,
        max_objects=16,
        num_roadgraph_points=2000,
        progress=False,
    )
    s = study.study_from_dict(
        {
            "preset": "tiny",
            "num_train": 4,
            "train": {"epochs": 2, "batch_size": 2},
            "variants": {"apg": {}, "bc": {"algorithm": "bc"}},
            "eval": {"modes": [1, 2], "noise_stds": [0.0, 0.3], "batch_size": 2},
        }
    )
    summaries = {
        v: study.train_variant(s, v, str(root / "cache"), root / "runs" / v, progress=False)
        for v in s.variants
    }
    out = apg_study.run_study(
        s, root / "cache", root / "runs", root / "results", profile="test", progress=False
    )
    return root, s, summaries, out


def test_tiny_study_trains_evaluates_and_writes_results(tiny_study_run):
    root, _, summaries, out = tiny_study_run
    for v, summary in summaries.items():
        assert summary["steps"] == summary["total_steps"] == 2 * (4 // 2)
        assert summary["num_train_scenarios"] == 4 and summary["diverged"] is None
        assert (root / "runs" / v / "policy").is_dir()
    # apg and bc are enough for these tables; the rest are skipped and said so
    assert set(out["tables"]) == {"apg_single_agent", "apg_noise_robustness", "apg_num_modes"}
    assert "apg_multi_agent" in out["skipped"]
    rows = json.loads((root / "results" / "apg_num_modes.json").read_text())["rows"]
    by = {(r["method"], r["K"]): r["min_ade"] for r in rows}
    assert by[("apg", 2)] <= by[("apg", 1)] and by[("bc", 2)] <= by[("bc", 1)]
    study_json = json.loads((root / "results" / "apg_study.json").read_text())
    assert study_json["claims"] and set(study_json["training"]) == {"apg", "bc"}
    assert study_json["meta"]["num_scenarios"] == 2


def test_cache_subset_is_a_reindexed_view(tiny_study_run):
    from diffdrive.data import cache

    root = tiny_study_run[0]
    full = cache.open_cache(root / "cache")
    test = full.subset(range(4, 6))
    assert len(test) == 2 and test.scenario_ids == full.scenario_ids[4:]
    assert test[0].scenario_id == full[4].scenario_id
    np.testing.assert_array_equal(
        test.padded_arrays(-1)["log_trajectory/x"], full.padded_arrays(5)["log_trajectory/x"]
    )
    with pytest.raises(IndexError, match="subset index 2 out of range"):
        test[2]


def test_tiny_study_noise_changes_the_rollout(tiny_study_run):
    _, _, _, out = tiny_study_run
    rows = out["tables"]["apg_noise_robustness"]
    clean = next(r["ade"] for r in rows if r["method"] == "apg" and r["noise_std"] == 0.0)
    noisy = next(r["ade"] for r in rows if r["method"] == "apg" and r["noise_std"] == 0.3)
    assert np.isfinite(clean) and np.isfinite(noisy) and noisy != clean


def test_train_variant_resumes_and_restarts_on_a_new_config(tiny_study_run, capsys):
    root, s, summaries, _ = tiny_study_run
    again = study.train_variant(
        s, "apg", str(root / "cache"), root / "runs" / "apg", progress=False
    )
    assert again["steps"] == summaries["apg"]["steps"]  # resumed at the end: nothing to do
    other = study.study_from_dict({**_as_dict(s), "seed": 1})
    study.train_variant(other, "apg", str(root / "cache"), root / "runs" / "apg", progress=False)
    assert "starting over" in capsys.readouterr().out


def _as_dict(s: study.StudyConfig) -> dict:
    return {
        "preset": s.preset,
        "seed": s.seed,
        "num_train": s.num_train,
        "train": dict(s.train),
        "variants": {k: dict(v) for k, v in s.variants.items()},
        "eval": dict(s.eval),
    }
