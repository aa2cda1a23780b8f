"""The APG study: named training variants (APG, BC and the ablations) of one pipeline.

``params.yaml``'s ``apg`` section maps onto :class:`StudyConfig`::

    apg:
      preset: default          # TrainConfig / ModelConfig preset of every variant
      seed: 0
      num_train: 160           # scenarios [0, num_train) of the cache train; the rest test
      train: {epochs: 20, batch_size: 16}      # TrainConfig overrides of every variant
      variants:                # name -> that variant's own overrides
        apg: {}
        bc: {algorithm: bc}
        route_none: {model: {route: none}}     # ModelConfig overrides under "model"
        apg_awm_recipe: {awm_recipe: true}     # TrainConfig.with_awm_recipe()
      eval: {...}              # read by diffdrive.eval.apg_study

A variant's :class:`~diffdrive.train.config.TrainConfig` is the preset, then the shared
``train`` overrides, then the variant's own (so a variant may change ``epochs``), then
the AWM recipe when asked for. :func:`train_variant` trains one into ``runs/<name>``
(resumable: the same command continues a killed run) and writes ``summary.json`` there
with the wall time, the step count and whether training diverged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffdrive.models.config import ModelConfig
from diffdrive.train.config import PRESETS, TrainConfig, train_config

SUMMARY_NAME = "summary.json"
_VARIANT_EXTRA_KEYS = ("model", "awm_recipe")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The ``apg`` section: how every variant is trained and on which scenarios.

    Attributes:
      preset: training preset (``tiny``, ``default``, ``paper``).
      seed: training seed of every variant.
      num_train: the first ``num_train`` scenarios of the cache are the training split,
        the rest the test split (the cache order is deterministic); a float in (0, 1) is
        a fraction of the cache.
      train: TrainConfig overrides shared by every variant.
      variants: variant name -> overrides (TrainConfig fields; ``model``: ModelConfig
        fields; ``awm_recipe``: apply :meth:`TrainConfig.with_awm_recipe`).
      eval: the evaluation settings (parsed by :mod:`diffdrive.eval.apg_study`).
    """

    preset: str = "default"
    seed: int = 0
    num_train: int | float = 160
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    variants: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    eval: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"apg.preset: unknown preset {self.preset!r}; one of {PRESETS}")
        if not (self.num_train >= 1 or 0 < self.num_train < 1):
            raise ValueError(f"apg.num_train must be >= 1 or a fraction, got {self.num_train}")
        for name in self.variants:
            variant_config(self, name)  # every variant must resolve


