"""Top-down scenario renderings: roadgraph, boxes, traffic lights, trajectories; PNG and GIF.

Headless: figures are built on matplotlib's Agg canvas directly (no pyplot, no backend
switch), so this works in scripts, tests, CI and notebooks alike.

* Roadgraph by type (:class:`~diffdrive.sim.datatypes.RoadType`): lane centres (thin,
  light; bike lanes green), white and yellow markings (broken ones dashed), road edges
  (black; medians dark grey), crosswalks (grey polygons), speed bumps, stop signs.
* Object boxes at step ``t`` with a heading tick, coloured by object type; the SDC red.
* Traffic lights at step ``t`` coloured by state (stop red, caution amber, go green,
  unknown grey; arrows drawn as triangles).
* Optional trajectories ``{label: (T, 2)}`` (or ``(K, T, 2)`` for several): the style
  follows the label's start: ``log...`` black dashed, ``sim...`` blue, ``imag...`` magenta
  dotted, anything else a cycle of colours.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffdrive.sim.datatypes import ObjectType, RoadType, TrafficLightState

OBJECT_COLORS = {
    int(ObjectType.VEHICLE): "#1f77b4",
    int(ObjectType.PEDESTRIAN): "#ff7f0e",
    int(ObjectType.CYCLIST): "#9467bd",
    int(ObjectType.OTHER): "#7f7f7f",
    int(ObjectType.UNSET): "#7f7f7f",
}
SDC_COLOR = "#d62728"

_R = RoadType
# (types, colour, line width, dashed, zorder, legend label)
ROAD_STYLES: tuple[tuple[tuple[int, ...], str, float, bool, int, str], ...] = (
    ((_R.LANE_UNDEFINED, _R.LANE_FREEWAY, _R.LANE_SURFACE_STREET), "#c5cdd6", 0.6, False, 1,
     "lane centre"),
    ((_R.LANE_BIKE_LANE,), "#8fcf8f", 0.8, False, 1, "bike lane"),
    ((_R.ROAD_LINE_UNKNOWN, _R.ROAD_LINE_SOLID_SINGLE_WHITE, _R.ROAD_LINE_SOLID_DOUBLE_WHITE),
     "#9a9a9a", 0.8, False, 2, "white marking"),
    ((_R.ROAD_LINE_BROKEN_SINGLE_WHITE,), "#9a9a9a", 0.8, True, 2, None),
    ((_R.ROAD_LINE_SOLID_SINGLE_YELLOW, _R.ROAD_LINE_SOLID_DOUBLE_YELLOW,
      _R.ROAD_LINE_PASSING_DOUBLE_YELLOW), "#e0a800", 0.9, False, 2, "yellow marking"),
    ((_R.ROAD_LINE_BROKEN_SINGLE_YELLOW, _R.ROAD_LINE_BROKEN_DOUBLE_YELLOW), "#e0a800", 0.9,
     True, 2, None),
    ((_R.ROAD_EDGE_BOUNDARY, _R.ROAD_EDGE_UNKNOWN), "#1a1a1a", 1.3, False, 3, "road edge"),
    ((_R.ROAD_EDGE_MEDIAN,), "#555555", 1.3, False, 3, "median"),
    ((_R.SPEED_BUMP,), "#ff9900", 1.5, False, 2, "speed bump"),
)  # fmt: skip
CROSSWALK_COLOR = "#d9d9d9"
STOP_SIGN_COLOR = "#b30000"

_STOP = {TrafficLightState.ARROW_STOP, TrafficLightState.STOP, TrafficLightState.FLASHING_STOP}
_CAUTION = {
    TrafficLightState.ARROW_CAUTION,
    TrafficLightState.CAUTION,
    TrafficLightState.FLASHING_CAUTION,
}
_GO = {TrafficLightState.ARROW_GO, TrafficLightState.GO}
_ARROWS = {
    TrafficLightState.ARROW_STOP,
    TrafficLightState.ARROW_CAUTION,
    TrafficLightState.ARROW_GO,
}
LIGHT_COLORS = {"stop": "#e41a1c", "caution": "#ffb000", "go": "#2ca02c", "unknown": "#9e9e9e"}

TRAJECTORY_STYLES = {
    "log": {"color": "#000000", "linestyle": "--", "linewidth": 1.6},
    "sim": {"color": "#1f5fd6", "linestyle": "-", "linewidth": 2.0},
    "imag": {"color": "#d62fd6", "linestyle": ":", "linewidth": 1.6},
}
_CYCLE = ("#17becf", "#bcbd22", "#8c564b", "#e377c2")

MAX_SEGMENT_M = 5.0
"""Consecutive roadgraph samples further apart than this are not joined."""


def light_category(state: int) -> str:
    """``"stop"``, ``"caution"``, ``"go"`` or ``"unknown"`` for a traffic-light state."""
    s = int(state)
    if s in _STOP:
        return "stop"
    if s in _CAUTION:
        return "caution"
    if s in _GO:
        return "go"
    return "unknown"


@dataclasses.dataclass(frozen=True)
class Scene:
    """The numpy arrays a rendering needs, from any scenario representation.

    Attributes:
      scenario_id: a label for the title.
      log: ``{x, y, yaw, length, width, valid}`` of the logged trajectory, each ``(N, T)``.
      sim: the same for the simulated trajectory, or ``None``.
      boxes: where the boxes come from: ``"sim"``, ``"log"`` or ``"auto"`` (the simulated
        trajectory at a step where it has a valid object, else the log).
      object_types, is_sdc: ``(N,)``.
      rg: ``{x, y, types, ids, valid}`` roadgraph samples, each ``(P,)``.
      lights: ``{x, y, state, valid}`` traffic lights, each ``(L, T)`` (may be ``L = 0``).
    """

    scenario_id: str
    log: dict[str, np.ndarray]
    sim: dict[str, np.ndarray] | None
    boxes: str
    object_types: np.ndarray
    is_sdc: np.ndarray
    rg: dict[str, np.ndarray]
    lights: dict[str, np.ndarray]

    @property
    def num_timesteps(self) -> int:
        return int(self.log["x"].shape[-1])

    def boxes_at(self, t: int) -> dict[str, np.ndarray]:
        """The trajectory the boxes at step ``t`` come from (see ``boxes``)."""
        if self.sim is None or self.boxes == "log":
            return self.log
        if self.boxes == "sim" or np.asarray(self.sim["valid"][:, t]).any():
            return self.sim
        return self.log

    @property
    def sdc_index(self) -> int | None:
        idx = np.flatnonzero(self.is_sdc)
        return int(idx[0]) if idx.size else None


_TRAJ_FIELDS = ("x", "y", "yaw", "length", "width", "valid")


def as_scene(scenario: Any, boxes: str = "auto", scenario_id: str | None = None) -> Scene:
    """A :class:`Scene` from a ``SimulatorState``, a ``DecodedScenario`` or flat arrays.

    Args:
      scenario: an unbatched :class:`~diffdrive.sim.datatypes.SimulatorState`, a
        :class:`~diffdrive.data.types.DecodedScenario` or a ``"<group>/<field>"`` mapping
        (e.g. ``np.load("scenario_50.npz")``).
      boxes: which trajectory the boxes come from: ``"sim"``, ``"log"`` or ``"auto"`` (the
        simulated one at steps where it has a valid object, else the log).
      scenario_id: title label (default: the scenario's id, if it has one).

    Raises:
      ValueError: a batched state, or ``boxes="sim"`` without a simulated trajectory.
    """
    if hasattr(scenario, "log_trajectory"):  # SimulatorState
        if len(getattr(scenario, "batch_dims", ())) > 0:
            raise ValueError(f"render one scenario at a time; batch dims {scenario.batch_dims}")
        flat = {}
        groups = {
            "log_trajectory": scenario.log_trajectory,
            "sim_trajectory": scenario.sim_trajectory,
            "object_metadata": scenario.object_metadata,
            "roadgraph_points": scenario.roadgraph_points,
            "log_traffic_light": scenario.log_traffic_light,
        }
        for g, obj in groups.items():
            for f in obj.field_names():
                flat[f"{g}/{f}"] = np.asarray(getattr(obj, f))
        sid = scenario_id or ""
    else:
        arrays = getattr(scenario, "arrays", scenario)
        flat = {k: np.asarray(arrays[k]) for k in arrays.keys()}
        sid = scenario_id or str(getattr(scenario, "scenario_id", ""))
        if "log_trajectory/x" not in flat:
            raise ValueError("no log_trajectory/x: not a scenario's flat arrays")

    def traj(group: str) -> dict[str, np.ndarray]:
        return {f: flat[f"{group}/{f}"] for f in _TRAJ_FIELDS}

    has_sim = "sim_trajectory/x" in flat
    if boxes == "sim" and not has_sim:
        raise ValueError("boxes='sim' but the scenario has no simulated trajectory")
    if boxes not in ("sim", "log", "auto"):
        raise ValueError(f"boxes must be 'sim', 'log' or 'auto', got {boxes!r}")
    n = flat["log_trajectory/x"].shape[0]
    t = flat["log_trajectory/x"].shape[-1]
    if "log_traffic_light/x" in flat:
        lights = {k: flat[f"log_traffic_light/{k}"] for k in ("x", "y", "state", "valid")}
    else:
        lights = {k: np.zeros((0, t)) for k in ("x", "y", "state")} | {
            "valid": np.zeros((0, t), bool)
        }
    return Scene(
        scenario_id=sid,
        log=traj("log_trajectory"),
        sim=traj("sim_trajectory") if has_sim else None,
        boxes=boxes,
        object_types=flat.get("object_metadata/object_types", np.ones(n, np.int32)),
        is_sdc=np.asarray(flat.get("object_metadata/is_sdc", np.zeros(n, bool)), bool),
        rg={k: flat[f"roadgraph_points/{k}"] for k in ("x", "y", "types", "ids", "valid")},
        lights=lights,
    )


def sdc_log_xy(scenario: Any, start: int = 0) -> np.ndarray:
    """The SDC's logged positions from step ``start`` on, ``(T - start, 2)``; NaN where invalid.

    Ready for ``render_scenario(..., trajectories={"log": sdc_log_xy(s, 10)})``.

    Raises:
      ValueError: the scenario has no SDC.
    """
    scene = scenario if isinstance(scenario, Scene) else as_scene(scenario)
    i = scene.sdc_index
    if i is None:
        raise ValueError(f"scenario {scene.scenario_id!r} has no SDC")
    xy = np.stack([scene.log["x"][i], scene.log["y"][i]], -1).astype(np.float64)
    xy[~np.asarray(scene.log["valid"][i], bool)] = np.nan
    return xy[start:]


def _box_corners(x, y, yaw, length, width) -> np.ndarray:
    """``(N, 4, 2)`` corners, front-right first, counter-clockwise."""
    c, s = np.cos(yaw), np.sin(yaw)
    dx = np.stack([length / 2, length / 2, -length / 2, -length / 2], -1)
    dy = np.stack([-width / 2, width / 2, width / 2, -width / 2], -1)
    px = x[..., None] + dx * c[..., None] - dy * s[..., None]
    py = y[..., None] + dx * s[..., None] + dy * c[..., None]
    return np.stack([px, py], -1)


def _view_center(scene: Scene, t: int) -> np.ndarray:
    sdc = scene.sdc_index
    tr = scene.boxes_at(t)
    if sdc is not None and tr["valid"][sdc].any():
        steps = np.flatnonzero(tr["valid"][sdc])
        tt = t if tr["valid"][sdc, t] else int(steps[np.argmin(np.abs(steps - t))])
        return np.array([tr["x"][sdc, tt], tr["y"][sdc, tt]], np.float64)
    v = tr["valid"][:, t]
    if v.any():
        return np.array([tr["x"][v, t].mean(), tr["y"][v, t].mean()], np.float64)
    rv = scene.rg["valid"].astype(bool)
    if rv.any():
        return np.array([scene.rg["x"][rv].mean(), scene.rg["y"][rv].mean()], np.float64)
    return np.zeros(2)


def _draw_roadgraph(ax, rg: Mapping[str, np.ndarray]) -> list:
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.lines import Line2D

    handles = []
    x, y = np.asarray(rg["x"], np.float64), np.asarray(rg["y"], np.float64)
    types, ids = np.asarray(rg["types"]), np.asarray(rg["ids"])
    valid = np.asarray(rg["valid"], bool)
    if x.size >= 2:
        pair = valid[1:] & valid[:-1] & (ids[1:] == ids[:-1]) & (types[1:] == types[:-1])
        pair &= np.hypot(np.diff(x), np.diff(y)) <= MAX_SEGMENT_M
        seg_type = types[:-1]
        segs = np.stack([np.stack([x[:-1], y[:-1]], -1), np.stack([x[1:], y[1:]], -1)], 1)
        for tps, color, lw, dashed, z, label in ROAD_STYLES:
            m = pair & np.isin(seg_type, tps)
            if not m.any():
                continue
            ls = (0, (4, 4)) if dashed else "solid"
            ax.add_collection(
                LineCollection(segs[m], colors=color, linewidths=lw, linestyles=ls, zorder=z)
            )
            if label:
                handles.append(Line2D([], [], color=color, lw=lw * 1.5, label=label))
    cw = valid & (types == RoadType.CROSSWALK)
    if cw.any():
        polys = [np.stack([x[cw & (ids == i)], y[cw & (ids == i)]], -1) for i in np.unique(ids[cw])]
        polys = [p for p in polys if len(p) >= 3]
        if polys:
            ax.add_collection(
                PolyCollection(
                    polys, facecolors=CROSSWALK_COLOR, edgecolors="#b0b0b0", linewidths=0.5,
                    zorder=0,
                )
            )  # fmt: skip
            handles.append(Line2D([], [], color=CROSSWALK_COLOR, lw=6, label="crosswalk"))
    stop = valid & (types == RoadType.STOP_SIGN)
    if stop.any():
        ax.scatter(x[stop], y[stop], marker="8", s=40, c=STOP_SIGN_COLOR, zorder=4, linewidths=0)
        handles.append(
            Line2D([], [], marker="8", color=STOP_SIGN_COLOR, lw=0, label="stop sign", ms=6)
        )
    return handles


def _draw_lights(ax, lights: Mapping[str, np.ndarray], t: int) -> list:
    from matplotlib.lines import Line2D

    if lights["x"].shape[0] == 0:
        return []
    valid = np.asarray(lights["valid"][:, t], bool)
    states = np.asarray(lights["state"][:, t])
    handles, seen = [], set()
    for i in np.flatnonzero(valid):
        cat = light_category(states[i])
        arrow = int(states[i]) in _ARROWS
        ax.scatter(
            [lights["x"][i, t]], [lights["y"][i, t]], s=60, c=LIGHT_COLORS[cat],
            marker="^" if arrow else "o", edgecolors="black", linewidths=0.6, zorder=7,
        )  # fmt: skip
        if cat not in seen:
            seen.add(cat)
            handles.append(
                Line2D([], [], marker="o", color=LIGHT_COLORS[cat], mec="black", lw=0,
                       label=f"light: {cat}")
            )  # fmt: skip
    return handles


def _draw_objects(ax, scene: Scene, t: int) -> list:
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.patches import Patch

    tr = scene.boxes_at(t)
    valid = np.asarray(tr["valid"][:, t], bool)
    if not valid.any():
        return []
    idx = np.flatnonzero(valid)
    get = {f: np.asarray(tr[f][idx, t], np.float64) for f in ("x", "y", "yaw", "length", "width")}
    corners = _box_corners(get["x"], get["y"], get["yaw"], get["length"], get["width"])
    sdc = scene.is_sdc[idx]
    types = np.asarray(scene.object_types)[idx]
    face = [SDC_COLOR if s else OBJECT_COLORS.get(int(k), "#7f7f7f") for s, k in zip(sdc, types)]
    ax.add_collection(
        PolyCollection(
            corners, facecolors=face, edgecolors=["black" if s else "#333333" for s in sdc],
            linewidths=[1.4 if s else 0.5 for s in sdc], alpha=0.9, zorder=6,
        )
    )  # fmt: skip
    front = (corners[:, 0] + corners[:, 1]) / 2
    center = np.stack([get["x"], get["y"]], -1)
    ax.add_collection(
        LineCollection(np.stack([center, front], 1), colors="white", linewidths=0.8, zorder=6.5)
    )
    handles = [Patch(color=SDC_COLOR, label="SDC")] if sdc.any() else []
    names = {ObjectType.VEHICLE: "vehicle", ObjectType.PEDESTRIAN: "pedestrian",
             ObjectType.CYCLIST: "cyclist", ObjectType.OTHER: "other"}  # fmt: skip
    for k, name in names.items():
        if np.any((types == k) & ~sdc):
            handles.append(Patch(color=OBJECT_COLORS[int(k)], label=name))
    return handles


def _trajectory_style(label: str, i: int) -> dict:
    low = label.lower()
    for key, style in TRAJECTORY_STYLES.items():
        if low.startswith(key):
            return dict(style)
    return {"color": _CYCLE[i % len(_CYCLE)], "linestyle": "-", "linewidth": 1.6}


def _draw_trajectories(ax, trajectories: Mapping[str, Any]) -> list:
    from matplotlib.lines import Line2D

    handles = []
    for i, (label, xy) in enumerate(trajectories.items()):
        a = np.asarray(xy, np.float64)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or a.shape[-1] != 2:
            raise ValueError(f"trajectory {label!r}: expected (T, 2) or (K, T, 2), got {a.shape}")
        style = _trajectory_style(label, i)
        alpha = 1.0 if a.shape[0] == 1 else max(0.25, 1.0 / np.sqrt(a.shape[0]))
        for k in range(a.shape[0]):
            ok = np.all(np.isfinite(a[k]), axis=-1)
            ax.plot(a[k, ok, 0], a[k, ok, 1], zorder=8, alpha=alpha, **style)
            ax.scatter(a[k, ok, 0][-1:], a[k, ok, 1][-1:], s=12, c=style["color"], zorder=8)
        handles.append(Line2D([], [], label=label, **style))
    return handles


def new_figure(size_px: int | tuple[int, int] = 640, dpi: int = 100):
    """A headless (Agg) figure of exactly ``size_px`` pixels and one axes filling it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w, h = (size_px, size_px) if isinstance(size_px, int) else size_px
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 0.94))
    return fig, ax


