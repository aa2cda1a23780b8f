"""The DVC pipeline's wiring: profiles, dvc.yaml stages, notebooks' parameters cells.

The last test runs real DVC on a scratch copy of dvc.yaml whose commands are replaced by a
stand-in that writes each stage's outs from its inputs: a second `dvc repro` runs nothing,
and changing one parameter reruns exactly the stages downstream of it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

from diffdrive import config

ROOT = pathlib.Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _expand(stages: dict) -> dict:
    """``foreach`` stages as DVC runs them: one ``name@key`` stage per item, ``${key}`` bound."""
    out = {}
    for name, st in stages.items():
        if "foreach" not in st:
            out[name] = st
            continue
        items = st["foreach"]
        if isinstance(items, str):
            items = _lookup(PARAMS, items.strip().removeprefix("${").removesuffix("}"))
        pairs = items.items() if isinstance(items, dict) else ((i, i) for i in items)
        for key, _ in pairs:
            out[f"{name}@{key}"] = json.loads(json.dumps(st["do"]).replace("${key}", str(key)))
    return out


STAGES: dict = {}  # filled below, once _lookup exists


def _paths(entries) -> list[str]:
    out = []
    for e in entries or []:
        out.extend([e] if isinstance(e, str) else list(e))
    return out


def _outs(stage: dict) -> list[str]:
    return _paths(stage.get("outs"))


def _lookup(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


STAGES.update(_expand(PIPELINE["stages"]))


def _keys(d, prefix=""):
    if not isinstance(d, dict):
        return {prefix}
    return set().union(*(_keys(v, f"{prefix}{k}.") for k, v in d.items())) if d else {prefix}


def _check_script():
    spec = importlib.util.spec_from_file_location("check", ROOT / "scripts" / "check_outputs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_profiles_load_and_share_one_key_structure():
    files = sorted((ROOT / "params").glob("*.yaml"))
    assert [f.stem for f in files] == sorted(config.PROFILES)
    structure = None
    for f in files:
        cfg = config.load_params(f)
        assert cfg.profile == f.stem
        keys = _keys(yaml.safe_load(f.read_text()))
        structure = structure or keys
        assert keys == structure, f"{f.name}: keys differ from the other profiles"
    config.load_params(ROOT / "params.yaml")
    assert _keys(PARAMS) == structure


def test_stages_reference_existing_files_and_declared_params():
    all_outs = {o for st in STAGES.values() for o in _outs(st)}
    for name, st in STAGES.items():
        cmd = st["cmd"] if isinstance(st["cmd"], str) else " ".join(st["cmd"])
        deps = _paths(st.get("deps"))
        for f in re.findall(r"(?:notebooks|scripts)/[\w/.-]+\.py", cmd):
            assert (ROOT / f).is_file(), f"{name}: {f} does not exist"
            assert f in deps, f"{name}: runs {f} but does not list it in deps"
        if "papermill" in cmd:
            pm = cmd.split("papermill", 1)[1]
            assert "-f params.yaml" in pm and " -p " not in pm  # -p stringifies structures
        for d in deps:
            assert (ROOT / d).exists() or d in all_outs, (
                f"{name}: dep {d} is neither a file nor an out"
            )
            # a source directory dep would hash its __pycache__ too (spurious reruns)
            assert not (d.startswith(("src/", "scripts/")) and (ROOT / d).is_dir()), d
        for key in st.get("params", []):
            key = key if isinstance(key, str) else next(iter(key))
            for f in [ROOT / "params.yaml", *(ROOT / "params").glob("*.yaml")]:
                _lookup(yaml.safe_load(f.read_text()), key)  # KeyError if missing
    # the paths the code uses are the ones dvc.yaml declares
    assert config.SCENARIO_CACHE in _outs(STAGES["data"])
    assert config.DATASET_STATS_JSON in _outs(STAGES["dataset_stats"])
    assert config.SCENARIO_RENDERS in _outs(STAGES["scenarios"])
    assert config.DATASET_STATS_FIGURE in _outs(STAGES["dataset_stats_figure"])
    # small results and figures live in git; everything else is DVC-cached
    for st in STAGES.values():
        for e in st.get("outs", []):
            if isinstance(e, dict):
                path, opts = next(iter(e.items()))
                if opts.get("persist"):  # resumable training runs survive a killed repro
                    assert path.startswith("runs/") and "cache" not in opts, path
                    continue
                assert opts.get("cache") is False and path.endswith(
                    (".json", ".png", ".md", ".tex")
                )


def test_notebooks_have_one_parameters_cell_reading_only_declared_params():
    jupytext = pytest.importorskip("jupytext")
    notebooks = sorted((ROOT / "notebooks").glob("*.py"))
    assert notebooks
    for nb_path in notebooks:
        rel = nb_path.relative_to(ROOT).as_posix()
        stages = [s for s, st in STAGES.items() if rel in _paths(st.get("deps"))]
        assert len(stages) == 1, f"{rel} is run by {stages}, expected one stage"
        st = STAGES[stages[0]]
        assert f"results/notebooks/{nb_path.stem}.ipynb" in _outs(st)
        nb = jupytext.read(nb_path)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        params_cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params_cells) == 1, f"{rel}: {len(params_cells)} parameters cells"
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
        names = {
            t.id
            for node in ast.parse(params_cells[0].source).body
            for t in getattr(node, "targets", [])
        }
        declared = {p if isinstance(p, str) else next(iter(p)) for p in st.get("params", [])}
        # a notebook reads a whole section; the stage may list only the keys it depends on
        undeclared = {
            n for n in names if not any(d == n or d.startswith(n + ".") for d in declared)
        }
        assert names and not undeclared, f"{rel}: parameters {undeclared} not in params:"
        assert names <= set(PARAMS), f"{rel}: {names - set(PARAMS)} are not params.yaml sections"


def test_stage_graph_downstream_of_each_parameter():
    check = _check_script()
    stages = check.load_stages(ROOT)
    by_param = {
        key: {s for s, st in stages.items() if any(key.startswith(p) for p in st["params"])}
        for key in ("data.seed", "viz.fps", "stats.histogram_bins")
    }
    assert by_param == {"data.seed": {"data"}, "viz.fps": {"scenarios"},
                        "stats.histogram_bins": {"dataset_stats"}}  # fmt: skip
    assert set(stages) == set(STAGES)  # both expand foreach stages alike
    # Every result is computed from the scenarios, the paper tables included.
    assert check.downstream(stages, {"data"}) == set(stages)
    assert check.downstream(stages, {"dataset_stats"}) == {"dataset_stats", "dataset_stats_figure"}
    assert check.downstream(stages, {"scenarios"}) == {"scenarios"}


# A stand-in stage command: writes the stage's outs from a hash of its params and deps
# (like a deterministic real stage) and logs that it ran.
_FAKE = r"""
import hashlib, json, pathlib, sys, yaml
name = sys.argv[1]
st = yaml.safe_load(open("dvc.yaml"))["stages"][name]
params = yaml.safe_load(open("params.yaml"))
h = hashlib.sha256(name.encode())
for p in st.get("params", []):
    v = params
    for part in p.split("."):
        v = v[part]
    h.update(json.dumps(v, sort_keys=True).encode())
