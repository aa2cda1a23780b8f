"""Scenario filters, as in the APG / AWM / DSS training code.

Their ``inter_filter_fun`` keeps scenarios that have an SDC and at least one object of
interest (271,430 of WOMD v1.1's 487,002 training scenarios); an unused speed filter keeps
scenarios whose mean SDC speed exceeds 2 m/s. Each filter here takes a
:class:`~diffdrive.data.types.DecodedScenario` and returns ``True`` to keep it;
:func:`apply_filters` chains them over a stream and counts what was dropped and why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from diffdrive.data.types import DecodedScenario

Filter = Callable[[DecodedScenario], bool]


def _sdc_index(s: DecodedScenario) -> int | None:
    is_sdc = np.asarray(s.arrays["object_metadata/is_sdc"], bool)
    idx = np.flatnonzero(is_sdc)
    return int(idx[0]) if idx.size else None


def has_sdc(s: DecodedScenario) -> bool:
    """True when some object has ``is_sdc`` set."""
    return _sdc_index(s) is not None


def has_objects_of_interest(s: DecodedScenario) -> bool:
    """True when at least one object has ``objects_of_interest`` set."""
    return bool(np.asarray(s.arrays["object_metadata/objects_of_interest"], bool).any())


def mean_sdc_speed(s: DecodedScenario) -> float:
    """Mean SDC speed ``|(vel_x, vel_y)|`` (m/s) over its valid log steps; NaN if none."""
    i = _sdc_index(s)
    if i is None:
        return float("nan")
    valid = np.asarray(s.arrays["log_trajectory/valid"][i], bool)
    if not valid.any():
        return float("nan")
    vx = np.asarray(s.arrays["log_trajectory/vel_x"][i], np.float64)[valid]
    vy = np.asarray(s.arrays["log_trajectory/vel_y"][i], np.float64)[valid]
    return float(np.mean(np.hypot(vx, vy)))


def min_mean_sdc_speed(threshold: float = 2.0) -> Filter:
    """A filter keeping scenarios whose mean SDC speed is strictly above ``threshold`` m/s."""

    def sdc_speed_above(s: DecodedScenario) -> bool:
        v = mean_sdc_speed(s)
        return bool(np.isfinite(v) and v > threshold)

    sdc_speed_above.__name__ = f"sdc_speed_above_{threshold:g}"
    return sdc_speed_above


def interactive_filters() -> list[Filter]:
    """The papers' default training filter: an SDC and an object of interest."""
    return [has_sdc, has_objects_of_interest]


@dataclasses.dataclass
class FilterStats:
    """Counts of :func:`apply_filters`.

    Attributes:
      seen: scenarios looked at.
      kept: scenarios that passed every filter.
      dropped: ``{filter name: count}``; a scenario counts under the first filter it fails.
    """

    seen: int = 0
    kept: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"seen": self.seen, "kept": self.kept, "dropped": dict(self.dropped)}


def filter_name(f: Filter) -> str:
    return getattr(f, "__name__", None) or repr(f)


def apply_filters(
    scenarios: Iterable[DecodedScenario],
    filters: Sequence[Filter],
    stats: FilterStats | None = None,
) -> Iterator[DecodedScenario]:
    """Yields the scenarios that pass every filter, counting the rest by reason.

    Args:
      scenarios: any stream of decoded scenarios.
      filters: predicates; applied in order, the first failure is the reason.
      stats: a :class:`FilterStats` to fill (read it after the stream is consumed).
    """
    stats = stats if stats is not None else FilterStats()
    for f in filters:
        stats.dropped.setdefault(filter_name(f), 0)
    for s in scenarios:
        stats.seen += 1
        for f in filters:
            if not f(s):
                stats.dropped[filter_name(f)] += 1
                break
        else:
            stats.kept += 1
            yield s
