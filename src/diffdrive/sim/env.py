"""Environments (multi-agent and planning), actors, and the scanned rollout.

Waymax-compatible entry points: ``env.reset(state)``, ``env.step(state, action)``,
``env.metrics(state)``, ``env.reward(state, action)`` on a full
:class:`~diffdrive.sim.datatypes.SimulatorState`.

The fast path is :meth:`MultiAgentEnvironment.rollout`: a ``lax.scan`` whose carry holds
only the current (and previous) step of every object, ``(..., N)``, while the log, the
roadgraph and the offroad index are closed over. Each step emits its state, so the
history comes out of the scan instead of being copied through it. Outputs follow
Waymax's ``rollout``: metrics and rewards of the pre-step state at every step, then of the
final state.

Nothing here is jitted: wrap ``env.step`` or ``env.rollout`` in ``jax.jit`` at the top.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from diffdrive.sim import metrics as metrics_lib
from diffdrive.sim.datatypes import (
    INIT_STEPS,
    Action,
    Array,
    MetricResult,
    ObjectMetadata,
    RoadgraphPoints,
    SimulatorState,
    TrafficLights,
    Trajectory,
    select_by_onehot,
)
from diffdrive.sim.dynamics import DynamicsModel, StateDynamics, step_objects


class ControlledObject(str, enum.Enum):
    """Which objects follow actions (the rest replay the log)."""

    SDC = "sdc"
    MODELED = "modeled"
    VALID = "valid"


@dataclasses.dataclass(frozen=True)
class EnvironmentConfig:
    """Attributes:
    init_steps: log steps replayed by ``reset`` (10 history + current).
    controlled_object: ``sdc``, ``modeled`` or ``valid``.
    allow_new_objects_after_warmup: uncontrolled objects may appear after warm-up; with
      ``valid`` control and False, only objects valid at the end of warm-up are controlled.
    metrics: metric names evaluated by ``metrics`` and ``rollout``.
    rewards: (metric name, weight) pairs of the linear reward.
    road_edge_index: build the offroad grid in ``reset`` (exact, much faster offroad).
    index_config: its grid parameters.
    offroad_exact_for_invalid: Waymax's values for objects invalid at a step too (True,
      the default); False judges those by the grid alone, a deliberate difference that
      keeps the rollout fast when padding poses sit far from the map (valid objects, and
      so every masked metric, stay exact).
    """

    init_steps: int = INIT_STEPS
    controlled_object: ControlledObject | str = ControlledObject.SDC
    allow_new_objects_after_warmup: bool = True
    metrics: tuple[str, ...] = ("log_divergence", "overlap", "offroad")
    rewards: tuple[tuple[str, float], ...] = (("overlap", -1.0), ("offroad", -1.0))
    road_edge_index: bool = True
    index_config: metrics_lib.RoadEdgeIndexConfig = metrics_lib.RoadEdgeIndexConfig()
    offroad_exact_for_invalid: bool = True


@struct.dataclass
class StepView:
    """What actors and metrics see at one step. ``current``/``previous``: ``(..., N)``.

    ``log``: ``(..., N, T)``; ``traffic_lights``: ``(..., 16, T)``; ``timestep``: index of
    ``current``.
    """

    current: Trajectory
    previous: Trajectory
    timestep: Array
    log: Trajectory
    metadata: ObjectMetadata
    roadgraph: RoadgraphPoints
    traffic_lights: TrafficLights
    road_edge_index: Any = None

    @property
    def log_current(self) -> Trajectory:
        return self.log.at(self.timestep)

    @property
    def log_next(self) -> Trajectory:
        return self.log.at(self.timestep + 1)

    def metric_inputs(self) -> metrics_lib.MetricInputs:
        return metrics_lib.MetricInputs(
            current=self.current,
            previous=self.previous,
            log=self.log_current,
            metadata=self.metadata,
            roadgraph=self.roadgraph,
            road_edge_index=self.road_edge_index,
        )


Actor = Callable[[StepView, Any, Array], tuple[Action, Any]]
"""``actor(view, actor_state, key) -> (action, actor_state)``."""


@struct.dataclass
class RolloutOutput:
    """Result of :meth:`MultiAgentEnvironment.rollout` with ``S`` simulated steps.

    Attributes:
      trajectory: ``(..., N, S + 1)`` simulated states from the start step to the end.
      actions: the actions taken, leaves with a trailing step axis ``(..., S)`` appended
        after the action's own axes (``data`` ``(..., N, dim, S)``).
      metrics: name -> MetricResult with a trailing axis ``S + 1`` (pre-step states, then
        the final state, as Waymax's rollout).
      rewards: ``(..., N or nothing, S + 1)``.
      final_timestep: timestep of the last state.
      actor_state: the actor's final state.
    """

    trajectory: Trajectory
    actions: Action
    metrics: dict[str, MetricResult]
    rewards: Array
    final_timestep: Array
    actor_state: Any = None


def _time_last(tree):
    return jax.tree.map(lambda a: jnp.moveaxis(a, 0, -1), tree)


class MultiAgentEnvironment:
    """Waymax's base environment: the configured objects follow actions ``(..., N, dim)``."""

    def __init__(self, dynamics: DynamicsModel, config: EnvironmentConfig = EnvironmentConfig()):
        self.dynamics = dynamics
        self.config = config
        self.controlled = ControlledObject(config.controlled_object)

    # ---------------------------------------------------------------- masks and reset

    def control_mask(
        self, metadata: ObjectMetadata, sim_trajectory: Trajectory | None = None
    ) -> Array:
        """``(..., N)`` bool: which objects this environment controls."""
        if self.controlled is ControlledObject.SDC:
            return metadata.is_sdc
        if self.controlled is ControlledObject.MODELED:
            return metadata.is_modeled
        if not self.config.allow_new_objects_after_warmup:
            if sim_trajectory is None:
                raise ValueError(
                    "control_mask: 'valid' control without injection needs the sim trajectory"
                )
            return sim_trajectory.valid[..., self.config.init_steps - 1]
        return metadata.is_valid

    def reset(self, state: SimulatorState) -> SimulatorState:
        """Replays the first ``init_steps`` log steps; ``timestep`` becomes ``init_steps - 1``.

        Also builds the offroad index when configured and not already present.
        """
        if state.num_objects == 0:
            raise ValueError("reset: the state has no objects")
        k = self.config.init_steps
        if not 0 < k <= state.num_timesteps:
            raise ValueError(f"reset: init_steps={k} outside 1..{state.num_timesteps}")
        sim = state.log_trajectory.fill_invalid()
        warm = jax.tree.map(lambda a: a[..., :k], state.log_trajectory)
        sim = jax.tree.map(lambda a, w: a.at[..., :k].set(w), sim, warm)
        index = state.road_edge_index
        if self.config.road_edge_index and index is None:
            index = metrics_lib.build_road_edge_index(
                state.roadgraph_points, self.config.index_config
            )
        return state.replace(
            sim_trajectory=sim, timestep=jnp.asarray(k - 1, jnp.int32), road_edge_index=index
        )

    # ---------------------------------------------------------------- single steps

    def view(self, state: SimulatorState) -> StepView:
        t = state.timestep
        return StepView(
            current=state.sim_trajectory.at(t),
            previous=state.sim_trajectory.at(jnp.maximum(t - 1, 0)),
            timestep=t,
            log=state.log_trajectory,
            metadata=state.object_metadata,
            roadgraph=state.roadgraph_points,
            traffic_lights=state.log_traffic_light,
            road_edge_index=state.road_edge_index,
        )

    def _next_objects(self, view: StepView, action: Action, is_controlled: Array) -> Trajectory:
        return step_objects(
            self.dynamics,
            action,
            view.current,
            view.log_next,
            is_controlled,
            self.config.allow_new_objects_after_warmup,
        )

    def _step_view(self, view: StepView, action: Action, mask: Array) -> Trajectory:
        return self._next_objects(view, action, mask)

    def step(self, state: SimulatorState, action: Action) -> SimulatorState:
        """Writes ``sim[timestep + 1]`` and advances ``timestep``."""
        view = self.view(state)
        mask = self.control_mask(state.object_metadata, state.sim_trajectory)
        nxt = self._step_view(view, action, mask)
        t1 = state.timestep + 1
        return state.replace(sim_trajectory=state.sim_trajectory.set_at(t1, nxt), timestep=t1)

    # ---------------------------------------------------------------- metrics, reward

    def _metrics_of_view(self, view: StepView, names) -> dict[str, MetricResult]:
        return metrics_lib.run_metrics(names, view.metric_inputs())

    def _reward_of(self, per_object: dict[str, MetricResult], mask: Array) -> Array:
        reward = jnp.zeros(mask.shape, jnp.float32)
        for name, weight in self.config.rewards:
            reward = reward + weight * per_object[name].masked_value() * mask
        return reward

    def _reward_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.config.rewards)

    def metrics(self, state: SimulatorState) -> dict[str, MetricResult]:
        """The configured metrics at ``timestep``, per object ``(..., N)``."""
        return self._metrics_of_view(self.view(state), self.config.metrics)

    def reward(self, state: SimulatorState, action: Action | None = None) -> Array:
        """Linear combination of metrics over controlled objects, ``(..., N)``."""
        view = self.view(state)
        per_object = self._metrics_of_view(view, self._reward_names())
        mask = self.control_mask(state.object_metadata, state.sim_trajectory)
        return self._reward_of(per_object, mask)

    # ---------------------------------------------------------------- rollout

    def rollout(
        self,
        state: SimulatorState,
        actor: Actor,
        num_steps: int | None = None,
        key: Array | None = None,
        actor_state: Any = None,
        metric_names: tuple[str, ...] | None = None,
        with_rewards: bool = True,
    ) -> RolloutOutput:
        """Runs ``actor`` for ``num_steps`` (default: to the end of the log) in one scan.

        Args:
          state: a reset state (``timestep`` scalar).
          actor: ``actor(view, actor_state, key) -> (action, actor_state)``.
          num_steps: static number of steps.
          key: PRNG key, split once per step.
          actor_state: the actor's initial carry (e.g. a GRU state).
          metric_names: metrics to record each step (default: the config's).
          with_rewards: also record the configured reward.

        Returns:
          :class:`RolloutOutput`.
        """
        if num_steps is None:
            num_steps = int(state.num_timesteps - 1 - self.config.init_steps + 1)
        names = self.config.metrics if metric_names is None else tuple(metric_names)
        needed = tuple(dict.fromkeys(names + (self._reward_names() if with_rewards else ())))
        key = jax.random.PRNGKey(0) if key is None else key
        mask = self.control_mask(state.object_metadata, state.sim_trajectory)
        base = self.view(state)

        with_offroad = "offroad" in needed
        others = tuple(n for n in needed if n != "offroad")

        def measure(view, cache):
            per_object = self._metrics_of_view(view, others)
            if with_offroad:
                # Objects parked at fill values keep their exact value instead of forcing the
                # offroad fallback at every step.
                per_object["offroad"], cache = metrics_lib.offroad_cached(
                    view.current,
                    view.roadgraph,
                    view.road_edge_index,
                    cache,
                    self.config.index_config.fallback_queries,
                    self.config.offroad_exact_for_invalid,
                )
            reward = self._reward_of(per_object, mask) if with_rewards else jnp.zeros(())
            recorded = (
                self._reduce_metrics({n: per_object[n] for n in names}, view),
                self._reduce_reward(reward, view),
            )
            return recorded, cache

        def body(carry, step_key):
            current, previous, t, a_state, cache = carry
            view = base.replace(current=current, previous=previous, timestep=t)
            action, a_state = actor(view, a_state, step_key)
            recorded, cache = measure(view, cache)
            nxt = self._step_view(view, action, mask)
            return (nxt, current, t + 1, a_state, cache), (nxt, action, recorded)

        cache0 = metrics_lib.OffroadCache.empty(base.current.x.shape) if with_offroad else None
        init = (base.current, base.previous, base.timestep, actor_state, cache0)
        keys = jax.random.split(key, num_steps)
        (last, before_last, t_end, a_state, cache), (traj, actions, recorded) = jax.lax.scan(
            body, init, keys
        )
        final_view = base.replace(current=last, previous=before_last, timestep=t_end)
        (final_metrics, final_reward), _ = measure(final_view, cache)
        step_metrics, step_rewards = recorded
        metrics_out = jax.tree.map(
            lambda seq, fin: jnp.concatenate([jnp.moveaxis(seq, 0, -1), fin[..., None]], axis=-1),
            step_metrics,
            final_metrics,
        )
        rewards = jnp.concatenate([jnp.moveaxis(step_rewards, 0, -1), final_reward[..., None]], -1)
        trajectory = jax.tree.map(
            lambda first, rest: jnp.concatenate([first[..., None], jnp.moveaxis(rest, 0, -1)], -1),
            base.current,
            traj,
        )
        return RolloutOutput(
            trajectory=trajectory,
            actions=_time_last(actions),
            metrics=metrics_out,
            rewards=rewards,
            final_timestep=t_end,
            actor_state=a_state,
        )

    def _reduce_metrics(self, per_object, view):
        return per_object

    def _reduce_reward(self, reward, view):
        return reward

    def state_after_rollout(self, state: SimulatorState, output: RolloutOutput) -> SimulatorState:
        """The full state a step-by-step run would have reached (one write after the scan)."""
        start = state.timestep
        steps = output.trajectory.num_timesteps
        sim = jax.tree.map(
            lambda full, hist: jax.lax.dynamic_update_slice_in_dim(
                full, hist.astype(full.dtype), start, -1
            ),
            state.sim_trajectory,
            output.trajectory,
        )
        return state.replace(sim_trajectory=sim, timestep=start + steps - 1)


