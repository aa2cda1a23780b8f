"""Scenario data throughput on one CPU core: decoding WOMD files vs. reading the cache.

Measures scenarios per second for

* decoding the WOMD tf.Example sample (``tf_example``),
* decoding the WOMD Scenario-proto samples (``scenario_proto``),
* reading a :mod:`diffdrive.data.cache` back: random ``cache[i]`` (memory-mapped),
  a sequential epoch of padded batches (memory-mapped and streamed), and a shuffled epoch,

plus the cache size per scenario. The cache holds ``--copies`` copies of the decoded
tf.Example scenario (128 objects x 91 steps, 20000 roadgraph points), so its reads are
WOMD-sized. Files are in the OS page cache after the first pass (warm reads); the figures
are CPU cost, not disk speed.

Usage::

    python benchmarks/data_throughput.py [--data ../shared/data] [--min-time 2] [--json]
"""

from __future__ import annotations

import os

# One core: set before numpy / jax are imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from diffdrive.data import cache, sources  # noqa: E402
from diffdrive.data.types import DecodedScenario  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Result:
    name: str
    scenarios_per_s: float
    seconds_per_scenario: float
    repeats: int
    note: str = ""


def timed(name: str, fn: Callable[[], int], min_time: float, note: str = "") -> Result:
    """Calls ``fn`` (returning how many scenarios it handled) until ``min_time`` passes.

    The rate is from the median repeat, which is robust to other processes sharing the
    core for a moment.
    """
    fn()  # warm-up (imports, page cache, first-call costs)
    rates = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(rates) < 3:
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    rate = float(np.median(rates))
    return Result(name, rate, 1.0 / rate, len(rates), note)


def decode_all(paths: list[pathlib.Path], fmt: str) -> Callable[[], int]:
    def run() -> int:
        return sum(1 for p in paths for _ in sources.read_file(p, format=fmt))

    return run


def copies_of(s: DecodedScenario, n: int) -> list[DecodedScenario]:
    return [dataclasses.replace(s, scenario_id=f"{s.scenario_id}-{i}") for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--copies", type=int, default=64, help="scenarios in the test cache")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    data = pathlib.Path(args.data)
    tf_file = data / "womd" / "tf_example" / "motion_data_one_example.tfrecord"
    proto_files = sorted((data / "womd" / "scenario_proto").glob("*.tfrecord"))
    if not tf_file.exists():
        print(f"error: {tf_file} not found (pass --data)", file=sys.stderr)
        return 2

    results: list[Result] = []
    results.append(
        timed(
            "decode tf_example",
            decode_all([tf_file], "tf_example"),
            args.min_time,
            "1 record, 128 objects, 20000 rg points",
        )
    )
    errors: dict[str, str] = {}
    if proto_files and sources.available_formats()["scenario_proto"]:
        try:
            results.append(
                timed(
                    "decode scenario_proto",
                    decode_all(proto_files, "scenario_proto"),
                    args.min_time,
                    f"{len(proto_files)} files, 1 record each",
                )
            )
        except Exception as e:  # a reader bug should not hide the other figures
            errors["decode scenario_proto"] = f"{type(e).__name__}: {e}"

    base = next(sources.read_file(tf_file, format="tf_example"))
    with tempfile.TemporaryDirectory(prefix="diffdrive-bench-") as tmp:
        t0 = time.perf_counter()
        c = cache.build_cache(
            copies_of(base, args.copies),
            pathlib.Path(tmp) / "c",
            shard_size=args.shard_size,
            progress=False,
        )
        build_s = time.perf_counter() - t0
        results.append(
            Result(
                "cache build (pad + write + hash)",
                args.copies / build_s,
                build_s / args.copies,
                1,
                f"{args.copies} scenarios",
            )
        )
        rng = np.random.default_rng(0)

        def random_getitem() -> int:
            for i in rng.integers(0, len(c), 32):
                c[int(i)]
            return 32

        def epoch(cc: cache.Cache, seed: int | None) -> Callable[[], int]:
            def run() -> int:
                n = 0
                for state in cc.iter_batches(args.batch_size, shuffle_seed=seed):
                    n += state.log_trajectory.x.shape[0]
                return n

            return run

        results.append(
            timed(
                "cache getitem, random (mmap)",
                random_getitem,
                args.min_time,
                "unpadded DecodedScenario",
            )
        )
        results.append(
            timed(
                "cache epoch, batches (mmap)",
                epoch(c, None),
                args.min_time,
                f"batch {args.batch_size}, SimulatorState",
            )
        )
        results.append(
            timed(
                "cache epoch, shuffled (mmap)",
                epoch(c, 0),
                args.min_time,
                f"batch {args.batch_size}",
            )
        )
        streamed = cache.open_cache(c.path, mode="stream", verify="none")
        results.append(
            timed(
                "cache epoch, batches (stream)",
                epoch(streamed, None),
                args.min_time,
                f"batch {args.batch_size}",
            )
        )
        bytes_per_scenario = c.bytes_per_scenario

    summary = {
        "benchmark": "data_throughput",
        "cpu_cores_used": 1,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cache_bytes_per_scenario": round(bytes_per_scenario),
        "cache_shape": {"objects": 128, "steps": 91, "roadgraph_points": 20000},
        "results": {
            r.name: {
                "scenarios_per_s": round(r.scenarios_per_s, 2),
                "ms_per_scenario": round(1e3 * r.seconds_per_scenario, 3),
                "repeats": r.repeats,
                "note": r.note,
            }
            for r in results
        },
        "errors": errors,
    }
    if args.json:
        print(json.dumps(summary, separators=(",", ":")))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="scenario data throughput, 1 CPU core (warm page cache)")
    for col in ("what", "scenarios/s", "ms/scenario", "note"):
        table.add_column(col, justify="left" if col in ("what", "note") else "right")
    for r in results:
        table.add_row(
            r.name, f"{r.scenarios_per_s:,.1f}", f"{1e3 * r.seconds_per_scenario:.3f}", r.note
        )
    console = Console()
    console.print(table)
    for name, err in errors.items():
        console.print(f"[red]{name} failed:[/red] {err}")
    console.print(
        f"cache size: {bytes_per_scenario / 1e6:.3f} MB per scenario "
        "(uncompressed, 128 objects x 91 steps, 20000 roadgraph points)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
