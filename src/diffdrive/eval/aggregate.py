"""Aggregation of closed-loop evaluation metrics (the papers' protocol), in numpy.

Inputs are per-step records of K rollouts ("modes") of M scenarios, ``(K, M, S)`` in the
planning setting (the SDC only) or ``(K, M, N, S)`` in the multi-agent setting (one row
per object): the log divergence (m), overlap and offroad flags, and the step validity
(simulated object valid and logged object valid).

Protocol (``shared/specs/reference_implementations.md`` section 1, "Evaluation protocol"):

* **ADE** of a scenario: ``nanmean`` of the log divergence over its valid steps; the
  dataset ADE is the mean over scenarios.
* **overlap / offroad rate**: the fraction of scenarios with the event at *any* valid step.
  The **per-step** variants pool all valid steps: event steps / valid steps.
* **minADE over K modes**: per scenario, the mode with the lowest ADE is selected, and
  *that mode's* overlap and offroad are reported. With K = 1 this is the plain ADE.
* Scenarios without an SDC are skipped; so are scenarios whose evaluated object has no
  valid step (its ADE is undefined), and they are counted separately.

Multi-agent setting: an object's ADE and events are computed as above; a scenario's ADE is
the mean over its evaluated objects (controlled, with at least one valid step), and its
overlap / offroad value is the fraction of those objects with the event at any valid step
(so the rates are object rates averaged over scenarios). The mode is selected per scenario
on that scenario ADE.

The first stage, :func:`step_stats`, reduces the step axis to a few sums
(:class:`ModeStats`), so long evaluations keep ``O(K M)`` numbers rather than every step.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
from collections.abc import Sequence
from typing import Any

import numpy as np

GENERATED_BY = "diffdrive.eval"


@dataclasses.dataclass(frozen=True)
class ModeStats:
    """Per-mode, per-scenario (per-object) step sums; every field ``(K, M)`` or ``(K, M, N)``.

    Attributes:
      ld_sum: sum of the log divergence over valid steps with a finite value (m).
      ld_count: number of those steps.
      ld_max: largest of those values (NaN where there is none).
      valid_steps: number of valid steps.
      overlap_steps: valid steps with an overlap.
      offroad_steps: valid steps offroad.
    """

    ld_sum: np.ndarray
    ld_count: np.ndarray
    ld_max: np.ndarray
    valid_steps: np.ndarray
    overlap_steps: np.ndarray
    offroad_steps: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.ld_sum.shape)

    @property
    def num_modes(self) -> int:
        return self.shape[0]

    @property
    def num_scenarios(self) -> int:
        return self.shape[1]

    @property
    def ade(self) -> np.ndarray:
        """Per-step mean log divergence, NaN where no valid step."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.ld_count > 0, self.ld_sum / np.maximum(self.ld_count, 1), np.nan)

    def take_scenarios(self, index: np.ndarray) -> ModeStats:
        """The scenarios ``index`` (any numpy index on axis 1)."""
        return ModeStats(**{f: getattr(self, f)[:, index] for f in _FIELDS})


_FIELDS = tuple(f.name for f in dataclasses.fields(ModeStats))


def step_stats(
    log_divergence: np.ndarray, overlap: np.ndarray, offroad: np.ndarray, valid: np.ndarray
) -> ModeStats:
    """Reduces per-step records ``(..., S)`` to :class:`ModeStats` ``(...)``.

    Args:
      log_divergence: ``(..., S)`` float, metres.
      overlap: ``(..., S)`` bool or 0/1.
      offroad: ``(..., S)`` bool or 0/1.
      valid: ``(..., S)`` bool: the step counts (object and log valid).

    Returns:
      :class:`ModeStats` with the step axis summed away.
    """
    ld = np.asarray(log_divergence, np.float64)
    valid = np.asarray(valid, bool)
    ld_ok = valid & np.isfinite(ld)
    ld_masked = np.where(ld_ok, ld, 0.0)
    count = ld_ok.sum(-1)
    ld_max = np.where(count > 0, np.where(ld_ok, ld, -np.inf).max(-1, initial=-np.inf), np.nan)
    return ModeStats(
        ld_sum=ld_masked.sum(-1),
        ld_count=count.astype(np.int64),
        ld_max=ld_max,
        valid_steps=valid.sum(-1).astype(np.int64),
        overlap_steps=(valid & (np.asarray(overlap) > 0)).sum(-1).astype(np.int64),
        offroad_steps=(valid & (np.asarray(offroad) > 0)).sum(-1).astype(np.int64),
    )


