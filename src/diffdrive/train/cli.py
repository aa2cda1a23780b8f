"""``diffdrive train apg|bc``: train a policy from a scenario cache or any readable file.

::

    diffdrive train apg --data PATH --out DIR [--preset tiny|default|paper] [--epochs N]
                        [--batch-size B] [--seed S] [--lr PEAK] [--dynamics NAME]
                        [--rollout-steps S] [--agent-encoder mlp|transformer] [--awm]
                        [--no-detach] [--action-selection wta|sample|mean]
                        [--no-incremental] [--entropy-weight W]
                        [--max-steps N] [--no-resume] [--no-progress] [--json]
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
    ):
        value = getattr(args, arg, None)
        if value is not None:
            overrides[field] = value
    if getattr(args, "no_detach", False):
        overrides["detach"] = False
    if getattr(args, "no_incremental", False):
        overrides["incremental"] = False
    config = train_config(args.preset, **overrides)
    if args.agent_encoder is not None:
        model = dataclasses.replace(config.model, agent_encoder=args.agent_encoder)
        config = dataclasses.replace(config, model=model)
    if args.awm:
        config = config.with_awm_recipe()
        if args.epochs is not None:
            config = dataclasses.replace(config, epochs=args.epochs)
    return config


def cmd_train(algorithm: str, args: argparse.Namespace) -> int:
    """Runs one training command; returns the exit code."""
    from diffdrive.train import loop

    try:
        config = _build_config(algorithm, args)
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
    p.add_argument("--agent-encoder", choices=("mlp", "transformer"), default=None)
    p.add_argument(
        "--awm",
        action="store_true",
        help="AWM recipe: entropy bonus on the mixture weights, variance floor, fewer epochs",
    )
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop at this global step (resumable)"
    )
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
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


configure = register
