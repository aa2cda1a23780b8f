"""Dataset statistics and the comparison of two datasets (e.g. real WOMD vs. synthetic).

Per scenario (from the logged trajectory, valid steps only):

* ``sdc_speed_mean``, ``sdc_speed_max`` (m/s): ``|(vel_x, vel_y)|`` of the SDC.
* ``sdc_accel_mean_abs`` (m/s^2): mean ``|speed[t+1] - speed[t]| / dt`` over consecutive
  step pairs where the SDC is valid at both steps (``dt`` = 0.1 s, the 10 Hz log rate).
* ``sdc_yaw_rate_mean_abs`` (rad/s): mean ``|wrap(yaw[t+1] - yaw[t])| / dt`` over the same
  pairs.
* ``num_objects``: objects that exist (``is_valid`` or valid at some step);
  ``num_valid_objects``: objects valid at the current step (index 10, or the last step
  for shorter logs).
* ``num_roadgraph_points``: valid roadgraph points; ``roadgraph_density``: valid points
  per hectare (a 100 m x 100 m square, axis-aligned) centred on the SDC at the current step
  (or its first valid step).

Per step, pooled over all scenarios: ``sdc_speed``, ``sdc_accel`` (signed) and
``sdc_yaw_rate`` (signed). SDC statistics are NaN for scenarios without an SDC (or without
valid step pairs) and are left out of means and distances.

:func:`compare_datasets` gives, per statistic, each dataset's count, mean and standard
deviation and the 1-D Wasserstein distance between the two empirical distributions
(``scipy.stats.wasserstein_distance``); :func:`write_json` writes it compactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
from tqdm.auto import tqdm

from diffdrive.data.types import DecodedScenario
from diffdrive.sim import datatypes

SCENARIO_STATS = (
    "sdc_speed_mean",
    "sdc_speed_max",
    "sdc_accel_mean_abs",
    "sdc_yaw_rate_mean_abs",
    "num_objects",
    "num_valid_objects",
    "num_roadgraph_points",
    "roadgraph_density",
)
STEP_STATS = ("sdc_speed", "sdc_accel", "sdc_yaw_rate")
DENSITY_HALF_SIZE_M = 50.0
"""Half the side of the square around the SDC in which roadgraph points are counted."""
CURRENT_INDEX = datatypes.INIT_STEPS - 1


def _wrap(a: np.ndarray) -> np.ndarray:
    return np.mod(a + np.pi, 2 * np.pi) - np.pi


def sdc_series(s: DecodedScenario, dt: float = datatypes.TIME_INTERVAL) -> dict[str, np.ndarray]:
    """Per-step SDC speed (valid steps), acceleration and yaw rate (valid step pairs).

    Args:
      s: a decoded scenario.
      dt: seconds between steps.

    Returns:
      ``{"sdc_speed": (V,), "sdc_accel": (K,), "sdc_yaw_rate": (K,)}`` float64 arrays,
      empty when the scenario has no SDC.
    """
    a = s.arrays
    idx = np.flatnonzero(np.asarray(a["object_metadata/is_sdc"], bool))
    if idx.size == 0:
        return {k: np.zeros(0) for k in STEP_STATS}
    i = int(idx[0])
    valid = np.asarray(a["log_trajectory/valid"][i], bool)
    vx = np.asarray(a["log_trajectory/vel_x"][i], np.float64)
    vy = np.asarray(a["log_trajectory/vel_y"][i], np.float64)
    yaw = np.asarray(a["log_trajectory/yaw"][i], np.float64)
    speed = np.hypot(vx, vy)
    pair = valid[1:] & valid[:-1]
    accel = (speed[1:] - speed[:-1])[pair] / dt
    yaw_rate = _wrap(yaw[1:] - yaw[:-1])[pair] / dt
    return {"sdc_speed": speed[valid], "sdc_accel": accel, "sdc_yaw_rate": yaw_rate}


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else math.nan


def scenario_stats(s: DecodedScenario, dt: float = datatypes.TIME_INTERVAL) -> dict[str, float]:
    """The :data:`SCENARIO_STATS` of one scenario (NaN where undefined)."""
    a = s.arrays
    series = sdc_series(s, dt)
    valid = np.asarray(a["log_trajectory/valid"], bool)
    exists = np.asarray(a["object_metadata/is_valid"], bool) | valid.any(axis=-1)
    t_cur = min(CURRENT_INDEX, valid.shape[-1] - 1)
    rg_valid = np.asarray(a["roadgraph_points/valid"], bool)
    density = math.nan
    idx = np.flatnonzero(np.asarray(a["object_metadata/is_sdc"], bool))
    if idx.size:
        i = int(idx[0])
        steps = np.flatnonzero(valid[i])
        if steps.size:
            t = t_cur if valid[i, t_cur] else int(steps[0])
            cx = float(a["log_trajectory/x"][i, t])
            cy = float(a["log_trajectory/y"][i, t])
            rx = np.asarray(a["roadgraph_points/x"], np.float64)
            ry = np.asarray(a["roadgraph_points/y"], np.float64)
            h = DENSITY_HALF_SIZE_M
            inside = rg_valid & (np.abs(rx - cx) <= h) & (np.abs(ry - cy) <= h)
            density = float(inside.sum()) / ((2 * h) ** 2 / 1e4)  # points per hectare
    sp = series["sdc_speed"]
    return {
        "sdc_speed_mean": _mean(sp),
        "sdc_speed_max": float(sp.max()) if sp.size else math.nan,
        "sdc_accel_mean_abs": _mean(np.abs(series["sdc_accel"])),
        "sdc_yaw_rate_mean_abs": _mean(np.abs(series["sdc_yaw_rate"])),
        "num_objects": float(exists.sum()),
        "num_valid_objects": float(valid[:, t_cur].sum()) if valid.shape[-1] else 0.0,
        "num_roadgraph_points": float(rg_valid.sum()),
        "roadgraph_density": density,
    }


@dataclasses.dataclass
class DatasetStats:
    """Statistics of a dataset.

    Attributes:
      name: a label (e.g. the path).
      scenario_ids: ``S`` ids, in order.
      per_scenario: ``{stat: (S,) float64}`` for :data:`SCENARIO_STATS`.
      per_step: ``{stat: (M,) float64}`` pooled over scenarios, for :data:`STEP_STATS`.
    """

    name: str
    scenario_ids: list[str]
    per_scenario: dict[str, np.ndarray]
    per_step: dict[str, np.ndarray]

    @property
    def num_scenarios(self) -> int:
        return len(self.scenario_ids)

    def summary(self) -> dict:
        """``{"num_scenarios", "per_scenario": {stat: {n, mean, std, min, median, max}}, ...}``."""
        return {
            "name": self.name,
            "num_scenarios": self.num_scenarios,
            "per_scenario": {k: _describe(v) for k, v in self.per_scenario.items()},
            "per_step": {k: _describe(v) for k, v in self.per_step.items()},
        }


def dataset_stats(
    scenarios: Iterable[DecodedScenario],
    name: str = "",
    dt: float = datatypes.TIME_INTERVAL,
    progress: bool = False,
) -> DatasetStats:
    """Computes :class:`DatasetStats` over a stream of scenarios."""
    ids: list[str] = []
    per: dict[str, list[float]] = {k: [] for k in SCENARIO_STATS}
    steps: dict[str, list[np.ndarray]] = {k: [] for k in STEP_STATS}
    for s in tqdm(scenarios, desc=f"stats {name}".strip(), unit="scn", disable=not progress):
        ids.append(s.scenario_id)
        for k, v in scenario_stats(s, dt).items():
            per[k].append(v)
        for k, v in sdc_series(s, dt).items():
            steps[k].append(v)
    return DatasetStats(
        name=name,
        scenario_ids=ids,
        per_scenario={k: np.asarray(v, np.float64) for k, v in per.items()},
        per_step={k: np.concatenate(v) if v else np.zeros(0, np.float64) for k, v in steps.items()},
    )


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x[np.isfinite(x)]


def _num(v: float, digits: int = 6) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return float(f"{v:.{digits}g}")


def _describe(x: np.ndarray) -> dict:
    x = _finite(x)
    if not x.size:
        return {"n": 0, "mean": None, "std": None, "min": None, "median": None, "max": None}
    return {
        "n": int(x.size),
        "mean": _num(float(x.mean())),
        "std": _num(float(x.std())),
        "min": _num(float(x.min())),
        "median": _num(float(np.median(x))),
        "max": _num(float(x.max())),
    }


def _compare_one(xa: np.ndarray, xb: np.ndarray) -> dict:
    xa, xb = _finite(xa), _finite(xb)
    w = float(scipy.stats.wasserstein_distance(xa, xb)) if xa.size and xb.size else math.nan
    return {
        "n_a": int(xa.size),
        "mean_a": _num(float(xa.mean())) if xa.size else None,
        "std_a": _num(float(xa.std())) if xa.size else None,
        "n_b": int(xb.size),
        "mean_b": _num(float(xb.mean())) if xb.size else None,
        "std_b": _num(float(xb.std())) if xb.size else None,
        "wasserstein": _num(w),
    }


def _as_stats(x: DatasetStats | Sequence[DecodedScenario] | Iterable, name: str) -> DatasetStats:
    return x if isinstance(x, DatasetStats) else dataset_stats(x, name=name)


def compare_datasets(
    a: DatasetStats | Iterable[DecodedScenario],
    b: DatasetStats | Iterable[DecodedScenario],
    name_a: str = "a",
    name_b: str = "b",
) -> dict[str, Any]:
    """Compares two datasets statistic by statistic.

    Args:
      a, b: :class:`DatasetStats` or iterables of scenarios (their stats are computed).
      name_a, name_b: labels used when ``a``/``b`` are scenarios.

    Returns:
      ``{"a": {"name", "num_scenarios"}, "b": {...}, "per_scenario": {stat: {n_a, mean_a,
      std_a, n_b, mean_b, std_b, wasserstein}}, "per_step": {...}}``. Numbers have 6
      significant digits; undefined ones (no finite values) are ``None``. NaNs are dropped
      before every mean, std and distance.
    """
    sa, sb = _as_stats(a, name_a), _as_stats(b, name_b)
    return {
        "a": {"name": sa.name, "num_scenarios": sa.num_scenarios},
        "b": {"name": sb.name, "num_scenarios": sb.num_scenarios},
        "per_scenario": {
            k: _compare_one(sa.per_scenario[k], sb.per_scenario[k]) for k in SCENARIO_STATS
        },
        "per_step": {k: _compare_one(sa.per_step[k], sb.per_step[k]) for k in STEP_STATS},
    }


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Writes compact JSON atomically (temp file + rename); NaN is refused."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    os.replace(tmp, p)