def concat_stats(parts: Sequence[ModeStats]) -> ModeStats:
    """Concatenates along the scenario axis; pads a trailing object axis with empty objects."""
    if not parts:
        raise ValueError("concat_stats: nothing to concatenate")
    ndim = len(parts[0].shape)
    if any(len(p.shape) != ndim for p in parts):
        raise ValueError("concat_stats: planning and multi-agent stats cannot be mixed")
    if ndim == 3:
        n = max(p.shape[2] for p in parts)
        parts = [pad_objects(p, n) for p in parts]
    return ModeStats(**{f: np.concatenate([getattr(p, f) for p in parts], axis=1) for f in _FIELDS})


def pad_objects(stats: ModeStats, num_objects: int) -> ModeStats:
    """Pads the object axis of ``(K, M, N)`` stats to ``num_objects`` with empty objects."""
    extra = num_objects - stats.shape[2]
    if extra < 0:
        raise ValueError(f"pad_objects: {stats.shape[2]} objects exceed {num_objects}")
    if extra == 0:
        return stats
    out = {}
    for f in _FIELDS:
        a = getattr(stats, f)
        fill = np.nan if f == "ld_max" else 0
        out[f] = np.concatenate([a, np.full(a.shape[:2] + (extra,), fill, a.dtype)], axis=2)
    return ModeStats(**out)


# ------------------------------------------------------------------------- per scenario


@dataclasses.dataclass(frozen=True)
class ScenarioTable:
    """Per-mode, per-scenario values ``(K, M)`` after reducing objects (multi-agent).

    Attributes:
      ade: scenario ADE (m); NaN where nothing is evaluated.
      overlap: planning: 1.0 if the SDC overlaps at any valid step, else 0.0; multi-agent:
        fraction of evaluated objects that do. NaN where nothing is evaluated.
      offroad: same for offroad.
      max_log_divergence: largest valid-step log divergence (over objects too).
      valid_steps, overlap_steps, offroad_steps: step counts (summed over objects).
      evaluated: ``(M,)`` bool, the scenario counts (it has an evaluated object).
      num_objects: ``(M,)`` evaluated objects (1 for planning).
    """

    ade: np.ndarray
    overlap: np.ndarray
    offroad: np.ndarray
    max_log_divergence: np.ndarray
    valid_steps: np.ndarray
    overlap_steps: np.ndarray
    offroad_steps: np.ndarray
    evaluated: np.ndarray
    num_objects: np.ndarray


def scenario_table(
    stats: ModeStats, include: np.ndarray | None = None, object_mask: np.ndarray | None = None
) -> ScenarioTable:
    """Reduces :class:`ModeStats` to one value per mode and scenario.

    Args:
      stats: ``(K, M)`` (planning) or ``(K, M, N)`` (multi-agent).
      include: ``(M,)`` bool, scenarios that may count (e.g. those with an SDC); default all.
      object_mask: ``(M, N)`` bool, the objects that are evaluated (controlled); multi-agent
        only, default all.

    Returns:
      :class:`ScenarioTable`. An object (the SDC in planning) is evaluated when it has at
      least one valid step with a finite log divergence in every mode.
    """
    k, m = stats.shape[:2]
    include = np.ones(m, bool) if include is None else np.asarray(include, bool)
    ade = stats.ade
    has_steps = np.all(stats.ld_count > 0, axis=0)  # (M,) or (M, N)
    if len(stats.shape) == 2:
        if object_mask is not None:
            raise ValueError("scenario_table: object_mask needs (K, M, N) stats")
        evaluated = include & has_steps
        ev_k = np.broadcast_to(evaluated, (k, m))
        return ScenarioTable(
            ade=np.where(ev_k, ade, np.nan),
            overlap=np.where(ev_k, (stats.overlap_steps > 0).astype(float), np.nan),
            offroad=np.where(ev_k, (stats.offroad_steps > 0).astype(float), np.nan),
            max_log_divergence=np.where(ev_k, stats.ld_max, np.nan),
            valid_steps=np.where(ev_k, stats.valid_steps, 0),
            overlap_steps=np.where(ev_k, stats.overlap_steps, 0),
            offroad_steps=np.where(ev_k, stats.offroad_steps, 0),
            evaluated=evaluated,
            num_objects=evaluated.astype(np.int64),
        )
    n = stats.shape[2]
    mask = np.ones((m, n), bool) if object_mask is None else np.asarray(object_mask, bool)
    obj = mask & has_steps & include[:, None]  # (M, N)
    count = obj.sum(-1)
    evaluated = count > 0
    obj_k = np.broadcast_to(obj, (k, m, n))

    def mean_over_objects(values):
        total = np.where(obj_k, values, 0.0).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(evaluated, total / np.maximum(count, 1), np.nan)

    def sum_over_objects(values):
        return np.where(obj_k, values, 0).sum(-1)

    ld_max = np.where(obj_k, stats.ld_max, -np.inf).max(-1, initial=-np.inf)
    return ScenarioTable(
        ade=mean_over_objects(np.nan_to_num(ade)),
        overlap=mean_over_objects((stats.overlap_steps > 0).astype(float)),
        offroad=mean_over_objects((stats.offroad_steps > 0).astype(float)),
        max_log_divergence=np.where(evaluated, ld_max, np.nan),
        valid_steps=sum_over_objects(stats.valid_steps),
        overlap_steps=sum_over_objects(stats.overlap_steps),
        offroad_steps=sum_over_objects(stats.offroad_steps),
        evaluated=evaluated,
        num_objects=count.astype(np.int64),
    )


