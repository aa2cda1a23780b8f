"""APG on real WOMD scenarios: train on synthetic + GPUDrive JSON, evaluate on held-out real data.

    python scripts/real_data_report.py [--shared ../shared/data] [--cache data/scenarios]
        [--num-synthetic 160] [--preset default] [--epochs 20] [--runs runs/real]
        [--out results/apg_real_data.json]

Trains APG and BC (planning setting) on the first ``--num-synthetic`` scenarios of the
pipeline's synthetic cache plus the 49 WOMD scenarios of ``womd/gpudrive_json``, then
evaluates both, constant velocity and the closed-loop expert on the real scenarios that
were not trained on: the 4 Nocturne JSON files and the tf.Example record (one reactive
rollout each, Waymax's bicycle, 10 warm-up + 80 simulated steps). Resumable (the runs
checkpoint). Writes one JSON with per-source metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import sys
import time

from diffdrive.data import cache, sources
from diffdrive.eval import aggregate, apg_study
from diffdrive.train import checkpoint, loop
from diffdrive.train.config import train_config

EVAL_SOURCES = {
    "nocturne_json": "womd/nocturne_json/*.json",
    "tf_example": "womd/tf_example/*.tfrecord",
}
TRAIN_REAL = "womd/gpudrive_json/*.json.gz"
MAX_OBJECTS = 32


def _read(pattern: str) -> list:
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no files match {pattern}")
    return [s for f in files for s in sources.read_scenarios(f)]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default="../shared/data")
    p.add_argument("--cache", default="data/scenarios")
    p.add_argument("--num-synthetic", type=int, default=160)
    p.add_argument("--preset", default="default")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--runs", default="runs/real")
    p.add_argument("--out", default="results/apg_real_data.json")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    synthetic = cache.open_cache(args.cache)
    train_set = [synthetic[i] for i in range(min(args.num_synthetic, len(synthetic)))]
    real_train = _read(os.path.join(args.shared, TRAIN_REAL))
    train_set += real_train
    print(f"training on {len(train_set)} scenarios ({len(real_train)} real GPUDrive JSON)")

    training = {}
    for name, algorithm in (("apg", "apg"), ("bc", "bc")):
        config = train_config(
            args.preset,
            algorithm=algorithm,
            epochs=args.epochs,
            batch_size=args.batch_size,
            max_objects=MAX_OBJECTS,
        )
        start = time.perf_counter()
        result = loop.train(
            config, train_set, os.path.join(args.runs, name), progress=not args.no_progress
        )
        training[name] = {
            "steps": int(result.state.step),
            "wall_s": time.perf_counter() - start,
            "last_epoch": result.history[-1] if result.history else None,
        }

    evaluations = {}
    for source, pattern in EVAL_SOURCES.items():
        scenarios = _read(os.path.join(args.shared, pattern))
        ev = apg_study.StudyEvaluator(
            scenarios,
            args.runs,
            apg_study.EvalConfig(batch_size=len(scenarios)),
            max_objects=128,
            num_roadgraph_points=30000,
            progress=True,
        )
        rows = {}
        for actor in ("apg", "bc", "constant_velocity", "expert"):
            rows[actor] = aggregate.table_row(ev.reactive(actor))
        evaluations[source] = {
            "scenarios": [str(s.scenario_id) for s in scenarios],
            "rows": rows,
            "timing": ev.timings,
        }
    report = aggregate.to_jsonable(
        {
            "meta": {
                "generated_by": "scripts/real_data_report.py",
                "preset": args.preset,
                "epochs": args.epochs,
                "train": {
                    "synthetic": f"{args.cache}[:{args.num_synthetic}]",
                    "real": TRAIN_REAL,
                    "num_scenarios": len(train_set),
                },
                "eval_sources": EVAL_SOURCES,
                "protocol": "planning setting, 1 reactive rollout (mean action), Waymax bicycle, "
                "10 warm-up + 80 simulated steps",
                "train_config": dataclasses.asdict(config) | {"algorithm": "apg|bc"},
            },
            "training": training,
            "evaluation": evaluations,
        }
    )
    checkpoint.write_json_atomic(args.out, report)
    for source, e in evaluations.items():
        for actor, r in e["rows"].items():
            print(
                f"{source:14s} {actor:18s} ADE {r['ade']:.3f} m  overlap {r['overlap']:.2f}  "
                f"offroad {r['offroad']:.2f}"
            )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
