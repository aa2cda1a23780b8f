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
# # Dataset statistics
#
# Statistics of the pipeline's scenario cache (`data/scenarios`) compared with the real
# WOMD samples in `stats.real_data` (`../shared/data` beside the checkout). Without real
# data the notebook still runs and the JSON says the comparison was skipped. Writes
# `results/dataset_stats.json`; the figure is drawn from it by
# `scripts/figures/dataset_stats.py` (stage `dataset_stats_figure`).

# %% tags=["parameters"]
profile = "default"
stats = {}

# %%
from IPython.display import Markdown, display

from diffdrive import config
from diffdrive.data.cache import open_cache
from diffdrive.data.stats import write_json
from diffdrive.viz import dataset_stats_report, plot_dataset_stats, summary_table

cfg = config.from_dict({"profile": profile, "stats": stats})
report = dataset_stats_report(
    open_cache(config.SCENARIO_CACHE),
    name=config.SCENARIO_CACHE,
    real_data=cfg.stats.real_data,
    bins=cfg.stats.histogram_bins,
    max_scenarios=cfg.stats.max_scenarios,
    profile=cfg.profile,
)
write_json(report, config.DATASET_STATS_JSON)
print(f"{report['dataset']['num_scenarios']} scenarios; {report['real_data']['note']}")

# %% [markdown]
# ## Summary (mean ± std; Wasserstein distance to the real data)

# %%
display(Markdown(summary_table(report)))

# %% [markdown]
# ## Distributions

# %%
plot_dataset_stats(report)