def select_modes(ade: np.ndarray) -> np.ndarray:
    """``(M,)`` index of the mode with the lowest ADE per scenario (first on ties; 0 if all NaN).

    Args:
      ade: ``(K, M)``.
    """
    ade = np.asarray(ade, np.float64)
    return np.argmin(np.where(np.isnan(ade), np.inf, ade), axis=0)


def _take_mode(a: np.ndarray, mode: np.ndarray) -> np.ndarray:
    return np.take_along_axis(a, mode[None, :], axis=0)[0]


def _rates(table: ScenarioTable, mode: np.ndarray | None) -> dict[str, float]:
    """Dataset metrics from a table, at the selected ``mode`` per scenario (None: all modes)."""
    ev = table.evaluated

    def pick(a):
        return _take_mode(a, mode)[ev] if mode is not None else a[:, ev]

    def mean(a):
        a = pick(a)
        return float(np.nanmean(a)) if a.size and not np.all(np.isnan(a)) else float("nan")

    def pooled(events):
        valid = pick(table.valid_steps).sum()
        return float(pick(events).sum() / valid) if valid > 0 else float("nan")

    return {
        "ade": mean(table.ade),
        "overlap_rate": mean(table.overlap),
        "offroad_rate": mean(table.offroad),
        "overlap_step_rate": pooled(table.overlap_steps),
        "offroad_step_rate": pooled(table.offroad_steps),
        "max_log_divergence": mean(table.max_log_divergence),
    }


