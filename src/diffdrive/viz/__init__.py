"""Visualisation: top-down scenario renderings (PNG, GIF) and figures from results JSON.

Needs matplotlib (the ``notebooks`` extra). Everything draws on matplotlib's Agg canvas
directly, so it runs headless and leaves the global backend alone.

* :mod:`.scenario`: :func:`render_scenario`, :func:`animate_scenario`.
* :mod:`.stats`: :func:`dataset_stats_report` (``results/dataset_stats.json``) and
  :func:`plot_dataset_stats`.
"""

from diffdrive.viz.scenario import (
    Scene,
    animate_scenario,
    as_scene,
    figure_to_array,
    new_figure,
    render_frames,
    render_scenario,
    save_png,
    sdc_log_xy,
)
from diffdrive.viz.stats import dataset_stats_report, plot_dataset_stats, summary_table

__all__ = [
    "Scene",
    "animate_scenario",
    "as_scene",
    "dataset_stats_report",
    "figure_to_array",
    "new_figure",
    "plot_dataset_stats",
    "render_frames",
    "render_scenario",
    "save_png",
    "sdc_log_xy",
    "summary_table",
]
