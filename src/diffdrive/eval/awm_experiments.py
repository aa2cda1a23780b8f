"""The AWM paper's experiments (Tables II-V, VII, Figures 5-8) as functions of a trained
agent, so the notebook (``notebooks/04_awm.py``) stays thin.

Closed-loop numbers go through :func:`diffdrive.eval.rollouts.evaluate` (planning setting,
Waymax's bicycle with clipping, 80 steps after the 11-step warm-up), rows through
:func:`diffdrive.eval.aggregate.table_row`. Wherever a deterministic policy action is
needed (one reactive rollout, MPC's trajectory 0, the traced driver) it is the mixture
mean by default (``mean_action``; ``"most_likely"``, the most likely component's mean,
drives much worse with WTA-trained weights). The imagination experiments (Table II, Fig. 5,
7) trace a closed-loop rollout (:func:`trace`) and replay the world model on it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from diffdrive.eval import aggregate, rollouts
from diffdrive.models import policy as policy_lib
from diffdrive.models import world_model as wm
from diffdrive.models.policy import Policy, observe
from diffdrive.plan import mpc
from diffdrive.sim import metrics
from diffdrive.sim.datatypes import INIT_STEPS, Action, SimulatorState, Trajectory
from diffdrive.sim.dynamics import DynamicsModel, InvertibleBicycleModel
from diffdrive.sim.env import StepView
from diffdrive.train import apg, losses

Agent = tuple[Policy, wm.WorldModelHeads, dict[str, Any]]
"""``(model, heads, params)`` of :func:`diffdrive.train.awm.load_awm`."""

FORCED_COMMANDS = {
    "turn_left": (0.0, 0.05),
    "turn_right": (0.0, -0.05),
    "accelerate": (2.0, 0.0),
    "brake": (-3.0, 0.0),
}
"""Fig. 5's forced (acceleration m/s^2, curvature 1/m) commands."""


# --------------------------------------------------------------------------- evaluation


def evaluate_actor(
    actor: Callable,
    init_actor_state: Callable,
    scenarios: Sequence[Any],
    *,
    num_modes: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    max_objects: int = 32,
    num_roadgraph_points: int = 20000,
    num_steps: int | None = None,
) -> rollouts.EvalResults:
    """Closed-loop planning-setting evaluation of an SDC actor on decoded scenarios."""
    batches = rollouts.batches_with_ids(scenarios, batch_size, max_objects, num_roadgraph_points)
    return rollouts.evaluate(
        rollouts.make_environment("planning"),
        actor,
        init_actor_state,
        batches,
        num_modes=num_modes,
        key=jax.random.PRNGKey(seed),
        num_steps=num_steps,
    )


def _row(results: rollouts.EvalResults, **settings: Any) -> dict[str, Any]:
    row = aggregate.table_row(results.summary(), **settings)
    t = results.timing
    # Steady state (compilation excluded) when there were several batches.
    if t["steady_scenarios"]:
        row["seconds_per_scenario"] = t["steady_s"] / t["steady_scenarios"]
    else:
        row["seconds_per_scenario"] = t["total_s"] / max(results.num_scenarios, 1)
    return row


def _policy_actor(agent: Agent, sample: bool, mean_action: str = "mixture_mean"):
    model, _, params = agent
    mode = None
    if not sample:
        mpc.MPCConfig(mean_action=mean_action)  # validates the name
        mode = policy_lib.MIXTURE_MEAN if mean_action == "mixture_mean" else None
    return policy_lib.make_policy_actor(
        model, params["policy"], model.config, sample=sample, mode=mode
    )


def reactive_row(
    agent: Agent, scenarios, num_rollouts: int, mean_action: str = "mixture_mean", **kw
) -> dict[str, Any]:
    """The behaviour policy alone, ``num_rollouts`` rollouts (mixture samples when > 1;
    else the deterministic ``mean_action``, :func:`diffdrive.plan.mpc.deterministic_action`)."""
    actor, init = _policy_actor(agent, num_rollouts > 1, mean_action)
    row = _row(evaluate_actor(actor, init, scenarios, num_modes=num_rollouts, **kw))
    row["action"] = "sampled" if num_rollouts > 1 else mean_action
    return row