def study_from_dict(raw: Mapping[str, Any] | None) -> StudyConfig:
    """The ``apg`` section (a dict from params.yaml) as a :class:`StudyConfig`."""
    raw = dict(raw or {})
    known = {f.name for f in dataclasses.fields(StudyConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"apg: unknown keys {unknown}; known: {sorted(known)}")
    for key in ("train", "variants", "eval"):
        if raw.get(key) is None:
            raw[key] = {}
        if not isinstance(raw[key], Mapping):
            raise ValueError(f"apg.{key} must be a mapping, got {raw[key]!r}")
    for name, overrides in raw["variants"].items():
        if overrides is None:
            raw["variants"][name] = {}
        elif not isinstance(overrides, Mapping):
            raise ValueError(f"apg.variants.{name} must be a mapping, got {overrides!r}")
    return StudyConfig(**raw)


def load_study(params_path: str | os.PathLike = "params.yaml") -> StudyConfig:
    """The ``apg`` section of a params file."""
    import yaml

    with open(params_path) as f:
        raw = yaml.safe_load(f) or {}
    try:
        return study_from_dict(raw.get("apg"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{params_path}: {e}") from e


def _coerce(value: Any, current: Any) -> Any:
    # YAML gives lists where the dataclasses hold tuples.
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(_coerce(v, c) for v, c in zip(value, current)) if current else tuple(value)
    return value


def _apply(obj: Any, overrides: Mapping[str, Any], where: str) -> Any:
    fields = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown {type(obj).__name__} fields {unknown}")
    values = {k: _coerce(v, getattr(obj, k)) for k, v in overrides.items()}
    return dataclasses.replace(obj, **values)


def variant_config(study: StudyConfig, name: str) -> TrainConfig:
    """The :class:`TrainConfig` of variant ``name`` (see the module docstring)."""
    if name not in study.variants:
        raise KeyError(f"unknown APG variant {name!r}; params.yaml defines {list(study.variants)}")
    own = dict(study.variants[name])
    shared = dict(study.train)
    model_overrides = {**dict(shared.pop("model", {}) or {}), **dict(own.pop("model", {}) or {})}
    awm = bool(own.pop("awm_recipe", False) or shared.pop("awm_recipe", False))
    config = train_config(study.preset, seed=study.seed)
    # One replace, so that settings that constrain each other (the multi-agent setting
    # needs the transformer encoder) are validated together.
    model: ModelConfig = _apply(config.model, model_overrides, f"apg.variants.{name}.model")
    overrides = {**shared, **own}
    where = f"apg.variants.{name} (with apg.train)"
    config = _apply(config, {**overrides, "model": model}, where)
    if awm:
        config = config.with_awm_recipe()
    return config


def split(num_scenarios: int, num_train: int | float) -> tuple[range, range]:
    """Train and test index ranges of a cache of ``num_scenarios`` scenarios."""
    if 0 < num_train < 1:
        num_train = max(1, round(num_train * num_scenarios))
    num_train = int(num_train)
    if num_train >= num_scenarios:
        raise ValueError(
            f"apg.num_train = {num_train} leaves no test scenarios in a set of {num_scenarios}"
        )
    return range(num_train), range(num_train, num_scenarios)


def train_split(dataset: Sequence[Any], study: StudyConfig) -> Sequence[Any]:
    """The training scenarios of ``dataset`` (a cache or a list)."""
    train, _ = split(len(dataset), study.num_train)
    subset = getattr(dataset, "subset", None)
    return subset(train) if subset is not None else [dataset[i] for i in train]


def test_split(dataset: Sequence[Any], study: StudyConfig) -> Sequence[Any]:
    """The test scenarios of ``dataset`` (a cache or a list)."""
    _, test = split(len(dataset), study.num_train)
    subset = getattr(dataset, "subset", None)
    return subset(test) if subset is not None else [dataset[i] for i in test]


def _saved_config(out: Path) -> dict | None:
    from diffdrive.train import checkpoint

    path = out / checkpoint.CONFIG_NAME
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def train_variant(
    study: StudyConfig,
    name: str,
    data: str | os.PathLike | Sequence[Any],
    out: str | os.PathLike,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains variant ``name`` on the training split into ``out``; returns the summary.

    Resumes a killed run with the same config; a run directory holding another config's
    checkpoints is started over (and says so). A run whose loss becomes non-finite is
    recorded as diverged (``summary["diverged"]``) and its last checkpoint, if any, is
    exported as its policy, so the study can still evaluate it.
    """
    from diffdrive.train import checkpoint, loop

    config = variant_config(study, name)
    dataset = loop.load_dataset(data) if isinstance(data, str | os.PathLike) else data
    train_set = train_split(dataset, study)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = _saved_config(out)
    resume = saved is None or saved == checkpoint.config_to_dict(config)
    if not resume:
        print(f"{out}: holds a run with another config; starting over")
    start = time.perf_counter()
    diverged = None
    try:
        result = loop.train(config, train_set, out, progress=progress, resume=resume)
        steps, total, history = int(result.state.step), result.total_steps, result.history
    except FloatingPointError as e:
        diverged = str(e)
        steps, total, history = _export_last_checkpoint(out, config)
    summary = {
        "variant": name,
        "algorithm": config.algorithm,
        "setting": config.setting if hasattr(config, "setting") else "planning",
        "num_train_scenarios": len(train_set),
        "steps": steps,
        "total_steps": total,
        "epochs": config.epochs,
        "wall_s": time.perf_counter() - start,
        "diverged": diverged,
        "last_epoch": history[-1] if history else None,
        "config": checkpoint.config_to_dict(config),
    }
    checkpoint.write_json_atomic(out / SUMMARY_NAME, _finite(summary))
    return summary


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _export_last_checkpoint(out: Path, config: TrainConfig) -> tuple[int, int, list]:
    """After divergence: export the last (finite) checkpoint as the run's policy."""
    import functools

    import jax

    from diffdrive.train import checkpoint, loop

    ckpt = checkpoint.Checkpointer(out / "checkpoints", config.keep_checkpoints)
    try:
        if ckpt.latest_step() is None:
            return 0, 0, []
        key_config, *args = loop._initial_state_args(config, 1)
        abstract = jax.eval_shape(functools.partial(loop._initial_state, key_config), *args)
        state, meta = ckpt.restore(abstract)
    finally:
        ckpt.close()
    checkpoint.save_policy(out / "policy", state.params, config)
    return int(state.step), int(state.total_steps), meta["history"]
