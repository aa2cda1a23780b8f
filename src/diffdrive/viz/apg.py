"""Figures of the APG study, drawn from its results files (no simulation here).

:func:`plot_apg_study` takes the rows of ``results/apg_num_modes.json``,
``apg_noise_robustness.json``, ``awm_table_1.json``, ``awm_table_6.json`` and the
training histories of ``results/apg_study.json`` and draws one 2 x 2 figure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STUDY_FILES = (
    "apg_num_modes.json",
    "apg_noise_robustness.json",
    "awm_table_1.json",
    "awm_table_6.json",
    "apg_study.json",
)


def load_study_results(results_dir: str | Path = "results") -> dict[str, Any]:
    """The study's results files that exist, by file stem."""
    out = {}
    for name in STUDY_FILES:
        path = Path(results_dir) / name
        if path.exists():
            with open(path) as f:
                out[path.stem] = json.load(f)
    return out


def _series(rows: Sequence[Mapping[str, Any]], group: str, x: str, y: str):
    series: dict[Any, list[tuple[float, float]]] = {}
    for r in rows:
        if r.get(y) is not None:
            series.setdefault(r[group], []).append((r[x], r[y]))
    return {k: sorted(v) for k, v in series.items()}


def plot_apg_study(results: Mapping[str, Any], figsize=(11, 8)):
    """One figure: minADE vs K, ADE vs noise, training curves, route conditioning.

    Args:
      results: :func:`load_study_results`'s output (missing files leave a panel empty).

    Returns:
      The matplotlib figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    ax = axes[0, 0]
    for method, pts in _series(
        results.get("apg_num_modes", {}).get("rows", []), "method", "K", "min_ade"
    ).items():
        ax.plot(*zip(*pts), marker="o", label=method.upper())
    for setup, pts in _series(
        results.get("awm_table_1", {}).get("rows", []), "setup", "num_rollouts", "min_ade"
    ).items():
        if setup == "apg_ours":
            ax.plot(*zip(*pts), marker="s", ls="--", label="APG, AWM recipe")
    ax.set(xscale="log", xlabel="rollouts K", ylabel="minADE (m)", title="minADE vs K")
    ax.legend()

    ax = axes[0, 1]
    for method, pts in _series(
        results.get("apg_noise_robustness", {}).get("rows", []), "method", "noise_std", "ade"
    ).items():
        ax.plot(*zip(*pts), marker="o", label=method.upper())
    ax.set(xlabel="position noise std (m per step)", ylabel="ADE (m)", title="Noise robustness")
    ax.legend()

    ax = axes[1, 0]
    training = results.get("apg_study", {}).get("training", {})
    for name, summary in training.items():
        hist = summary.get("history") or []
        pts = [(h["epoch"], h["ade"]) for h in hist if h.get("ade") is not None]
        if pts:
            ax.plot(*zip(*pts), label=name)
    ax.set(xlabel="epoch", ylabel="training ADE (m)", title="Training (rollout ADE)")
    ax.legend(fontsize="small")

    ax = axes[1, 1]
    rows = results.get("awm_table_6", {}).get("rows", [])
    ks = sorted({r["num_rollouts"] for r in rows})
    conds = [
        c for c in ("none", "heading", "waypoint") if any(r["conditioning"] == c for r in rows)
    ]
    width = 0.8 / max(len(ks), 1)
    for i, k in enumerate(ks):
        vals = [
            next(
                (r["min_ade"] for r in rows if r["conditioning"] == c and r["num_rollouts"] == k), 0
            )
            or 0
            for c in conds
        ]
        ax.bar([j + i * width for j in range(len(conds))], vals, width, label=f"K={k}")
    ax.set_xticks([j + width * (len(ks) - 1) / 2 for j in range(len(conds))], conds)
    ax.set(ylabel="minADE (m)", title="Route conditioning")
    if ks:
        ax.legend()
    fig.tight_layout()
    return fig