def planner_row(agent: Agent, scenarios, **kw) -> dict[str, Any]:
    """The planner head driving through inverse kinematics (deterministic)."""
    actor, init = mpc.make_planner_actor(*agent)
    return _row(evaluate_actor(actor, init, scenarios, **kw))


def mpc_row(agent: Agent, scenarios, config: mpc.MPCConfig, **kw) -> dict[str, Any]:
    """Algorithm 1 with ``config``; adds the MPC settings to the row."""
    actor, init = mpc.make_mpc_actor(*agent, config)
    row = _row(evaluate_actor(actor, init, scenarios, **kw))
    row.update(horizon=config.horizon, imagined=config.num_rollouts, top_k=config.top_k)
    return row


def table3_rows(
    agent: Agent,
    scenarios,
    baseline_rollouts: int = 32,
    mean_action: str = "mixture_mean",
    **kw,
) -> list[dict]:
    """Table III: ``apg_baseline`` (the behaviour policy, which AWM trains exactly as APG,
    at ``baseline_rollouts`` sampled rollouts; ``mean_action`` when 1) and ``planner``."""
    base = reactive_row(agent, scenarios, baseline_rollouts, mean_action, **kw)
    base.update(setting="apg_baseline", num_rollouts=baseline_rollouts)
    plan = planner_row(agent, scenarios, **kw)
    plan.update(setting="planner", num_rollouts=1)
    return [base, plan]


TABLE4_REWARDS = {
    "neg_dist_log": "neg_dist_log",
    "pos_dist_log": "pos_dist_log",
    "neg_norm_inv_state": "inverse_state",
}
"""Table IV's reward keys -> :data:`diffdrive.plan.mpc.REWARDS`."""


def table4_rows(
    agent: Agent,
    scenarios,
    num_rollouts: int = 4,
    horizon: int = 1,
    top_k: int = 3,
    mean_action: str = "mixture_mean",
    oracle_fields: str = "xy",
    **kw,
) -> list[dict]:
    """Table IV: MPC ranked by the log distance (oracle, best and worst; over
    ``oracle_fields``) or the inverse-state norm; trajectory 0 follows ``mean_action``."""
    rows = []
    for key, reward in tqdm(TABLE4_REWARDS.items(), desc="table IV", leave=False):
        config = mpc.MPCConfig(
            num_rollouts,
            horizon,
            top_k,
            reward,
            mean_action=mean_action,
            oracle_fields=oracle_fields,
        )
        rows.append(dict(mpc_row(agent, scenarios, config, **kw), reward=key))
    return rows


def table5_rows(
    agents: dict[str, Agent],
    scenarios,
    rollouts_by_setting: dict[str, Sequence[int]],
    horizon: int = 1,
    top_k: int = 3,
    reward: str = "reward_head",
    mean_action: str = "mixture_mean",
    **kw,
) -> list[dict]:
    """Table V: MPC with the reward head and more imagined one-step trajectories, for the
    ``plan_heading`` and ``plan_waypoint`` agents (trajectory 0 follows ``mean_action``)."""
    rows = []
    for setting, counts in rollouts_by_setting.items():
        for n in tqdm(counts, desc=f"table V {setting}", leave=False):
            config = mpc.MPCConfig(n, horizon, top_k, reward, mean_action=mean_action)
            row = mpc_row(agents[setting], scenarios, config, **kw)
            rows.append(dict(row, setting=setting, num_rollouts=n))
    return rows


def table7_rows(
    agents: dict[bool, Agent],
    scenarios,
    rollout_counts: Sequence[int] = (1, 8),
    mean_action: str = "mixture_mean",
    **kw,
) -> list[dict]:
    """Table VII: reactive policies trained without / with the differentiable overlap
    (``K = 1``: the deterministic ``mean_action``; more: mixture samples)."""
    rows = []
    for flag, agent in agents.items():
        for k in rollout_counts:
            row = reactive_row(agent, scenarios, k, mean_action, **kw)
            rows.append(dict(row, diff_overlap_loss=bool(flag), num_rollouts=k))
    return rows


# --------------------------------------------------------------------------- traces


