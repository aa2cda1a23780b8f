"""The train state, the jitted train step and the resumable training loop.

Determinism: the parameters come from ``PRNGKey(seed)``, batch ``b`` of epoch ``e`` is a
pure function of ``(seed, e, b)`` (:class:`BatchSource`), and step ``s`` uses the key
:func:`step_key` ``(seed, s)``. A run killed at any point and restarted with the same
config and output directory resumes from its last checkpoint and reaches bitwise the
same parameters as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.flatten_util import ravel_pytree
from tqdm.auto import tqdm

from diffdrive import distributed
from diffdrive.data import batching
from diffdrive.data.types import DecodedScenario
from diffdrive.models.policy import Policy, init_params
from diffdrive.sim.datatypes import Array, SimulatorState
from diffdrive.train import apg, awm, bc, checkpoint
from diffdrive.train.config import TrainConfig
from diffdrive.train.schedule import learning_rate, make_optimizer, reset_threshold

METRICS_NAME = "metrics.json"
LAST_VALUE_METRICS = ("lr", "reset_threshold")
"""Step metrics an epoch record reports at the epoch's last step (the rest: means)."""


@struct.dataclass
class TrainState:
    """What a checkpoint holds.

    Attributes:
      step: int32 scalar, optimiser steps taken.
      total_steps: int32 scalar, steps of the whole run (the schedules' horizon).
      params: policy parameters.
      opt_state: optimiser state (:func:`~diffdrive.train.schedule.make_optimizer`) of
        the parameters raveled into one vector (one fused update instead of one per
        leaf: the same arithmetic, a much smaller program to compile).
    """

    step: Array
    total_steps: Array
    params: Any
    opt_state: Any


@functools.partial(jax.jit, static_argnums=0)
def _initial_state(config: TrainConfig, seed: Array, total_steps: Array) -> TrainState:
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
    if config.algorithm == "awm":
        params = awm.init_params(config, key)
    else:
        params = init_params(config.model, key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        total_steps=jnp.asarray(total_steps, jnp.int32),
        params=params,
        opt_state=make_optimizer(config).init(ravel_pytree(params)[0]),
    )


def _initial_state_args(config: TrainConfig, total_steps: int) -> tuple:
    # The seed is traced and the config normalised: one compilation serves every run.
    return (
        _step_cache_key(config),
        jnp.asarray(config.seed, jnp.uint32),
        jnp.asarray(total_steps, jnp.int32),
    )


def create_train_state(config: TrainConfig, total_steps: int) -> TrainState:
    """Fresh parameters (from ``PRNGKey(seed)``) and optimiser state (one jitted call)."""
    return _initial_state(*_initial_state_args(config, total_steps))


