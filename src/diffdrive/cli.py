"""The ``diffdrive`` command line.

Commands are grouped (``diffdrive <group> <command> ...``). The ``data`` group is here::

    diffdrive data inspect PATH... [--json] [--format F] [--skip-bad] [--summary]
                           [--record-rg-points 20000]
    diffdrive data convert INPUT... --out DIR [--format F] [--max-objects 128]
                           [--roadgraph-points 20000] [--num-steps 91] [--shard-size 64]
                           [--filter none|interactive] [--skip-bad] [--overwrite]
                           [--record-rg-points 20000]
    diffdrive data generate --out DIR --num N --seed S [--preset P] [--shard-size 64]
    diffdrive data stats PATH... [--against PATH...] [--out FILE] [--json]

and the ``profile`` group (pipeline parameters, :mod:`diffdrive.config`)::

    diffdrive profile use tiny|default|paper     # copy params/NAME.yaml to params.yaml
    diffdrive profile show [--json]
    diffdrive profile build-data [--dry-run]     # the dvc `data` stage

Other groups (``train``, ``eval``, ``plan``) plug in with :func:`register_group`: a
function that receives the group's subparsers and adds commands, each setting
``func=<callable(args) -> int>`` with ``set_defaults``.

Exit codes: 0 success, 2 bad input (decode error, unknown format, corrupt cache; the
message names the file, record and field), 1 anything else.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from diffdrive.data.types import DecodedScenario, ScenarioDecodeError

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2

GroupConfigurer = Callable[[argparse._SubParsersAction], None]
_GROUPS: dict[str, tuple[str, GroupConfigurer]] = {}


def register_group(name: str, help: str, configure: GroupConfigurer) -> None:
    """Adds a command group ``diffdrive <name> ...``; ``configure`` adds its commands."""
    _GROUPS[name] = (help, configure)


class _BadInput(Exception):
    """Raised by commands for input errors that should exit with code 2."""


# ----------------------------------------------------------------------------- inspect


def _bucket(n: int, step: int) -> int:
    return max(step, -(-n // step) * step)


@functools.lru_cache(maxsize=1)
def _event_counts_fn():
    import jax

    from diffdrive.sim import metrics

    return jax.jit(metrics.log_replay_event_counts)


def offroad_roadgraph_subset(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Indices of the roadgraph points the offroad metric can look at, in order.

    Waymax's offroad picks the nearest valid road-edge sample (types 15, 16) and then reads
    the sample just before it (same polyline id test); with no road edge at all it uses
    sample 0. Keeping the road-edge samples, each one's predecessor and sample 0, in their
    original order, therefore gives bit-identical offroad results on far fewer points.

    Returns:
      ``(K,)`` int64 indices into the ``(P,)`` roadgraph.
    """
    types = np.asarray(arrays["roadgraph_points/types"])
    edge = np.isin(types, (15, 16))
    keep = edge.copy()
    keep[:-1] |= edge[1:]  # the predecessor of every edge sample
    if keep.size:
        keep[0] = True
    return np.flatnonzero(keep)


def log_event_counts(s: DecodedScenario) -> dict[str, np.ndarray]:
    """Per object of the log: steps valid, overlapping another object, offroad.

    Uses :func:`diffdrive.sim.metrics.log_replay_event_counts` (Waymax's exact overlap
    and offroad, counted at valid steps) on the roadgraph points offroad can use
    (:func:`offroad_roadgraph_subset`). Objects and points are padded with invalid
    entries to buckets (16 objects, 1024 points) so scenarios of similar size share one
    compiled function; neither change alters a count.

    Returns:
      ``{"valid_steps", "overlap_steps", "offroad_steps"}``, each ``(N,)`` int64 in the
      scenario's object order.
    """
    from diffdrive.data import batching

    arrays = batching.normalize_arrays(s.arrays, s)
    keep = offroad_roadgraph_subset(arrays)
    for key in arrays:
        if key.startswith("roadgraph_points/"):
            arrays[key] = arrays[key][keep]
    sizes = batching.scenario_sizes(arrays, s)
    n = sizes["num_objects"]
    arrays, _ = batching.pad_arrays(
        arrays,
        _bucket(n, 16),
        _bucket(sizes["num_roadgraph_points"], 1024),
        None,
        max(sizes["num_traffic_lights"], 1),
        scenario=s,
    )
    state = batching.state_from_flat_batch(arrays)
    out = _event_counts_fn()(state.log_trajectory, state.roadgraph_points)
    return {k: np.asarray(v)[:n].astype(np.int64) for k, v in out.items()}