@functools.partial(
    jax.jit, static_argnames=("model", "heads", "num_steps", "driver", "dynamics", "mean_action")
)
def trace(
    model: Policy,
    heads: wm.WorldModelHeads,
    params: dict[str, Any],
    batch: SimulatorState,
    forced_action: jax.Array | None = None,
    *,
    num_steps: int = 80,
    driver: str = "policy",
    dynamics: DynamicsModel = InvertibleBicycleModel(),
    mean_action: str = "mixture_mean",
) -> dict[str, jax.Array]:
    """A closed-loop rollout that records what the world model needs (one ``lax.scan``).

    The GRU warms up on the logged steps ``0 .. 9``; from the logged step 10 the SDC is
    driven for ``num_steps`` by the behaviour policy's deterministic action
    (``driver="policy"``; ``mean_action``, :func:`diffdrive.plan.mpc.deterministic_action`),
    by the planner head (``"planner"``), or by ``forced_action`` ``(2,)`` / ``(B, 2)``
    (Fig. 5); the rest replays the log (Waymax planning rules).

    Returns:
      ``encoded`` ``(S, B, F)``, ``carry`` ``(S, B, hidden)`` (after ``encoded``),
      ``actions`` ``(S, B, 2)``, ``xy`` / ``yaw`` / ``speed`` of the SDC ``(S + 1, B[, 2])``
      (index 0 the start), ``log_xy`` ``(S + 1, B, 2)``, ``valid`` ``(S + 1, B)`` and
      ``inverse_norm`` ``(S, B)`` (the inverse-state head's norm at the executed action).
    """
    pp, hp = params["policy"], params["heads"]
    cfg = model.config
    log = batch.log_trajectory
    is_sdc = batch.object_metadata.is_sdc
    start = INIT_STEPS - 1
    carry0 = policy_lib.warm_up(model, pp, batch, start)
    sim = apg.Simulator(dynamics)
    base = StepView(
        current=log.at(start),
        previous=log.at(start),
        timestep=jnp.asarray(start, jnp.int32),
        log=log,
        metadata=batch.object_metadata,
        roadgraph=batch.roadgraph_points,
        traffic_lights=batch.log_traffic_light,
    )

    def body(state, t):
        current, h = state
        view = base.replace(current=current, previous=current, timestep=t)
        g = model.apply(pp, observe(view, cfg), method=Policy.encode)
        h, gmm = model.apply(pp, g, h, method=Policy.step_encoded)
        sdc = losses.sdc_step(current, is_sdc)
        if forced_action is not None:
            action = jnp.broadcast_to(forced_action, gmm.means.shape[:-2] + (2,))
        elif driver == "planner":
            raw = heads.apply(hp, g, h, method=wm.WorldModelHeads.plan)
            action = wm.inverse_kinematics(
                dynamics, sdc, wm.planner_velocity(raw, wm.speed_of(sdc))
            )
        else:
            action = mpc.deterministic_action(gmm, mean_action)
        out = heads.apply(hp, g, h, action)
        act = Action(data=action, valid=jnp.ones(action.shape[:-1] + (1,), bool))
        nxt = sim.step(view, act)
        rec = {
            "encoded": g,
            "carry": h,
            "actions": action,
            "inverse_norm": jnp.linalg.norm(out.inverse_state, axis=-1),
            "sdc": sdc,
        }
        return (nxt, h), rec

    ts = jnp.arange(start, start + num_steps, dtype=jnp.int32)
    (last, _), rec = jax.lax.scan(body, (log.at(start), carry0), ts)
    final = losses.sdc_step(last, is_sdc)
    steps = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), rec["sdc"], final)
    rec["sdc"] = jax.tree.map(lambda a: a[:-1], steps)
    rec.update(
        xy=jnp.stack([steps.x, steps.y], -1),
        yaw=steps.yaw,
        speed=wm.speed_of(steps),
        valid=steps.valid,
    )
    log_steps = jax.vmap(lambda t: losses.sdc_step(log.at(t), is_sdc))(
        jnp.arange(start, start + num_steps + 1)
    )
    rec["log_xy"] = jnp.stack([log_steps.x, log_steps.y], -1)
    rec["log_valid"] = log_steps.valid
    return rec


