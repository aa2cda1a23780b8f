"""``diffdrive eval`` commands (wired by :func:`register` into the main CLI's ``eval`` group)::

    diffdrive eval run --data PATH... --actor expert|constant_velocity|log_replay|policy
                       [--checkpoint DIR] [--preset P] [--modes K] [--noise STD]
                       [--setting planning|multi_agent] [--out results/x.json]
                       [--max-scenarios N] [--batch-size B] [--max-objects 128]
                       [--roadgraph-points 20000] [--dynamics bicycle] [--seed 0]
                       [--profile NAME] [--per-scenario] [--devices N|all]

``--data`` takes anything :func:`diffdrive.data.sources.read_scenarios` reads (TFRecords,
``.npz`` states, caches, ``synthetic:N[:SEED[:PRESET]]``). ``--checkpoint``/``--preset``
(or ``--actor policy``) evaluate a trained APG policy through
``diffdrive.train.apg.make_policy_actor``, imported only then. The summary (and with
``--out`` the JSON results: ``meta``, ``metrics``, ``per_mode_mean``, ``counts``,
optional ``per_scenario``) follows :mod:`diffdrive.eval.aggregate`.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import sys
import tempfile
from typing import Any

from diffdrive.eval import baselines

ACTORS = (*baselines.BASELINES, "policy")


class PolicyUnavailable(RuntimeError):
    """The APG policy cannot be loaded (module missing or unusable)."""


def _policy(args: argparse.Namespace, setting: str, dynamics) -> tuple[Any, Any, Any]:
    """``(actor, init_actor_state, dynamics)`` of a trained policy via ``diffdrive.train.apg``.

    ``make_policy_actor`` is called with those of ``checkpoint``/``checkpoint_dir``,
    ``preset``, ``setting`` and ``sample`` (True when K > 1) it accepts. It may return an
    actor, an ``(actor, init_actor_state)`` pair, or an object with ``actor`` and optional
    ``init_actor_state`` and ``dynamics`` attributes.
    """
    try:
        from diffdrive.train import apg
    except ImportError as e:
        raise PolicyUnavailable(
            f"--actor policy needs diffdrive.train.apg, which cannot be imported ({e}); "
            "evaluate a baseline (--actor expert|constant_velocity|log_replay) instead"
        ) from e
    make = getattr(apg, "make_policy_actor", None)
    if not callable(make):
        raise PolicyUnavailable("diffdrive.train.apg has no make_policy_actor")
    offered = {
        "checkpoint": args.checkpoint,
        "checkpoint_dir": args.checkpoint,
        "preset": args.preset,
        "setting": setting,
        "sample": args.modes > 1,
    }
    params = inspect.signature(make).parameters
    kwargs = {k: v for k, v in offered.items() if k in params and v is not None}
    made = make(**kwargs)
    if isinstance(made, tuple):
        actor, init = made[0], (made[1] if len(made) > 1 else None)
        return actor, init, dynamics
    if callable(made) and not hasattr(made, "actor"):
        return made, None, dynamics
    return made.actor, getattr(made, "init_actor_state", None), getattr(made, "dynamics", dynamics)


def _write_json_atomic(path: str, obj: Any) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cmd_run(args: argparse.Namespace) -> int:
    import jax

    from diffdrive.data import sources
    from diffdrive.eval import aggregate, rollouts
    from diffdrive.sim import dynamics as dynamics_lib

    for bad, what in (
        (args.modes < 1, f"--modes must be >= 1, got {args.modes}"),
        (args.noise < 0, f"--noise must be >= 0, got {args.noise}"),
        (
            args.batch_size is not None and args.batch_size < 1,
            f"--batch-size must be >= 1, got {args.batch_size}",
        ),
    ):
        if bad:
            print(f"error: {what}", file=sys.stderr)
            return 2
    actor_name = args.actor
    if actor_name is None:
        actor_name = "policy" if (args.checkpoint or args.preset) else "expert"
    dynamics = dynamics_lib.make_dynamics(args.dynamics)
    if actor_name == "policy":
        try:
            actor, init, dynamics = _policy(args, args.setting, dynamics)
        except PolicyUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    else:
        b = baselines.make_baseline(actor_name, args.setting, dynamics)
        actor, init, dynamics = b.actor, b.init_actor_state, b.dynamics
    environment = rollouts.make_environment(args.setting, dynamics)

    scenarios = sources.read_scenarios(args.data, format=args.format)
    if args.max_scenarios is not None:
        scenarios = itertools.islice(scenarios, args.max_scenarios)
    from diffdrive import distributed

    try:
        mesh = distributed.mesh_from_cli(getattr(args, "devices", None))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Default batch: a multiple of the devices (a given one is padded up inside evaluate).
    batch_size = args.batch_size or distributed.padded_size(max(1, 16 // args.modes), mesh)
    batches = rollouts.batches_with_ids(
        scenarios,
        batch_size,
        max_objects=args.max_objects,
        num_roadgraph_points=args.roadgraph_points,
    )

    def progress(done: int) -> None:
        if not args.no_progress:
            print(f"\r{done} scenarios evaluated", end="", file=sys.stderr, flush=True)

    results = rollouts.evaluate(
        environment,
        actor,
        init,
        batches,
        num_modes=args.modes,
        key=jax.random.PRNGKey(args.seed),
        dynamics_noise_std=args.noise,
        progress=progress,
        mesh=mesh,
    )
    if not args.no_progress:
        print(file=sys.stderr)
    meta = aggregate.make_meta(
        profile=args.profile,
        dataset=" ".join(args.data),
        num_scenarios=results.num_scenarios,
        num_modes=args.modes,
        generated_by="diffdrive eval run",
        actor=actor_name,
        checkpoint=args.checkpoint,
        preset=args.preset,
        setting=args.setting,
        dynamics=args.dynamics if actor_name != "log_replay" else "state",
        dynamics_noise_std=args.noise,
        seed=args.seed,
        batch_size=batch_size,
        timing=results.timing,
    )
    out = results.to_dict(meta, per_scenario=args.per_scenario)
    if args.out and jax.process_index() == 0:
        _write_json_atomic(args.out, out)
    m, c = out["metrics"], out["counts"]

    def fmt(v):
        return "nan" if v is None else f"{v:.4f}"

    label = "minADE" if args.modes > 1 else "ADE"
    print(
        f"{actor_name} [{args.setting}, K={args.modes}, noise={args.noise} m]: "
        f"{label} {fmt(m['ade'])}  overlap {fmt(m['overlap_rate'])}  "
        f"offroad {fmt(m['offroad_rate'])}  (per step: overlap "
        f"{fmt(m['overlap_step_rate'])}, offroad {fmt(m['offroad_step_rate'])})  "
        f"on {c['evaluated']}/{c['scenarios']} scenarios "
        f"({c['skipped_no_sdc']} without SDC, {c['skipped_no_valid_steps']} without valid "
        f"steps); {results.timing['scenarios_per_s']:.2f} scenarios/s"
        + (f"; wrote {args.out}" if args.out else "")
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``eval`` group's commands (``run``) to its subparsers."""
    p = sub.add_parser(
        "run",
        help="closed-loop evaluation: ADE / minADE, overlap and offroad rates",
        description="Rolls an actor out closed loop (11 warm-up log steps, then the rest "
        "of the log, 80 steps for WOMD) K times per scenario and reports the papers' "
        "metrics: ADE (minADE over K), overlap and offroad rates (any step, and per step).",
    )
    p.add_argument("--data", nargs="+", required=True, help="files, caches or synthetic:N:SEED")
    p.add_argument("--format", default=None, help="skip detection: the format of all inputs")
    p.add_argument(
        "--actor",
        choices=ACTORS,
        default=None,
        help="baseline or trained policy (default: policy with --checkpoint/--preset, else expert)",
    )
    p.add_argument("--checkpoint", default=None, help="policy checkpoint directory")
    p.add_argument("--preset", default=None, help="policy model/training preset")
    p.add_argument("--modes", type=int, default=1, help="K rollouts per scenario (minADE)")
    p.add_argument(
        "--noise", type=float, default=0.0, help="test-time position noise std (m) per step"
    )
    p.add_argument("--setting", choices=("planning", "multi_agent"), default="planning")
    p.add_argument("--out", default=None, help="write the JSON results here")
    p.add_argument("--max-scenarios", type=int, default=None)
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="scenarios per batch (default 16 // K, at least 1: K * B rows near 16 run "
        "fastest per rollout on CPU)",
    )
    p.add_argument("--max-objects", type=int, default=128)
    p.add_argument("--roadgraph-points", type=int, default=20000)
    p.add_argument("--dynamics", default="bicycle", help="dynamics registry name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default=None, help="recorded in meta.profile")
    p.add_argument("--per-scenario", action="store_true", help="per-scenario records in JSON")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--devices",
        default=None,
        help="split each batch over N devices or 'all' (default 1; all in a multi-process "
        "job, see README 'Scaling out'); results equal one device's",
    )
    p.set_defaults(func=cmd_run)