def step_key(config: TrainConfig, step: int) -> Array:
    """The PRNG key of training step ``step`` (a pure function of the seed and step)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1), step)


def make_loss_fn(
    config: TrainConfig, simulator: apg.Simulator | None = None
) -> Callable[..., tuple[Array, dict]]:
    """``loss_fn(params, batch, key, reset_threshold) -> (loss, aux)`` for the algorithm
    and setting (``multi_agent``: :mod:`diffdrive.train.multi_agent`)."""
    model = Policy(config.model)
    dynamics = config.make_dynamics()
    if config.setting == "multi_agent":
        from diffdrive.train import multi_agent

        if config.algorithm == "bc":
            return functools.partial(
                multi_agent.multi_agent_bc_loss, model=model, config=config, dynamics=dynamics
            )
        sim = simulator or apg.Simulator(dynamics)
        return functools.partial(
            multi_agent.multi_agent_apg_loss, model=model, config=config, simulator=sim
        )
    if config.algorithm == "bc":
        return functools.partial(bc.bc_loss, model=model, config=config, dynamics=dynamics)
    sim = simulator or apg.Simulator(dynamics)
    if config.algorithm == "awm":
        return functools.partial(awm.awm_loss, config=config, simulator=sim)
    return functools.partial(apg.apg_loss, model=model, config=config, simulator=sim)


def build_train_step(
    config: TrainConfig, simulator: apg.Simulator | None = None
) -> Callable[[TrainState, SimulatorState, Array], tuple[TrainState, dict]]:
    """The (unjitted) ``train_step(train_state, batch, key) -> (train_state, metrics)``.

    ``batch`` is a state with batch shape ``(B,)`` (:func:`~diffdrive.train.apg.training_batch`);
    ``metrics`` are scalars: the loss's aux values, ``grad_norm``, ``lr`` and (APG)
    ``reset_threshold``.
    """
    loss_fn = make_loss_fn(config, simulator)
    tx = awm.make_optimizer(config) if config.algorithm == "awm" else make_optimizer(config)

    def train_step(state: TrainState, batch: SimulatorState, key: Array):
        threshold = reset_threshold(config, state.step, state.total_steps)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, aux), grads = grad_fn(state.params, batch, key, threshold)
        flat_params, unravel = ravel_pytree(state.params)
        flat_grads, _ = ravel_pytree(grads)
        updates, opt_state = tx.update(flat_grads, state.opt_state, flat_params)
        lr = learning_rate(config, state.step, state.total_steps)
        params = unravel(flat_params - lr.astype(updates.dtype) * updates)
        metrics = dict(aux, grad_norm=jnp.linalg.norm(flat_grads), lr=lr)
        if config.algorithm in ("apg", "awm"):
            metrics["reset_threshold"] = threshold
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def _step_cache_key(config: TrainConfig) -> TrainConfig:
    """The config with the fields that do not change the step's computation normalised."""
    return dataclasses.replace(
        config,
        seed=0,
        epochs=1,
        batch_size=1,
        checkpoint_every=1,
        keep_checkpoints=1,
        max_objects=None,
        num_roadgraph_points=None,
    )


def _jit_step(step: Callable, mesh: jax.sharding.Mesh | None) -> Callable:
    if mesh is None:
        return jax.jit(step)
    # The inputs carry their shardings (state replicated, batch split over "data"); the
    # outputs are pinned replicated, so the compiler all-reduces the gradients.
    replicated = distributed.replicated(mesh)
    return jax.jit(step, out_shardings=(replicated, replicated))


@functools.lru_cache(maxsize=16)
def _cached_train_step(key: TrainConfig, mesh: jax.sharding.Mesh | None = None):
    return _jit_step(build_train_step(key), mesh)