@functools.partial(jax.jit, static_argnames=("model", "heads", "horizon"))
def imagine_along(
    model: Policy,
    heads: wm.WorldModelHeads,
    params: dict[str, Any],
    traced: dict[str, jax.Array],
    *,
    horizon: int,
) -> jax.Array:
    """Imagined SDC xy ``(S - H + 1, B, H, 2)`` from every start of a trace, conditional
    on the executed actions (latent model + GRU + odometry head)."""
    s = traced["actions"].shape[0]
    n = s - horizon + 1
    windows = jnp.stack([traced["actions"][i : i + n] for i in range(horizon)], axis=-2)
    start = jax.tree.map(lambda a: a[:n], traced["sdc"])
    out = mpc.imagine(
        model,
        heads,
        params,
        traced["encoded"][:n],
        traced["carry"][:n],
        start,
        jax.random.PRNGKey(0),
        horizon=horizon,
        actions=windows[..., None, :, :],
    )
    return out["odometry_xy"][..., 0, :, :]


def odometry_errors(
    agent: Agent, traced: dict[str, jax.Array], horizons: Sequence[int] = (5, 10, 15)
) -> list[dict[str, Any]]:
    """Table II rows: mean distance (m) between the imagined and the executed SDC
    trajectory over ``horizon`` steps, over every start of the trace and scenario."""
    model, heads, params = agent
    rows = []
    executed = np.asarray(traced["xy"])
    valid = np.asarray(traced["valid"])
    for h in horizons:
        imagined = np.asarray(imagine_along(model, heads, params, traced, horizon=h))
        n = imagined.shape[0]
        target = np.stack([executed[1 + i : 1 + i + n] for i in range(h)], axis=-2)
        ok = np.stack([valid[1 + i : 1 + i + n] for i in range(h)], axis=-1) & valid[:n, :, None]
        dist = np.linalg.norm(imagined - target, axis=-1)
        rows.append(
            {
                "horizon_steps": int(h),
                "ade": float(dist[ok].mean()),
                "final_displacement": float(dist[..., -1][ok[..., -1]].mean()),
                "num_windows": int(ok[..., 0].sum()),
            }
        )
    return rows


def odometry_error_table(
    agent: Agent,
    batches,
    horizons: Sequence[int] = (5, 10, 15),
    num_steps: int = 80,
    mean_action: str = "mixture_mean",
) -> list[dict[str, Any]]:
    """Table II over every batch (``(state, ids)`` pairs or states): the policy drives
    (:func:`trace`, its ``mean_action``), then :func:`odometry_errors`; windows are pooled
    over batches."""
    model, heads, params = agent
    sums: dict[int, list[float]] = {h: [0.0, 0.0, 0] for h in horizons}
    for item in tqdm(batches, desc="table II", leave=False):
        state = item[0] if isinstance(item, tuple) else item
        traced = trace(
            model,
            heads,
            params,
            jax.tree.map(jnp.asarray, state),
            num_steps=num_steps,
            mean_action=mean_action,
        )
        for row in odometry_errors(agent, traced, horizons):
            acc = sums[row["horizon_steps"]]
            acc[0] += row["ade"] * row["num_windows"]
            acc[1] += row["final_displacement"] * row["num_windows"]
            acc[2] += row["num_windows"]
    return [
        {
            "horizon_steps": int(h),
            "ade": acc[0] / max(acc[2], 1),
            "final_displacement": acc[1] / max(acc[2], 1),
            "num_windows": int(acc[2]),
        }
        for h, acc in sums.items()
    ]


def forced_command_traces(
    agent: Agent,
    batch: SimulatorState,
    num_steps: int = 40,
    horizon: int = 10,
    commands: dict[str, tuple[float, float]] = FORCED_COMMANDS,
) -> dict[str, dict[str, np.ndarray]]:
    """Fig. 5 data: for each forced command, the executed SDC xy ``(S + 1, B, 2)`` and the
    imagined xy ``(S - H + 1, B, H, 2)`` from every step, plus the mean imagination error."""
    model, heads, params = agent
    out = {}
    for name, command in commands.items():
        traced = trace(
            model, heads, params, batch, jnp.asarray(command, jnp.float32), num_steps=num_steps
        )
        imagined = np.asarray(imagine_along(model, heads, params, traced, horizon=horizon))
        executed = np.asarray(traced["xy"])
        n = imagined.shape[0]
        target = np.stack([executed[1 + i : 1 + i + n] for i in range(horizon)], axis=-2)
        out[name] = {
            "executed": executed,
            "imagined": imagined,
            "valid": np.asarray(traced["valid"]),
            "ade": float(np.nanmean(np.linalg.norm(imagined - target, axis=-1))),
        }
    return out


