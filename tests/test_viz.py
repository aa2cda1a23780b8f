"""Scenario renderings (PNG, GIF) and the dataset-statistics report and figure."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="diffdrive.viz needs the notebooks extra")
from PIL import Image

from diffdrive import viz
from diffdrive.data import sources
from diffdrive.sim import datatypes
from diffdrive.viz import scenario as vs

ROOT = pathlib.Path(__file__).resolve().parents[1]
SDC_RGB = np.array([0xD6, 0x27, 0x28])


@pytest.fixture(scope="module")
def synthetic():
    return next(sources.read_scenarios("synthetic:1:6:urban"))  # signalised intersection


def _count_color(img: np.ndarray, rgb: np.ndarray, tol: int = 12) -> int:
    return int(np.all(np.abs(img.astype(int) - rgb) <= tol, axis=-1).sum())


def test_render_real_scenario_50(shared_data, tmp_path):
    z = dict(np.load(shared_data / "womd" / "waymax_state" / "scenario_50.npz"))
    scene = viz.as_scene(z, scenario_id="scenario_50")
    # the npz is a reset state: sim_trajectory valid at step 0 only, so "auto" uses the log
    assert scene.boxes_at(10) is scene.log and scene.boxes_at(0) is scene.sim
    log = viz.sdc_log_xy(scene, 10)
    assert log.shape == (81, 2) and np.isfinite(log).all()
    fig = viz.render_scenario(scene, 10, trajectories={"log": log, "simulated": log + 1.0})
    png = viz.save_png(fig, tmp_path / "s50.png")
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape == (640, 640, 3)
    assert _count_color(img, SDC_RGB) > 20  # the SDC box is drawn, in red
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # roadgraph, boxes, lines


def test_render_synthetic_state_frames_differ_and_gif(synthetic, tmp_path):
    state = synthetic.to_state()
    a = viz.figure_to_array(viz.render_scenario(state, 10, size_px=(400, 300)))
    b = viz.figure_to_array(viz.render_scenario(state, 60, size_px=(400, 300)))
    assert a.shape == b.shape == (300, 400, 3)
    assert (np.abs(a.astype(int) - b.astype(int)).sum(-1) > 30).sum() > 100  # objects moved
    gif = viz.animate_scenario(synthetic, tmp_path / "a" / "s.gif", range(0, 91, 30), fps=5,
                               size_px=200)  # fmt: skip
    with Image.open(gif) as im:
        assert im.size == (200, 200) and im.n_frames == 4 and im.info["loop"] == 0
        im.seek(0)
        f0 = np.asarray(im.convert("RGB")).copy()
        im.seek(3)
        f3 = np.asarray(im.convert("RGB"))
    assert np.any(f0 != f3)


def test_roadgraph_lights_and_trajectories_are_drawn(synthetic):
    s = synthetic
    lights = s.arrays["log_traffic_light/state"][:, 10][s.arrays["log_traffic_light/valid"][:, 10]]
    assert lights.size, "the fixture should be a signalised intersection"
    img = viz.figure_to_array(viz.render_scenario(s, 10, legend=False))
    cats = {vs.light_category(x) for x in lights}
    for cat in cats:
        rgb = np.array([int(vs.LIGHT_COLORS[cat][i : i + 2], 16) for i in (1, 3, 5)])
        assert _count_color(img, rgb) > 10, cat
    assert _count_color(img, np.array([0xD9, 0xD9, 0xD9]), tol=3) > 100  # crosswalks
    edge = np.array([0x1A, 0x1A, 0x1A])
    assert _count_color(img, edge, tol=20) > 200  # road edges
    # the imagined overlay adds magenta pixels that were not there before
    im = viz.sdc_log_xy(s, 10)[None] + np.array([[[0.0, 3.0]], [[0.0, -3.0]]])
    over = viz.figure_to_array(
        viz.render_scenario(s, 10, legend=False, trajectories={"imagined": im})
    )
    magenta = np.array([0xD6, 0x2F, 0xD6])
    assert _count_color(over, magenta, 40) > _count_color(img, magenta, 40) + 20
    with pytest.raises(ValueError, match="expected"):
        viz.render_scenario(s, 10, trajectories={"log": np.zeros((5, 3))})


def test_light_categories_and_bad_inputs(synthetic):
    S = datatypes.TrafficLightState
    assert [vs.light_category(x) for x in (S.STOP, S.ARROW_CAUTION, S.GO, S.UNKNOWN, -1)] == [
        "stop", "caution", "go", "unknown", "unknown",
    ]  # fmt: skip
    batched = datatypes.stack_states([synthetic.to_state()] * 2)
    with pytest.raises(ValueError, match="one scenario at a time"):
        viz.render_scenario(batched, 10)
    with pytest.raises(ValueError, match="no simulated trajectory"):
        viz.as_scene(synthetic.arrays, boxes="sim")


def _write_npz(s, path):
    np.savez(path, **{k: v for k, v in s.arrays.items()})
    return path


def test_stats_report_with_and_without_real_data(synthetic, tmp_path):
    scen = list(sources.read_scenarios("synthetic:2:0:small"))
    missing = viz.dataset_stats_report(scen, "syn", real_data=tmp_path / "nope", bins=5)
    assert missing["real_data"]["available"] is False and missing["comparison"] is None
    assert "not found" in missing["real_data"]["note"]
    h = missing["histograms"]["per_scenario"]["sdc_speed_mean"]
    assert len(h["edges"]) == 6 and h["b"] is None and abs(sum(h["a"]) - 1) < 1e-6
    real = _write_npz(synthetic, tmp_path / "real.npz")
    rep = viz.dataset_stats_report(scen, "syn", real_data=str(real), bins=5, profile="tiny")
    assert rep["real_data"] == {"path": str(real), "available": True, "num_scenarios": 1,
                                "note": "compared with 1 real scenarios"}  # fmt: skip
    assert rep["comparison"]["b"]["num_scenarios"] == 1 and rep["profile"] == "tiny"
    json.dumps(rep, allow_nan=False)  # strict JSON
    table = viz.summary_table(rep)
    assert table.count("\n") == 2 + 11 - 1 and "Wasserstein" in table
    fig = viz.plot_dataset_stats(rep)
    assert viz.figure_to_array(fig).shape == (900, 1400, 3)


def test_figure_script_draws_from_json(tmp_path):
    spec = importlib.util.spec_from_file_location("fig", ROOT / "scripts/figures/dataset_stats.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    scen = list(sources.read_scenarios("synthetic:2:0:small"))
    rep = viz.dataset_stats_report(scen, "syn", real_data=None, bins=4)
    src = tmp_path / "r.json"
    src.write_text(json.dumps(rep))
    assert mod.main([str(src), str(tmp_path / "f" / "fig.png")]) == 0
    with Image.open(tmp_path / "f" / "fig.png") as im:
        assert im.size == (1400, 900)
