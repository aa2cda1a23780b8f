"""AWM planning and training cost: MPC seconds per scenario vs imagined trajectories and
horizon, and the AWM heads' training overhead over plain APG.

* **MPC**: Algorithm 1 (:mod:`diffdrive.plan.mpc`, reward head) drives the SDC for the
  80 evaluation steps of each scenario (planning setting, the evaluation engine, jitted
  per batch shape). Seconds per scenario are the steady state: the second batch onward
  (compilation excluded), reported with the reactive policy's for reference.
* **Training overhead**: steps/s of the jitted train step with ``algorithm="apg"`` and
  ``"awm"`` on the same batch (compilation excluded).

The agent is untrained (cost does not depend on the weights). Usage::

    python benchmarks/mpc_cost.py [--preset default] [--scenarios 8] [--rollouts 1 4 8 16]
                                  [--horizons 1 5 10] [--train-steps 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import platform
import sys

import jax


def _mpc_seconds(agent, scenarios, config, batch_size, max_objects) -> dict:
    from diffdrive.eval import awm_experiments as ex
    from diffdrive.models import policy as policy_lib
    from diffdrive.plan import mpc

    model, heads, params = agent
    if config is None:
        actor, init = policy_lib.make_policy_actor(model, params["policy"], model.config)
    else:
        actor, init = mpc.make_mpc_actor(model, heads, params, config)
    res = ex.evaluate_actor(actor, init, scenarios, batch_size=batch_size, max_objects=max_objects)
    t = res.timing
    steady = t["steady_s"] / t["steady_scenarios"] if t["steady_scenarios"] else None
    return {
        "seconds_per_scenario": steady if steady is not None else t["total_s"] / len(scenarios),
        "first_batch_s": t["first_batch_s"],
        "steady_state": steady is not None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="default", choices=("tiny", "default", "paper"))
    p.add_argument("--scenarios", type=int, default=8, help="two batches of half each")
    p.add_argument("--rollouts", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--horizons", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=3, help="timed train steps (0: skip)")
    p.add_argument("--max-objects", type=int, default=32)
    p.add_argument("--json", default=None, help="write the results here (atomically)")
    args = p.parse_args(argv)

    from diffdrive.data import sources
    from diffdrive.eval import awm_experiments as ex
    from diffdrive.models import policy as policy_lib
    from diffdrive.plan import mpc
    from diffdrive.train import awm
    from diffdrive.train.checkpoint import write_json_atomic
    from diffdrive.train.config import train_config

    if args.scenarios < 2:
        print("error: --scenarios must be >= 2 (two batches)", file=sys.stderr)
        return 2
    scenarios = list(sources.read_scenarios(f"synthetic:{args.scenarios}:0:default"))
    config = train_config(args.preset, algorithm="awm", max_objects=args.max_objects)
    params = awm.init_params(config, jax.random.PRNGKey(0))
    agent = (policy_lib.Policy(config.model), awm.make_heads(config.model), params)
    batch_size = args.scenarios // 2

    rows = []
    base = _mpc_seconds(agent, scenarios, None, batch_size, args.max_objects)
    rows.append({"planner": "reactive", "num_rollouts": 1, "horizon": 0, **base})
    print(f"reactive policy: {base['seconds_per_scenario']:.3f} s/scenario", flush=True)
    for h in args.horizons:
        for n in args.rollouts:
            cfg = mpc.MPCConfig(num_rollouts=n, horizon=h, top_k=args.top_k)
            r = _mpc_seconds(agent, scenarios, cfg, batch_size, args.max_objects)
            rows.append({"planner": "mpc", "num_rollouts": n, "horizon": h, **r})
            print(f"MPC N={n:3d} H={h:3d}: {r['seconds_per_scenario']:.3f} s/scenario", flush=True)

    overhead = None
    if args.train_steps > 0:
        cfg = train_config(
            args.preset, algorithm="apg", max_objects=args.max_objects, batch_size=batch_size
        )
        apg_speed = ex.training_speed(cfg, scenarios, args.train_steps)
        awm_cfg = train_config(
            args.preset, algorithm="awm", max_objects=args.max_objects, batch_size=batch_size
        )
        awm_speed = ex.training_speed(awm_cfg, scenarios, args.train_steps)
        overhead = {
            "apg_steps_per_s": apg_speed["steps_per_s"],
            "awm_steps_per_s": awm_speed["steps_per_s"],
            "overhead_fraction": apg_speed["steps_per_s"] / awm_speed["steps_per_s"] - 1.0,
            "batch_size": batch_size,
            "timed_steps": args.train_steps,
        }
        pct = 100 * overhead["overhead_fraction"]
        print(
            f"train steps/s: apg {overhead['apg_steps_per_s']:.3f}, awm "
            f"{overhead['awm_steps_per_s']:.3f} (overhead {pct:+.1f}%)"
        )
    out = {
        "benchmark": "mpc_cost",
        "preset": args.preset,
        "scenarios": args.scenarios,
        "top_k": args.top_k,
        "device": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "mpc": rows,
        "training_overhead": overhead,
    }
    if args.json:
        write_json_atomic(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
