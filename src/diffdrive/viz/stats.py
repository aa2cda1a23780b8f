"""The dataset-statistics report (``results/dataset_stats.json``) and its figure.

:func:`dataset_stats_report` computes the statistics of the pipeline's scenario set with
:mod:`diffdrive.data.stats`, compares them with real data when that is there (and says so
when it is not), and adds per-statistic histograms on shared bins so that the figure is
drawn from the JSON alone (:func:`plot_dataset_stats`,
``scripts/figures/dataset_stats.py``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffdrive.data import stats as dstats
from diffdrive.data.types import DecodedScenario

SCHEMA = "diffdrive.dataset_stats/1"

UNITS = {
    "sdc_speed_mean": "m/s",
    "sdc_speed_max": "m/s",
    "sdc_accel_mean_abs": "m/s²",
    "sdc_yaw_rate_mean_abs": "rad/s",
    "num_objects": "",
    "num_valid_objects": "",
    "num_roadgraph_points": "",
    "roadgraph_density": "pts/ha",
    "sdc_speed": "m/s",
    "sdc_accel": "m/s²",
    "sdc_yaw_rate": "rad/s",
}


def _round(v: float) -> float:
    return float(f"{float(v):.6g}")


def histogram(a: np.ndarray, b: np.ndarray | None, bins: int) -> dict[str, Any]:
    """Histograms of ``a`` (and ``b``) on shared bins, as fractions of each sample.

    The bins span the 0.5th to 99.5th percentile of both samples together (finite values;
    the rest is clipped into the outer bins) so one outlier does not flatten the plot.

    Returns:
      ``{"edges": [bins + 1], "a": [bins], "b": [bins] or None}``; ``{}`` if ``a`` and
      ``b`` hold no finite value.
    """
    fa = np.asarray(a, np.float64)
    fa = fa[np.isfinite(fa)]
    fb = None if b is None else np.asarray(b, np.float64)
    fb = None if fb is None else fb[np.isfinite(fb)]
    both = np.concatenate([fa, fb if fb is not None else np.zeros(0)])
    if not both.size:
        return {}
    lo, hi = np.percentile(both, [0.5, 99.5])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)

    def frac(x: np.ndarray | None) -> list[float] | None:
        if x is None:
            return None
        if not x.size:
            return [0.0] * bins
        h, _ = np.histogram(np.clip(x, lo, hi), edges)
        return [_round(v) for v in h / x.size]

    return {"edges": [_round(e) for e in edges], "a": frac(fa), "b": frac(fb)}


def dataset_stats_report(
    scenarios: Iterable[DecodedScenario],
    name: str,
    real_data: str | os.PathLike | Sequence[str] | None = None,
    bins: int = 20,
    max_scenarios: int | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """Statistics of a scenario set, compared with real data if it exists.

    Args:
      scenarios: the scenario set (e.g. the pipeline's cache).
      name: its label (e.g. the cache path).
      real_data: path(s) of real scenarios (files, directories) or ``None``. A path that
        does not exist is not an error: the comparison is skipped and the report says so.
      bins: histogram bins per statistic.
      max_scenarios: use only the first ones of ``scenarios``.
      profile: the parameter profile, recorded in the report.

    Returns:
      ``{"schema", "profile", "dataset": {"name", "num_scenarios"}, "real_data": {"path",
      "available", "num_scenarios", "note"}, "summary": <DatasetStats.summary()>,
      "comparison": <compare_datasets()> or None, "histograms": {"per_scenario": {stat:
      {edges, a, b}}, "per_step": {...}}}`` (``a`` the scenario set, ``b`` the real data).
    """
    if max_scenarios is not None:
        scenarios = itertools.islice(scenarios, max_scenarios)
    a = dstats.dataset_stats(scenarios, name=name)
    paths = [] if real_data is None else [real_data] if isinstance(real_data, (str, os.PathLike)) \
        else list(real_data)  # fmt: skip
    missing = [str(p) for p in paths if not Path(p).exists()]
    b = None
    if real_data is None:
        note = "no real data configured (stats.real_data is null): comparison skipped"
    elif missing:
        note = f"real data not found at {', '.join(missing)}: comparison skipped"
    else:
        from diffdrive.data import sources

        b = dstats.dataset_stats(
            sources.read_scenarios([str(p) for p in paths], on_error="skip"),
            name=" ".join(str(p) for p in paths),
        )
        note = f"compared with {b.num_scenarios} real scenarios"
    hist = {
        group: {
            k: histogram(getattr(a, group)[k], None if b is None else getattr(b, group)[k], bins)
            for k in getattr(a, group)
        }
        for group in ("per_scenario", "per_step")
    }
    return {
        "schema": SCHEMA,
        "profile": profile,
        "dataset": {"name": name, "num_scenarios": a.num_scenarios},
        "real_data": {
            "path": None if real_data is None else " ".join(str(p) for p in paths),
            "available": b is not None,
            "num_scenarios": None if b is None else b.num_scenarios,
            "note": note,
        },
        "summary": a.summary(),
        "comparison": None if b is None else dstats.compare_datasets(a, b),
        "histograms": hist,
    }


def summary_table(report: dict[str, Any]) -> str:
    """A Markdown table of the report: per statistic the mean ± std of the scenario set and,
    when compared, of the real data and the Wasserstein distance."""
    cmp = report.get("comparison")
    rows = ["| statistic | scenario set | real data | Wasserstein |", "|---|---|---|---|"]

    def fmt(mean, std) -> str:
        return "-" if mean is None else f"{mean:.4g} ± {std:.3g}"

    for group in ("per_scenario", "per_step"):
        for stat, d in report["summary"][group].items():
            real, w = "-", "-"
            if cmp is not None:
                c = cmp[group][stat]
                real = fmt(c["mean_b"], c["std_b"])
                w = "-" if c["wasserstein"] is None else f"{c['wasserstein']:.4g}"
            rows.append(f"| {_label(stat)} | {fmt(d['mean'], d['std'])} | {real} | {w} |")
    return "\n".join(rows)


def _label(stat: str) -> str:
    unit = UNITS.get(stat, "")
    return stat.replace("_", " ") + (f" [{unit}]" if unit else "")


def plot_dataset_stats(report: dict[str, Any], size_px: tuple[int, int] = (1400, 900), dpi=100):
    """The report's histograms, one panel per statistic: the scenario set vs. real data.

    Returns:
      A headless matplotlib ``Figure``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [
        (stat, h)
        for group in ("per_scenario", "per_step")
        for stat, h in report["histograms"][group].items()
        if h
    ]
    ncols = 4
    nrows = max(1, -(-len(panels) // ncols))
    fig = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    name_a = f"{report['dataset']['name']} (n={report['dataset']['num_scenarios']})"
    real = report["real_data"]
    name_b = f"real: {real['path']} (n={real['num_scenarios']})" if real["available"] else None
    for ax, (stat, h) in zip(axes.flat, panels):
        edges = np.asarray(h["edges"])
        width = np.diff(edges)
        ax.bar(edges[:-1], h["a"], width, align="edge", alpha=0.6, color="#1f77b4", label=name_a)
        if h.get("b") is not None:
            ax.stairs(h["b"], edges, color="#d62728", linewidth=1.8, label=name_b)
        ax.set_title(_label(stat), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_ylabel("fraction", fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    handles, labels = axes.flat[0].get_legend_handles_labels()
    title = "Dataset statistics"
    if not real["available"]:
        title += f" ({real['note']})"
    fig.suptitle(title, fontsize=11)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8)
    return fig