def render_scenario(
    scenario: Any,
    t: int | None = None,
    ax=None,
    *,
    trajectories: Mapping[str, Any] | None = None,
    boxes: str = "auto",
    center: Sequence[float] | None = None,
    view_radius_m: float | None = 60.0,
    size_px: int | tuple[int, int] = 640,
    dpi: int = 100,
    legend: bool = True,
    title: str | None = None,
):
    """Draws one scenario at step ``t``, top-down.

    Args:
      scenario: a ``SimulatorState`` (unbatched), a ``DecodedScenario`` or flat arrays
        (see :func:`as_scene`), or a :class:`Scene`.
      t: the step drawn; ``None``: the state's ``timestep`` if it has one, else 10 (the
        current step of a WOMD log), clipped to the log.
      ax: draw into these axes; ``None`` makes a new :func:`new_figure`.
      trajectories: ``{label: (T, 2) or (K, T, 2)}`` positions to overlay (e.g. ``"log"``,
        ``"simulated"``, ``"imagined"``; the style follows the label).
      boxes: ``"sim"``, ``"log"`` or ``"auto"`` (see :func:`as_scene`).
      center: view centre (x, y); default the SDC at ``t``.
      view_radius_m: half the side of the square view; ``None`` fits the valid roadgraph.
      size_px, dpi: image size of a new figure.
      legend: draw a legend of what is shown.
      title: default ``"<scenario id>  t=<t> (<seconds> s)"``.

    Returns:
      The matplotlib ``Figure`` (save it with ``fig.savefig(path)`` or :func:`save_png`).
    """
    scene = scenario if isinstance(scenario, Scene) else as_scene(scenario, boxes=boxes)
    if t is None:
        ts = getattr(scenario, "timestep", None)
        t = int(np.asarray(ts)) if ts is not None and np.ndim(ts) == 0 else 10
    t = int(np.clip(t, 0, scene.num_timesteps - 1))
    if ax is None:
        fig, ax = new_figure(size_px, dpi)
    else:
        fig = ax.figure
    ax.set_facecolor("white")
    handles = _draw_roadgraph(ax, scene.rg)
    handles += _draw_lights(ax, scene.lights, t)
    handles = _draw_objects(ax, scene, t) + handles
    if trajectories:
        handles += _draw_trajectories(ax, trajectories)
    c = np.asarray(center, np.float64) if center is not None else _view_center(scene, t)
    if view_radius_m is None:
        rv = np.asarray(scene.rg["valid"], bool)
        xs, ys = scene.rg["x"][rv], scene.rg["y"][rv]
        r = 0.5 * max(np.ptp(xs), np.ptp(ys), 10.0) if rv.any() else 60.0
        c = np.array([(xs.max() + xs.min()) / 2, (ys.max() + ys.min()) / 2]) if rv.any() else c
    else:
        r = float(view_radius_m)
    ax.set_xlim(c[0] - r, c[0] + r)
    ax.set_ylim(c[1] - r, c[1] + r)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xticks([])
    ax.set_yticks([])
    label = title if title is not None else f"{scene.scenario_id}  t={t} ({t / 10:.1f} s)".strip()
    ax.set_title(label, fontsize=9)
    if legend and handles:
        ax.legend(handles=handles, loc="lower left", fontsize=6, framealpha=0.85, ncol=2)
    return fig