def inspect_record(file: str, s: DecodedScenario) -> dict:
    """The ``inspect --json`` object of one scenario."""
    a = s.arrays
    valid = np.asarray(a["log_trajectory/valid"], bool)
    is_sdc = np.flatnonzero(np.asarray(a["object_metadata/is_sdc"], bool))
    counts = log_event_counts(s)
    return {
        "file": file,
        "scenario_id": str(s.scenario_id),
        "format": s.format,
        "num_objects": int(valid.shape[0]),
        "num_valid_objects": int(valid.any(axis=-1).sum()),
        "sdc_index": int(is_sdc[0]) if is_sdc.size else None,
        "num_steps": int(valid.shape[-1]),
        "num_roadgraph_points": int(np.asarray(a["roadgraph_points/valid"], bool).sum()),
        "valid_steps": counts["valid_steps"].tolist(),
        "overlap_steps": counts["overlap_steps"].tolist(),
        "offroad_steps": counts["offroad_steps"].tolist(),
    }


def _iter_file_scenarios(args, stats) -> Iterator[tuple[str, DecodedScenario]]:
    from diffdrive.data import sources

    for f in sources.expand_paths(args.paths):
        for s in sources.read_file(
            f,
            format=args.format,
            on_error="skip" if args.skip_bad else "raise",
            stats=stats,
            max_num_rg_points=args.record_rg_points,
        ):
            yield f, s