for d in st.get("deps", []):
    d = pathlib.Path(d)
    for f in sorted([d] if d.is_file() else d.rglob("*")):
        if f.is_file():
            h.update(f.read_bytes())
for o in st.get("outs", []):
    o = pathlib.Path(o if isinstance(o, str) else next(iter(o)))
    if o.suffix:
        o.parent.mkdir(parents=True, exist_ok=True)
        o.write_text(h.hexdigest())
    else:
        o.mkdir(parents=True, exist_ok=True)
        (o / "x").write_text(h.hexdigest())
open("runs.log", "a").write(name + "\n")
"""


def test_dvc_reruns_only_downstream_of_a_changed_parameter(tmp_path):
    pytest.importorskip("dvc", reason="dvc comes with the notebooks extra")
    # foreach stages written out one by one ("@" is reserved in explicit stage names)
    names = {name: name.replace("@", "-") for name in STAGES}
    all_outs = {o for st in STAGES.values() for o in _outs(st)}
    stages = {}
    for name, st in STAGES.items():
        st = dict(st)
        st["cmd"] = f"{sys.executable} fake.py {names[name]}"
        stages[names[name]] = st
        for d in _paths(st.get("deps")):
            if d in all_outs:
                continue
            src = ROOT / d
            dst = tmp_path / d
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
                (dst / "f.py").write_text(d)
            elif src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text(d)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (tmp_path / "params.yaml").write_text((ROOT / "params" / "tiny.yaml").read_text())
    (tmp_path / "fake.py").write_text(_FAKE)

    def dvc(*args: str) -> None:
        r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tmp_path, capture_output=True,
                           text=True, check=False)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr

    def repro() -> set[str]:
        log = tmp_path / "runs.log"
        log.unlink(missing_ok=True)
        dvc("repro", "--quiet")
        return set(log.read_text().split()) if log.exists() else set()

    def set_param(key: str, value) -> None:
        p = yaml.safe_load((tmp_path / "params.yaml").read_text())
        section, field = key.split(".")
        p[section][field] = value
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))

    dvc("init", "--no-scm", "--quiet")
    assert repro() == set(stages)
    assert repro() == set()  # nothing changed: nothing runs
    set_param("viz.fps", 7)
    assert repro() == {"scenarios"}
    set_param("stats.histogram_bins", 9)
    assert repro() == {"dataset_stats", "dataset_stats_figure"}
    set_param("apg.seed", 1)
    assert repro() == {n for n in stages if n.startswith("train-")} | {
        "apg_study",
        "apg_study_figure",
        "dss",
        "tables",
    }
    set_param("data.seed", 1)
    assert repro() == set(stages)
    (tmp_path / "scripts/figures/dataset_stats.py").write_text("changed")
    assert repro() == {"dataset_stats_figure"}
    assert repro() == set()