class PlanningAgentEnvironment(MultiAgentEnvironment):
    """Only the SDC follows the action ``(..., dim)`` (no object axis); others replay the log.

    Metrics and rewards are reduced to the SDC (scalars per scenario); kinematic
    infeasibility is masked during warm-up, as in Waymax.
    """

    def __init__(self, dynamics: DynamicsModel, config: EnvironmentConfig = EnvironmentConfig()):
        if ControlledObject(config.controlled_object) is not ControlledObject.SDC:
            raise ValueError("PlanningAgentEnvironment requires controlled_object='sdc'")
        super().__init__(dynamics, config)
        self._state_dynamics = StateDynamics(dt=dynamics.dt)

    def _step_view(self, view: StepView, action: Action, mask: Array) -> Trajectory:
        n = view.current.x.shape[-1]
        tiled = Action(
            data=jnp.broadcast_to(
                action.data[..., None, :], action.data.shape[:-1] + (n, action.data.shape[-1])
            ),
            valid=jnp.broadcast_to(action.valid[..., None, :], action.valid.shape[:-1] + (n, 1)),
        )
        update = self.dynamics.compute_update(tiled, view.current)
        return step_objects(
            self._state_dynamics,
            update.as_action(),
            view.current,
            view.log_next,
            mask,
            self.config.allow_new_objects_after_warmup,
        )

    def _reduce_metrics(self, per_object, view):
        sdc = view.metadata.is_sdc
        out = {}
        for name, result in per_object.items():
            value, valid = result.value, result.valid
            if name == "kinematic_infeasibility":
                warm = view.timestep <= self.config.init_steps - 1
                value = jnp.where(warm, 0.0, value)
                valid = jnp.where(warm, False, valid)
            out[name] = MetricResult(
                value=select_by_onehot(value, sdc), valid=select_by_onehot(valid, sdc) > 0
            )
        return out

    def _reduce_reward(self, reward, view):
        return select_by_onehot(reward, view.metadata.is_sdc)

    def metrics(self, state: SimulatorState) -> dict[str, MetricResult]:
        view = self.view(state)
        return self._reduce_metrics(self._metrics_of_view(view, self.config.metrics), view)

    def reward(self, state: SimulatorState, action: Action | None = None) -> Array:
        return self._reduce_reward(super().reward(state, action), self.view(state))


