"""Data parallelism over devices and hosts with JAX's own machinery (``jax.sharding``).

One code path serves one device, N devices of one machine and several machines:

* a 1-D device mesh with the axis :data:`DATA_AXIS` (:func:`make_mesh`);
* batches split along their leading (scenario) axis over it (:func:`batch_sharding`,
  :func:`shard_batch`), parameters and optimiser state replicated (:func:`replicated`,
  :func:`replicate`); a jitted step on such arguments is partitioned by the compiler, which
  inserts the gradient all-reduce itself;
* several processes (one per host, or one per GPU) joined by ``jax.distributed.initialize``
  (:func:`initialize_from_env`); the mesh then spans every process's devices and each
  process supplies only its own rows of a global batch (:func:`process_rows`), or reads
  only its own share of the files (:func:`process_subset`).

This module imports only jax and numpy, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
"""The mesh axis the batch (scenario) dimension is split over."""

ENV_COORDINATOR = "DIFFDRIVE_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "DIFFDRIVE_NUM_PROCESSES"
ENV_PROCESS_ID = "DIFFDRIVE_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "DIFFDRIVE_LOCAL_DEVICE_IDS"


# --------------------------------------------------------------------------------------
# Settings and process start-up
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """The ``distributed:`` section of a pipeline profile (``params/paper.yaml``).

    Attributes:
      devices: devices of the data-parallel mesh (``None``: every device of every
        process).
      coordinator_address: ``host:port`` of process 0 (``None``: from the environment,
        see :func:`initialize_from_env`; a single process needs none).
      num_processes: processes of the job (``None``: from the environment, else 1).
      process_id: this process's index (``None``: from the environment, else 0).
    """

    devices: int | None = None
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> DistributedSettings:
        """Parses the raw section; unknown keys and wrong types raise ``ValueError``."""
        raw = dict(raw or {})
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - fields)
        if unknown:
            raise ValueError(
                f"unknown key(s) distributed.{', distributed.'.join(unknown)} "
                f"(known: {', '.join(sorted(fields))})"
            )
        for name in ("devices", "num_processes", "process_id"):
            value = raw.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"distributed.{name} must be an integer or null, got {value!r}")
        address = raw.get("coordinator_address")
        if address is not None and not isinstance(address, str):
            raise ValueError(f"distributed.coordinator_address must be a string, got {address!r}")
        return cls(**raw)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def initialize_from_env(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> bool:
    """Joins a multi-process job through ``jax.distributed.initialize`` (when there is one).

    Arguments left ``None`` come from the environment: ``DIFFDRIVE_COORDINATOR_ADDRESS``
    (``host:port`` of process 0), ``DIFFDRIVE_NUM_PROCESSES``, ``DIFFDRIVE_PROCESS_ID`` and
    ``DIFFDRIVE_LOCAL_DEVICE_IDS`` (comma-separated; for one process per GPU). Without
    any of them, but under a cluster manager JAX detects (SLURM, Open MPI, Kubernetes,
    Cloud TPU), JAX's own auto-detection is used when ``DIFFDRIVE_AUTO_DISTRIBUTED=1``.
    A single process (``num_processes`` 1 or unset) is a no-op.

    Must run before any other JAX call that touches the devices.

    Returns:
      True when a multi-process job was joined.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if local_device_ids is None and os.environ.get(ENV_LOCAL_DEVICE_IDS):
        raw = os.environ[ENV_LOCAL_DEVICE_IDS]
        try:
            local_device_ids = [int(i) for i in raw.split(",")]
        except ValueError:
            raise ValueError(
                f"{ENV_LOCAL_DEVICE_IDS} must be comma-separated integers, got {raw!r}"
            ) from None
    if os.environ.get("DIFFDRIVE_AUTO_DISTRIBUTED") == "1" and coordinator_address is None:
        jax.distributed.initialize()
        return jax.process_count() > 1
    if num_processes is None or num_processes == 1:
        return False
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if coordinator_address is None or process_id is None:
        raise ValueError(
            f"a job of {num_processes} processes needs the coordinator address (host:port of "
            f"process 0; {ENV_COORDINATOR}) and this process's id ({ENV_PROCESS_ID})"
        )
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id {process_id} is outside [0, {num_processes})")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
    return True


