# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # DSS: test-time search through the differentiable simulator
#
# Reproduces the ablation tree of Nachkov et al. (arXiv 2511.11043): reactive, reactive
# with gradients, simulator as critic and full DSS (Tables 2-4, tracking loss), then
# classifier-guided planning (Tables 5-6). The ego policy sees only its final logged
# waypoint (`route="waypoint"`); the other agents are imagined by the multi-agent policy.
# The reactive rows' deterministic "mean action" is the mixture mean (`DSSConfig.mean_action`;
# the most likely component's mean drives far worse with these WTA-trained policies).
# Writes `results/dss_table_{2..6}.json` and `paper_tables/figures/dss_fig{2,5}.png`.
# Tables are rendered by `scripts/make_tables.py` (stage `tables`).

# %% tags=["parameters"]
profile = "default"
dss = {}  # the `dss:` section of params.yaml (papermill -f); its keys override the defaults

# %% [markdown]
# Defaults of the notebook's settings (each may be overridden by a key of `dss`).

# %%
ego_policy = "runs/route_waypoint/policy"
others_policy = "runs/dss_others/policy"
scenarios = "data/scenarios"
test_start = 160
max_test_scenarios = 16
batch_size = 8
classifier_train_start = 0
classifier_train_scenarios = 32
classifier_steps = 1500
classifier_out = "runs/dss_classifier"
results_dir = "results"
figures_dir = "paper_tables/figures"
num_steps = None  # simulated steps per scenario (None: to the end of the log, 80)
seed = 0
tables = [2, 3, 4, 5, 6]

# %%
dss_params = dict(dss)  # read before `dss` names the planner module below
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from diffdrive.eval import dss_experiments as ex
from diffdrive.models import policy
from diffdrive.plan import dss
from diffdrive.train import checkpoint
from diffdrive.train import classifier as clf_train
from diffdrive.train.loop import load_dataset

unknown = sorted(k for k in dss_params if k not in globals() or k.startswith("_"))
if unknown:
    raise KeyError(f"params dss: unknown notebook parameters {unknown}")
globals().update(dss_params)
t_start = time.perf_counter()
dataset = load_dataset(scenarios)
test_end = len(dataset) if max_test_scenarios is None else test_start + max_test_scenarios
test = [dataset[i] for i in range(test_start, min(len(dataset), test_end))]
if not test:
    raise ValueError(f"no test scenarios in {scenarios} from index {test_start}")
model, params, ego_cfg = checkpoint.load_policy(ego_policy)
ego = dss.EgoPolicy(model, params)
if others_policy:  # a missing run is an error, not a silent fallback
    if not os.path.exists(others_policy):
        raise FileNotFoundError(f"others_policy {others_policy} does not exist")
    o_model, o_params, _ = checkpoint.load_policy(others_policy)
    others = dss.policy_others(o_model, o_params)
else:
    others = dss.constant_velocity_others()
print(f"{len(test)} test scenarios; ego route={ego_cfg.route}; others: {others.name}")

# %% [markdown]
# ## Classifier (Eq. 2): collision/offroad on simulated trajectories, exact labels

# %%
train_part = [
    dataset[i]
    for i in range(
        classifier_train_start,
        min(len(dataset), classifier_train_start + classifier_train_scenarios),
    )
]
clf_cfg = clf_train.ClassifierTrainConfig(steps=classifier_steps, seed=seed)
actor, init = policy.make_policy_actor(model, params, sample=True)
parts = []
for i, batch in enumerate(ex.scenario_batches(train_part, batch_size)):
    parts.append(
        clf_train.collect_dataset(
            batch, actor, init, clf_cfg, jax.random.PRNGKey(seed + i), num_steps
        )
    )
clf_data = clf_train.concat_datasets(parts)
bundle, clf_report = clf_train.train_classifier(clf_data, clf_cfg, progress=True)
clf_train.save_classifier(classifier_out, bundle, {"report": clf_report})
print({k: v for k, v in clf_report.items() if k != "train_loss"})

# %% [markdown]
# ## Tables 2-5

# %%
setup = ex.Setup(ego, others, ex.scenario_batches(test, batch_size), bundle, num_steps, seed)
meta = {
    "profile": profile,
    "dataset": scenarios,
    "num_scenarios": len(test),
    "test_split": f"scenarios [{test_start}, {test_start + len(test)})",
    "ego_policy": ego_policy,
    "others_policy": others.name if others.name != "policy" else others_policy,
    "num_steps": num_steps or 80,
    "note": (
        "T = 1 rows replan every step (M = 1: one planned action per plan); Table 5 uses M = 3. "
        f"Subset of {len(test)} test scenarios for the 2-core budget."
    ),
    "generated_by": "notebooks/05_dss.py (diffdrive.eval.dss_experiments)",
}
log = lambda msg: print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)
t2 = ex.table_2(setup, log)
t3 = ex.table_3(setup, log, reactive=t2[0])
t4 = ex.table_4(setup, log, reactive_gradients=next(r for r in t2 if r["eta_accel"] == 1000.0))
t5 = ex.table_5(setup, log) if 5 in tables else []
t6 = ex.table_6(t5)
os.makedirs(results_dir, exist_ok=True)
for tid, rows in ((2, t2), (3, t3), (4, t4), (5, t5), (6, t6)):
    if rows:
        checkpoint.write_json_atomic(
            os.path.join(results_dir, f"dss_table_{tid}.json"),
            ex.results_json(
                f"dss_table_{tid}", rows, dict(meta, classifier=clf_report.get("holdout"))
            ),
        )


def md(rows):
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys)
            + " |"
        )
    return "\n".join(lines)