def make_train_step(
    config: TrainConfig,
    simulator: apg.Simulator | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable[[TrainState, SimulatorState, Array], tuple[TrainState, dict]]:
    """The jitted train step.

    Cached per computation-relevant config (seed, epochs, batch size, checkpointing and
    data shape settings excluded; the run length is part of the state) and mesh, so runs
    in one process share a compilation. With a ``mesh``
    (:func:`diffdrive.distributed.make_mesh`) pass the state replicated
    (:func:`~diffdrive.distributed.replicate`) and the batch split over its ``data`` axis
    (:func:`~diffdrive.distributed.shard_batch`); the new state and the metrics come back
    replicated.
    """
    if simulator is None:
        return _cached_train_step(_step_cache_key(config), mesh)
    return _jit_step(build_train_step(config, simulator), mesh)


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def load_dataset(path: str | os.PathLike) -> Sequence[DecodedScenario]:
    """A cache directory (opened memory-mapped) or anything ``read_scenarios`` reads."""
    from diffdrive.data import cache, sources

    p = Path(path)
    if p.is_dir() and (p / cache.INDEX_NAME).exists():
        return cache.open_cache(p)
    return list(sources.read_scenarios(str(path)))


class BatchSource:
    """Deterministic, randomly accessible training batches.

    Epoch ``e`` visits the scenarios in the permutation ``default_rng([seed, e])``;
    batch ``b`` is its slice ``[b * B, (b + 1) * B)``, padded to one shape and stacked
    (the last incomplete batch is dropped).

    Args:
      dataset: a sequence of :class:`DecodedScenario` (a :class:`~diffdrive.data.cache.Cache`
        included).
      batch_size: ``B`` (cut to the dataset size).
      seed: the order's seed.
      max_objects, num_roadgraph_points: the batch shape (``None``: the dataset's largest).
      num_timesteps: steps every log is cut or padded to.
      rows: the rows of every batch this source yields (default all; with several
        processes, this process's :func:`diffdrive.distributed.process_rows`): only
        their scenarios are read.
    """

    def __init__(
        self,
        dataset: Sequence[DecodedScenario],
        batch_size: int,
        seed: int,
        max_objects: int | None = None,
        num_roadgraph_points: int | None = None,
        num_timesteps: int = 91,
        rows: slice | None = None,
    ):
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.dataset = dataset
        self.seed = seed
        self.batch_size = min(batch_size, len(dataset))
        self.steps_per_epoch = len(dataset) // self.batch_size
        settings = getattr(dataset, "settings", None)
        if settings is not None:
            n_max, p_max = settings["max_objects"], settings["num_roadgraph_points"]
        else:
            sizes = [batching.scenario_sizes(s.arrays, s) for s in dataset]
            n_max = max(z["num_objects"] for z in sizes)
            p_max = max(z["num_roadgraph_points"] for z in sizes)
        self.max_objects = max_objects or n_max
        self.num_roadgraph_points = num_roadgraph_points or p_max
        self.num_timesteps = num_timesteps
        self.rows = slice(None) if rows is None else rows
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        """The scenario order of ``epoch`` (a permutation of the dataset's indices)."""
        if self._order is None or self._order[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._order = (epoch, perm)
        return self._order[1]

    def _arrays(self, i: int) -> dict[str, np.ndarray]:
        padded = getattr(self.dataset, "padded_arrays", None)
        if padded is not None:
            arrays, scenario = padded(int(i)), None
        else:
            scenario = self.dataset[int(i)]
            arrays = scenario.arrays
        out, _ = batching.pad_arrays(
            arrays,
            self.max_objects,
            self.num_roadgraph_points,
            self.num_timesteps,
            scenario=scenario,
        )
        return out

    def batch(self, epoch: int, index: int) -> SimulatorState:
        """Batch ``index`` of ``epoch``: numpy leaves ``(B, ...)``, no simulated trajectory."""
        b = self.batch_size
        idx = self.order(epoch)[index * b : (index + 1) * b][self.rows]
        flat = batching.stack_arrays([self._arrays(i) for i in idx])
        return apg.training_batch(batching.state_from_flat_batch(flat))

    def iterate(self, start_step: int, end_step: int) -> Iterator[SimulatorState]:
        """The batches of global steps ``start_step .. end_step - 1``."""
        for step in range(start_step, end_step):
            yield self.batch(step // self.steps_per_epoch, step % self.steps_per_epoch)


# --------------------------------------------------------------------------------------
# Loop
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
      state: the final :class:`TrainState`.
      history: one dict per completed epoch: ``epoch``, ``step``, the means of the step
        metrics (``lr`` and ``reset_threshold``: their last values; non-finite values
        as ``None``) and ``time_s``.
      steps_per_epoch: optimiser steps per epoch.
      total_steps: steps of the whole run.
      completed: the run reached ``total_steps`` (False when stopped early).
    """

    state: TrainState
    history: list[dict]
    steps_per_epoch: int
    total_steps: int
    completed: bool


def _to_host(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def train(
    config: TrainConfig,
    dataset: Sequence[DecodedScenario] | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    resume: bool = True,
    stop_after_steps: int | None = None,
    prefetch: int = 2,
    mesh: jax.sharding.Mesh | None = None,
) -> TrainResult:
    """Trains a policy (APG or BC) and, with ``out_dir``, checkpoints and exports it.

    Args:
      config: the :class:`TrainConfig`.
      dataset: scenarios (a sequence or a cache) or a path for :func:`load_dataset`.
      out_dir: run directory (checkpoints, ``metrics.json``, ``config.json`` and at the end
        the exported ``policy/``); ``None`` trains in memory only.
      progress: show a tqdm bar.
      resume: continue from the latest checkpoint in ``out_dir`` if there is one (its
        config must equal ``config``); ``False`` deletes the directory's checkpoints
        and starts over.
      stop_after_steps: stop once this global step count is reached without a final
        checkpoint or export (what a killed run leaves behind; for tests).
      prefetch: batches prepared ahead in a background thread.
      mesh: the devices (:func:`diffdrive.distributed.make_mesh`; default one device):
        every batch is split over its ``data`` axis, the state replicated, one code path
        for any count. The batch size must be a multiple of the device count. With
        several processes each reads only its rows of every batch. The results match a
        single device to float tolerance (the gradient sum is reduced in another order);
        checkpoints restore onto any device count.

    Returns:
      :class:`TrainResult`.
    """
    if isinstance(dataset, str | os.PathLike):
        dataset = load_dataset(dataset)
    source = BatchSource(
        dataset,
        config.batch_size,
        config.seed,
        config.max_objects,
        config.num_roadgraph_points,
        config.num_timesteps,
    )
    spe = source.steps_per_epoch
    total = config.epochs * spe
    mesh = distributed.make_mesh(1) if mesh is None else mesh
    distributed.check_batch_size(source.batch_size, mesh)
    source.rows = distributed.process_rows(source.batch_size, mesh)
    step_fn = make_train_step(config, mesh=mesh)
    config_dict = checkpoint.config_to_dict(config)

    history: list[dict] = []
    sums: dict[str, float] = {}
    count = 0
    start = 0
    state = None
    ckpt = None
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        ckpt = checkpoint.Checkpointer(out / "checkpoints", config.keep_checkpoints)
        if resume and ckpt.latest_step() is not None:
            if ckpt.restore_meta()["config"] != config_dict:
                ckpt.close()
                raise ValueError(
                    f"{out}: the checkpoint was written with a different config; use another "
                    "output directory or resume=False"
                )
            key_config, *args = _initial_state_args(config, total)
            abstract = jax.eval_shape(functools.partial(_initial_state, key_config), *args)
            state, meta = ckpt.restore(abstract, sharding=distributed.replicated(mesh))
            start = int(state.step)
            history, sums, count = meta["history"], meta["epoch_sums"], meta["epoch_count"]
        checkpoint.write_json_atomic(out / checkpoint.CONFIG_NAME, config_dict)
    if state is None:
        state = create_train_state(config, total)
    # Restored arrays are committed to the mesh; commit fresh ones too, so that both hit
    # the same compiled train step.
    state = distributed.replicate(state, mesh)

    end = total if stop_after_steps is None else min(total, int(stop_after_steps))
    epoch_start = time.perf_counter()
    done = start
    bar = tqdm(total=total, initial=start, disable=not progress, desc=f"train {config.algorithm}")
    loader = batching.PrefetchLoader(
        source.iterate(start, end),
        buffer_size=prefetch,
        transform=functools.partial(distributed.shard_batch, mesh=mesh, process_local=True),
        to_device=False,
    )
    try:
        with loader:
            for step, batch in zip(range(start, end), loader):
                state, metrics = step_fn(state, batch, step_key(config, step))
                m = _to_host(metrics)
                if not math.isfinite(m["loss"]):
                    raise FloatingPointError(
                        f"non-finite loss {m['loss']} at step {step}; the checkpoints in "
                        f"{out} (if any) precede it"
                    )
                for k, v in m.items():
                    sums[k] = v if k in LAST_VALUE_METRICS else sums.get(k, 0.0) + v
                count += 1
                done = step + 1
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
                end_of_epoch = done % spe == 0
                if end_of_epoch:
                    record = {"epoch": done // spe, "step": done}
                    for k, v in sums.items():
                        v = v if k in LAST_VALUE_METRICS else v / count
                        record[k] = v if math.isfinite(v) else None
                    record["time_s"] = time.perf_counter() - epoch_start
                    history.append(record)
                    sums, count = {}, 0
                    epoch_start = time.perf_counter()
                    if out is not None:
                        checkpoint.write_json_atomic(
                            out / METRICS_NAME, {"config": config_dict, "epochs": history}
                        )
                if ckpt is not None and (end_of_epoch or done % config.checkpoint_every == 0):
                    meta = {
                        "config": config_dict,
                        "history": history,
                        "epoch_sums": sums,
                        "epoch_count": count,
                    }
                    ckpt.save(done, state, meta)
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
    completed = done >= total
    if completed and out is not None:
        checkpoint.save_policy(out / "policy", state.params, config)
    return TrainResult(
        state=state, history=history, steps_per_epoch=spe, total_steps=total, completed=completed
    )
