"""AWM figures (the AWM paper's Figures 5-8 and the cost figures), drawn headless (Agg).

Every function takes the data of :mod:`diffdrive.eval.awm_experiments` (numpy arrays and
dicts) and returns a matplotlib ``Figure``; save it with
:func:`diffdrive.viz.scenario.save_png`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _figure(ncols: int, nrows: int = 1, size: tuple[float, float] = (4.0, 4.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _box(ax, x, y, yaw, length, width, **style):
    from matplotlib.patches import Polygon

    c, s = np.cos(yaw), np.sin(yaw)
    corners = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * [length / 2, width / 2]
    rot = corners @ np.array([[c, s], [-s, c]]) + [x, y]
    ax.add_patch(Polygon(rot, closed=True, **style))


def plot_forced_imagination(
    data: Mapping[str, Mapping[str, np.ndarray]], scenario: int = 0, every: int = 5
):
    """Fig. 5: executed SDC path (black) under each forced command and the 1 s imagined
    from every ``every``-th step (coloured dots, by start step)."""
    fig, axes = _figure(len(data))
    for ax, (name, d) in zip(axes[0], data.items(), strict=True):
        ex = d["executed"][:, scenario]
        im = d["imagined"][:, scenario]
        ax.plot(ex[:, 0], ex[:, 1], "k.-", ms=3, lw=1, label="executed")
        starts = range(0, im.shape[0], every)
        colors = _cmap("viridis", len(starts))
        for c, t in zip(colors, starts, strict=True):
            ax.scatter(im[t, :, 0], im[t, :, 1], s=14, color=c, alpha=0.8)
        ax.set_title(f"{name}: imagined ADE {d['ade']:.2f} m")
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("Fig. 5: imagined (latent + odometry heads) vs executed trajectories")
    return fig


def _cmap(name: str, n: int):
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def plot_planner_trajectories(traced: Mapping[str, np.ndarray], scenarios: Sequence[int]):
    """Fig. 6: SDC paths driven by the planner head (blue) beside the log (dashed)."""
    fig, axes = _figure(len(scenarios))
    for ax, b in zip(axes[0], scenarios, strict=True):
        ok = traced["log_valid"][:, b]
        log = traced["log_xy"][:, b][ok]
        xy = traced["xy"][:, b]
        ax.plot(log[:, 0], log[:, 1], "k--", lw=1, label="log")
        ax.plot(xy[:, 0], xy[:, 1], "-", color="tab:blue", lw=2, label="planner")
        ax.scatter(xy[0, 0], xy[0, 1], color="k", s=20, zorder=3)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"scenario {b}")
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("Fig. 6: trajectories executed with the optimal planner head")
    return fig


def plot_inverse_state_colouring(traced: Mapping[str, np.ndarray], scenarios: Sequence[int]):
    """Fig. 7: executed SDC path coloured by the norm (m) of the predicted inverse state."""
    fig, axes = _figure(len(scenarios), size=(4.5, 4.0))
    for ax, b in zip(axes[0], scenarios, strict=True):
        ok = traced["log_valid"][:, b]
        log = traced["log_xy"][:, b][ok]
        xy = traced["xy"][:-1, b]
        norm = traced["inverse_norm"][:, b]
        ax.plot(log[:, 0], log[:, 1], "k--", lw=1, label="log")
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=norm, cmap="plasma", s=12)
        fig.colorbar(sc, ax=ax, label="||inverse state|| (m)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"scenario {b}")
    fig.suptitle("Fig. 7: executed trajectory coloured by the inverse-state norm")
    return fig


def plot_overlap_tradeoff(demo: Mapping[str, Any]):
    """Fig. 8: the gray box's paths under trajectory + overlap losses, one per weight."""
    fig, axes = _figure(1, size=(7.0, 4.0))
    ax = axes[0, 0]
    length, width = demo["box"]
    red, blue = demo["red"], demo["blue"]
    _box(ax, *red, length, width, facecolor="tab:red", alpha=0.4)
    _box(ax, *blue, length, width, facecolor="tab:blue", alpha=0.4)
    colors = _cmap("Greys", len(demo["runs"]) + 2)[2:]
    for c, run in zip(colors, demo["runs"], strict=True):
        p = run["path"]
        ax.plot(
            p[:, 0],
            p[:, 1],
            ".-",
            color=c,
            ms=3,
            label=f"overlap weight {run['overlap_weight']:g} "
            f"(max overlap {run['max_overlap']:.3f})",
        )
        _box(ax, *p[-1], length, width, facecolor="none", edgecolor=c)
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Fig. 8: overlap loss (away from red) vs trajectory loss (towards blue)")
    return fig


def plot_costs(overhead: Mapping[str, Any], mpc_cost: Sequence[Mapping[str, Any]]):
    """Training steps/s with and without the AWM heads, and MPC seconds per scenario
    against the number of imagined trajectories (one line per horizon)."""
    fig, axes = _figure(2, size=(5.0, 3.8))
    ax = axes[0, 0]
    names = ["apg", "awm"]
    vals = [overhead["apg_steps_per_s"], overhead["awm_steps_per_s"]]
    ax.bar(names, vals, color=["tab:gray", "tab:purple"])
    ax.set_ylabel("train steps / s")
    ax.set_title(f"AWM heads overhead: {100 * overhead['overhead_fraction']:+.0f}%")
    ax = axes[0, 1]
    for h in sorted({r["horizon"] for r in mpc_cost}):
        rows = sorted((r for r in mpc_cost if r["horizon"] == h), key=lambda r: r["num_rollouts"])
        ax.plot(
            [r["num_rollouts"] for r in rows],
            [r["seconds_per_scenario"] for r in rows],
            "o-",
            label=f"H = {h}",
        )
    ax.set_xlabel("imagined trajectories N")
    ax.set_ylabel("s / scenario (80 steps)")
    ax.set_title("MPC planning cost")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
