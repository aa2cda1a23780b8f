"""Simulator throughput at batch 16 x 128 objects x 20000 roadgraph points.

The batch is the real WOMD tf.Example scenario as Waymax decodes it
(``../shared/conformance/waymax_decoded_tf_example.npz``), tiled 16 times: the setup of
section 12 of ``waymax_semantics.md``, where real Waymax's figures on this machine are
listed. Every measurement is a jitted call on the batched state (our functions take any
leading batch shape, so no ``vmap`` is needed), median of ``--repeats`` runs after a
warm-up call.

``rollout80_all_metrics_s`` keeps offroad exact for every valid object (so every masked
metric equals Waymax's; the test suite checks it on both real scenarios) and judges
objects invalid at a step by the grid; ``rollout80_all_metrics_exact_invalid_s`` also
reproduces Waymax's values at those invalid objects, which here sit at z = -1 forty
metres below the road and force the exact fallback.

    python benchmarks/sim_throughput.py [--json] [--batch 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from diffdrive.sim import datatypes as dt
from diffdrive.sim import dynamics, env, metrics
from diffdrive.timing import median_seconds

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCENARIO = ROOT.parent / "shared" / "conformance" / "waymax_decoded_tf_example.npz"
# Real Waymax on this machine (spec section 12, second table: jitted, vmapped, batch 16).
WAYMAX_REFERENCE_S = {
    "step_s": 2.5e-3,
    "rollout80_nometrics_s": 10.6e-3,
    "rollout80_overlap_logdiv_s": 0.86,
    "rollout80_all_metrics_s": 28.5,
    "sdc_value_and_grad80_s": 69e-3,
}


def batched_state(batch: int) -> dt.SimulatorState:
    if not SCENARIO.exists():
        sys.exit(f"{SCENARIO} not found: the benchmark needs ../shared beside the project")
    single = dt.state_from_flat_arrays(np.load(SCENARIO), source=str(SCENARIO))
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (batch, *a.shape)), single)


def run(batch: int, repeats: int) -> dict[str, float]:
    model = dynamics.InvertibleBicycleModel()
    state = batched_state(batch)
    results: dict[str, float] = {}

    index_config = metrics.RoadEdgeIndexConfig()
    build = jax.jit(lambda rg: metrics.build_road_edge_index(rg, index_config))
    results["offroad_index_build_s"] = median_seconds(
        build, state.roadgraph_points, repeats=repeats
    )
    index = build(state.roadgraph_points)

    def make_env(names, controlled="valid", exact_for_invalid=True):
        # Objects that appear after warm-up replay the log rather than being spawned by
        # dynamics at their padding values (Waymax quirk Q3), as any real use would set it.
        config = env.EnvironmentConfig(
            controlled_object=controlled,
            metrics=names,
            rewards=(),
            road_edge_index=False,
            allow_new_objects_after_warmup=False,
            offroad_exact_for_invalid=exact_for_invalid,
        )
        return env.MultiAgentEnvironment(model, config)

    multi = make_env(())
    plain = multi.reset(state)
    start = plain.replace(road_edge_index=index)
    zero_action = dt.Action(
        data=jnp.zeros((batch, start.num_objects, 2)),
        valid=jnp.ones((batch, start.num_objects, 1), bool),
    )
    # The step the rollout runs: current objects in, next objects out.
    mask = multi.control_mask(plain.object_metadata, plain.sim_trajectory)
    light_step = jax.jit(lambda view, a: multi._step_view(view, a, mask))
    results["step_s"] = median_seconds(light_step, multi.view(plain), zero_action, repeats=repeats)
    # Waymax's signature: the whole (..., N, 91) state in and out.
    results["step_full_state_s"] = median_seconds(
        jax.jit(multi.step), plain, zero_action, repeats=repeats
    )

    def zero_actor(view, actor_state, key):
        return zero_action, actor_state

    def rollout_fn(environment, names):
        def fn(s):
            out = environment.rollout(s, zero_actor, 80, metric_names=names, with_rewards=False)
            # Make the result depend on every step so nothing is optimised away.
            total = jnp.sum(out.trajectory.x) + jnp.sum(out.trajectory.y)
            for m in out.metrics.values():
                total = total + jnp.sum(m.value)
            return total

        return jax.jit(fn)

    all_metrics = ("overlap", "offroad", "log_divergence")
    for key, names, exact_invalid in (
        ("rollout80_nometrics_s", (), True),
        ("rollout80_overlap_logdiv_s", ("overlap", "log_divergence"), True),
        ("rollout80_all_metrics_s", all_metrics, False),
        ("rollout80_all_metrics_exact_invalid_s", all_metrics, True),
    ):
        environment = make_env(names, exact_for_invalid=exact_invalid)
        results[key] = median_seconds(rollout_fn(environment, names), start, repeats=repeats)

    planning = env.PlanningAgentEnvironment(
        model, env.EnvironmentConfig(metrics=(), rewards=(), road_edge_index=False)
    )
    p_start = planning.reset(state)
    sdc = p_start.sdc_index
    target = jnp.stack(
        [
            jnp.take_along_axis(p_start.log_trajectory.x[..., 90], sdc[:, None], -1)[:, 0],
            jnp.take_along_axis(p_start.log_trajectory.y[..., 90], sdc[:, None], -1)[:, 0],
        ],
        -1,
    )

    def loss(actions):
        out = planning.rollout(
            p_start,
            env.fixed_actions_actor(actions),
            80,
            actor_state=0,
            metric_names=(),
            with_rewards=False,
        )
        onehot = p_start.object_metadata.is_sdc[..., None]
        xy = jnp.stack(
            [jnp.sum(out.trajectory.x * onehot, -2), jnp.sum(out.trajectory.y * onehot, -2)], -1
        )
        return jnp.mean(jnp.sum((xy - target[:, None, :]) ** 2, -1))

    grad_fn = jax.jit(jax.value_and_grad(loss))
    actions = jnp.zeros((80, batch, 2))
    results["sdc_value_and_grad80_s"] = median_seconds(grad_fn, actions, repeats=repeats)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object of medians")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=pathlib.Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    results = run(args.batch, args.repeats)
    results["batch"] = args.batch
    results["device"] = jax.devices()[0].device_kind
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results))
        return
    print(f"{'measurement':32s} {'diffdrive':>12s} {'waymax':>10s} {'speed-up':>9s}")
    for key, ours in results.items():
        if key in ("batch", "device"):
            continue
        ref = WAYMAX_REFERENCE_S.get(key)
        extra = f"{ref:10.4f} {ref / ours:8.1f}x" if ref else ""
        print(f"{key:32s} {ours:12.4f} {extra}")


if __name__ == "__main__":
    main()
