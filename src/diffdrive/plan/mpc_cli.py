"""``diffdrive plan mpc``: evaluate a trained AWM agent driven by world-model MPC::

    diffdrive plan mpc --checkpoint RUN --data PATH... [--num-rollouts 4] [--horizon 10]
                       [--top-k 3] [--reward reward_head|inverse_state|neg_dist_log|
                       pos_dist_log] [--planner] [--max-scenarios N] [--batch-size 8]
                       [--max-objects 128] [--roadgraph-points 20000] [--seed 0]
                       [--out results/x.json] [--json] [--no-progress]

``RUN`` is an ``diffdrive train awm`` run directory (or its ``policy/``). ``--planner``
evaluates the planner head as a reactive driver instead (Table III). The summary (and
with ``--out`` the JSON results) follows :mod:`diffdrive.eval.aggregate`: the planning
setting, Waymax's bicycle with clipping, 80 steps after the 11-step warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys


def cmd_mpc(args: argparse.Namespace) -> int:
    """Runs ``plan mpc``; returns the exit code."""
    import jax

    from diffdrive.data import sources
    from diffdrive.eval import aggregate, rollouts
    from diffdrive.plan import mpc
    from diffdrive.train import awm
    from diffdrive.train.checkpoint import write_json_atomic

    try:
        config = mpc.MPCConfig(
            num_rollouts=args.num_rollouts,
            horizon=args.horizon,
            top_k=args.top_k,
            reward=args.reward,
        )
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        model, heads, params, _ = awm.load_awm(args.checkpoint)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    environment = rollouts.make_environment("planning")
    if args.planner:
        actor, init = mpc.make_planner_actor(model, heads, params)
    else:
        actor, init = mpc.make_mpc_actor(model, heads, params, config)
    scenarios = sources.read_scenarios(args.data)
    if args.max_scenarios is not None:
        scenarios = itertools.islice(scenarios, args.max_scenarios)
    batches = rollouts.batches_with_ids(
        scenarios, args.batch_size, args.max_objects, args.roadgraph_points
    )

    def progress(done: int) -> None:
        if not args.no_progress:
            print(f"\r{done} scenarios planned", end="", file=sys.stderr, flush=True)

    results = rollouts.evaluate(
        environment, actor, init, batches, key=jax.random.PRNGKey(args.seed), progress=progress
    )
    if not args.no_progress:
        print(file=sys.stderr)
    meta = aggregate.make_meta(
        dataset=" ".join(args.data),
        num_scenarios=results.num_scenarios,
        generated_by="diffdrive plan mpc",
        checkpoint=str(args.checkpoint),
        planner="planner_head" if args.planner else "mpc",
        mpc=None if args.planner else dataclasses.asdict(config),
        seed=args.seed,
        timing=results.timing,
    )
    out = results.to_dict(meta)
    if args.out:
        write_json_atomic(args.out, out)
    if args.json:
        print(json.dumps(aggregate.to_jsonable(out["metrics"])))
    else:
        shown = ", ".join(
            f"{k} {v:.4g}" for k, v in out["metrics"].items() if isinstance(v, (int, float))
        )
        print(f"{results.num_scenarios} scenarios: {shown}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``mpc`` to the ``plan`` group's subparsers."""
    from diffdrive.plan.mpc import REWARDS

    p = sub.add_parser(
        "mpc",
        help="world-model MPC (AWM Algorithm 1) with a trained AWM agent",
        description="Each step imagines N trajectories of H steps with the actor, the "
        "latent world model and the GRU, scores them with a reward and executes the mean "
        "first action of the top k.",
    )
    p.add_argument("--checkpoint", required=True, help="diffdrive train awm run directory")
    p.add_argument(
        "--data", required=True, nargs="+", help="cache, files or synthetic:N[:SEED[:PRESET]]"
    )
    p.add_argument("--num-rollouts", type=int, default=4, help="imagined trajectories N")
    p.add_argument("--horizon", type=int, default=10, help="imagined steps H")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--reward", choices=REWARDS, default="reward_head")
    p.add_argument("--planner", action="store_true", help="drive with the planner head")
    p.add_argument("--max-scenarios", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-objects", type=int, default=128)
    p.add_argument("--roadgraph-points", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results JSON (written atomically)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_mpc)
    return p