# --------------------------------------------------------------------------------------
# Mesh and shardings
# --------------------------------------------------------------------------------------


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh with the axis ``data`` over the first ``num_devices`` global devices.

    ``None`` takes every device of every process. With several processes the mesh must
    cover all of them (each process drives its own devices), so a smaller count is an
    error there.
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not isinstance(num_devices, int | np.integer) or num_devices < 1:
        raise ValueError(f"the device count must be a positive integer, got {num_devices!r}")
    if num_devices > len(devices):
        raise ValueError(
            f"{num_devices} devices requested, but only {len(devices)} are visible "
            f"({devices[0].platform}); on CPU simulate more with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={num_devices}"
        )
    if jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError(
            f"with {jax.process_count()} processes the mesh must span all {len(devices)} "
            f"devices, got {num_devices}"
        )
    # An Auto axis (jax.make_mesh defaults to Explicit): the compiler partitions the step.
    return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def num_shards(mesh: Mesh) -> int:
    """Devices along the ``data`` axis (the batch must be a multiple of it)."""
    return int(mesh.shape[DATA_AXIS])


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of a value held whole on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over ``data``, the rest whole (scalars: use :func:`replicated`)."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    """Raises ``ValueError`` unless ``batch_size`` is a multiple of the device count."""
    n = num_shards(mesh)
    if batch_size % n:
        raise ValueError(
            f"the global {what} {batch_size} is not a multiple of the {n} devices of the "
            f"mesh; choose a {what} divisible by {n} (e.g. {max(n, batch_size // n * n)})"
        )


def padded_size(size: int, mesh: Mesh | None) -> int:
    """``size`` rounded up to a multiple of the mesh's device count."""
    if mesh is None:
        return size
    n = num_shards(mesh)
    return -(-size // n) * n


def _leaf_sharding(a: Any, mesh: Mesh) -> NamedSharding:
    return batch_sharding(mesh) if np.ndim(a) else replicated(mesh)


def shard_batch(batch: Any, mesh: Mesh, *, process_local: bool = False) -> Any:
    """Host (numpy) batch -> global ``jax.Array`` s split over ``data`` along axis 0.

    Scalar leaves (a shared timestep) are replicated.

    Args:
      batch: a pytree of arrays with leading axis ``B``.
      mesh: from :func:`make_mesh`.
      process_local: False: ``batch`` is the whole global batch (every process holds the
        same one; only the rows of this process's devices are transferred). True: it is
        this process's rows :func:`process_rows` of the global batch, which has
        ``process_count`` times as many rows (``jax.make_array_from_process_local_data``).
        With one process the two agree.

    Raises:
      ValueError: the global batch is not a multiple of the device count.
    """
    leaves = [a for a in jax.tree.leaves(batch) if np.ndim(a)]
    if leaves:
        rows = np.shape(leaves[0])[0]
        if process_local:
            rows *= jax.process_count()
        check_batch_size(rows, mesh)

    def put(a):
        sharding = _leaf_sharding(a, mesh)
        a = np.asarray(a)
        if process_local and np.ndim(a):
            global_shape = (a.shape[0] * jax.process_count(),) + a.shape[1:]
            return jax.make_array_from_process_local_data(sharding, a, global_shape)
        if jax.process_count() == 1:
            return jax.device_put(a, sharding)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` whole on every device of ``mesh`` (the same on all processes)."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(a):
        host = np.asarray(jax.device_get(a))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """Numpy copies of (possibly sharded, possibly multi-host) global arrays, whole."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


# --------------------------------------------------------------------------------------
# Per-process data
# --------------------------------------------------------------------------------------


def process_rows(global_batch_size: int, mesh: Mesh) -> slice:
    """The rows of a global batch that this process's devices hold (contiguous).

    Raises:
      ValueError: the batch is not a multiple of the device count, or this process's rows
        are not contiguous (a mesh whose device order interleaves processes).
    """
    check_batch_size(global_batch_size, mesh)
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    bounds = sorted(
        (s[0].start or 0, global_batch_size if s[0].stop is None else s[0].stop)
        for s in index_map.values()
    )
    start, stop = bounds[0][0], bounds[-1][1]
    covered = sum(b - a for a, b in {(a, b) for a, b in bounds})
    if covered != stop - start:
        raise ValueError(
            "this process's devices hold non-contiguous rows of the batch; build the mesh "
            "with make_mesh (process-major device order)"
        )
    return slice(start, stop)


def process_split(
    num_items: int, process_index: int | None = None, process_count: int | None = None
) -> range:
    """Indices ``process_index, process_index + P, ...`` of ``num_items``: this process's
    share (every ``P``-th shard, file or scenario). The shares of ``P`` processes are
    disjoint and cover ``range(num_items)``."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process index {index} is outside [0, {count})")
    return range(index, num_items, count)


class SubsetView(Sequence):
    """A read-only view of ``base`` at ``indices`` (keeps a cache's memory-mapped access).

    Forwards ``settings`` and ``padded_arrays`` of a :class:`~diffdrive.data.cache.Cache`
    so batching code treats the view like the cache itself.
    """

    def __init__(self, base: Sequence, indices: Sequence[int]):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(base)):
            raise IndexError(f"indices outside [0, {len(base)})")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return SubsetView(self.base, self.indices[i])
        return self.base[int(self.indices[i])]

    @property
    def settings(self):
        return getattr(self.base, "settings", None)

    def __getattr__(self, name: str):
        if name == "padded_arrays" and hasattr(self.base, "padded_arrays"):
            return lambda i: self.base.padded_arrays(int(self.indices[i]))
        raise AttributeError(name)


def process_subset(
    items: Sequence, process_index: int | None = None, process_count: int | None = None
) -> Sequence:
    """This process's share of ``items`` (:func:`process_split`, every ``P``-th item).

    ``items``: a list of files (e.g. ``diffdrive.data.tfrecord.expand_paths("name@N")``:
    each process converts or reads its own TFRecord shards), a scenario cache (its
    ``subset``: memory-mapped, nothing copied) or any sequence (a :class:`SubsetView`).
    """
    indices = list(process_split(len(items), process_index, process_count))
    if isinstance(items, list | tuple):
        return [items[i] for i in indices]
    if callable(getattr(items, "subset", None)):
        return items.subset(indices)
    return SubsetView(items, indices)


# --------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------


def parse_devices(value: str | int | None) -> int | None:
    """``--devices``: a positive count, ``all`` (-> ``None``) or unset (-> ``None``)."""
    if value is None or value == "all":
        return None
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--devices must be a positive integer or 'all', got {value!r}") from None
    if count < 1:
        raise ValueError(f"--devices must be a positive integer or 'all', got {value!r}")
    return count


def mesh_from_cli(devices: str | int | None) -> Mesh:
    """The mesh of a command's ``--devices`` value, after joining a multi-process job.

    Unset means one device for a single process (the historical behaviour) and every
    device of the job when :func:`initialize_from_env` joined several processes; ``all``
    means every device.
    """
    initialize_from_env()
    count = parse_devices(devices)
    if devices is None and jax.process_count() == 1:
        count = 1
    return make_mesh(count)
