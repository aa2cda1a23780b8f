"""Closed-loop evaluation engine: K stochastic rollouts per scenario, metrics per step.

For each batch of scenarios, :func:`evaluate`

1. resets the environment (the first ``init_steps`` = 11 log steps are replayed: 10 of
   history plus the current one; the multi-agent setting builds the offroad index here,
   once per scenario),
2. tiles the reset state K times into one batch axis ``(K * B,)`` (mode-major: row
   ``k * B + b`` is mode ``k`` of scenario ``b``), so the simulator sees an ordinary batch
   and the offroad fast path stays a single ``lax.switch``,
3. initialises the actor state on that tiled state (a recurrent policy warms up on the
   logged history here) and rolls the actor out for the remaining ``T - init_steps`` = 80
   steps in one ``lax.scan``,
4. records for every simulated state (the states after each action, index ``1..S`` of the
   rollout's metrics) the log divergence, overlap and offroad of the SDC (planning) or of
   every object (multi-agent), with the step validity (object valid and log valid); the
   SDC's offroad is judged after the scan, all steps at once (:func:`sdc_offroad`),

all in one function jitted once per batch shape. Per-step records are reduced on the host
to :class:`~diffdrive.eval.aggregate.ModeStats`; :meth:`EvalResults.summary` applies the
protocol (:mod:`diffdrive.eval.aggregate`).

Test-time dynamics noise (the APG paper's robustness experiment): with
``dynamics_noise_std > 0`` the environment is wrapped (:func:`with_position_noise`) so that
after every step Gaussian noise of that standard deviation (metres, per axis) is added to
the x and y of every controlled object (the SDC in the planning setting). The noise is
drawn from the step's PRNG key, which the wrapper splits off before calling the actor.

Any actor works: ``actor(view, actor_state, key) -> (Action, actor_state)`` with its
initial state from ``init_actor_state(state)`` or ``init_actor_state(state, key)`` (called
on the reset, tiled state of batch shape ``(K * B,)``; ``None`` for stateless actors).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffdrive import distributed
from diffdrive.eval import aggregate
from diffdrive.sim import dynamics as dynamics_lib
from diffdrive.sim import env as env_lib
from diffdrive.sim import metrics as metrics_lib
from diffdrive.sim.datatypes import Action, Array, SimulatorState, is_road_edge

PLANNING = "planning"
MULTI_AGENT = "multi_agent"
SETTINGS = (PLANNING, MULTI_AGENT)
EVAL_METRICS = ("log_divergence", "overlap", "offroad")

InitActorState = Callable[..., Any]
"""``init_actor_state(state)`` or ``init_actor_state(state, key) -> actor_state``."""


# --------------------------------------------------------------------------------------
# Environments
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def make_environment(
    setting: str = PLANNING,
    dynamics: dynamics_lib.DynamicsModel | None = None,
    allow_new_objects_after_warmup: bool | None = None,
    offroad_exact_for_invalid: bool = False,
) -> env_lib.MultiAgentEnvironment:
    """The evaluation environment of a setting.

    Args:
      setting: ``planning`` (PlanningAgentEnvironment: the SDC follows the actor, others
        replay the log) or ``multi_agent`` (MultiAgentEnvironment with
        ``controlled_object='valid'``).
      dynamics: the model (default Waymax's bicycle).
      allow_new_objects_after_warmup: default True for planning (Waymax's default) and
        False for multi-agent, where it makes the controlled set the objects valid at the
        end of warm-up (objects appearing later would otherwise be "controlled" from
        their padding pose).
      offroad_exact_for_invalid: False (default here) judges objects invalid at a step by
        the offroad grid alone; every valid object, hence every masked metric, is exact.

    The planning environment builds no offroad index: :func:`evaluate` judges the SDC's
    offroad after the rollout, all steps at once against every roadgraph point (Waymax's
    brute force), which costs less than building the index (~0.16 s per scenario). The
    multi-agent one, which judges every object at every step, builds it in ``reset``.

    Returns:
      The environment, recording :data:`EVAL_METRICS`. Memoized: equal arguments give the
      same (immutable) object, so :func:`evaluate` reuses its compilations.
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {SETTINGS}")
    dynamics = dynamics or dynamics_lib.InvertibleBicycleModel()
    if allow_new_objects_after_warmup is None:
        allow_new_objects_after_warmup = setting == PLANNING
    config = env_lib.EnvironmentConfig(
        controlled_object="sdc" if setting == PLANNING else "valid",
        allow_new_objects_after_warmup=allow_new_objects_after_warmup,
        metrics=EVAL_METRICS,
        road_edge_index=setting != PLANNING,
        offroad_exact_for_invalid=offroad_exact_for_invalid,
    )
    if setting == PLANNING:
        return env_lib.PlanningAgentEnvironment(dynamics, config)
    return env_lib.MultiAgentEnvironment(dynamics, config)


def setting_of(environment: env_lib.MultiAgentEnvironment) -> str:
    """``planning`` for a PlanningAgentEnvironment (or subclass), else ``multi_agent``."""
    return PLANNING if isinstance(environment, env_lib.PlanningAgentEnvironment) else MULTI_AGENT


@struct.dataclass
class NoisyAction(Action):
    """An action plus the position noise ``(..., 2)`` (m) to add after the step.

    ``noise`` has the action's leading shape: ``(..., 2)`` in the planning setting,
    ``(..., N, 2)`` in the multi-agent one.
    """

    noise: Array = None


class _PositionNoise:
    """Mixin: adds ``NoisyAction.noise`` to controlled objects' x, y after each step."""

    noise_std: float = 0.0

    def _step_view(self, view, action, mask):
        if not isinstance(action, NoisyAction):
            return super()._step_view(view, action, mask)
        noise = action.noise
        nxt = super()._step_view(view, Action(data=action.data, valid=action.valid), mask)
        if isinstance(self, env_lib.PlanningAgentEnvironment):
            dx, dy = noise[..., 0:1], noise[..., 1:2]  # (..., 1): broadcast over objects
        else:
            dx, dy = noise[..., 0], noise[..., 1]  # (..., N)
        hit = mask & nxt.valid
        return nxt.replace(x=nxt.x + jnp.where(hit, dx, 0.0), y=nxt.y + jnp.where(hit, dy, 0.0))

    def rollout(self, state, actor, *args, **kwargs):
        return super().rollout(state, noisy_actor(actor, self.noise_std), *args, **kwargs)


def noisy_actor(actor: env_lib.Actor, std: float) -> env_lib.Actor:
    """Wraps ``actor`` so its actions carry Gaussian position noise of ``std`` metres.

    The step key is split into the actor's key and the noise key. Only environments made by
    :func:`with_position_noise` apply the noise.
    """

    def act(view, actor_state, key):
        k_actor, k_noise = jax.random.split(key)
        action, actor_state = actor(view, actor_state, k_actor)
        shape = action.data.shape[:-1] + (2,)
        noise = std * jax.random.normal(k_noise, shape, jnp.float32)
        return NoisyAction(data=action.data, valid=action.valid, noise=noise), actor_state

    return act


@functools.cache
def _noisy_class(cls: type) -> type:
    return type(f"Noisy{cls.__name__}", (_PositionNoise, cls), {})


def with_position_noise(
    environment: env_lib.MultiAgentEnvironment, std: float
) -> env_lib.MultiAgentEnvironment:
    """A copy of ``environment`` whose rollouts add N(0, std^2) to controlled x, y each step.

    ``std == 0`` returns ``environment`` itself (bit-identical results). Works for any
    environment class (the copy's class is a subclass of the original's).
    """
    if std < 0:
        raise ValueError(f"dynamics noise std must be >= 0, got {std}")
    if std == 0:
        return environment
    return _noisy_copy(environment, float(std))


def _noisy_copy(environment, std):
    """The noisy copy; ``std`` may be a traced scalar."""
    noisy = object.__new__(_noisy_class(type(environment)))
    noisy.__dict__.update(environment.__dict__)
    noisy.noise_std = std
    return noisy


# --------------------------------------------------------------------------------------
# One batch
# --------------------------------------------------------------------------------------


def tile_modes(state: SimulatorState, num_modes: int) -> SimulatorState:
    """Repeats a batched state ``(B, ...)`` K times into ``(K * B, ...)``, mode-major.

    Scalars (the shared ``timestep``) are kept.
    """
    return jax.tree.map(
        lambda a: jnp.tile(a, (num_modes,) + (1,) * (a.ndim - 1)) if jnp.ndim(a) else a, state
    )


def _call_init(init_actor_state: InitActorState | None, state: SimulatorState, key: Array):
    if init_actor_state is None:
        return None
    try:
        params = [
            p
            for p in inspect.signature(init_actor_state).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        takes_key = len(params) >= 2
    except (TypeError, ValueError):
        takes_key = False
    return init_actor_state(state, key) if takes_key else init_actor_state(state)


def sdc_offroad(
    environment: env_lib.MultiAgentEnvironment,
    state: SimulatorState,
    trajectory,
    max_edge_points: int = 8192,
) -> Array:
    """Waymax's offroad of the SDC at every step of a rolled-out trajectory, in one call.

    Offroad judges each object alone, so the SDC's steps can be queried together as if they
    were objects: one exact query of ``4 S`` corners per scenario instead of ``4 N`` per
    step. Besides skipping the other objects, this keeps objects that appear mid-rollout
    (carrying Waymax's fill z and size) from pushing every step onto the brute-force path.

    Args:
      environment: supplies the offroad index configuration.
      state: the reset state ``(...)`` (roadgraph and offroad index).
      trajectory: ``(..., N, S)`` simulated objects.
      max_edge_points: without an offroad index, the brute force runs on at most this many
        roadgraph samples (:func:`offroad_subset`), or on all of them when more are needed.

    Returns:
      ``(..., S)`` bool (the SDC's values; object 0's where there is no SDC).
    """
    sdc = jnp.argmax(state.object_metadata.is_sdc, axis=-1)
    steps = jax.tree.map(
        lambda a: jnp.take_along_axis(a, sdc[..., None, None], axis=-2)[..., 0, :], trajectory
    )
    if state.road_edge_index is not None:
        result = metrics_lib.offroad(
            steps,
            state.roadgraph_points,
            state.road_edge_index,
            environment.config.index_config.fallback_queries,
        )
        return result.value > 0
    # No index: Waymax's brute force, one scenario at a time to bound the memory, over the
    # only roadgraph samples it can read (see offroad_subset).
    batch = steps.x.shape[:-1]

    def flat(tree):
        return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[len(batch) :]), tree)

    def one(args):
        objects, roadgraph = args
        cap = min(max_edge_points, roadgraph.num_points)
        subset, overflow = offroad_subset(roadgraph, cap)
        return jax.lax.cond(
            overflow,
            lambda: metrics_lib.offroad(objects, roadgraph).value,
            lambda: metrics_lib.offroad(objects, subset).value,
        )

    values = jax.lax.map(one, (flat(steps), flat(state.roadgraph_points)))
    return values.reshape(steps.x.shape) > 0


def offroad_subset(roadgraph, size: int):
    """The roadgraph samples Waymax's offroad can read, in order, padded to ``size``.

    Offroad takes the nearest valid road-edge sample and then the sample just before it
    (same polyline test); with no road edge at all, sample 0. Keeping the road-edge
    samples, each one's predecessor and sample 0 in their original order therefore gives
    bit-identical offroad values on far fewer points (about a third of WOMD's 20000).

    Args:
      roadgraph: one scenario's points ``(P,)``.
      size: static number of points kept.

    Returns:
      ``(subset (size,), overflow)``: padding entries are invalid; ``overflow`` is True when
      more than ``size`` samples are needed (use the full roadgraph then).
    """
    edge = roadgraph.valid & is_road_edge(roadgraph.types)
    keep = edge | jnp.concatenate([edge[1:], jnp.zeros((1,), bool)])
    keep = keep.at[0].set(True)
    order = jnp.argsort(~keep, stable=True)[:size]  # kept samples first, in order
    subset = jax.tree.map(lambda a: a[order], roadgraph)
    slot_used = jnp.arange(size) < jnp.sum(keep)
    return subset.replace(valid=subset.valid & slot_used), jnp.sum(keep) > size


def make_batch_fn(
    environment: env_lib.MultiAgentEnvironment,
    actor: env_lib.Actor,
    init_actor_state: InitActorState | None = None,
    num_modes: int = 1,
    dynamics_noise_std: float = 0.0,
    num_steps: int | None = None,
) -> Callable[[SimulatorState, Array], dict[str, Array]]:
    """The jitted per-batch evaluation ``fn(batch, key) -> records``.

    Args:
      environment: from :func:`make_environment` (or any environment).
      actor: ``actor(view, actor_state, key) -> (action, actor_state)``.
      init_actor_state: see the module docstring.
      num_modes: K rollouts per scenario.
      dynamics_noise_std: position noise (m) added to controlled objects after each step.
      num_steps: simulated steps (default ``T - init_steps``: 80 for 91-step logs).

    Returns:
      ``fn(batch, key)`` with ``batch`` an un-reset :class:`SimulatorState` ``(B, ...)``;
      returns ``log_divergence``, ``overlap``, ``offroad``, ``valid`` of shape
      ``(K, B, S)`` (planning) or ``(K, B, N, S)`` (multi-agent), ``has_sdc`` ``(B,)`` and
      ``controlled`` ``(B, N)``. Compilations are shared by calls with the same
      environment, actor, initialiser, K, noise on/off and step count.
    """
    if num_modes < 1:
        raise ValueError(f"num_modes must be >= 1, got {num_modes}")
    if dynamics_noise_std < 0:
        raise ValueError(f"dynamics noise std must be >= 0, got {dynamics_noise_std}")
    fn = _batch_fn(
        environment, actor, init_actor_state, num_modes, dynamics_noise_std > 0, num_steps
    )
    return functools.partial(fn, noise_std=jnp.float32(dynamics_noise_std))


@functools.lru_cache(maxsize=16)
def _batch_fn(environment, actor, init_actor_state, num_modes, noisy, num_steps):
    """Jitted ``run(batch, key, noise_std)``, cached so equal requests share compilations.

    Arguments hash by identity (environments, actors) or value; the noise std is traced,
    so all non-zero stds share one compilation.
    """
    planning = setting_of(environment) == PLANNING
    # Planning: offroad of the SDC alone, after the scan (see sdc_offroad).
    names = ("log_divergence", "overlap") if planning else EVAL_METRICS

    def run(batch: SimulatorState, key: Array, noise_std: Array) -> dict[str, Array]:
        env = _noisy_copy(environment, noise_std) if noisy else environment
        state = env.reset(batch)
        b = state.shape[0]
        steps = num_steps
        if steps is None:
            steps = state.num_timesteps - env.config.init_steps
        controlled = env.control_mask(state.object_metadata, state.sim_trajectory)
        tiled = tile_modes(state, num_modes)
        k_init, k_roll = jax.random.split(key)
        out = env.rollout(
            tiled,
            actor,
            steps,
            key=k_roll,
            actor_state=_call_init(init_actor_state, tiled, k_init),
            metric_names=names,
            with_rewards=False,
        )
        if planning:
            offroad = sdc_offroad(env, tiled, out.trajectory)[..., 1:]
        else:
            offroad = out.metrics["offroad"].value[..., 1:] > 0

        def per_step(a):  # (K * B, ..., S) -> (K, B, ..., S)
            return a.reshape((num_modes, b) + a.shape[1:])

        ld = out.metrics["log_divergence"]
        return {
            "log_divergence": per_step(ld.value[..., 1:]),
            "overlap": per_step(out.metrics["overlap"].value[..., 1:] > 0),
            "offroad": per_step(offroad),
            "valid": per_step(ld.valid[..., 1:]),
            "has_sdc": jnp.any(state.object_metadata.is_sdc, axis=-1),
            "controlled": controlled,
        }

    return jax.jit(run)


# --------------------------------------------------------------------------------------
# Many batches
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class EvalResults:
    """Per-scenario results of :func:`evaluate` (numpy), ``M`` scenarios in input order.

    Attributes:
      setting: ``planning`` or ``multi_agent``.
      stats: :class:`~diffdrive.eval.aggregate.ModeStats` ``(K, M)`` or ``(K, M, N)``.
      has_sdc: ``(M,)`` bool; scenarios without an SDC are skipped by the summary.
      controlled: ``(M, N)`` bool, the controlled objects (multi-agent: the evaluated ones).
      scenario_ids: ``M`` ids (``batch<i>:<j>`` when the batches carried none).
      num_modes: K.
      noise_std: the test-time position noise (m).
      timing: ``total_s`` (wall time of all batches), ``first_batch_s`` (includes the
        compilation), ``steady_s`` and ``steady_scenarios`` (the other batches),
        ``scenarios_per_s`` (steady state when there are several batches, else overall).
      steps: per-step records ``(K, M[, N], S)`` (``log_divergence``, ``overlap``,
        ``offroad``, ``valid``) when ``keep_steps``; else None.
    """

    setting: str
    stats: aggregate.ModeStats
    has_sdc: np.ndarray
    controlled: np.ndarray
    scenario_ids: list[str]
    num_modes: int
    noise_std: float
    timing: dict[str, float]
    steps: dict[str, np.ndarray] | None = None

    @property
    def num_scenarios(self) -> int:
        return len(self.scenario_ids)

    @property
    def object_mask(self) -> np.ndarray | None:
        return self.controlled if self.setting == MULTI_AGENT else None

    def summary(self) -> dict[str, Any]:
        """:func:`diffdrive.eval.aggregate.summarize` of these results."""
        return aggregate.summarize(self.stats, self.has_sdc, self.object_mask)

    def per_scenario(self) -> list[dict[str, Any]]:
        return aggregate.per_scenario_records(
            self.stats, self.scenario_ids, self.has_sdc, self.object_mask
        )

    def to_dict(self, meta: dict[str, Any] | None = None, per_scenario: bool = False) -> dict:
        """JSON-ready ``{"meta", "metrics", "per_mode_mean", "counts"[, "per_scenario"]}``."""
        meta = dict(meta or {})
        meta.setdefault("num_scenarios", self.num_scenarios)
        meta.setdefault("K", self.num_modes)
        meta.setdefault("setting", self.setting)
        meta.setdefault("dynamics_noise_std", self.noise_std)
        meta.setdefault("timing", self.timing)
        return aggregate.results_dict(
            self.summary(), meta, self.per_scenario() if per_scenario else None
        )


def _pad_batch(state: SimulatorState, size: int) -> SimulatorState:
    """Pads the leading axis to ``size`` by repeating the first scenario (host side)."""
    b = state.shape[0]
    if b >= size:
        return state

    def pad(a):
        a = np.asarray(a)
        return np.concatenate([a, np.repeat(a[:1], size - b, axis=0)], axis=0)

    return jax.tree.map(pad, state)


def _split_item(item: Any, index: int) -> tuple[SimulatorState, list[str]]:
    if isinstance(item, SimulatorState):
        return item, [f"batch{index}:{j}" for j in range(item.shape[0])]
    state, ids = item
    ids = [str(i) for i in ids]
    if len(ids) != state.shape[0]:
        raise ValueError(f"batch {index}: {len(ids)} ids for {state.shape[0]} scenarios")
    return state, ids


def evaluate(
    environment: env_lib.MultiAgentEnvironment,
    actor: env_lib.Actor,
    init_actor_state: InitActorState | None,
    batches: Iterable[SimulatorState | tuple[SimulatorState, Sequence[str]]],
    num_modes: int = 1,
    key: Array | None = None,
    dynamics_noise_std: float = 0.0,
    num_steps: int | None = None,
    keep_steps: bool = False,
    progress: Callable[[int], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> EvalResults:
    """Evaluates ``actor`` closed-loop on every scenario of ``batches``, K rollouts each.

    Args:
      environment: a planning or multi-agent environment (:func:`make_environment`).
      actor: ``actor(view, actor_state, key) -> (action, actor_state)``.
      init_actor_state: ``f(state)`` or ``f(state, key)`` giving the initial actor state
        for the reset, tiled state ``(K * B, ...)``; None for stateless actors.
      batches: un-reset batched states ``(B, ...)`` (:func:`diffdrive.data.batching.
        iterate_batches`), or ``(state, scenario_ids)`` pairs (:func:`batches_with_ids`).
        A batch smaller than the first is padded (and the padding dropped), so one
        compilation serves all.
      num_modes: K stochastic rollouts per scenario (minADE protocol).
      key: PRNG key (default ``PRNGKey(0)``); batch ``i`` uses ``fold_in(key, i)``.
      dynamics_noise_std: Gaussian position noise (m) added to controlled objects after
        every step.
      num_steps: simulated steps (default ``T - 11`` = 80).
      keep_steps: also keep the per-step records in :attr:`EvalResults.steps`.
      progress: called with the number of scenarios done after each batch.
      mesh: split every batch's scenarios over the ``data`` axis of these devices
        (:func:`diffdrive.distributed.make_mesh`); batches are padded to a multiple of the
        device count (the padding dropped). Every scenario's rollouts are computed
        independently, so the results equal a single device's when the batch size is a
        multiple of the device count (else stochastic actors see a padded batch shape,
        hence other random draws). With several processes every process passes the same
        batches and gets the whole results.

    Returns:
      :class:`EvalResults`.
    """
    setting = setting_of(environment)
    fn = make_batch_fn(
        environment, actor, init_actor_state, num_modes, dynamics_noise_std, num_steps
    )
    key = jax.random.PRNGKey(0) if key is None else key
    parts, has_sdc, controlled, ids = [], [], [], []
    steps: dict[str, list[np.ndarray]] = {}
    size = None
    times: list[tuple[float, int]] = []
    for i, item in enumerate(batches):
        state, batch_ids = _split_item(item, i)
        b = state.shape[0]
        size = size or distributed.padded_size(b, mesh)
        start = time.perf_counter()
        padded = _pad_batch(state, size)
        if mesh is not None:
            padded = distributed.shard_batch(padded, mesh)
        rec = distributed.to_host(fn(padded, jax.random.fold_in(key, i)))
        times.append((time.perf_counter() - start, b))
        # Drop the padding: scenario axis 1 of the per-step records, 0 of the others.
        rec = {
            k: np.asarray(v)[:b] if k in ("has_sdc", "controlled") else np.asarray(v)[:, :b]
            for k, v in rec.items()
        }
        parts.append(
            aggregate.step_stats(
                rec["log_divergence"], rec["overlap"], rec["offroad"], rec["valid"]
            )
        )
        has_sdc.append(rec["has_sdc"])
        controlled.append(rec["controlled"])
        ids.extend(batch_ids)
        if keep_steps:
            for name in ("log_divergence", "overlap", "offroad", "valid"):
                steps.setdefault(name, []).append(rec[name])
        if progress is not None:
            progress(len(ids))
    if not parts:
        raise ValueError("evaluate: no batches")
    n = max(c.shape[-1] for c in controlled)
    controlled = [np.pad(c, ((0, 0), (0, n - c.shape[-1]))) for c in controlled]
    total = sum(t for t, _ in times)
    steady = times[1:]
    steady_s = sum(t for t, _ in steady)
    steady_n = sum(m for _, m in steady)
    timing = {
        "total_s": total,
        "first_batch_s": times[0][0],
        "steady_s": steady_s,
        "steady_scenarios": steady_n,
        "scenarios_per_s": (steady_n / steady_s) if steady_n and steady_s > 0 else len(ids) / total,
    }
    kept = None
    if keep_steps:
        kept = {k: _concat_steps(v, setting) for k, v in steps.items()}
    return EvalResults(
        setting=setting,
        stats=aggregate.concat_stats(parts),
        has_sdc=np.concatenate(has_sdc),
        controlled=np.concatenate(controlled),
        scenario_ids=ids,
        num_modes=num_modes,
        noise_std=float(dynamics_noise_std),
        timing=timing,
        steps=kept,
    )


def _concat_steps(parts: list[np.ndarray], setting: str) -> np.ndarray:
    if setting == MULTI_AGENT:
        n = max(p.shape[2] for p in parts)
        parts = [np.pad(p, ((0, 0), (0, 0), (0, n - p.shape[2]), (0, 0))) for p in parts]
    return np.concatenate(parts, axis=1)


def batches_with_ids(
    scenarios: Iterable[Any],
    batch_size: int,
    max_objects: int = 128,
    num_roadgraph_points: int = 20000,
    num_timesteps: int | None = 91,
) -> Iterator[tuple[SimulatorState, list[str]]]:
    """``(state, scenario_ids)`` batches of decoded scenarios (fixed shape, input order).

    Args:
      scenarios: :class:`~diffdrive.data.types.DecodedScenario` iterable.
      batch_size: scenarios per batch.
      max_objects, num_roadgraph_points, num_timesteps: the padded shape
        (:func:`diffdrive.data.batching.pad_arrays`).
    """
    from diffdrive.data import batching

    pending: list[Any] = []

    def flush():
        padded = [
            batching.pad_arrays(
                s.arrays, max_objects, num_roadgraph_points, num_timesteps, scenario=s
            )[0]
            for s in pending
        ]
        return batching.state_from_flat_batch(batching.stack_arrays(padded)), [
            str(s.scenario_id) for s in pending
        ]

    for s in scenarios:
        pending.append(s)
        if len(pending) == batch_size:
            yield flush()
            pending = []
    if pending:
        yield flush()
