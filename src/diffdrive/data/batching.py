"""Padding decoded scenarios to one shape, stacking them into batches, and prefetching.

A :class:`~diffdrive.data.types.DecodedScenario` holds flat ``"<group>/<field>"`` arrays
whose sizes vary per source: ``N`` objects, ``T`` steps, ``P`` roadgraph points and ``L``
traffic lights. Batching needs one shape, so each scenario is

* reduced to at most ``max_objects`` objects by :func:`diffdrive.data.select.select_objects`
  (SDC first) when it has more, and padded with invalid slots when it has fewer;
* cut to ``num_roadgraph_points`` by :func:`diffdrive.data.select.pad_roadgraph` when it has
  more points, and padded at the end when it has fewer;
* padded (or cut) to ``num_timesteps`` steps and ``num_traffic_lights`` lights.

Padding uses Waymax's invalid fill: every number -1 (floats -1.0, ints -1) and every mask
False. Only the four groups that make a state are kept (``log_trajectory``,
``object_metadata``, ``roadgraph_points``, ``log_traffic_light``); anything else a reader
adds (``sim_trajectory``, ``timestep``) is rebuilt from the log, as Waymax's loader does.

Batches are :class:`~diffdrive.sim.datatypes.SimulatorState` pytrees with a leading batch
axis ``B`` and numpy leaves (``timestep`` is zeros of shape ``(B,)``);
:class:`PrefetchLoader` moves them to the accelerator in a background thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from diffdrive.data.types import DecodedScenario, ScenarioDecodeError
from diffdrive.sim import datatypes

# group -> (container class, axes kind). "obj_time": (N, T); "obj": (N,); "pts": (P,);
# "tl": (L, T).
GROUPS: dict[str, tuple[type, str]] = {
    "log_trajectory": (datatypes.Trajectory, "obj_time"),
    "object_metadata": (datatypes.ObjectMetadata, "obj"),
    "roadgraph_points": (datatypes.RoadgraphPoints, "pts"),
    "log_traffic_light": (datatypes.TrafficLights, "tl"),
}
_KIND_DTYPES = {"f": np.float32, "i": np.int32, "b": np.bool_}


def _field_dtype(cls: type, field: str) -> np.dtype:
    if field in cls._FLOAT_FIELDS:
        return np.dtype(np.float32)
    if field in cls._INT_FIELDS:
        return np.dtype(np.int32)
    return np.dtype(np.bool_)


def canonical_keys() -> tuple[str, ...]:
    """The flat keys a stored or batched scenario has, in a fixed order."""
    return tuple(
        f"{group}/{field}" for group, (cls, _) in GROUPS.items() for field in cls.field_names()
    )


def key_dtype(key: str) -> np.dtype:
    """float32, int32 or bool for a canonical key."""
    group, field = key.split("/", 1)
    return _field_dtype(GROUPS[group][0], field)


def key_shape(
    key: str, num_objects: int, num_timesteps: int, num_points: int, num_lights: int
) -> tuple[int, ...]:
    """Shape of one unbatched canonical array for the given sizes."""
    kind = GROUPS[key.split("/", 1)[0]][1]
    return {
        "obj_time": (num_objects, num_timesteps),
        "obj": (num_objects,),
        "pts": (num_points,),
        "tl": (num_lights, num_timesteps),
    }[kind]


def invalid_arrays(
    num_objects: int,
    num_timesteps: int = datatypes.NUM_TIMESTEPS,
    num_roadgraph_points: int = 0,
    num_traffic_lights: int = datatypes.NUM_TRAFFIC_LIGHTS,
) -> dict[str, np.ndarray]:
    """All-invalid flat arrays (Waymax fill: -1 numbers, False masks) of the given sizes."""
    out = {}
    for key in canonical_keys():
        shape = key_shape(key, num_objects, num_timesteps, num_roadgraph_points, num_traffic_lights)
        dt = key_dtype(key)
        out[key] = np.zeros(shape, dt) if dt == np.bool_ else np.full(shape, -1, dt)
    return out


def _where(scenario: DecodedScenario | None) -> tuple[str, int | None]:
    if scenario is None:
        return "arrays", None
    return scenario.source or scenario.scenario_id or "scenario", scenario.record_index


def scenario_sizes(
    arrays: Mapping[str, np.ndarray], scenario: DecodedScenario | None = None
) -> dict[str, int]:
    """``num_objects``, ``num_timesteps``, ``num_roadgraph_points``, ``num_traffic_lights``.

    Raises:
      ScenarioDecodeError: a key is missing or shapes disagree (names the field).
    """
    file, record = _where(scenario)
    for key in ("log_trajectory/x", "roadgraph_points/x", "log_traffic_light/x"):
        if key not in arrays:
            raise ScenarioDecodeError(file, record, key, "missing array")
    n, t = np.shape(arrays["log_trajectory/x"])[-2:]
    sizes = {
        "num_objects": int(n),
        "num_timesteps": int(t),
        "num_roadgraph_points": int(np.shape(arrays["roadgraph_points/x"])[-1]),
        "num_traffic_lights": int(np.shape(arrays["log_traffic_light/x"])[-2]),
    }
    return sizes


def normalize_arrays(
    arrays: Mapping[str, np.ndarray], scenario: DecodedScenario | None = None
) -> dict[str, np.ndarray]:
    """Keeps the canonical keys, casts them to float32/int32/bool and checks their shapes.

    Args:
      arrays: unbatched flat arrays.
      scenario: used to name the file and record in errors.

    Returns:
      A new dict with exactly :func:`canonical_keys`.

    Raises:
      ScenarioDecodeError: a key is missing or has an inconsistent shape.
    """
    file, record = _where(scenario)
    s = scenario_sizes(arrays, scenario)
    out = {}
    for key in canonical_keys():
        if key not in arrays:
            raise ScenarioDecodeError(file, record, key, "missing array")
        a = np.asarray(arrays[key])
        want = key_shape(
            key,
            s["num_objects"],
            s["num_timesteps"],
            s["num_roadgraph_points"],
            s["num_traffic_lights"],
        )
        if a.shape != want:
            raise ScenarioDecodeError(file, record, key, f"shape {a.shape}, expected {want}")
        out[key] = a.astype(key_dtype(key), copy=False)
    return out


def _resize_axis(a: np.ndarray, axis: int, size: int, fill: Any) -> np.ndarray:
    """Cuts or pads (at the end, with ``fill``) ``a`` along ``axis`` to ``size``."""
    cur = a.shape[axis]
    if cur == size:
        return a
    if cur > size:
        return np.take(a, np.arange(size), axis=axis)
    pad_shape = list(a.shape)
    pad_shape[axis] = size - cur
    return np.concatenate([a, np.full(pad_shape, fill, a.dtype)], axis=axis)


def _fill(dtype: np.dtype) -> Any:
    return False if dtype == np.bool_ else -1


def pad_arrays(
    arrays: Mapping[str, np.ndarray],
    max_objects: int,
    num_roadgraph_points: int,
    num_timesteps: int | None = None,
    num_traffic_lights: int = datatypes.NUM_TRAFFIC_LIGHTS,
    scenario: DecodedScenario | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Brings one scenario's flat arrays to a fixed shape.

    Args:
      arrays: unbatched flat arrays of ``N`` objects, ``T`` steps, ``P`` points, ``L`` lights.
      max_objects: object slots ``N'`` of the result. More objects are reduced with
        :func:`diffdrive.data.select.select_objects` (which keeps the SDC first); fewer are
        padded with invalid slots at the end.
      num_roadgraph_points: points ``P'`` of the result; more are reduced with
        :func:`diffdrive.data.select.pad_roadgraph`, fewer padded at the end.
      num_timesteps: steps ``T'`` of the result (``None`` keeps ``T``); later steps are
        cut, missing ones padded invalid.
      num_traffic_lights: light slots ``L'`` (16 in WOMD); extra lights are cut.
      scenario: names the file and record in errors.

    Returns:
      ``(arrays, notes)``: canonical arrays of shapes ``(N', T')``, ``(N',)``, ``(P',)``,
      ``(L', T')``, and one sentence per lossy change (objects or points dropped, steps cut)
      for the scenario's assumptions.
    """
    out = normalize_arrays(arrays, scenario)
    s = scenario_sizes(out)
    notes = []
    if s["num_objects"] > max_objects or s["num_roadgraph_points"] > num_roadgraph_points:
        from diffdrive.data import select

        file, record = _where(scenario)
        if s["num_objects"] > max_objects:
            try:
                selected, _ = select.select_objects(out, max_objects)
            except ValueError as e:
                raise ScenarioDecodeError(file, record, "object_metadata/is_sdc", str(e)) from e
            out = normalize_arrays(selected, scenario)
            notes.append(
                f"Kept {max_objects} of {s['num_objects']} objects: the SDC first, then the "
                "modeled objects, then the nearest to the SDC (select_objects)."
            )
        if s["num_roadgraph_points"] > num_roadgraph_points:
            try:
                out = select.pad_roadgraph(out, num_roadgraph_points, notes=notes)
            except ValueError as e:
                raise ScenarioDecodeError(file, record, "roadgraph_points", str(e)) from e
            out = normalize_arrays(out, scenario)
    t_new = s["num_timesteps"] if num_timesteps is None else int(num_timesteps)
    if t_new < s["num_timesteps"]:
        notes.append(f"Cut the log from {s['num_timesteps']} to {t_new} steps.")
    if s["num_traffic_lights"] > num_traffic_lights:
        notes.append(f"Kept {num_traffic_lights} of {s['num_traffic_lights']} traffic lights.")
    for key, a in out.items():
        kind = GROUPS[key.split("/", 1)[0]][1]
        fill = _fill(a.dtype)
        if kind in ("obj_time", "obj"):
            a = _resize_axis(a, 0, max_objects, fill)
        elif kind == "pts":
            a = _resize_axis(a, 0, num_roadgraph_points, fill)
        else:
            a = _resize_axis(a, 0, num_traffic_lights, fill)
        if kind in ("obj_time", "tl"):
            a = _resize_axis(a, 1, t_new, fill)
        out[key] = np.ascontiguousarray(a)
    return out, notes