for name, rows in (
    ("Table 2", t2),
    ("Table 3", t3),
    ("Table 4", t4),
    ("Table 5", t5),
    ("Table 6", t6),
):
    if rows:
        display(Markdown(f"**{name}**\n\n" + md(rows)))

# %% [markdown]
# ## Which of the paper's orderings hold here

# %%
claims = ex.orderings(t2, t3, t4, t5)
text = []
for c in claims:
    verdict = {True: "holds", False: "does not hold", None: "cannot be checked"}[c["holds"]]
    text.append(f"- **{c['claim']}**: {verdict} here ({c['evidence']}).")
held = [c["claim"] for c in claims if c["holds"]]
failed = [c["claim"] for c in claims if c["holds"] is False]
text.append(
    f"\nOf the paper's {len(claims)} orderings, {len(held)} hold on these {len(test)} "
    f"scenarios and {len(failed)} do not"
    + (f" ({'; '.join(failed)})" if failed else "")
    + ". Small test subsets make the differences noisy; the evidence lists the numbers."
)
display(Markdown("\n".join(text)))
print("\n".join(text))

# %% [markdown]
# ## Figures: optimised vs sampled imagined trajectories (Fig. 2), imagination in a scene (Fig. 5)

# %%
from diffdrive.eval import rollouts

env = rollouts.make_environment(rollouts.PLANNING)
batch = setup.batches[0]
state = env.reset(jax.tree.map(lambda a: a[:1] if jnp.ndim(a) else a, batch))
view = env.view(state)
fig_cfg = dss.DSSConfig(K=8, T=10, M=3, eta_accel=1000.0, eta_steer=0.01, tau=1.0, loss="tracking")
planner = dss.Planner(fig_cfg, ego, others)
sdc = view.metadata.is_sdc
xy = jnp.stack([jnp.sum(view.current.x * sdc, -1), jnp.sum(view.current.y * sdc, -1)], -1)
local = view.replace(
    roadgraph=dss.local_roadgraph(view.roadgraph, xy, fig_cfg.imagination_roadgraph_points)
)
out = jax.jit(lambda v, k: dss.plan(planner, v, ego.init(state), others.init(state), k))(
    local, jax.random.PRNGKey(seed)
)
ego_im = jax.tree.map(
    lambda a: np.asarray(jnp.sum(a * sdc[:, None, :, None], axis=-2))[0], out.imagined
)
opt = jax.tree.map(lambda a: np.asarray(a)[0], out.ego_optimised)
t0 = int(view.timestep)
log_x = np.asarray(jnp.sum(view.log.x * sdc[..., None], -2))[0]
log_y = np.asarray(jnp.sum(view.log.y * sdc[..., None], -2))[0]

fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharex=True, sharey=True)
for ax, traj, title in (
    (axes[0], ego_im, "sampled (no gradient)"),
    (axes[1], opt, "after one gradient step"),
):
    for k in range(fig_cfg.K):
        ax.plot(traj.x[k], traj.y[k], color="0.6" if traj is ego_im else "tab:green", lw=1)
    ax.plot(
        log_x[t0 : t0 + fig_cfg.T + 1], log_y[t0 : t0 + fig_cfg.T + 1], "k--", lw=1.5, label="log"
    )
    ax.scatter([log_x[t0]], [log_y[t0]], c="tab:blue", zorder=3)
    ax.set_title(title)
    ax.set_aspect("equal")
axes[0].legend()
fig.suptitle(f"Fig. 2 analogue: K={fig_cfg.K} imagined ego trajectories, T={fig_cfg.T}")
os.makedirs(figures_dir, exist_ok=True)
fig.savefig(os.path.join(figures_dir, "dss_fig2.png"), dpi=120, bbox_inches="tight")

fig, ax = plt.subplots(figsize=(7, 7))
rg = jax.tree.map(lambda a: np.asarray(a)[0], state.roadgraph_points)
edge = rg.valid & np.isin(rg.types, [15, 16])
ax.scatter(rg.x[rg.valid], rg.y[rg.valid], s=0.2, c="0.85")
ax.scatter(rg.x[edge], rg.y[edge], s=0.4, c="0.4")
logt = jax.tree.map(lambda a: np.asarray(a)[0], state.log_trajectory)
for i in range(logt.x.shape[0]):
    v = logt.valid[i]
    if v.any():
        ax.plot(logt.x[i][v], logt.y[i][v], color="0.6", lw=0.8)
imag = jax.tree.map(lambda a: np.asarray(a)[0], out.imagined)  # (K, N, T)
for k in range(fig_cfg.K):
    for i in range(imag.x.shape[1]):
        if imag.valid[k, i, 0]:
            ax.plot(imag.x[k, i], imag.y[k, i], color="tab:purple", lw=0.6, alpha=0.5)
cur = jax.tree.map(lambda a: np.asarray(a)[0], view.current)
ax.scatter(cur.x[cur.valid], cur.y[cur.valid], s=12, c="k")
e = int(np.argmax(np.asarray(sdc[0])))
ax.scatter([cur.x[e]], [cur.y[e]], s=40, c="tab:blue", zorder=4)
ax.set_xlim(cur.x[e] - 50, cur.x[e] + 50)
ax.set_ylim(cur.y[e] - 50, cur.y[e] + 50)
ax.set_aspect("equal")
ax.set_title("Fig. 5 analogue: imagined futures (purple) of every agent, ego blue")
fig.savefig(os.path.join(figures_dir, "dss_fig5.png"), dpi=120, bbox_inches="tight")
print(f"done in {time.perf_counter() - t_start:.0f} s")
