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
# # Scenarios
#
# The first scenarios of the pipeline's scenario cache (`data/scenarios`: procedural or
# WOMD, by profile), drawn top-down with `diffdrive.viz`: roadgraph by type, object boxes
# (SDC red), traffic lights by state, and the SDC's logged future. Stills go to
# `results/scenarios/scenario_NN.png`, animations to `scenario_NN.gif`.
#
# Run by `dvc repro scenarios` (jupytext | papermill `-f params.yaml`); the parameters
# below are the defaults that `params.yaml` overrides.

# %% tags=["parameters"]
profile = "default"
viz = {}

# %%
from pathlib import Path

from IPython.display import Image, display

from diffdrive import config
from diffdrive.data.cache import open_cache
from diffdrive.viz import animate_scenario, render_scenario, save_png, sdc_log_xy

cfg = config.from_dict({"profile": profile, "viz": viz})
v = cfg.viz
out = Path(config.SCENARIO_RENDERS)
out.mkdir(parents=True, exist_ok=True)
cache = open_cache(config.SCENARIO_CACHE)
n = min(v.num_scenarios, len(cache))
print(f"profile {cfg.profile}: rendering {n} of {len(cache)} scenarios at step {v.timestep}")

# %% [markdown]
# ## Stills at the current step, with the SDC's logged future

# %%
for i in range(n):
    s = cache[i]
    fig = render_scenario(
        s,
        v.timestep,
        trajectories={"log (SDC future)": sdc_log_xy(s, v.timestep)},
        size_px=v.size_px,
        view_radius_m=v.view_radius_m,
    )
    path = save_png(fig, out / f"scenario_{i:02d}.png")
    display(Image(filename=str(path)))

# %% [markdown]
# ## Animations

# %%
for i in range(min(v.gif_scenarios, n)):
    path = animate_scenario(
        cache[i],
        out / f"scenario_{i:02d}.gif",
        stride=v.gif_stride,
        fps=v.fps,
        size_px=v.size_px,
        view_radius_m=v.view_radius_m,
        follow=True,
    )
    print(f"{path}: {path.stat().st_size / 1e3:.0f} kB")
    display(Image(filename=str(path)))