def pad_scenario(
    scenario: DecodedScenario,
    max_objects: int,
    num_roadgraph_points: int,
    num_timesteps: int | None = None,
    num_traffic_lights: int = datatypes.NUM_TRAFFIC_LIGHTS,
) -> DecodedScenario:
    """:func:`pad_arrays` on a scenario; lossy changes are appended to its assumptions."""
    arrays, notes = pad_arrays(
        scenario.arrays,
        max_objects,
        num_roadgraph_points,
        num_timesteps,
        num_traffic_lights,
        scenario=scenario,
    )
    return DecodedScenario(
        scenario_id=scenario.scenario_id,
        format=scenario.format,
        arrays=arrays,
        source=scenario.source,
        record_index=scenario.record_index,
        assumptions=tuple(scenario.assumptions) + tuple(notes),
    )


def stack_arrays(items: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stacks same-shaped canonical flat arrays along a new leading axis ``B``."""
    if not items:
        raise ValueError("stack_arrays: no scenarios to stack")
    return {key: np.stack([np.asarray(it[key]) for it in items]) for key in canonical_keys()}


def state_from_flat_batch(flat: Mapping[str, np.ndarray]) -> datatypes.SimulatorState:
    """A :class:`SimulatorState` with numpy leaves from (batched) canonical flat arrays.

    Equal, leaf by leaf, to :func:`diffdrive.sim.datatypes.state_from_flat_arrays` (which
    builds jax arrays): ``sim_trajectory`` is zero except step 0, copied from the log, and
    ``timestep`` is zeros of the batch shape. Keeping numpy leaves lets a loader thread do
    the host work and move the batch to the device in one ``jax.device_put``.
    """
    groups = {}
    for group, (cls, _) in GROUPS.items():
        kw = {}
        for field in cls.field_names():
            key = f"{group}/{field}"
            if key not in flat:
                raise KeyError(f"flat batch: missing array {key!r}")
            kw[field] = np.asarray(flat[key]).astype(_field_dtype(cls, field), copy=False)
        groups[group] = cls(**kw)
    log = groups["log_trajectory"]
    sim_kw = {}
    for field in log.field_names():
        a = getattr(log, field)
        z = np.zeros(a.shape, a.dtype)  # calloc: untouched pages stay free
        z[..., 0] = a[..., 0]
        sim_kw[field] = z
    batch = np.shape(log.x)[:-2]
    return datatypes.SimulatorState(
        sim_trajectory=datatypes.Trajectory(**sim_kw),
        log_trajectory=log,
        log_traffic_light=groups["log_traffic_light"],
        object_metadata=groups["object_metadata"],
        timestep=np.zeros(batch, np.int32),
        roadgraph_points=groups["roadgraph_points"],
    )


def batch_scenarios(
    scenarios: Sequence[DecodedScenario],
    max_objects: int | None = None,
    num_roadgraph_points: int | None = None,
    num_timesteps: int | None = None,
) -> datatypes.SimulatorState:
    """Pads scenarios to one shape and stacks them into a batched state.

    Args:
      scenarios: ``B`` decoded scenarios.
      max_objects: object slots; ``None`` uses the largest ``N`` in the batch.
      num_roadgraph_points: roadgraph points; ``None`` uses the largest ``P`` in the batch.
      num_timesteps: steps; ``None`` requires all scenarios to have the same ``T``.

    Returns:
      A :class:`SimulatorState` whose leaves are numpy arrays of shape ``(B, ...)``.

    Raises:
      ScenarioDecodeError: a scenario has a missing or inconsistent array, or its number
        of steps differs from the others while ``num_timesteps`` is ``None``.
    """
    if not scenarios:
        raise ValueError("batch_scenarios: empty batch")
    sizes = [scenario_sizes(s.arrays, s) for s in scenarios]
    if max_objects is None:
        max_objects = max(z["num_objects"] for z in sizes)
    if num_roadgraph_points is None:
        num_roadgraph_points = max(z["num_roadgraph_points"] for z in sizes)
    if num_timesteps is None:
        t0 = sizes[0]["num_timesteps"]
        for s, z in zip(scenarios, sizes):
            if z["num_timesteps"] != t0:
                file, record = _where(s)
                raise ScenarioDecodeError(
                    file,
                    record,
                    "log_trajectory",
                    f"{z['num_timesteps']} steps where the batch has {t0}; "
                    "pass num_timesteps to cut or pad",
                )
        num_timesteps = t0
    padded = [
        pad_arrays(s.arrays, max_objects, num_roadgraph_points, num_timesteps, scenario=s)[0]
        for s in scenarios
    ]
    return state_from_flat_batch(stack_arrays(padded))


def _shuffled(items: Iterable[Any], seed: int, buffer_size: int) -> Iterator[Any]:
    """A permutation for sequences; a bounded shuffle buffer for plain iterables."""
    rng = np.random.default_rng(seed)
    if isinstance(items, Sequence):
        for i in rng.permutation(len(items)):
            yield items[int(i)]
        return
    buf: list[Any] = []
    for item in items:
        buf.append(item)
        if len(buf) >= buffer_size:
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def iterate_batches(
    scenarios: Iterable[DecodedScenario],
    batch_size: int,
    drop_remainder: bool = False,
    shuffle_seed: int | None = None,
    max_objects: int = 128,
    num_roadgraph_points: int = 20000,
    num_timesteps: int | None = datatypes.NUM_TIMESTEPS,
    shuffle_buffer: int = 1024,
) -> Iterator[datatypes.SimulatorState]:
    """Yields batched states of ``batch_size`` scenarios with a fixed shape.

    Args:
      scenarios: a sequence (shuffled by a full permutation) or any iterable (shuffled
        through a buffer of ``shuffle_buffer`` scenarios).
      batch_size: scenarios per batch ``B``.
      drop_remainder: drop a last batch smaller than ``batch_size``.
      shuffle_seed: ``None`` keeps the input order.
      max_objects, num_roadgraph_points, num_timesteps: the fixed shape
        (see :func:`pad_arrays`); ``num_timesteps=None`` keeps each scenario's length and
        then requires all to match.
      shuffle_buffer: buffer size for iterables without random access.

    Yields:
      :class:`SimulatorState` with numpy leaves of shape ``(B, ...)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = (
        scenarios if shuffle_seed is None else _shuffled(scenarios, shuffle_seed, shuffle_buffer)
    )
    pending: list[dict[str, np.ndarray]] = []
    t_ref = num_timesteps
    for s in items:
        if t_ref is None:
            t_ref = scenario_sizes(s.arrays, s)["num_timesteps"]
        elif num_timesteps is None and scenario_sizes(s.arrays, s)["num_timesteps"] != t_ref:
            file, record = _where(s)
            raise ScenarioDecodeError(
                file, record, "log_trajectory", f"steps differ from the batch's {t_ref}"
            )
        arrays, _ = pad_arrays(s.arrays, max_objects, num_roadgraph_points, t_ref, scenario=s)
        pending.append(arrays)
        if len(pending) == batch_size:
            yield state_from_flat_batch(stack_arrays(pending))
            pending = []
    if pending and not drop_remainder:
        yield state_from_flat_batch(stack_arrays(pending))


_END = object()


class PrefetchLoader:
    """Runs a batch iterator in a background thread and puts its batches on a device.

    While the accelerator computes on batch ``k``, the thread decodes, pads and transfers
    batches ``k+1 .. k+buffer_size``. Use it as an iterator, ideally in a ``with`` block so
    the thread stops when the loop ends early::

        with PrefetchLoader(iterate_batches(scenarios, 32), buffer_size=2) as loader:
            for state in loader:
                ...

    Args:
      batches: any iterable of pytrees (e.g. :func:`iterate_batches`).
      buffer_size: batches held ready (the queue bound); at least 1.
      device: a ``jax.Device`` or sharding for ``jax.device_put``; ``None`` uses the default
        device.
      transform: optional host-side function applied to each batch before the transfer.
      to_device: ``False`` skips ``jax.device_put`` (host prefetch only).

    Exceptions raised by the iterator are re-raised in the consuming thread.
    """

    def __init__(
        self,
        batches: Iterable[Any],
        buffer_size: int = 2,
        device: Any = None,
        transform: Callable[[Any], Any] | None = None,
        to_device: bool = True,
    ):
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self._batches = batches
        self._queue: queue.Queue = queue.Queue(maxsize=buffer_size)
        self._stop = threading.Event()
        self._device = device
        self._transform = transform
        self._to_device = to_device
        self._thread: threading.Thread | None = None
        self._done = False

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for batch in self._batches:
                if self._stop.is_set():
                    return
                if self._transform is not None:
                    batch = self._transform(batch)
                if self._to_device:
                    batch = jax.device_put(batch, self._device)
                if not self._put(("ok", batch)):
                    return
            self._put(("end", _END))
        except BaseException as e:  # handed to the consumer
            self._put(("error", e))

    def start(self) -> PrefetchLoader:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="PrefetchLoader", daemon=True)
            self._thread.start()
        return self

    def __iter__(self) -> Iterator[Any]:
        self.start()
        while not self._done:
            kind, item = self._queue.get()
            if kind == "ok":
                yield item
            elif kind == "end":
                self._done = True
            else:
                self._done = True
                raise item

    def close(self) -> None:
        """Stops the thread (after the batch it is working on) and drops queued batches."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._done = True

    def __enter__(self) -> PrefetchLoader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