# --------------------------------------------------------------------------- Fig. 8


def overlap_tradeoff(
    overlap_weights: Sequence[float] = (0.0, 50.0, 200.0),
    steps: int = 250,
    lr: float = 0.05,
) -> dict[str, Any]:
    """Fig. 8 demo: a gray box pulled towards a blue target (trajectory loss, Huber on xy)
    and pushed away from a red box in between (Gaussian overlap loss, Eq. 6-9).

    Gradient descent on the gray box's (x, y, yaw) for each overlap weight. Returns the
    paths ``(steps + 1, 3)``, the final distance to the target and the final overlap.
    """
    red = jnp.array([5.0, 0.3, 0.0])
    blue = jnp.array([10.0, 0.0, 0.0])
    start = jnp.array([0.0, 0.0, 0.0])
    length, width = 4.5, 2.0

    def boxes(pose):
        xs = jnp.stack([pose, red])
        z = jnp.zeros(2)
        return Trajectory(
            x=xs[:, 0],
            y=xs[:, 1],
            z=z,
            yaw=xs[:, 2],
            vel_x=z,
            vel_y=z,
            length=z + length,
            width=z + width,
            height=z + 1.5,
            timestamp_micros=jnp.zeros(2, jnp.int32),
            valid=jnp.ones(2, bool),
        )

    def overlap(pose):
        return metrics.gaussian_overlap(boxes(pose)).value[0]

    def loss(pose, weight):
        traj = jnp.sum(optax.huber_loss(pose[:2] - blue[:2]))
        return traj + weight * overlap(pose)

    @jax.jit
    def path(weight):
        def body(pose, _):
            pose = pose - lr * jax.grad(loss)(pose, weight)
            return pose, pose

        _, poses = jax.lax.scan(body, start, None, length=steps)
        return jnp.concatenate([start[None], poses])

    out = {"red": np.asarray(red), "blue": np.asarray(blue), "box": (length, width), "runs": []}
    for w in overlap_weights:
        poses = path(jnp.asarray(w, jnp.float32))
        along = jax.vmap(overlap)(poses)
        out["runs"].append(
            {
                "overlap_weight": float(w),
                "path": np.asarray(poses),
                "max_overlap": float(jnp.max(along)),
                "final_distance": float(jnp.linalg.norm(poses[-1, :2] - blue[:2])),
                "max_lateral_m": float(jnp.max(jnp.abs(poses[:, 1]))),
            }
        )
    return out


# --------------------------------------------------------------------------- cost


def training_speed(config, dataset, num_steps: int = 3, batch_index: int = 0) -> dict[str, float]:
    """Steps/s of the jitted train step (compilation excluded) on one batch of ``dataset``.

    Measured with ``config`` as given (``algorithm`` ``apg`` or ``awm``); the first call
    compiles and is not timed.
    """
    from diffdrive.train import loop

    source = loop.BatchSource(
        dataset,
        config.batch_size,
        config.seed,
        config.max_objects,
        config.num_roadgraph_points,
        config.num_timesteps,
    )
    batch = jax.tree.map(jnp.asarray, apg.training_batch(source.batch(0, batch_index)))
    state = loop.create_train_state(config, num_steps + 1)
    step = loop.make_train_step(config)
    key = jax.random.PRNGKey(0)
    state, m = step(state, batch, key)
    jax.block_until_ready(m)
    start = time.perf_counter()
    for i in range(num_steps):
        state, m = step(state, batch, jax.random.fold_in(key, i))
    jax.block_until_ready(m)
    elapsed = time.perf_counter() - start
    return {"steps_per_s": num_steps / elapsed, "seconds_per_step": elapsed / num_steps}
