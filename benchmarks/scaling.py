"""Data-parallel scaling: training and evaluation throughput at 1, 2, 4 devices.

For each device count a fresh process is started (JAX fixes its device count at import);
on CPU it simulates the devices with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
(``--platform native`` uses the machine's real devices instead: GPUs). In it, per preset,
on one global batch of ``--batch`` procedural scenarios of the preset's shape (the shapes
of ``benchmarks/train_throughput.py``) split over a mesh of N devices
(:mod:`diffdrive.distributed`):

* ``train_step_s``: one jitted APG train step (state replicated, batch split, gradients
  all-reduced by the compiler), median of ``--repeats`` after a warm-up call;
  ``train_scenario_steps_per_s`` = ``B * rollout_steps / train_step_s``;
* ``eval_batch_s``: one jitted evaluation batch (:func:`diffdrive.eval.rollouts.
  make_batch_fn`: reset, 80-step closed-loop rollout of the untrained policy, K = 1, the
  papers' metrics); ``eval_scenarios_per_s`` = ``B / eval_batch_s``.

The global batch is fixed (strong scaling), so a perfect speed-up is N. Simulated CPU
devices share the machine's cores: expect no gain beyond the physical core count (and on
a machine already busy, none at all); the figures there show the overhead of the sharded
program, not a speed-up.

    python benchmarks/scaling.py [--devices 1,2,4] [--presets tiny,default] [--batch 8]
                                 [--repeats 3] [--platform cpu|native] [--json OUT]
    python benchmarks/scaling.py --platform native --devices 1 --presets paper --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

DATA_SHAPES = {"tiny": (16, 2000), "default": (32, 2000), "paper": (128, 20000)}
SYNTHETIC_PRESET = {"tiny": "small", "default": "default", "paper": "womd"}


def _host_batch(preset: str, batch: int, seed: int = 0):
    """Numpy training batch and the padded evaluation batch (4 distinct scenarios tiled)."""
    from diffdrive.data import batching, synthetic
    from diffdrive.data.sources import synthetic_config
    from diffdrive.train import loop

    objects, points = DATA_SHAPES[preset]
    cfg = synthetic_config(SYNTHETIC_PRESET[preset], max_objects=objects)
    distinct = min(batch, 4)
    scenarios = [synthetic.generate_scenario(seed + i, cfg) for i in range(distinct)]
    scenarios = [scenarios[i % distinct] for i in range(batch)]
    source = loop.BatchSource(scenarios, batch, seed, objects, points)
    full = batching.batch_scenarios(scenarios, objects, points)
    import jax

    return source.batch(0, 0), jax.device_get(full)


def run_worker(num_devices: int, presets: list[str], batch: int, repeats: int) -> dict:
    """Timings on a mesh of ``num_devices`` (in this process)."""
    import jax

    from diffdrive import distributed
    from diffdrive.eval import rollouts
    from diffdrive.models.policy import Policy, make_policy_actor
    from diffdrive.timing import median_seconds
    from diffdrive.train import loop
    from diffdrive.train.config import train_config

    mesh = distributed.make_mesh(num_devices)
    out: dict = {"devices": num_devices, "platform": jax.devices()[0].platform, "presets": {}}
    for preset in presets:
        config = train_config(preset, batch_size=batch)
        train_batch, eval_batch = _host_batch(preset, batch)
        state = distributed.replicate(loop.create_train_state(config, 1000), mesh)
        key = jax.random.PRNGKey(0)
        step = loop.make_train_step(config, mesh=mesh)
        sharded = distributed.shard_batch(train_batch, mesh)
        train_s = median_seconds(step, state, sharded, key, repeats=repeats)

        actor, init = make_policy_actor(Policy(config.model), state.params, config.model)
        environment = rollouts.make_environment("planning", config.make_dynamics())
        fn = rollouts.make_batch_fn(environment, actor, init, num_modes=1)
        eval_s = median_seconds(fn, distributed.shard_batch(eval_batch, mesh), key, repeats=repeats)
        out["presets"][preset] = {
            "batch": batch,
            "per_device_batch": batch // num_devices,
            "rollout_steps": config.rollout_steps,
            "train_step_s": train_s,
            "train_scenario_steps_per_s": batch * config.rollout_steps / train_s,
            "eval_batch_s": eval_s,
            "eval_scenarios_per_s": batch / eval_s,
        }
        print(f"[{num_devices} devices] {preset}: {out['presets'][preset]}", file=sys.stderr)
    return out


def _run_subprocess(num_devices: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if args.platform == "cpu":
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
        flags.append(f"--xla_force_host_platform_device_count={num_devices}")
        env["XLA_FLAGS"] = " ".join(flags)
        env["JAX_PLATFORMS"] = "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        result = pathlib.Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--worker", str(num_devices), "--worker-out", str(result)]
        cmd += ["--presets", args.presets, "--batch", str(args.batch)]
        cmd += ["--repeats", str(args.repeats)]
        subprocess.run(cmd, env=env, check=True)
        return json.loads(result.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="1,2,4", help="device counts, comma-separated")
    parser.add_argument("--presets", default="tiny,default")
    parser.add_argument("--batch", type=int, default=8, help="global batch (all counts divide)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--platform", choices=("cpu", "native"), default="cpu")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    presets = [p for p in args.presets.split(",") if p]
    if args.worker is not None:
        result = run_worker(args.worker, presets, args.batch, args.repeats)
        pathlib.Path(args.worker_out).write_text(json.dumps(result))
        return 0

    counts = [int(n) for n in args.devices.split(",")]
    for n in counts:
        if args.batch % n:
            parser.error(f"--batch {args.batch} is not a multiple of {n} devices")
    runs = [_run_subprocess(n, args) for n in counts]
    report = {
        "platform": runs[0]["platform"],
        "simulated_devices": args.platform == "cpu",
        "cpu_count": os.cpu_count(),
        "batch": args.batch,
        "repeats": args.repeats,
        "runs": runs,
    }
    header = f"{'preset':8} {'devices':>7} {'train step s':>12} {'train scen-steps/s':>18} "
    header += f"{'speed-up':>8} {'eval batch s':>12} {'eval scen/s':>11} {'speed-up':>8}"
    print(header)
    for preset in presets:
        base = runs[0]["presets"][preset]
        for run in runs:
            r = run["presets"][preset]
            r["train_speedup"] = base["train_step_s"] / r["train_step_s"]
            r["eval_speedup"] = base["eval_batch_s"] / r["eval_batch_s"]
            print(
                f"{preset:8} {run['devices']:>7} {r['train_step_s']:>12.4f} "
                f"{r['train_scenario_steps_per_s']:>18.1f} {r['train_speedup']:>8.2f} "
                f"{r['eval_batch_s']:>12.4f} {r['eval_scenarios_per_s']:>11.2f} "
                f"{r['eval_speedup']:>8.2f}"
            )
    if args.json:
        from diffdrive.train.checkpoint import write_json_atomic

        write_json_atomic(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
