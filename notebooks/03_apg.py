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
# # APG: analytic policy gradients against behaviour cloning, and the ablations
#
# The `train` stages (`dvc.yaml`, one per entry of `apg.variants` in `params.yaml`) train
# each variant on the first `apg.num_train` scenarios of `data/scenarios`:
#
# | variant | what changes |
# |---|---|
# | `apg` | APG: detached state, winner-take-all mixture, incremental resets, heading route |
# | `bc` | behaviour cloning of the log's inverse-kinematics actions |
# | `apg_no_detach` | gradients through the simulator state (the APG paper's ablation) |
# | `apg_half` | training on shorter rollouts (evaluated on all 80 steps) |
# | `route_none`, `route_waypoint` | route conditioning (AWM Table VI) |
# | `apg_awm_recipe` | AWM's recipe: entropy bonus, variance floor, fewer epochs (AWM Table I) |
# | `ma_apg`, `ma_bc` | every valid agent controlled (multi-agent setting) |
#
# This notebook evaluates them on the remaining (test) scenarios with the papers' protocol
# (10 logged warm-up steps, 80 simulated, Waymax's bicycle model; minADE over K sampled
# rollouts, that rollout's overlap and offroad), writes `results/<table>.json` for every
# table (rendered beside the papers' numbers into `paper_tables/` by the `tables` stage),
# and checks the papers' claims against these numbers.

# %% tags=["parameters"]
profile = "default"
apg = {}

# %%
from IPython.display import Markdown, display

from diffdrive.eval import apg_study, paper_tables
from diffdrive.train import study as study_lib
from diffdrive.viz.apg import load_study_results, plot_apg_study

studycfg = study_lib.study_from_dict(apg)
out = apg_study.run_study(studycfg, profile=profile)
tables, claims = out["tables"], out["claims"]
print(f"tables written: {sorted(tables)}; skipped: {out['skipped'] or 'none'}")

# %% [markdown]
# ## Training runs

# %%
lines = ["| variant | algorithm | setting | steps | wall time (s) | last-epoch loss | diverged |"]
lines.append("|---|---|---|---:|---:|---:|---|")
for name, s in out["training"].items():
    last = s.get("last_epoch") or {}
    loss = last.get("loss")
    lines.append(
        f"| {name} | {s['algorithm']} | {s['setting']} | {s['steps']} | {s['wall_s']:.0f} | "
        f"{'—' if loss is None else f'{loss:.4f}'} | {s['diverged'] or 'no'} |"
    )
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Tables (ours beside the papers')

# %%
ctx = paper_tables.Context(paper_tables.ROOT / "results")
for table_id in tables:
    display(Markdown(paper_tables.REGISTRY[table_id](ctx).markdown))

# %% [markdown]
# ## Do the papers' claims hold here?
#
# Each claim is judged from the numbers above (not written by hand); "no" means this
# pipeline, on this data and budget, does not reproduce it.

# %%
display(Markdown(apg_study.claims_markdown(claims)))
held = sum(c["holds"] for c in claims)
display(Markdown(f"**{held} of {len(claims)} claims hold on this run.**"))

# %% [markdown]
# ## Figures

# %%
plot_apg_study(load_study_results("results"))