def _print_human(rec: dict, s: DecodedScenario, console, show_objects: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    title = escape(f"{rec['file']}  [{rec['format']}]  {rec['scenario_id']}")
    t = Table(title=title, title_justify="left")
    # objects, objects valid at some step, SDC index, steps, valid roadgraph points,
    # objects overlapping / offroad at some valid step, SDC overlap / offroad steps
    for col in (
        "objs",
        "valid",
        "SDC",
        "steps",
        "rg pts",
        "ovl objs",
        "off objs",
        "SDC ovl",
        "SDC off",
    ):
        t.add_column(col, justify="right")
    sdc = rec["sdc_index"]
    ov, off = np.asarray(rec["overlap_steps"]), np.asarray(rec["offroad_steps"])
    t.add_row(
        str(rec["num_objects"]),
        str(rec["num_valid_objects"]),
        "-" if sdc is None else str(sdc),
        str(rec["num_steps"]),
        str(rec["num_roadgraph_points"]),
        str(int((ov > 0).sum())),
        str(int((off > 0).sum())),
        "-" if sdc is None else str(rec["overlap_steps"][sdc]),
        "-" if sdc is None else str(rec["offroad_steps"][sdc]),
    )
    console.print(t)
    if not show_objects:
        return
    ot = Table(show_edge=False, pad_edge=False)
    for col in ("#", "id", "type", "valid steps", "overlap steps", "offroad steps"):
        ot.add_column(col, justify="right")
    ids = s.arrays["object_metadata/ids"]
    types = s.arrays["object_metadata/object_types"]
    for i, v in enumerate(rec["valid_steps"]):
        if v == 0:
            continue
        mark = " (SDC)" if i == sdc else ""
        ot.add_row(
            f"{i}{mark}",
            str(int(ids[i])),
            str(int(types[i])),
            str(v),
            str(rec["overlap_steps"][i]),
            str(rec["offroad_steps"][i]),
        )
    console.print(ot)


def cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console

    from diffdrive.data.tfrecord import SkipStats

    stats = SkipStats()
    console = Console(soft_wrap=False)
    n = 0
    for f, s in _iter_file_scenarios(args, stats):
        rec = inspect_record(f, s)
        n += 1
        if args.json:
            sys.stdout.write(json.dumps(rec, separators=(",", ":")) + "\n")
            sys.stdout.flush()
        else:
            _print_human(rec, s, console, show_objects=not args.summary)
    _report_skips(stats, n)
    return EXIT_OK


def _report_skips(stats, n_ok: int) -> None:
    if stats.skipped:
        print(f"{n_ok} scenarios read; {stats.summary()}", file=sys.stderr)
        for e in stats.errors:
            print(f"  skipped: {e}", file=sys.stderr)


# ------------------------------------------------------------------ convert / generate


def cmd_convert(args: argparse.Namespace) -> int:
    from diffdrive.data import cache, filters, sources
    from diffdrive.data.tfrecord import SkipStats

    stats = SkipStats()
    scenarios = sources.read_scenarios(
        args.inputs,
        format=args.format,
        on_error="skip" if args.skip_bad else "raise",
        stats=stats,
        max_num_rg_points=args.record_rg_points,
    )
    fstats = filters.FilterStats()
    if args.filter == "interactive":
        scenarios = filters.apply_filters(scenarios, filters.interactive_filters(), fstats)
    try:
        c = cache.build_cache(
            scenarios,
            args.out,
            shard_size=args.shard_size,
            max_objects=args.max_objects,
            num_roadgraph_points=args.roadgraph_points,
            num_timesteps=args.num_steps,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except ScenarioDecodeError:
        print(
            f"note: the shards completed in {args.out} are kept; the same command resumes "
            "after the input is fixed (or add --skip-bad)",
            file=sys.stderr,
        )
        raise
    except (FileExistsError, ValueError) as e:  # a finished cache there; nothing decoded
        raise _BadInput(str(e)) from e
    _report_skips(stats, len(c))
    if args.filter != "none":
        print(f"filter {args.filter}: {json.dumps(fstats.as_dict())}", file=sys.stderr)
    _print_cache_summary(c)
    return EXIT_OK


def _print_cache_summary(c) -> None:
    print(
        f"wrote {len(c)} scenarios in {c.num_shards} shards to {c.path} "
        f"({c.nbytes / 1e6:.1f} MB, {c.bytes_per_scenario / 1e6:.2f} MB/scenario)"
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from diffdrive.data import batching, cache, sources, synthetic

    cfg = sources.synthetic_config(args.preset)
    it = iter(synthetic.generate_dataset(args.num, args.seed, cfg))
    first = next(it, None)
    if first is None:
        raise _BadInput("the generator produced no scenario (--num must be >= 1)")
    sizes = batching.scenario_sizes(first.arrays, first)
    c = cache.build_cache(
        itertools.chain([first], it),
        args.out,
        shard_size=args.shard_size,
        max_objects=args.max_objects or sizes["num_objects"],
        num_roadgraph_points=args.roadgraph_points or sizes["num_roadgraph_points"],
        num_timesteps=sizes["num_timesteps"],
        overwrite=args.overwrite,
        progress=not args.no_progress,
        total=args.num,
    )
    _print_cache_summary(c)
    return EXIT_OK


# -------------------------------------------------------------------------------- stats


def cmd_stats(args: argparse.Namespace) -> int:
    from diffdrive.data import sources, stats

    def load(paths: Sequence[str]):
        return stats.dataset_stats(
            sources.read_scenarios(paths, format=args.format),
            name=" ".join(paths),
            progress=not args.no_progress,
        )

    a = load(args.paths)
    result = stats.compare_datasets(a, load(args.against)) if args.against else a.summary()
    if args.out:
        stats.write_json(result, args.out)
    if args.json or not args.out:
        print(json.dumps(result, separators=(",", ":")))
    return EXIT_OK


# ------------------------------------------------------------------------------ parser


def _add_record_rg_points(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--record-rg-points",
        type=int,
        default=20000,
        help="roadgraph samples per WOMD record (20000 for v1.0/v1.1, 30000 from v1.2); "
        "the readers' max_num_rg_points",
    )


def _configure_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="per-scenario summary and per-object log event counts",
        description="Decodes files and prints, per scenario, object/step/roadgraph counts "
        "and per object the log steps it is valid, overlaps another object and is offroad "
        "(Waymax's exact metrics, counted at valid steps).",
    )
    p.add_argument("paths", nargs="+", help="files, directories, caches or synthetic:N:SEED")
    p.add_argument("--json", action="store_true", help="one JSON object per scenario per line")
    p.add_argument("--format", default=None, help="skip detection: the format of all inputs")
    p.add_argument("--skip-bad", action="store_true", help="skip undecodable records, count them")
    p.add_argument("--summary", action="store_true", help="no per-object table (human output)")
    _add_record_rg_points(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("convert", help="decode real files once into a scenario cache")
    p.add_argument("inputs", nargs="+", help="files or directories")
    p.add_argument("--out", required=True, help="cache directory")
    p.add_argument("--format", default=None)
    p.add_argument("--max-objects", type=int, default=128)
    p.add_argument("--roadgraph-points", type=int, default=20000)
    p.add_argument(
        "--num-steps",
        type=int,
        default=None,
        help="cut/pad every log to this many steps (default: the first's)",
    )
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument(
        "--filter",
        choices=("none", "interactive"),
        default="none",
        help="interactive: keep scenarios with an SDC and an object of interest",
    )
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    _add_record_rg_points(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("generate", help="build a cache of procedurally generated scenarios")
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default=None, help="a diffdrive.data.synthetic preset name")
    p.add_argument("--max-objects", type=int, default=None)
    p.add_argument("--roadgraph-points", type=int, default=None)
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("stats", help="dataset statistics, or a comparison of two datasets")
    p.add_argument("paths", nargs="+")
    p.add_argument("--against", nargs="+", default=None, help="second dataset to compare with")
    p.add_argument("--format", default=None)
    p.add_argument("--out", default=None, help="write the JSON here (atomically)")
    p.add_argument("--json", action="store_true", help="also print the JSON with --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_stats)


register_group("data", "scenario data: inspect, convert, generate, stats", _configure_data)


# ------------------------------------------------------------------------------ profile


def _config_call(fn: Callable[[], int]) -> int:
    from diffdrive.config import ConfigError

    try:
        return fn()
    except ConfigError as e:
        raise _BadInput(str(e)) from e


def cmd_profile_use(args: argparse.Namespace) -> int:
    from diffdrive import config

    def run() -> int:
        cfg = config.use_profile(args.name, args.root)
        print(f"params.yaml is now profile {cfg.profile!r} (from params/{args.name}.yaml)")
        return EXIT_OK

    return _config_call(run)


def cmd_profile_show(args: argparse.Namespace) -> int:
    import yaml

    from diffdrive import config

    def run() -> int:
        root = config.project_root(args.root)
        name, same = config.active_profile(root)
        cfg = config.load_params(root / config.PARAMS_FILE)
        if args.json:
            print(json.dumps({"profile": name, "matches_profile_file": same,
                              "params": config.to_dict(cfg)}))  # fmt: skip
            return EXIT_OK
        state = "" if same else f" (edited: differs from params/{name}.yaml)"
        print(f"active profile: {name}{state}; available: {', '.join(_profiles(root))}")
        print(yaml.safe_dump(config.to_dict(cfg), sort_keys=False).rstrip())
        return EXIT_OK

    return _config_call(run)


def _profiles(root) -> list[str]:
    from diffdrive import config

    return sorted(p.stem for p in (root / config.PROFILE_DIR).glob("*.yaml"))


def cmd_profile_build_data(args: argparse.Namespace) -> int:
    import shlex

    from diffdrive import config

    def run() -> int:
        root = config.project_root(args.root)
        cfg = config.load_params(root / config.PARAMS_FILE)
        argv = config.data_command(cfg.data, out=args.out, root=root)
        print("diffdrive " + shlex.join(argv), file=sys.stderr)
        return EXIT_OK if args.dry_run else main(argv)

    return _config_call(run)


def _configure_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("use", help="make params/NAME.yaml the active params.yaml (atomic copy)")
    p.add_argument("name", help="tiny | default | paper (a file in params/)")
    p.add_argument("--root", default=None, help="project root (default: the one around cwd)")
    p.set_defaults(func=cmd_profile_use)

    p = sub.add_parser("show", help="the active profile and its resolved parameters")
    p.add_argument("--json", action="store_true")
    p.add_argument("--root", default=None)
    p.set_defaults(func=cmd_profile_show)

    p = sub.add_parser(
        "build-data",
        help="build the scenario cache params.yaml describes (the pipeline's data stage)",
        description="Runs `diffdrive data generate` (data.source: synthetic) or `diffdrive "
        "data convert` (data.source: womd) with the active parameters; prints the command.",
    )
    p.add_argument("--out", default="data/scenarios")
    p.add_argument("--dry-run", action="store_true", help="only print the command")
    p.add_argument("--root", default=None)
    p.set_defaults(func=cmd_profile_build_data)


register_group("profile", "pipeline parameter profiles: use, show, build-data", _configure_profile)


# ------------------------------------------------------------------------------ methods
# Method groups live beside their code; imported only when the parser is built.


def _configure_eval(sub) -> None:
    from diffdrive.eval import cli as eval_cli

    eval_cli.register(sub)


register_group("eval", "closed-loop evaluation of baselines and policies", _configure_eval)


def _configure_train(sub) -> None:
    from diffdrive.train import cli as train_cli

    train_cli.register(sub)


register_group(
    "train",
    "train policies: APG (analytic policy gradients) or behaviour cloning",
    _configure_train,
)


def _configure_plan(sub) -> None:
    from diffdrive.plan import cli as plan_cli

    plan_cli.register(sub)


register_group(
    "plan",
    "test-time planning: world-model MPC (mpc) or differentiable simulator search (dss)",
    _configure_plan,
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, one subparser per registered group."""
    parser = argparse.ArgumentParser(
        prog="diffdrive", description="A differentiable, Waymax-compatible driving simulator."
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="GROUP")
    for name, (help_text, configure) in _GROUPS.items():
        g = groups.add_parser(name, help=help_text, description=help_text)
        configure(g.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit code (0 ok, 2 bad input, 1 other failure)."""
    from diffdrive.data.cache import CacheError
    from diffdrive.data.sources import FormatError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ScenarioDecodeError, FormatError, CacheError, _BadInput, FileNotFoundError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
