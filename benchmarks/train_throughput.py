"""Training and inference throughput of the APG policy, per model/training preset.

For each preset (``tiny``, ``default``, ``paper``) on a batch of procedural scenarios of
the preset's shape (tiled from a few generated ones):

* ``train_step_s``: one jitted APG train step (warm-up + ``rollout_steps`` simulated steps,
  forward, backward and the optimiser update), median of ``--repeats`` after a warm-up
  call; ``train_scenario_steps_per_s`` = ``B * rollout_steps / train_step_s``.
* ``inference_s``: the policy as an actor in :class:`PlanningAgentEnvironment` (GRU
  warm-up on the log, then an 80-step rollout, no metrics);
  ``inference_timesteps_per_s`` = ``B * 80 / inference_s``.
* ``sim_share``: the share of a train step spent in the simulator: the same train step
  with the simulator's two calls (the environment step and the WTA candidate steps)
  replaced by a stand-in of a few elementwise operations is timed, and
  ``sim_share = 1 - standin_step_s / train_step_s`` (clamped at 0; noisy when small).
  ``sim_share_direct`` times those simulator calls alone instead: the same scan of
  warm-up + rollout steps, each an environment step and the ``K`` candidate steps of
  given actions, forward and backward (``sim_only_s / train_step_s``).
* ``num_params``: the policy's parameter count.

    python benchmarks/train_throughput.py [--presets tiny,default] [--batch 8]
                                          [--repeats 3] [--json] [--out FILE]
                                          [--setting planning|multi_agent]
                                          [--train-agents N]

``--setting multi_agent`` times the multi-agent train step instead (every object valid at
the end of warm-up driven, at most ``--train-agents`` of them; the agent transformer) and
multi-agent inference (every object driven, :class:`MultiAgentEnvironment`);
``train_scenario_steps_per_s`` still counts scenario-steps (``B * rollout_steps``), and
``train_agent_steps_per_s`` counts driven agent-steps. The stand-in simulator and
``sim_share`` are planning-only.

The ``paper`` preset (GRU 512, 2000 roadgraph points, 128 objects, 20000-point maps) is
slow on CPU; pass it explicitly.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from diffdrive.data import batching, synthetic
from diffdrive.data.sources import synthetic_config
from diffdrive.models import policy
from diffdrive.sim import env
from diffdrive.sim.datatypes import Action, Array, Trajectory
from diffdrive.timing import median_seconds
from diffdrive.train import apg, loop, losses
from diffdrive.train.config import train_config

# Scenario shape per preset: (object slots, roadgraph points kept for training).
DATA_SHAPES = {"tiny": (16, 2000), "default": (32, 2000), "paper": (128, 20000)}
SYNTHETIC_PRESET = {"tiny": "small", "default": "default", "paper": "womd"}


class StandInSimulator(apg.Simulator):
    """A few elementwise operations in place of the simulator (same inputs and outputs)."""

    def step(self, view: env.StepView, action) -> Trajectory:
        cur = view.current
        sdc = view.metadata.is_sdc
        dt = self.dynamics.dt
        a = action.data
        x = jnp.where(sdc, cur.x + dt * (cur.vel_x + a[..., :1]), view.log_next.x)
        y = jnp.where(sdc, cur.y + dt * (cur.vel_y + a[..., 1:]), view.log_next.y)
        return cur.replace(x=x, y=y)

    def candidates(self, sdc: Trajectory, actions: Array) -> tuple[Array, Array]:
        dt = self.dynamics.dt
        return (
            sdc.x[..., None] + dt * actions[..., 0],
            sdc.y[..., None] + dt * actions[..., 1],
        )


def sim_only_fn(config, batch):
    """``value_and_grad`` of a scan of the simulator calls of an APG step alone."""
    sim = apg.Simulator(config.make_dynamics())
    k = config.model.num_components
    log, meta = batch.log_trajectory, batch.object_metadata
    steps = config.init_steps - 1 + config.rollout_steps

    def loss(actions):  # (S, B, 2)
        def body(current, xs):
            t, a = xs
            view = env.StepView(
                current=current,
                previous=current,
                timestep=t,
                log=log,
                metadata=meta,
                roadgraph=batch.roadgraph_points,
                traffic_lights=batch.log_traffic_light,
            )
            sdc = losses.sdc_step(current, meta.is_sdc)
            cx, cy = sim.candidates(sdc, jnp.broadcast_to(a[..., None, :], a.shape[:-1] + (k, 2)))
            valid = jnp.ones(a.shape[:-1] + (1,), bool)
            nxt = sim.step(view, Action(data=a, valid=valid))
            target = losses.sdc_step(log.at(t + 1), meta.is_sdc)
            pred = losses.sdc_step(nxt, meta.is_sdc)
            err = (pred.x - target.x) ** 2 + (pred.y - target.y) ** 2 + jnp.sum(cx + cy, -1)
            return jax.lax.stop_gradient(nxt), jnp.sum(err)

        _, errs = jax.lax.scan(body, log.at(0), (jnp.arange(steps), actions))
        return jnp.sum(errs)

    return jax.jit(jax.value_and_grad(loss)), jnp.zeros((steps,) + meta.shape[:-1] + (2,))


def _batch(preset: str, batch: int, seed: int = 0):
    objects, points = DATA_SHAPES[preset]
    cfg = synthetic_config(SYNTHETIC_PRESET[preset], max_objects=objects)
    distinct = min(batch, 4)
    scenarios = [synthetic.generate_scenario(seed + i, cfg) for i in range(distinct)]
    scenarios = [scenarios[i % distinct] for i in range(batch)]
    source = loop.BatchSource(scenarios, batch, seed, objects, points)
    return jax.device_put(source.batch(0, 0)), scenarios, objects, points


def run_preset(
    preset: str, batch: int, repeats: int, setting: str = "planning", train_agents=None
) -> dict[str, float]:
    if setting == "multi_agent":
        return run_multi_agent(preset, batch, repeats, train_agents)
    config = train_config(preset, batch_size=batch)
    train_batch, scenarios, objects, points = _batch(preset, batch)
    state = jax.device_put(loop.create_train_state(config, 1000), jax.devices()[0])
    key = jax.random.PRNGKey(0)
    results: dict[str, float] = {
        "batch": batch,
        "objects": objects,
        "roadgraph_points": points,
        "rollout_steps": config.rollout_steps,
        "num_params": int(sum(np.size(p) for p in jax.tree.leaves(state.params))),
    }
    step = jax.jit(loop.build_train_step(config))
    results["train_step_s"] = median_seconds(step, state, train_batch, key, repeats=repeats)
    standin = jax.jit(loop.build_train_step(config, StandInSimulator(config.make_dynamics())))
    results["standin_step_s"] = median_seconds(standin, state, train_batch, key, repeats=repeats)
    results["train_scenario_steps_per_s"] = batch * config.rollout_steps / results["train_step_s"]
    results["sim_share"] = max(0.0, 1.0 - results["standin_step_s"] / results["train_step_s"])
    sim_fn, actions = sim_only_fn(config, train_batch)
    results["sim_only_s"] = median_seconds(sim_fn, actions, repeats=repeats)
    results["sim_share_direct"] = results["sim_only_s"] / results["train_step_s"]

    full = batching.batch_scenarios(scenarios, objects, points)
    planning = env.PlanningAgentEnvironment(
        config.make_dynamics(), env.EnvironmentConfig(metrics=(), road_edge_index=False)
    )

    @jax.jit
    def infer(params, state, key):
        reset = planning.reset(state)
        actor, init = policy.make_policy_actor(None, params, config.model)
        out = planning.rollout(
            reset, actor, 80, key=key, actor_state=init(reset), with_rewards=False
        )
        return out.trajectory.x

    results["inference_s"] = median_seconds(
        infer, state.params, jax.device_put(full), key, repeats=repeats
    )
    results["inference_timesteps_per_s"] = batch * 80 / results["inference_s"]
    return results


def run_multi_agent(preset: str, batch: int, repeats: int, train_agents) -> dict[str, float]:
    """The multi-agent train step and inference (no stand-in simulator)."""
    config = train_config(
        preset, batch_size=batch, setting="multi_agent", train_agents=train_agents
    )
    train_batch, scenarios, objects, points = _batch(preset, batch)
    state = jax.device_put(loop.create_train_state(config, 1000), jax.devices()[0])
    key = jax.random.PRNGKey(0)
    step = jax.jit(loop.build_train_step(config))
    train_step_s = median_seconds(step, state, train_batch, key, repeats=repeats)
    _, metrics = step(state, train_batch, key)
    agents = float(metrics["agents"])
    results: dict[str, float] = {
        "setting": "multi_agent",
        "batch": batch,
        "objects": objects,
        "roadgraph_points": points,
        "rollout_steps": config.rollout_steps,
        "train_agents": train_agents,
        "mean_driven_agents": agents,
        "num_params": int(sum(np.size(p) for p in jax.tree.leaves(state.params))),
        "train_step_s": train_step_s,
        "train_scenario_steps_per_s": batch * config.rollout_steps / train_step_s,
        "train_agent_steps_per_s": batch * agents * config.rollout_steps / train_step_s,
    }
    full = batching.batch_scenarios(scenarios, objects, points)
    multi = env.MultiAgentEnvironment(
        config.make_dynamics(),
        env.EnvironmentConfig(
            controlled_object="valid",
            allow_new_objects_after_warmup=False,
            metrics=(),
            road_edge_index=False,
        ),
    )

    @jax.jit
    def infer(params, state, key):
        reset = multi.reset(state)
        actor, init = policy.make_multi_agent_actor(None, params, config.model)
        out = multi.rollout(reset, actor, 80, key=key, actor_state=init(reset), with_rewards=False)
        return out.trajectory.x

    results["inference_s"] = median_seconds(
        infer, state.params, jax.device_put(full), key, repeats=repeats
    )
    results["inference_timesteps_per_s"] = batch * 80 / results["inference_s"]
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,default", help="comma-separated presets")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", type=pathlib.Path, help="also write the JSON here")
    parser.add_argument("--setting", choices=("planning", "multi_agent"), default="planning")
    parser.add_argument(
        "--train-agents", type=int, default=None, help="multi_agent: driven objects cap"
    )
    args = parser.parse_args(argv)
    results = {
        "device": jax.devices()[0].device_kind,
        "setting": args.setting,
        "presets": {
            p: run_preset(p, args.batch, args.repeats, args.setting, args.train_agents)
            for p in args.presets.split(",")
        },
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results))
        return
    print(f"device: {results['device']}")
    header = ("preset", "B", "params", "train step", "scen-steps/s", "sim share")
    header += ("(direct)", "infer steps/s")
    print("{:<8} {:>3} {:>9} {:>11} {:>13} {:>10} {:>9} {:>14}".format(*header))
    if args.setting == "multi_agent":
        print("preset     B  agents  train step  scen-steps/s  agent-steps/s  infer steps/s")
        for name, r in results["presets"].items():
            print(
                f"{name:<8} {r['batch']:>3} {r['mean_driven_agents']:>7.1f} "
                f"{r['train_step_s']:>10.3f}s {r['train_scenario_steps_per_s']:>13.1f} "
                f"{r['train_agent_steps_per_s']:>14.1f} {r['inference_timesteps_per_s']:>14.1f}"
            )
        return
    for name, r in results["presets"].items():
        print(
            f"{name:<8} {r['batch']:>3} {r['num_params']:>9,} {r['train_step_s']:>10.3f}s "
            f"{r['train_scenario_steps_per_s']:>13.0f} {r['sim_share']:>10.1%} "
            f"{r['sim_share_direct']:>9.1%} {r['inference_timesteps_per_s']:>14.0f}"
        )


if __name__ == "__main__":
    main()
