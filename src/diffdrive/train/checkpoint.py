"""Checkpoints (orbax, written atomically) and the exported policy.

A training run's directory holds::

    checkpoints/<step>/   orbax: the train state (params, optimiser state, step) and a
                          JSON "meta" item (config, epoch accumulators, metric history)
    policy/params/        orbax: the final parameters
    policy/config.json    the TrainConfig (its "model" entry rebuilds the network)
    metrics.json          per-epoch metrics

Orbax writes each checkpoint into a temporary directory and renames it when complete, so
a killed run leaves either a whole checkpoint or none; :meth:`Checkpointer.restore` reads
the latest complete one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import typing
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from diffdrive.models.config import ModelConfig
from diffdrive.models.policy import Policy, init_params
from diffdrive.train.config import TrainConfig

CONFIG_NAME = "config.json"


# ----------------------------------------------------------------------- config <-> JSON


def config_to_dict(config: Any) -> dict:
    """A (nested) frozen dataclass config as JSON-ready dict."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


def config_from_dict(cls: type, data: dict) -> Any:
    """Rebuilds :class:`TrainConfig` or :class:`ModelConfig` from :func:`config_to_dict`."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in data:
            continue
        value = data[field.name]
        if hints[field.name] is ModelConfig and isinstance(value, dict):
            value = config_from_dict(ModelConfig, value)
        else:
            value = _as_tuple(value)
        kwargs[field.name] = value
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    return cls(**kwargs)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON to a temporary file beside ``path`` and renames it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------- train checkpoints


class Checkpointer:
    """Keeps the last ``max_to_keep`` training checkpoints of a run.

    Args:
      directory: where the step directories go (created).
      max_to_keep: checkpoints kept on disk.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, ``None`` when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, train_state: Any, meta: dict) -> None:
        """Writes the train state and a JSON ``meta`` dict as checkpoint ``step`` (blocking)."""
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(train_state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(
        self, target: Any, step: int | None = None, sharding: Any = None
    ) -> tuple[Any, dict]:
        """Reads checkpoint ``step`` (default: the latest) into the structure of ``target``
        (arrays or ``jax.ShapeDtypeStruct``; restored arrays are committed to the device).

        ``sharding`` (a ``jax.sharding.Sharding``, e.g. replicated over the current mesh,
        :func:`diffdrive.distributed.replicated`) places every restored array there,
        whatever the device count of the run that saved it.

        Returns:
          ``(train_state, meta)``.

        Raises:
          FileNotFoundError: there is no checkpoint.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        if sharding is not None:
            abstract = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract
            )
        out = self._manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return out.state, out.meta

    def restore_meta(self, step: int | None = None) -> dict:
        """Only the JSON ``meta`` of checkpoint ``step`` (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint")
        out = self._manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return out.meta

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------- exported policy


def save_policy(directory: str | os.PathLike, params: Any, config: TrainConfig) -> Path:
    """Exports final parameters and the config to ``directory`` (``params/``, ``config.json``).

    An existing export there is replaced.
    """
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "params", params, force=True)
    write_json_atomic(directory / CONFIG_NAME, config_to_dict(config))
    return directory


def load_train_config(directory: str | os.PathLike) -> TrainConfig:
    """The :class:`TrainConfig` saved with a policy or a run (``config.json``)."""
    with open(Path(directory) / CONFIG_NAME) as f:
        return config_from_dict(TrainConfig, json.load(f))


def load_policy(directory: str | os.PathLike) -> tuple[Policy, Any, ModelConfig]:
    """Loads an exported policy: a run directory (its ``policy/``) or the export itself.

    Returns:
      ``(model, params, model_config)``, ready for
      :func:`diffdrive.models.policy.make_policy_actor`.
    """
    directory = Path(directory).absolute()
    if (directory / "policy" / CONFIG_NAME).exists():
        directory = directory / "policy"
    config = load_train_config(directory)
    if config.algorithm == "awm":  # {"policy", "heads"}: the policy part (awm.load_awm: all)
        from diffdrive.train import awm

        model, _, params, _ = awm.load_awm(directory)
        return model, params["policy"], config.model
    abstract = jax.eval_shape(lambda key: init_params(config.model, key), jax.random.PRNGKey(0))
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(directory / "params", abstract)
    return Policy(config.model), params, config.model
