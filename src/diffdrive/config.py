"""Typed configuration of the reproducible pipeline: ``params.yaml`` maps onto these.

``params.yaml`` (the active profile; the ``default`` profile in git) has one top-level
section per concern::

    profile: default          # tiny | default | paper (informational; set by `profile use`)
    data: {...}               # DataConfig
    stats: {...}              # StatsConfig
    viz: {...}                # VizConfig
    <method sections>         # e.g. model / train / plan / eval, kept as raw dicts here

Known sections are strict (an unknown key is an error naming it); unknown top-level
sections are kept untouched in :attr:`PipelineConfig.extra` for the method modules to
parse with their own dataclasses. Profiles live in ``params/<name>.yaml``;
``diffdrive profile use <name>`` copies one over ``params.yaml`` atomically and
``diffdrive profile show`` prints the active one:

* ``tiny``: the CI smoke run (a handful of small synthetic scenarios, minutes end to end).
* ``default``: the embedded procedural scenario set, sized for 2 CPU cores.
* ``paper``: WOMD TFRecords converted from a configured path, paper-size settings, GPUs.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import tempfile
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

PROFILES = ("tiny", "default", "paper")
"""Profile names, each a ``params/<name>.yaml`` file."""
PARAMS_FILE = "params.yaml"
PROFILE_DIR = "params"
SCENARIO_CACHE = "data/scenarios"
"""The ``data`` stage's output: a :mod:`diffdrive.data.cache` directory (synthetic or WOMD)."""
DATASET_STATS_JSON = "results/dataset_stats.json"
"""The ``dataset_stats`` stage's report (:func:`diffdrive.viz.stats.dataset_stats_report`)."""
DATASET_STATS_FIGURE = "paper_tables/figures/dataset_stats.png"
SCENARIO_RENDERS = "results/scenarios"
"""The ``scenarios`` stage's PNG and GIF renderings."""
EXECUTED_NOTEBOOKS = "results/notebooks"
DATA_SOURCES = ("synthetic", "womd")


