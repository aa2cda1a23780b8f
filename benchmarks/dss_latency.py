"""DSS latency: seconds per 90-step scenario vs K, T, M and the agent count N.

    python benchmarks/dss_latency.py --json benchmarks/results/dss_latency.json \\
        [--preset default] [--grid target|small|full] [--repeats 2] [--steps 80] \\
        [--others-model transformer|mlp|constant_velocity] [--breakdown]

Each point drives one synthetic scenario (default preset, N object slots) through
Algorithm 2 (:func:`diffdrive.plan.dss.control_loop`) for ``--steps`` steps with untrained
default-preset policies: the ego's (waypoint route) and, for the others, the pipeline's
multi-agent policy (``ma_apg``: agent transformer, 64 roadgraph points; ``mlp``: the MLP
agent encoder with 64 points), timing the compiled call (compilation excluded; the best of
``--repeats``). The paper's cost model is ``O(L K T N / M)`` policy calls; the script fits
``seconds = a + b * ceil(L/M) * K * T * N`` (least squares) and reports R^2 and the
relative residual per point. The target point is N = 32, M = 3, K = 8, T = 10 over the
full 80 steps (the paper: 4.1 s on an RTX 3090 with N = 128). ``--breakdown`` adds the
milliseconds of one plan's parts at the target point (policy forwards, features, gradient).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffdrive.data import batching, synthetic
from diffdrive.data.sources import synthetic_config
from diffdrive.models import policy
from diffdrive.models.config import model_config
from diffdrive.plan import dss
from diffdrive.train.checkpoint import write_json_atomic

TARGET = {"N": 32, "M": 3, "K": 8, "T": 10}
PAPER_SECONDS = 4.1
L = 80  # simulated steps after the 11 warm-up steps (the paper's 90 counts from step 1)


def grid(kind: str) -> list[dict]:
    base = dict(TARGET)
    points = [base]
    ks = (1, 2, 4, 8) if kind == "full" else (2, 8)
    ts = (1, 5, 10, 20) if kind == "full" else (5, 10)
    ms = (1, 3, 5) if kind == "full" else (3, 5)
    ns = (8, 16, 32, 64) if kind == "full" else (16, 32)
    points += [dict(base, K=k) for k in ks]
    points += [dict(base, T=t) for t in ts if t >= base["M"]]
    points += [dict(base, M=m) for m in ms]
    points += [dict(base, N=n) for n in ns]
    unique = []
    for p in points:
        if p not in unique:
            unique.append(p)
    return unique


def scenario(n: int, preset: str):
    cfg = synthetic_config(preset, max_objects=n)
    return jax.tree.map(
        jnp.asarray, batching.batch_scenarios([synthetic.generate_scenario(0, cfg)])
    )


OTHERS_MODELS = {
    "transformer": {"agent_encoder": "transformer", "roadgraph_top_k": 64},  # ma_apg
    "mlp": {"agent_encoder": "mlp", "roadgraph_top_k": 64},
}


def policies(preset: str, others_kind: str):
    mc = model_config(preset, route="waypoint")
    ego = dss.EgoPolicy(policy.Policy(mc), policy.init_params(mc, jax.random.PRNGKey(0)))
    if others_kind in OTHERS_MODELS:
        oc = model_config(preset, **OTHERS_MODELS[others_kind])
        others = dss.policy_others(policy.Policy(oc), policy.init_params(oc, jax.random.PRNGKey(1)))
        return ego, others, oc
    return ego, dss.constant_velocity_others(), None


def _best(fn, args, repeats):
    jax.block_until_ready(fn(*args))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def breakdown(preset: str, others_kind: str, repeats: int) -> dict:
    """Milliseconds of one plan at the target point and of its parts (compiled)."""
    ego, others, oc = policies(preset, others_kind)
    k, t, m = TARGET["K"], TARGET["T"], TARGET["M"]
    planner = dss.Planner(dss.DSSConfig(K=k, T=t, M=m), ego, others)
    env = dss.make_real_environment()
    s = env.reset(scenario(TARGET["N"], preset))
    view = env.view(s)
    sdc = view.metadata.is_sdc
    rg = dss.local_roadgraph(view.roadgraph, dss._ego_xy(view.current, sdc), 2000)
    view = view.replace(roadgraph=rg, road_edge_index=None)
    he, ho = ego.init(s), others.init(s)
    tile = lambda tree: dss._tile_k(tree, k)
    kv = view.replace(
        **{
            f: tile(getattr(view, f))
            for f in ("current", "previous", "log", "metadata", "roadgraph", "traffic_lights")
        }
    )
    key = jax.random.PRNGKey(0)
    ms = {}
    ms["plan"] = _best(jax.jit(lambda v: dss.plan(planner, v, he, ho, key)), (view,), repeats)
    ms["ego_policy_step_x_K"] = _best(jax.jit(ego.step), (kv, tile(he)), repeats)
    if oc is not None:
        rgk = tile(others.select_roadgraph(view.roadgraph, view.current))
        feats = jax.jit(lambda v, r: dss.features_with_agent_roadgraph(v, r, oc))
        ms["others_features_preselected_x_K"] = _best(feats, (kv, rgk), repeats)
        ms["others_features_topk_every_step_x_K"] = _best(
            jax.jit(lambda v: policy.observe_all(v, oc)), (kv,), repeats
        )
        model, params = policy.Policy(oc), policy.init_params(oc, jax.random.PRNGKey(1))
        ms["others_network_x_K"] = _best(
            jax.jit(lambda f, h: model.apply(params, f, h)), (feats(kv, rgk), tile(ho)), repeats
        )
        ms["others_select_points_once"] = _best(
            jax.jit(others.select_roadgraph), (view.roadgraph, view.current), repeats
        )
    out = dss.plan(planner, view, he, ho, key)
    ctx = dss.LossContext(
        log=view.log, start=view.timestep, is_sdc=sdc, imagined=out.imagined, roadgraph=rg
    )
    start = tile(dss.ego_state(view.current, sdc))

    def grad_pass(actions):
        loss = lambda a: jnp.sum(dss.tracking_loss(dss.replay_ego(planner.dynamics, start, a), ctx))
        return jax.grad(loss)(actions)

    ms["ego_gradient_pass"] = _best(jax.jit(grad_pass), (out.sampled_actions,), repeats)
    return {name: 1e3 * v for name, v in ms.items()}


def time_point(point: dict, preset: str, repeats: int, others_kind: str, steps: int) -> dict:
    ego, others, _ = policies(preset, others_kind)
    config = dss.DSSConfig(K=point["K"], T=point["T"], M=point["M"])
    planner = dss.Planner(config, ego, others)
    state = scenario(point["N"], preset)
    fn = jax.jit(lambda s, k: dss.control_loop(planner, s, k, num_steps=steps))
    start = time.perf_counter()
    jax.block_until_ready(fn(state, jax.random.PRNGKey(0)))
    compile_s = time.perf_counter() - start
    best = math.inf
    for r in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(state, jax.random.PRNGKey(r + 1)))
        best = min(best, time.perf_counter() - start)
    calls = math.ceil(steps / point["M"]) * point["K"] * point["T"] * point["N"]
    return {
        **point,
        "steps": steps,
        "seconds": best,
        "first_call_s": compile_s,
        "policy_calls": calls,
        "others": others_kind,
    }


def fit(rows: list[dict]) -> dict:
    x = np.array([r["policy_calls"] for r in rows], float)
    y = np.array([r["seconds"] for r in rows], float)
    a = np.stack([np.ones_like(x), x], -1)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    pred = a @ coef
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2)) or 1.0
    for r, p in zip(rows, pred, strict=True):
        r["model_seconds"] = float(p)
        r["relative_error"] = float((r["seconds"] - p) / r["seconds"])
    return {
        "intercept_s": float(coef[0]),
        "seconds_per_policy_call": float(coef[1]),
        "r2": 1.0 - ss_res / ss_tot,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--grid", choices=("target", "small", "full"), default="small")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--others-model", choices=(*OTHERS_MODELS, "constant_velocity"), default="transformer"
    )
    ap.add_argument("--steps", type=int, default=L, help="steps per scenario of the grid")
    ap.add_argument("--breakdown", action="store_true", help="time one plan's parts")
    args = ap.parse_args(argv)
    points = [dict(TARGET)] if args.grid == "target" else grid(args.grid)
    rows = []
    for p in points:
        steps = L if p == TARGET else args.steps
        row = time_point(p, args.preset, args.repeats, args.others_model, steps)
        rows.append(row)
        print(
            f"K={row['K']} T={row['T']} M={row['M']} N={row['N']}: "
            f"{row['seconds']:.2f} s/scenario (first call {row['first_call_s']:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    model = fit(rows) if len(rows) > 2 else None
    parts = breakdown(args.preset, args.others_model, args.repeats) if args.breakdown else None
    target = next(r for r in rows if all(r[k] == v for k, v in TARGET.items()))
    out = {
        "meta": {
            "preset": args.preset,
            "steps_per_scenario": L,
            "repeats": args.repeats,
            "backend": jax.default_backend(),
            "devices": str(jax.devices()),
            "others_model": args.others_model,
            "load_average": os.getloadavg(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
        "target": {
            **target,
            "paper_seconds": PAPER_SECONDS,
            "paper_setting": "RTX 3090, N=128, M=3, K=8, T=10",
            "under_paper": target["seconds"] < PAPER_SECONDS,
        },
        "cost_model": model,
        "plan_breakdown_ms": parts,
        "rows": rows,
    }
    write_json_atomic(args.json, out)
    print(f"target: {target['seconds']:.2f} s per scenario (paper {PAPER_SECONDS} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
