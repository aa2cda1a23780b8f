"""The typed pipeline configuration (diffdrive.config) and the `diffdrive profile` commands."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

import pytest
import yaml

from diffdrive import cli, config
from diffdrive.config import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _project(tmp_path: pathlib.Path) -> pathlib.Path:
    """A scratch project: dvc.yaml, params/ (the real profiles) and params.yaml = default."""
    shutil.copytree(ROOT / "params", tmp_path / "params")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    shutil.copyfile(tmp_path / "params" / "default.yaml", tmp_path / "params.yaml")
    return tmp_path


@pytest.mark.parametrize("name", config.PROFILES)
def test_every_profile_loads_typed(name):
    cfg = config.load_params(ROOT / "params" / f"{name}.yaml")
    assert cfg.profile == name
    assert isinstance(cfg.data, config.DataConfig)
    assert isinstance(cfg.stats.histogram_bins, int)
    assert isinstance(cfg.viz.view_radius_m, float)
    assert config.from_dict(config.to_dict(cfg)) == cfg


def test_profiles_differ_where_they_should():
    tiny, default, paper = (
        config.load_params(ROOT / "params" / f"{n}.yaml") for n in config.PROFILES
    )
    # The dataclass defaults are the default profile, so `{}` sections mean "default";
    # method sections pass through untyped here (their modules parse them).
    assert dataclasses.replace(default, extra={}) == config.PipelineConfig()
    assert (
        set(default.extra)
        == set(tiny.extra)
        == set(paper.extra)
        == {
            "apg",
            "awm",
            "dss",
            "distributed",
        }
    )
    assert tiny.data.num_scenarios < default.data.num_scenarios
    assert tiny.data.roadgraph_points < default.data.roadgraph_points
    assert paper.data.source == "womd" and paper.data.womd_path
    assert paper.data.max_objects == 128 and paper.data.max_num_rg_points == 20000


def test_unknown_key_in_known_section_is_an_error_naming_it(tmp_path):
    raw = yaml.safe_load((ROOT / "params" / "default.yaml").read_text())
    raw["data"]["num_scenaros"] = 3  # typo
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"data\.num_scenaros") as e:
        config.load_params(p)
    assert str(p) in str(e.value)


def test_wrong_types_and_values_are_errors():
    with pytest.raises(ConfigError, match=r"data\.seed must be int"):
        config.from_dict({"data": {"seed": "0"}})
    with pytest.raises(ConfigError, match=r"data\.seed must be int"):
        config.from_dict({"data": {"seed": True}})
    with pytest.raises(ConfigError, match=r"data\.max_objects must not be null"):
        config.from_dict({"data": {"max_objects": None}})
    with pytest.raises(ConfigError, match=r"data\.source"):
        config.from_dict({"data": {"source": "carla"}})
    with pytest.raises(ConfigError, match=r"womd_path is required"):
        config.from_dict({"data": {"source": "womd"}})
    with pytest.raises(ConfigError, match="section 'stats' must be a mapping"):
        config.from_dict({"stats": [1, 2]})
    # ints are accepted for floats, null for optional fields
    cfg = config.from_dict({"viz": {"view_radius_m": 30}, "stats": {"real_data": None}})
    assert cfg.viz.view_radius_m == 30.0 and isinstance(cfg.viz.view_radius_m, float)
    assert cfg.stats.real_data is None


def test_extra_sections_are_kept_raw_and_configs_are_frozen():
    raw = {"profile": "x", "train": {"lr": 1e-3, "anything": [1, 2]}, "model": None}
    cfg = config.from_dict(raw)
    assert cfg.extra == {"train": {"lr": 1e-3, "anything": [1, 2]}, "model": None}
    assert config.to_dict(cfg)["train"] == {"lr": 1e-3, "anything": [1, 2]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.seed = 3  # type: ignore[misc]
    for cls in (config.DataConfig, config.StatsConfig, config.VizConfig, config.PipelineConfig):
        doc = cls.__doc__ or ""
        assert "Attributes:" in doc
        for f in dataclasses.fields(cls):
            assert f.name in doc, f"{cls.__name__}.{f.name} undocumented"


def test_use_profile_copies_atomically_and_show_reports_it(tmp_path, capsys):
    root = _project(tmp_path)
    assert cli.main(["profile", "use", "tiny", "--root", str(root)]) == 0
    assert (root / "params.yaml").read_bytes() == (root / "params" / "tiny.yaml").read_bytes()
    assert not list(root.glob(".params.*"))  # no temp file left behind
    capsys.readouterr()
    assert cli.main(["profile", "show", "--json", "--root", str(root)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["profile"] == "tiny" and shown["matches_profile_file"] is True
    assert shown["params"]["data"]["num_scenarios"] == 6
    # an edited params.yaml is reported as such
    (root / "params.yaml").write_text(
        (root / "params.yaml").read_text().replace("num_scenarios: 6", "num_scenarios: 7")
    )
    assert config.active_profile(root) == ("tiny", False)
    assert cli.main(["profile", "show", "--root", str(root)]) == 0
    assert "edited" in capsys.readouterr().out


def test_use_unknown_or_invalid_profile_leaves_params_untouched(tmp_path, capsys):
    root = _project(tmp_path)
    before = (root / "params.yaml").read_bytes()
    assert cli.main(["profile", "use", "huge", "--root", str(root)]) == 2
    assert "unknown profile 'huge'" in capsys.readouterr().err
    (root / "params" / "broken.yaml").write_text("profile: broken\ndata: {seeed: 1}\n")
    assert cli.main(["profile", "use", "broken", "--root", str(root)]) == 2
    assert "data.seeed" in capsys.readouterr().err
    assert (root / "params.yaml").read_bytes() == before


def test_data_command_synthetic_and_womd(tmp_path):
    syn = config.load_params(ROOT / "params" / "tiny.yaml").data
    cmd = config.data_command(syn, out="o")
    assert cmd[:2] == ["data", "generate"]
    assert cmd[cmd.index("--num") + 1] == "6" and cmd[cmd.index("--preset") + 1] == "small"
    for i in (2, 0):
        (tmp_path / f"training_tfexample.tfrecord-0000{i}-of-01000").write_bytes(b"")
    womd = dataclasses.replace(
        config.load_params(ROOT / "params" / "paper.yaml").data,
        womd_path="training_tfexample.tfrecord-*",
    )
    cmd = config.data_command(womd, out="o", root=tmp_path)
    assert cmd[:2] == ["data", "convert"]
    files = [a for a in cmd if "tfrecord-" in a]
    assert [pathlib.Path(f).name[-14:] for f in files] == ["00000-of-01000", "00002-of-01000"]
    assert cmd[cmd.index("--record-rg-points") + 1] == "20000" and "--skip-bad" in cmd
    with pytest.raises(FileNotFoundError, match="matches nothing"):
        config.data_command(dataclasses.replace(womd, womd_path="nope/*.tfrecord"), root=tmp_path)


def test_build_data_runs_the_profile_data_stage(tmp_path, capsys):
    from diffdrive.data.cache import open_cache

    root = _project(tmp_path)
    raw = yaml.safe_load((root / "params" / "tiny.yaml").read_text())
    raw["data"]["num_scenarios"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    out = str(root / "data" / "scenarios")
    assert cli.main(["profile", "build-data", "--dry-run", "--root", str(root), "--out", out]) == 0
    assert "diffdrive data generate --num 2" in capsys.readouterr().err
    assert not (root / "data").exists()
    assert cli.main(["profile", "build-data", "--root", str(root), "--out", out]) == 0
    c = open_cache(out)
    assert len(c) == 2 and c.settings["max_objects"] == 16