class ConfigError(ValueError):
    """A parameter file does not match the typed configuration."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The scenario set the pipeline runs on (the ``data`` stage).

    Attributes:
      source: ``"synthetic"`` (``diffdrive data generate``: the procedural generator, no
        downloads) or ``"womd"`` (``diffdrive data convert`` of WOMD TFRecords).
      num_scenarios: synthetic scenarios to generate.
      seed: synthetic generator seed.
      preset: synthetic preset (:data:`diffdrive.data.sources.SYNTHETIC_PRESETS`).
      max_objects: object slots per cached scenario.
      roadgraph_points: roadgraph points per cached scenario.
      womd_path: WOMD input for ``source: womd``: a file, a directory or a glob pattern
        (e.g. ``/data/womd/v1_1/tf_example/training/training_tfexample.tfrecord-*``);
        relative paths are relative to the project root.
      format: reader format of the WOMD files (``tf_example`` or ``scenario_proto``;
        ``None`` detects it from the first record).
      max_num_rg_points: roadgraph samples per WOMD record (20000 for v1.0/v1.1, 30000
        from v1.2).
      filter: ``"none"`` or ``"interactive"`` (keep scenarios with an SDC and an object of
        interest), for ``source: womd``.
      num_steps: steps kept per log (``None``: the records' own, 91 for WOMD).
      shard_size: scenarios per cache shard.
      skip_bad: skip undecodable WOMD records (counted and reported) instead of failing.
    """

    source: str = "synthetic"
    num_scenarios: int = 200
    seed: int = 0
    preset: str = "default"
    max_objects: int = 32
    roadgraph_points: int = 20000
    womd_path: str | None = None
    format: str | None = "tf_example"
    max_num_rg_points: int = 20000
    filter: str = "none"
    num_steps: int | None = None
    shard_size: int = 64
    skip_bad: bool = False

    def __post_init__(self):
        if self.source not in DATA_SOURCES:
            raise ConfigError(f"data.source must be one of {DATA_SOURCES}, got {self.source!r}")
        if self.source == "womd" and not self.womd_path:
            raise ConfigError("data.womd_path is required when data.source is 'womd'")
        if self.filter not in ("none", "interactive"):
            raise ConfigError(f"data.filter must be 'none' or 'interactive', got {self.filter!r}")
        for name in ("num_scenarios", "max_objects", "roadgraph_points", "shard_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """Dataset statistics and the comparison with real data (the ``dataset_stats`` stage).

    Attributes:
      real_data: real scenarios to compare with (files, directories; default the WOMD
        samples in ``../shared/data``). When the path does not exist the stage still
        succeeds and its JSON says the comparison was skipped; ``None`` skips it.
      max_scenarios: use at most this many scenarios of the cache (``None``: all).
      histogram_bins: bins of the per-statistic histograms stored for the figure.
    """

    real_data: str | None = "../shared/data"
    max_scenarios: int | None = None
    histogram_bins: int = 20

    def __post_init__(self):
        if self.histogram_bins < 1:
            raise ConfigError(f"stats.histogram_bins must be >= 1, got {self.histogram_bins}")


@dataclasses.dataclass(frozen=True)
class VizConfig:
    """Scenario renderings (the ``scenarios`` stage, ``notebooks/01_scenarios.py``).

    Attributes:
      num_scenarios: scenarios of the cache rendered (the first ones).
      timestep: step shown in the still images (10 = the current step of a WOMD log).
      gif_scenarios: how many of those also get an animated GIF.
      gif_stride: every ``gif_stride``-th step becomes a GIF frame.
      fps: GIF frames per second.
      size_px: width and height of every image in pixels.
      view_radius_m: half the side of the square view around the SDC (metres).
    """

    num_scenarios: int = 4
    timestep: int = 10
    gif_scenarios: int = 1
    gif_stride: int = 3
    fps: int = 10
    size_px: int = 640
    view_radius_m: float = 60.0


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything ``params.yaml`` holds.

    Attributes:
      profile: the profile name the file came from (``tiny``, ``default``, ``paper``).
      data: :class:`DataConfig`.
      stats: :class:`StatsConfig`.
      viz: :class:`VizConfig`.
      extra: other top-level sections (method configs), as raw dicts, by section name.
    """

    profile: str = "default"
    data: DataConfig = DataConfig()
    stats: StatsConfig = StatsConfig()
    viz: VizConfig = VizConfig()
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_SECTIONS: dict[str, type] = {"data": DataConfig, "stats": StatsConfig, "viz": VizConfig}


def _check_type(section: str, field: dataclasses.Field, value: Any) -> Any:
    """``value`` converted to the field's annotated type, or a :class:`ConfigError`."""
    hint = typing.get_type_hints(_SECTIONS[section])[field.name]
    args = typing.get_args(hint)
    optional = (
        isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    ) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{section}.{field.name} must not be null")
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(
            f"{section}.{field.name} must be {base.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _section(name: str, raw: Any) -> Any:
    cls = _SECTIONS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"section {name!r} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {name}.{unknown[0]} (known: {', '.join(sorted(fields))})"
            if len(unknown) == 1
            else f"unknown keys {', '.join(f'{name}.{k}' for k in unknown)} "
            f"(known: {', '.join(sorted(fields))})"
        )
    return cls(**{k: _check_type(name, fields[k], v) for k, v in raw.items()})


def from_dict(raw: Mapping[str, Any]) -> PipelineConfig:
    """Builds a :class:`PipelineConfig` from a parsed ``params.yaml``.

    Missing keys take the dataclass defaults (which equal the ``default`` profile).

    Raises:
      ConfigError: an unknown key or a wrongly typed value in a known section.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"parameters must be a mapping, got {type(raw).__name__}")
    profile = raw.get("profile", "default")
    if not isinstance(profile, str):
        raise ConfigError(f"profile must be a string, got {profile!r}")
    known = {k: _section(k, raw.get(k)) for k in _SECTIONS}
    extra = {k: v for k, v in raw.items() if k != "profile" and k not in _SECTIONS}
    return PipelineConfig(profile=profile, extra=extra, **known)


def to_dict(cfg: PipelineConfig) -> dict[str, Any]:
    """The inverse of :func:`from_dict` (known sections as plain dicts, then extras)."""
    out: dict[str, Any] = {"profile": cfg.profile}
    for name in _SECTIONS:
        out[name] = dataclasses.asdict(getattr(cfg, name))
    out.update(cfg.extra)
    return out


def load_params(path: str | os.PathLike = PARAMS_FILE) -> PipelineConfig:
    """Reads and validates a parameter file (``params.yaml`` or ``params/<profile>.yaml``).

    Raises:
      FileNotFoundError: no such file.
      ConfigError: not YAML, an unknown key or a wrongly typed value (the message names
        the file and the key).
    """
    path = Path(path)
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    try:
        return from_dict(raw)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from e


# ------------------------------------------------------------------------------ profiles


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) holding ``dvc.yaml``."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").exists():
            return d
    raise FileNotFoundError(f"no dvc.yaml at or above {here} (not inside the project)")


def profile_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """``params/<name>.yaml`` of the project.

    Raises:
      ConfigError: the profile file does not exist (the message lists those that do).
    """
    d = Path(root) if root is not None else project_root()
    p = d / PROFILE_DIR / f"{name}.yaml"
    if not p.is_file():
        have = sorted(q.stem for q in (d / PROFILE_DIR).glob("*.yaml"))
        raise ConfigError(f"unknown profile {name!r}; available: {', '.join(have) or 'none'}")
    return p


def use_profile(name: str, root: str | os.PathLike | None = None) -> PipelineConfig:
    """Copies ``params/<name>.yaml`` over ``params.yaml`` atomically (validated first).

    Returns:
      The now active configuration.

    Raises:
      ConfigError: unknown profile, or it does not validate (``params.yaml`` unchanged).
    """
    d = Path(root) if root is not None else project_root()
    src = profile_path(name, d)
    cfg = load_params(src)
    if cfg.profile != name:
        raise ConfigError(f"{src}: says profile {cfg.profile!r}, expected {name!r}")
    dst = d / PARAMS_FILE
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".params.", suffix=".yaml.tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return cfg


def active_profile(root: str | os.PathLike | None = None) -> tuple[str, bool]:
    """``(profile name, params.yaml identical to params/<name>.yaml)``."""
    d = Path(root) if root is not None else project_root()
    cfg = load_params(d / PARAMS_FILE)
    p = d / PROFILE_DIR / f"{cfg.profile}.yaml"
    same = p.is_file() and p.read_bytes() == (d / PARAMS_FILE).read_bytes()
    return cfg.profile, same


# ---------------------------------------------------------------------------------- data


def womd_inputs(data: DataConfig, root: str | os.PathLike = ".") -> list[str]:
    """The WOMD files/directories ``data.womd_path`` names (a glob is expanded, sorted).

    Raises:
      FileNotFoundError: nothing matches.
    """
    if not data.womd_path:
        raise ConfigError("data.womd_path is not set")
    pattern = os.path.expanduser(data.womd_path)
    if not os.path.isabs(pattern):
        pattern = os.path.join(root, pattern)
    found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    found = [f for f in found if os.path.exists(f)]
    if not found:
        raise FileNotFoundError(
            f"data.womd_path {data.womd_path!r} matches nothing; download WOMD (tf_example "
            "TFRecords) and set data.womd_path in params/paper.yaml"
        )
    return found


def data_command(
    data: DataConfig, out: str = SCENARIO_CACHE, root: str | os.PathLike = "."
) -> list[str]:
    """The ``diffdrive data generate|convert`` arguments that build ``data``'s cache."""
    common = ["--out", out, "--max-objects", str(data.max_objects)]
    common += ["--roadgraph-points", str(data.roadgraph_points)]
    common += ["--shard-size", str(data.shard_size), "--overwrite", "--no-progress"]
    if data.source == "synthetic":
        return [
            "data", "generate", "--num", str(data.num_scenarios), "--seed", str(data.seed),
            "--preset", data.preset, *common,
        ]  # fmt: skip
    cmd = ["data", "convert", *womd_inputs(data, root), *common]
    if data.format:
        cmd += ["--format", data.format]
    if data.num_steps is not None:
        cmd += ["--num-steps", str(data.num_steps)]
    cmd += ["--filter", data.filter, "--record-rg-points", str(data.max_num_rg_points)]
    if data.skip_bad:
        cmd.append("--skip-bad")
    return cmd
