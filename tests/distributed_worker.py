"""Runs the multi-device checks of ``tests/test_distributed.py`` in a fresh process.

JAX fixes its device count at import, so the test runs this script with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` and compares, inside it, a mesh of
one device with a mesh of four. It writes ``OUT/results.json`` and ``.npz`` arrays::

    python tests/distributed_worker.py OUT           # single process, 4 simulated devices
    python tests/distributed_worker.py OUT --multiprocess PROCESS_ID NUM ADDRESS
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys

import numpy as np

# Shapes of tests/test_apg.py and tests/test_checkpoint.py (8 objects, 500 roadgraph points).
NUM_SCENARIOS = 12
BATCH = 4


@functools.lru_cache(maxsize=1)
def scenarios():
    from diffdrive.data import synthetic
    from diffdrive.data.sources import synthetic_config

    cfg = synthetic_config("small", max_objects=8, num_roadgraph_points=500, num_vehicles=(2, 4))
    return [synthetic.generate_scenario(100 + i, cfg) for i in range(NUM_SCENARIOS)]


def train_config(**overrides):
    from diffdrive.train.config import TrainConfig

    return TrainConfig.tiny(**overrides)


def flat_params(params) -> np.ndarray:
    import jax
    from jax.flatten_util import ravel_pytree

    return np.asarray(jax.device_get(ravel_pytree(params)[0]))


def one_train_step(mesh) -> tuple[np.ndarray, dict]:
    """One step from the seed-0 state on the first global batch, on ``mesh``."""
    import jax

    from diffdrive import distributed
    from diffdrive.train import loop

    config = train_config()
    source = loop.BatchSource(scenarios(), BATCH, config.seed, rows=None)
    state = distributed.replicate(loop.create_train_state(config, 10), mesh)
    batch = distributed.shard_batch(source.batch(0, 0), mesh)
    step = loop.make_train_step(config, mesh=mesh)
    new_state, metrics = step(state, batch, loop.step_key(config, 0))
    for leaf in jax.tree.leaves(new_state.params):  # replicated over the whole mesh
        assert leaf.sharding.is_fully_replicated, leaf.sharding
        assert len(leaf.sharding.device_set) == distributed.num_shards(mesh), leaf.sharding
    return flat_params(new_state.params), {k: float(v) for k, v in metrics.items()}


def evaluation(mesh, actor_name: str, batch_size: int, num_scenarios: int = 6):
    """Summary and per-step records of a short evaluation on ``mesh`` (None: unsharded)."""
    import jax

    from diffdrive.eval import baselines, rollouts
    from diffdrive.train import apg

    if actor_name == "policy":
        actor, init = apg.make_policy_actor(preset="tiny", sample=True)
        environment = rollouts.make_environment("planning")
        modes = 2
    else:
        b = baselines.make_baseline(actor_name, "planning", None)
        actor, init = b.actor, b.init_actor_state
        environment = rollouts.make_environment("planning", b.dynamics)
        modes = 1
    batches = rollouts.batches_with_ids(
        scenarios()[:num_scenarios], batch_size, max_objects=8, num_roadgraph_points=500
    )
    results = rollouts.evaluate(
        environment,
        actor,
        init,
        batches,
        num_modes=modes,
        key=jax.random.PRNGKey(3),
        num_steps=12,
        keep_steps=True,
        mesh=mesh,
    )
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--multiprocess", nargs=3, default=None)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.multiprocess:
        return multiprocess(
            out, int(args.multiprocess[0]), int(args.multiprocess[1]), args.multiprocess[2]
        )

    import jax

    from diffdrive import distributed
    from diffdrive.train import loop

    report: dict = {"device_count": jax.device_count()}
    mesh1, mesh4 = distributed.make_mesh(1), distributed.make_mesh(4)

    # 1. One train step: 1 device vs 4 (same global batch).
    p1, m1 = one_train_step(mesh1)
    p4, m4 = one_train_step(mesh4)
    np.savez(out / "train_step.npz", one=p1, four=p4)
    report["train_step_metrics"] = {"one": m1, "four": m4}

    # 2. Evaluation: unsharded vs 1-device mesh vs 4 devices.
    for name, actor, batch in (("policy", "policy", 4), ("cv_pad", "constant_velocity", 3)):
        arrays, summaries = {}, {}
        # The padded case (3 scenarios per batch, padded to 4) once unsharded, once on 4.
        meshes = (("none", None), ("one", mesh1), ("four", mesh4))[:: 1 if batch == 4 else 2]
        for label, mesh in meshes:
            r = evaluation(mesh, actor, batch)
            summaries[label] = r.summary()
            report.setdefault("eval_ids", {})[f"{name}_{label}"] = r.scenario_ids
            for k, v in r.steps.items():
                arrays[f"{label}_{k}"] = v
        np.savez(out / f"eval_{name}.npz", **arrays)
        report[f"eval_{name}"] = summaries

    # 3. Checkpoints: a 4-device run killed after 4 of 6 steps (checkpoints at 3 and 4;
    # the test resumes it on one device), and the uninterrupted 4-device run.
    config = train_config(epochs=2, checkpoint_every=2, keep_checkpoints=2)
    killed = loop.train(
        config, scenarios(), out / "run4", progress=False, stop_after_steps=4, mesh=mesh4
    )
    report["killed_step"] = int(killed.state.step)
    full = loop.train(config, scenarios(), out / "full4", progress=False, mesh=mesh4)
    np.savez(out / "full4.npz", params=flat_params(full.state.params))
    report["full4_history"] = full.history

    # 4. A batch that does not divide over the devices is refused clearly.
    try:
        loop.train(train_config(batch_size=6), scenarios(), None, progress=False, mesh=mesh4)
    except ValueError as e:
        report["indivisible_error"] = str(e)
    try:
        distributed.make_mesh(5)
    except ValueError as e:
        report["too_many_devices_error"] = str(e)

    # 5. `diffdrive eval run --devices 4` reports what `--devices 1` does.
    import contextlib
    import io

    from diffdrive.cli import main as cli_main

    for devices in ("1", "4"):
        argv = ["eval", "run", "--data", "synthetic:5:0:small", "--actor", "constant_velocity"]
        argv += ["--max-objects", "8", "--roadgraph-points", "500", "--batch-size", "3"]
        argv += ["--devices", devices, "--no-progress", "--out", str(out / f"cli{devices}.json")]
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli_main(argv) == 0
        report[f"cli_eval_{devices}"] = json.loads((out / f"cli{devices}.json").read_text())

    (out / "results.json").write_text(json.dumps(report))
    return 0


def multiprocess(out: pathlib.Path, process_id: int, num_processes: int, address: str) -> int:
    """One process of a real multi-process job on CPU (2 devices each): one train step and
    a short evaluation over the global mesh, written as ``process<i>.npz``."""
    import jax

    from diffdrive import distributed

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    assert distributed.initialize_from_env(address, num_processes, process_id)
    mesh = distributed.make_mesh()
    from diffdrive.train import loop

    config = train_config()
    rows = distributed.process_rows(BATCH, mesh)
    source = loop.BatchSource(scenarios(), BATCH, config.seed, rows=rows)
    state = distributed.replicate(loop.create_train_state(config, 10), mesh)
    batch = distributed.shard_batch(source.batch(0, 0), mesh, process_local=True)
    new_state, metrics = loop.make_train_step(config, mesh=mesh)(
        state, batch, loop.step_key(config, 0)
    )
    params = flat_params(distributed.to_host(new_state.params))
    results = evaluation(mesh, "policy", 4)
    np.savez(
        out / f"process{process_id}.npz",
        params=params,
        rows=np.array([rows.start, rows.stop]),
        loss=float(metrics["loss"]),
        **{f"eval_{k}": v for k, v in results.steps.items()},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
