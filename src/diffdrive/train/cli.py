"""``diffdrive train apg|bc``: train a policy from a scenario cache or any readable file.

::

    diffdrive train apg --data PATH --out DIR [--preset tiny|default|paper] [--epochs N]
                        [--batch-size B] [--seed S] [--lr PEAK] [--dynamics NAME]
                        [--rollout-steps S] [--agent-encoder mlp|transformer] [--awm]
                        [--no-detach] [--action-selection wta|sample|mean]
                        [--no-incremental] [--entropy-weight W]
                        [--setting planning|multi_agent] [--train-agents N]
                        [--max-steps N] [--no-resume] [--no-progress] [--json]
                        [--devices N|all]
    diffdrive train bc  ... [--bc-loss nll|wta]

``PATH`` is a cache directory (``diffdrive data generate`` / ``convert``) or anything
:func:`diffdrive.data.sources.read_scenarios` reads (files, directories,
``synthetic:N[:SEED[:PRESET]]``). ``DIR`` receives checkpoints, ``metrics.json``,
``config.json`` and, when training completes, the exported ``policy/``
(:func:`diffdrive.train.checkpoint.load_policy`). Running the same command again resumes
from the last checkpoint.

The group plugs into :mod:`diffdrive.cli` with
``register_group("train", GROUP_HELP, register)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys

GROUP_HELP = "train policies: analytic policy gradients (apg) or behaviour cloning (bc)"


def _build_config(algorithm: str, args: argparse.Namespace):
    from diffdrive.train.config import train_config

    overrides = {"algorithm": algorithm}
    for arg, field in (
        ("epochs", "epochs"),
        ("batch_size", "batch_size"),
        ("seed", "seed"),
        ("lr", "peak_lr"),
        ("dynamics", "dynamics"),
        ("rollout_steps", "rollout_steps"),
        ("action_selection", "action_selection"),
        ("entropy_weight", "entropy_weight"),
        ("bc_loss", "bc_loss"),
        ("setting", "setting"),
        ("train_agents", "train_agents"),
        ("overlap_weight", "overlap_weight"),
    ):
        value = getattr(args, arg, None)
        if value is not None:
            overrides[field] = value
    if getattr(args, "no_detach", False):
        overrides["detach"] = False
    if getattr(args, "no_incremental", False):
        overrides["incremental"] = False
    if args.agent_encoder is not None:
        # Given together with the setting, so that the config is validated once, whole.
        model = train_config(args.preset).model
        overrides["model"] = dataclasses.replace(model, agent_encoder=args.agent_encoder)
    config = train_config(args.preset, **overrides)
    if args.awm:
        config = config.with_awm_recipe()
        if args.epochs is not None:
            config = dataclasses.replace(config, epochs=args.epochs)
    return config


def cmd_train(algorithm: str, args: argparse.Namespace) -> int:
    """Runs one training command; returns the exit code."""
    from diffdrive import distributed
    from diffdrive.train import loop

    try:
        config = _build_config(algorithm, args)
        mesh = distributed.mesh_from_cli(getattr(args, "devices", None))
        distributed.check_batch_size(config.batch_size, mesh)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dataset = loop.load_dataset(args.data)
    result = loop.train(
        config,
        dataset,
        args.out,
        progress=not args.no_progress,
        resume=not args.no_resume,
        stop_after_steps=args.max_steps,
        mesh=mesh,
    )
    summary = {
        "out": str(args.out),
        "algorithm": algorithm,
        "scenarios": len(dataset),
        "steps": int(result.state.step),
        "total_steps": result.total_steps,
        "completed": result.completed,
        "last_epoch": result.history[-1] if result.history else None,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        last = summary["last_epoch"]
        state = "done" if result.completed else "stopped (resume with the same command)"
        print(f"{algorithm}: {summary['steps']}/{result.total_steps} steps, {state}; {args.out}")
        if last:
            shown = ", ".join(
                f"{k} {v:.4g}" for k, v in last.items() if k not in ("epoch", "step", "time_s")
            )
            print(f"epoch {last['epoch']}: {shown}")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    from diffdrive.sim.dynamics import DYNAMICS_REGISTRY
    from diffdrive.train.config import PRESETS

    p.add_argument(
        "--data",
        required=True,
        help="cache directory, or files / directories / synthetic:N[:SEED[:PRESET]]",
    )
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics, policy)")
    p.add_argument("--preset", choices=PRESETS, default="default")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="one-cycle peak learning rate")
    p.add_argument("--dynamics", choices=sorted(DYNAMICS_REGISTRY), default=None)
    p.add_argument("--rollout-steps", type=int, default=None)
    p.add_argument(
        "--agent-encoder",
        choices=("mlp", "transformer"),
        default=None,
        help="default: mlp for planning, transformer for multi_agent",
    )
    p.add_argument(
        "--setting",
        choices=("planning", "multi_agent"),
        default=None,
        help="planning (the policy drives the SDC) or multi_agent (every valid object)",
    )
    p.add_argument(
        "--train-agents",
        type=int,
        default=None,
        help="multi_agent: drive at most N objects per scenario in training (nearest the SDC)",
    )
    p.add_argument(
        "--awm",
        action="store_true",
        help="AWM recipe: entropy bonus on the mixture weights, variance floor, fewer epochs",
    )
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop at this global step (resumable)"
    )
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument(
        "--devices",
        default=None,
        help="data-parallel devices: N or 'all' (default 1; all in a multi-process job, "
        "see README 'Scaling out'); the batch size must be a multiple",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``apg`` and ``bc`` to the ``train`` group's subparsers."""
    p = sub.add_parser(
        "apg",
        help="analytic policy gradients in the differentiable simulator",
        description="Rolls the policy out in the planning environment and back-propagates "
        "a dense Huber loss against the log through the dynamics (detached state, WTA "
        "mixture, incremental resets).",
    )
    _add_common(p)
    p.add_argument("--no-detach", action="store_true", help="differentiate through the state")
    p.add_argument("--action-selection", choices=("wta", "sample", "mean"), default=None)
    p.add_argument("--no-incremental", action="store_true", help="never snap back to the log")
    p.add_argument("--entropy-weight", type=float, default=None)
    p.set_defaults(func=functools.partial(cmd_train, "apg"))

    p = sub.add_parser(
        "bc",
        help="behaviour cloning of the log's inverse-kinematics actions",
        description="Teacher-forced on the log, the same policy learns the expert actions "
        "given by the bicycle inverse of the log.",
    )
    _add_common(p)
    p.add_argument("--bc-loss", choices=("nll", "wta"), default=None)
    p.add_argument("--entropy-weight", type=float, default=None)
    p.set_defaults(func=functools.partial(cmd_train, "bc"))

    p = sub.add_parser(
        "awm",
        help="APG plus the analytic world-model heads (AWM; the AWM recipe by default)",
        description="APG training with world-model heads on detached inputs (relative "
        "odometry, optimal planner, inverse state, latent next feature, reward), trained "
        "through the simulator, and an optional differentiable overlap cost. Plan with the "
        "result via `diffdrive plan mpc`.",
    )
    _add_common(p)
    p.add_argument("--no-incremental", action="store_true", help="never snap back to the log")
    p.add_argument("--entropy-weight", type=float, default=None)
    p.add_argument("--overlap-weight", type=float, default=None, help="Gaussian overlap weight")
    p.set_defaults(func=functools.partial(cmd_train, "awm"), awm=True)

    p = sub.add_parser(
        "variant",
        help="train one named variant of the APG study (params.yaml 'apg' section)",
        description="Trains variant NAME of the params file's 'apg.variants' on the training "
        "split (the first apg.num_train scenarios) into runs/NAME; resumable.",
    )
    p.add_argument("name", help="variant name (a key of apg.variants)")
    p.add_argument("--params", default="params.yaml", help="params file with an 'apg' section")
    p.add_argument("--data", default="data/scenarios", help="scenario cache")
    p.add_argument("--out", default=None, help="run directory (default runs/NAME)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_variant)


def cmd_variant(args: argparse.Namespace) -> int:
    """Trains one variant of the APG study; returns the exit code."""
    from diffdrive.train import study

    try:
        cfg = study.load_study(args.params)
        study.variant_config(cfg, args.name)
    except (KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or f"runs/{args.name}"
    summary = study.train_variant(cfg, args.name, args.data, out, progress=not args.no_progress)
    state = "diverged: " + summary["diverged"] if summary["diverged"] else "done"
    print(
        f"{args.name}: {summary['steps']}/{summary['total_steps']} steps in "
        f"{summary['wall_s']:.0f} s, {state}; {out}"
    )
    return 0


configure = register
