"""What every scenario reader returns."""

from __future__ import annotations

import dataclasses

import numpy as np

from diffdrive.sim import datatypes


class ScenarioDecodeError(ValueError):
    """A record could not be decoded; the message names file, record index and field."""

    def __init__(self, file: str, record: int | None, field: str | None, reason: str):
        self.file, self.record, self.field, self.reason = file, record, field, reason
        where = f"{file}"
        if record is not None:
            where += f", record {record}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {reason}")


@dataclasses.dataclass(frozen=True)
class DecodedScenario:
    """One scenario as a reader produced it.

    Attributes:
      scenario_id: the source's scenario id (or a generated one).
      format: source format name (``tf_example``, ``scenario_proto``, ``gpudrive_json``,
        ``nocturne_json``, ``scenarionet``, ``synthetic``, ``cache``).
      arrays: flat ``"<field>/<subfield>" -> np.ndarray`` mapping, unbatched, as accepted
        by :func:`diffdrive.sim.datatypes.state_from_flat_arrays`.
      source: the file it came from.
      record_index: index of the record (or scenario) within that file.
      assumptions: what the decoder had to assume because the format lacks it (box sizes,
        road-edge subtypes, SDC choice, ...), one sentence each. Empty when nothing was
        assumed.
    """

    scenario_id: str
    format: str
    arrays: dict[str, np.ndarray]
    source: str = ""
    record_index: int = 0
    assumptions: tuple[str, ...] = ()

    def to_state(self) -> datatypes.SimulatorState:
        where = f"{self.source} record {self.record_index}"
        return datatypes.state_from_flat_arrays(self.arrays, source=where)

    @property
    def num_objects(self) -> int:
        return int(self.arrays["object_metadata/ids"].shape[-1])