# --------------------------------------------------------------------------------------
# Actors
# --------------------------------------------------------------------------------------


def select_sdc_action(action: Action, is_sdc: Array) -> Action:
    """The SDC's row of a per-object action: ``(..., N, dim)`` -> ``(..., dim)``."""
    return Action(
        data=jnp.sum(action.data * is_sdc[..., None], axis=-2),
        valid=jnp.any(action.valid & is_sdc[..., None], axis=-2),
    )


def expert_actor(dynamics: DynamicsModel, sdc_only: bool = False) -> Actor:
    """Waymax's expert: the inverse-dynamics action from the *simulated* state to the next log.

    With ``sdc_only`` the action has no object axis (for :class:`PlanningAgentEnvironment`).
    """

    def act(view: StepView, actor_state, key):
        action = dynamics.inverse_step(view.current, view.log_next)
        if sdc_only:
            action = select_sdc_action(action, view.metadata.is_sdc)
        return action, actor_state

    return act


def constant_velocity_actor(dynamics: DynamicsModel, sdc_only: bool = False) -> Actor:
    """Keeps each object's current velocity: inverse dynamics towards ``x + v dt``."""

    def act(view: StepView, actor_state, key):
        cur = view.current
        target = cur.replace(x=cur.x + cur.vel_x * dynamics.dt, y=cur.y + cur.vel_y * dynamics.dt)
        action = dynamics.inverse_step(cur, target)
        if sdc_only:
            action = select_sdc_action(action, view.metadata.is_sdc)
        return action, actor_state

    return act


def fixed_actions_actor(actions: Array) -> Actor:
    """Replays a precomputed action sequence ``(S, ..., dim)`` (valid everywhere).

    The actor state is the step counter; start it at 0.
    """

    def act(view: StepView, step, key):
        data = actions[step]
        return Action(data=data, valid=jnp.ones(data.shape[:-1] + (1,), bool)), step + 1

    return act