def figure_to_array(fig) -> np.ndarray:
    """The rendered figure as an ``(H, W, 3)`` uint8 RGB image."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_png(fig, path: str | os.PathLike) -> Path:
    """Writes ``fig`` to ``path`` (parents created) at its own size and dpi."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=fig.dpi, format="png")
    return p


def render_frames(
    scenario: Any,
    timesteps: Iterable[int] | None = None,
    *,
    trajectories: Mapping[str, Any] | None = None,
    follow: bool = False,
    **render_kwargs: Any,
) -> list[np.ndarray]:
    """One RGB frame per step (see :func:`render_scenario` for the keyword arguments).

    The view is fixed at the first frame's centre unless ``follow`` (keep the SDC centred).
    """
    scene = scenario if isinstance(scenario, Scene) else as_scene(
        scenario, boxes=render_kwargs.pop("boxes", "auto")
    )  # fmt: skip
    steps = list(range(scene.num_timesteps) if timesteps is None else timesteps)
    if not steps:
        raise ValueError("no timesteps to render")
    size_px = render_kwargs.pop("size_px", 640)
    dpi = render_kwargs.pop("dpi", 100)
    center = render_kwargs.pop("center", None)
    if center is None and not follow:
        center = _view_center(scene, int(np.clip(steps[0], 0, scene.num_timesteps - 1)))
    fig, ax = new_figure(size_px, dpi)
    frames = []
    for t in steps:
        ax.clear()
        render_scenario(scene, t, ax, trajectories=trajectories, center=center, **render_kwargs)
        frames.append(figure_to_array(fig))
    return frames


def animate_scenario(
    scenario: Any,
    path: str | os.PathLike,
    timesteps: Iterable[int] | None = None,
    *,
    fps: float = 10.0,
    stride: int = 1,
    trajectories: Mapping[str, Any] | None = None,
    **render_kwargs: Any,
) -> Path:
    """Writes an animated GIF of the scenario, one frame per (strided) step; loops forever.

    Args:
      scenario: as for :func:`render_scenario`.
      path: the ``.gif`` to write (parents created).
      timesteps: the steps (default all), then every ``stride``-th is kept.
      fps: frames per second.
      trajectories: overlaid on every frame.
      **render_kwargs: passed to :func:`render_frames`.

    Returns:
      The path written.
    """
    from PIL import Image

    scene = scenario if isinstance(scenario, Scene) else as_scene(
        scenario, boxes=render_kwargs.pop("boxes", "auto")
    )  # fmt: skip
    steps = list(range(scene.num_timesteps) if timesteps is None else timesteps)[:: max(1, stride)]
    frames = render_frames(scene, steps, trajectories=trajectories, **render_kwargs)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(
        p, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0,
        optimize=False,
    )  # fmt: skip
    return p
