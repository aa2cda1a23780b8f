"""``diffdrive plan dss``: drive scenarios with DSS (Algorithms 1-2) and write the metrics.

    diffdrive plan dss --data data/scenarios --ego-policy runs/route_waypoint \\
        [--others-policy runs/ma_apg] [--classifier runs/dss_classifier] \\
        [--K 4 --T 10 --M 3 --eta-accel 1000 --eta-steer 0.01 --tau 1.0 --loss tracking] \\
        [--start 160 --max-scenarios 16 --batch-size 8 --seed 0] --out results/dss.json

Without ``--others-policy`` the other agents are imagined at constant velocity. The JSON
holds ``meta`` (the configuration), ``metrics`` (ADE, overlap and offroad rates as in
``diffdrive eval run``), ``counts`` and ``timing``.
"""

from __future__ import annotations

import argparse
import sys

from diffdrive.plan import dss


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the ``dss`` subcommand to ``sub``."""
    p = sub.add_parser("dss", help="differentiable simulator search (DSS) planning")
    p.add_argument("--data", required=True, help="scenario cache dir or read_scenarios spec")
    p.add_argument("--ego-policy", required=True, help="run or export of the ego policy")
    p.add_argument("--others-policy", default=None, help="run or export of the others policy")
    p.add_argument("--classifier", default=None, help="classifier export (loss classifier)")
    d = dss.DSSConfig()
    p.add_argument("--K", type=int, default=d.K, help="imagined rollouts")
    p.add_argument("--T", type=int, default=d.T, help="imagination horizon (steps)")
    p.add_argument("--M", type=int, default=d.M, help="actions executed per plan")
    p.add_argument("--eta-accel", type=float, default=d.eta_accel)
    p.add_argument("--eta-steer", type=float, default=d.eta_steer)
    p.add_argument("--tau", type=float, default=d.tau)
    p.add_argument("--loss", choices=sorted(dss.PLANNING_LOSSES), default=d.loss)
    p.add_argument("--start", type=int, default=0, help="first scenario index")
    p.add_argument("--max-scenarios", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results JSON (printed when omitted)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import json

    from diffdrive.eval import dss_experiments
    from diffdrive.train import checkpoint
    from diffdrive.train.classifier import load_classifier
    from diffdrive.train.loop import load_dataset

    try:
        config = dss.DSSConfig(
            K=args.K,
            T=args.T,
            M=args.M,
            eta_accel=args.eta_accel,
            eta_steer=args.eta_steer,
            tau=args.tau,
            loss=args.loss,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model, params, _ = checkpoint.load_policy(args.ego_policy)
    ego = dss.EgoPolicy(model, params)
    if args.others_policy:
        o_model, o_params, _ = checkpoint.load_policy(args.others_policy)
        others = dss.policy_others(o_model, o_params)
    else:
        others = dss.constant_velocity_others()
    classifier = load_classifier(args.classifier) if args.classifier else None
    if dss.PLANNING_LOSSES[config.loss].needs_classifier and classifier is None:
        print(f"error: --loss {config.loss} needs --classifier", file=sys.stderr)
        return 2

    scenarios = list(load_dataset(args.data))
    end = None if args.max_scenarios is None else args.start + args.max_scenarios
    scenarios = scenarios[args.start : end]
    if not scenarios:
        print(f"error: no scenarios in {args.data} from index {args.start}", file=sys.stderr)
        return 2
    batches = dss_experiments.scenario_batches(scenarios, args.batch_size)
    setup = dss_experiments.Setup(ego, others, batches, classifier, seed=args.seed)
    result = dss_experiments.run_config(setup, config)
    out = {
        "meta": {
            "config": vars(args) | {"func": None},
            "setting": config.setting,
            "others_policy": others.name,
            "num_scenarios": len(scenarios),
        },
        "metrics": result["summary"]["metrics"],
        "counts": result["summary"]["counts"],
        "timing": result["timing"],
    }
    if args.out:
        checkpoint.write_json_atomic(args.out, out)
    print(json.dumps({k: out[k] for k in ("metrics", "timing")}, indent=2, default=str))
    return 0
