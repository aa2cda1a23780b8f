"""The embedded default dataset: deterministic procedural WOMD-shaped scenarios.

``generate_scenario(seed, config)`` builds one scenario (91 steps at 10 Hz) from a road
layout (multi-lane straights, curves, signalized or stop-controlled four-way and T
intersections), rule-based traffic (path tracking, IDM, lights, stop signs, an intersection
reservation manager, lane changes, pedestrians on sidewalks and crosswalks, cyclists,
parked cars) and WOMD-like tracking noise. The SDC's log is verified never to overlap
another object and never to leave the road under Waymax's exact rules. No downloads.

Modules: :mod:`.roads` (layouts), :mod:`.population` (agents), :mod:`.driver` (traffic
model), :mod:`.generator` (assembly and verification), :mod:`.geometry`.
"""

from diffdrive.data.synthetic.generator import (
    FORMAT,
    GenerationError,
    ScenarioInfo,
    SyntheticConfig,
    generate_dataset,
    generate_scenario,
    generate_scenario_with_info,
)
from diffdrive.data.synthetic.roads import LAYOUTS

__all__ = [
    "FORMAT",
    "LAYOUTS",
    "GenerationError",
    "ScenarioInfo",
    "SyntheticConfig",
    "generate_dataset",
    "generate_scenario",
    "generate_scenario_with_info",
]