def summarize(
    stats: ModeStats,
    include: np.ndarray | None = None,
    object_mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """The dataset metrics of an evaluation.

    Args:
      stats: :class:`ModeStats` ``(K, M)`` or ``(K, M, N)``.
      include: ``(M,)`` bool, scenarios that may count (those with an SDC).
      object_mask: ``(M, N)`` bool, evaluated (controlled) objects, multi-agent only.

    Returns:
      ``{"metrics", "per_mode_mean", "counts"}``. ``metrics`` holds the selected-mode values
      (minADE protocol; the plain ADE when K = 1): ``ade``, ``overlap_rate``,
      ``offroad_rate``, ``overlap_step_rate``, ``offroad_step_rate``,
      ``max_log_divergence`` (mean over scenarios of the largest valid-step divergence).
      ``per_mode_mean`` holds the same metrics over all modes (expected single-rollout
      values). ``counts``: ``scenarios``, ``skipped_no_sdc``, ``skipped_no_valid_steps``,
      ``evaluated``, ``evaluated_objects``, ``valid_steps`` (of the selected modes),
      ``num_modes``.
    """
    k, m = stats.shape[:2]
    include = np.ones(m, bool) if include is None else np.asarray(include, bool)
    table = scenario_table(stats, include, object_mask)
    mode = select_modes(table.ade)
    ev = table.evaluated
    return {
        "metrics": _rates(table, mode),
        "per_mode_mean": _rates(table, None),
        "counts": {
            "scenarios": int(m),
            "skipped_no_sdc": int((~include).sum()),
            "skipped_no_valid_steps": int((include & ~ev).sum()),
            "evaluated": int(ev.sum()),
            "evaluated_objects": int(table.num_objects.sum()),
            "valid_steps": int(_take_mode(table.valid_steps, mode)[ev].sum()),
            "num_modes": int(k),
        },
    }


def per_scenario_records(
    stats: ModeStats,
    scenario_ids: Sequence[str],
    include: np.ndarray | None = None,
    object_mask: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One JSON-ready record per scenario: id, selected mode, its ADE, overlap, offroad.

    Skipped scenarios get ``"evaluated": False`` and null metrics.
    """
    table = scenario_table(stats, include, object_mask)
    mode = select_modes(table.ade)
    out = []
    for i, sid in enumerate(scenario_ids):
        rec: dict[str, Any] = {"scenario_id": str(sid), "evaluated": bool(table.evaluated[i])}
        if table.evaluated[i]:
            j = int(mode[i])
            rec |= {
                "mode": j,
                "ade": float(table.ade[j, i]),
                "overlap": float(table.overlap[j, i]),
                "offroad": float(table.offroad[j, i]),
                "max_log_divergence": float(table.max_log_divergence[j, i]),
                "valid_steps": int(table.valid_steps[j, i]),
                "ade_per_mode": [float(v) for v in table.ade[:, i]],
            }
        else:
            rec |= {"mode": None, "ade": None, "overlap": None, "offroad": None}
        out.append(rec)
    return out


def table_row(summary: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """A row for a paper-table results file (:mod:`diffdrive.eval.paper_tables`).

    Args:
      summary: :func:`summarize`'s output.
      **settings: the row's setting keys (``method="apg"``, ``num_rollouts=8``, ...).

    Returns:
      ``settings`` plus the selected-mode metrics under the tables' names: ``ade`` /
      ``min_ade``, ``overlap`` / ``min_overlap``, ``offroad`` / ``min_offroad`` (any-step
      scenario rates) and ``*_per_step`` (fractions of valid steps). With K = 1 the ``min_``
      values are the plain ones.
    """
    m = summary["metrics"]
    row = dict(settings)
    for prefix in ("", "min_"):
        row[f"{prefix}ade"] = m["ade"]
        row[f"{prefix}overlap"] = m["overlap_rate"]
        row[f"{prefix}offroad"] = m["offroad_rate"]
        row[f"{prefix}overlap_per_step"] = m["overlap_step_rate"]
        row[f"{prefix}offroad_per_step"] = m["offroad_step_rate"]
    return to_jsonable(row)


# ------------------------------------------------------------------------------- JSON


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The checkout's HEAD commit hash (read-only ``git rev-parse``), or None."""
    cwd = os.fspath(path) if path is not None else os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def make_meta(
    profile: str | None = None,
    dataset: str | None = None,
    num_scenarios: int | None = None,
    num_modes: int = 1,
    generated_by: str = GENERATED_BY,
    **extra: Any,
) -> dict[str, Any]:
    """The ``meta`` block of a results file.

    Args:
      profile: the run profile or preset name (e.g. ``smoke``, ``paper``).
      dataset: what was evaluated (paths or a ``synthetic:`` spec).
      num_scenarios: scenarios read.
      num_modes: K.
      generated_by: the producing command or module.
      **extra: more JSON-ready fields (actor, setting, noise, timing, ...).
    """
    meta = {
        "profile": profile,
        "dataset": dataset,
        "num_scenarios": None if num_scenarios is None else int(num_scenarios),
        "K": int(num_modes),
        "commit": git_commit(),
        "generated_by": generated_by,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(extra)
    return meta


def to_jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays to Python; non-finite floats to None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def results_dict(
    summary: dict[str, Any],
    meta: dict[str, Any],
    per_scenario: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``{"meta", "metrics", "per_mode_mean", "counts"[, "per_scenario"]}``, JSON-ready."""
    out = {"meta": meta, **summary}
    if per_scenario is not None:
        out["per_scenario"] = per_scenario
    return to_jsonable(out)
