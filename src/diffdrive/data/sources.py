"""Which reader reads which file: a format registry, format detection, one entry point.

Formats (the names :class:`~diffdrive.data.types.DecodedScenario` carries):

==================  ================================================  =====================
name                what                                              detected by
==================  ================================================  =====================
``tf_example``      WOMD TFRecord of ``tf.train.Example``             ``.tfrecord*``, peek
``scenario_proto``  WOMD TFRecord of ``Scenario`` protos              ``.tfrecord*``, peek
``gpudrive_json``   GPUDrive scenario JSON, gzipped                   ``.json.gz``
``nocturne_json``   Nocturne / GPUDrive scenario JSON                 ``.json``
``scenarionet``     ScenarioNet / MetaDrive pickle                    ``.pkl``
``waymax_state``    flat ``<group>/<field>`` arrays (``.npz``)        ``.npz``
``cache``           a :mod:`diffdrive.data.cache` directory           ``index.json`` inside
``synthetic``       the procedural generator, ``synthetic:N[:SEED[:PRESET]]``  the prefix
==================  ================================================  =====================

For a TFRecord the first record is read: a ``tf.train.Example`` is a single ``features``
map whose keys start with ``state/`` (or ``roadgraph_samples/``, ``scenario/``); anything
else that parses as protobuf with Scenario field numbers is a ``Scenario``.

Readers are resolved lazily, so a missing optional reader only fails when its format is
used (:func:`available_formats` says which are importable). Each reader is called as
``reader(path, **opts)``; options it does not accept are not passed.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import inspect
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from diffdrive.data import protowire
from diffdrive.data.tfrecord import SkipStats
from diffdrive.data.types import DecodedScenario, ScenarioDecodeError

Reader = Callable[..., Iterator[DecodedScenario]]

FORMATS = (
    "tf_example",
    "scenario_proto",
    "gpudrive_json",
    "nocturne_json",
    "scenarionet",
    "waymax_state",
    "cache",
    "synthetic",
)

# name -> (module, candidate function names); the first that exists is used.
_LAZY: dict[str, tuple[str, tuple[str, ...]]] = {
    "tf_example": ("diffdrive.data.tf_example", ("read_tf_example_file",)),
    "scenario_proto": (
        "diffdrive.data.scenario_proto",
        ("read_scenario_proto_file", "read_scenario_file"),
    ),
    "gpudrive_json": (
        "diffdrive.data.gpudrive",
        ("read_gpudrive_file", "read_gpudrive_json", "read_json_file", "read_file"),
    ),
    "nocturne_json": (
        "diffdrive.data.gpudrive",
        ("read_nocturne_file", "read_nocturne_json", "read_json_file", "read_file"),
    ),
    "scenarionet": ("diffdrive.data.scenarionet", ("read_scenarionet_file", "read_file")),
    "waymax_state": ("diffdrive.data.sources", ("read_waymax_state_file",)),
    "cache": ("diffdrive.data.cache", ("read_cache",)),
    "synthetic": ("diffdrive.data.sources", ("read_synthetic",)),
}
_REGISTERED: dict[str, Reader] = {}

# Files inside dataset folders that hold no scenario.
_NOT_SCENARIOS = {"dataset_mapping.pkl", "dataset_summary.pkl"}
_SCENARIO_SUFFIXES = (".tfrecord", ".json.gz", ".json", ".pkl", ".npz")


class FormatError(ValueError):
    """A file's format is unknown, or its reader is not available."""


def register_reader(name: str, reader: Reader) -> None:
    """Registers (or replaces) the reader of format ``name``."""
    _REGISTERED[name] = reader


def get_reader(name: str) -> Reader:
    """The reader function of a format.

    Raises:
      FormatError: unknown format, or its module or function is not there.
    """
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _LAZY:
        raise FormatError(f"unknown format {name!r}; known: {', '.join(FORMATS)}")
    module_name, candidates = _LAZY[name]
    try:
        module = importlib.import_module(module_name)
        if name == "synthetic":  # the reader lives here; the generator must exist too
            gen = importlib.import_module("diffdrive.data.synthetic")
            if not callable(getattr(gen, "generate_dataset", None)):
                raise ImportError("diffdrive.data.synthetic has no generate_dataset")
    except ImportError as e:
        raise FormatError(f"format {name!r}: reader module {module_name} unavailable ({e})") from e
    for fn in candidates:
        if callable(getattr(module, fn, None)):
            return getattr(module, fn)
    raise FormatError(f"format {name!r}: {module_name} has none of {', '.join(candidates)}")


def available_formats() -> dict[str, bool]:
    """``{format: reader importable}`` for every known format."""
    out = {}
    for name in FORMATS:
        try:
            get_reader(name)
            out[name] = True
        except FormatError:
            out[name] = False
    return out


# ------------------------------------------------------------------------------ detection


def _first_record(path: Path, max_bytes: int = 1 << 28) -> bytes:
    """The payload of the first TFRecord record (plain or gzip-compressed file)."""
    with open(path, "rb") as raw:
        magic = raw.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12:
            raise FormatError(f"{path}: too short for a TFRecord ({len(head)} bytes)")
        (length,) = struct.unpack("<Q", head[:8])
        if length > max_bytes:
            raise FormatError(f"{path}: first record length {length} is implausible for a TFRecord")
        data = f.read(length)
        if len(data) < length:
            raise FormatError(f"{path}: first record truncated ({len(data)} of {length} bytes)")
        return data


def _is_tf_example(payload: bytes) -> bool:
    fields = list(protowire.iter_fields(payload))
    if not fields or any(f != 1 or w != protowire.LENGTH_DELIMITED for f, w, _ in fields):
        return False
    prefixes = ("state/", "roadgraph_samples/", "scenario/", "traffic_light_state/")
    for _, _, features in fields:
        for f, w, entry in protowire.iter_fields(features):
            if f != 1 or w != protowire.LENGTH_DELIMITED:
                return False
            for kf, kw, key in protowire.iter_fields(entry):
                if kf == 1 and kw == protowire.LENGTH_DELIMITED:
                    if bytes(key).decode("utf-8", "replace").startswith(prefixes):
                        return True
                    break
    return False


def _is_scenario(payload: bytes) -> bool:
    numbers = {f for f, _, _ in protowire.iter_fields(payload)}
    return bool(numbers) and numbers <= set(range(1, 14)) and bool(numbers & {2, 5, 8})


def detect_tfrecord_payload(path: str | os.PathLike) -> str:
    """``"tf_example"`` or ``"scenario_proto"`` from a TFRecord's first record."""
    path = Path(path)
    payload = _first_record(path)
    try:
        if _is_tf_example(payload):
            return "tf_example"
        if _is_scenario(payload):
            return "scenario_proto"
    except protowire.WireError as e:
        raise FormatError(f"{path}: first record is not a protobuf message ({e})") from e
    raise FormatError(f"{path}: first record is neither a tf.train.Example nor a Scenario")


def detect_format(path: str | os.PathLike) -> str:
    """The format name of a file or directory (see the module table).

    Raises:
      FormatError: the format cannot be told (pass it explicitly).
    """
    s = str(path)
    if s.startswith("synthetic:"):
        return "synthetic"
    p = Path(path)
    if p.is_dir():
        if (p / "index.json").exists() or (p / "build.json").exists():
            return "cache"
        raise FormatError(f"{p}: a directory that is not a scenario cache")
    if not p.exists():
        raise FormatError(f"{p}: no such file")
    name = p.name.lower()
    if name.endswith(".json.gz"):
        return "gpudrive_json"
    if name.endswith(".json"):
        return "nocturne_json"
    if name.endswith(".pkl"):
        return "scenarionet"
    if name.endswith(".npz"):
        return "waymax_state"
    try:
        return detect_tfrecord_payload(p)
    except FormatError:
        if ".tfrecord" in name:
            raise
        raise FormatError(
            f"{p}: unknown format (not a known extension, not a TFRecord); "
            "pass the format explicitly"
        ) from None


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files to read: directories expand (recursively, sorted) to their scenario files.

    Caches and ``synthetic:`` specs stay as they are; ``dataset_mapping.pkl`` and
    ``dataset_summary.pkl`` (ScenarioNet indexes) are left out.
    """
    out: list[str] = []
    for raw in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        s = str(raw)
        p = Path(raw)
        if s.startswith("synthetic:") or not p.is_dir():
            out.append(s)
            continue
        if (p / "index.json").exists() or (p / "build.json").exists():
            out.append(s)
            continue
        for f in sorted(p.rglob("*")):
            low = f.name.lower()
            if (
                f.is_file()
                and not low.startswith(".")
                and f.name not in _NOT_SCENARIOS
                and (low.endswith(_SCENARIO_SUFFIXES) or ".tfrecord" in low)
            ):
                out.append(str(f))
    return out


# ------------------------------------------------------------------------------- readers


def read_waymax_state_file(path: str | os.PathLike, **_: Any) -> Iterator[DecodedScenario]:
    """Reads a flat ``<group>/<field>`` ``.npz`` (like ``waymax_state/scenario_50.npz``).

    Only the log, metadata, roadgraph and traffic-light groups are kept; a leading batch
    axis makes one scenario per entry.
    """
    from diffdrive.data import batching

    path = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k.split("/", 1)[0] in batching.GROUPS}
    except (OSError, ValueError) as e:
        raise ScenarioDecodeError(path, None, None, f"not a readable .npz ({e})") from e
    if "log_trajectory/x" not in arrays:
        raise ScenarioDecodeError(path, None, "log_trajectory/x", "missing array")
    batch = arrays["log_trajectory/x"].shape[:-2]
    stem = Path(path).name.removesuffix(".npz")
    for i, idx in enumerate(np.ndindex(*batch)):
        one = {k: np.asarray(v[idx]) for k, v in arrays.items()}
        sid = stem if not batch else f"{stem}:{i}"
        yield DecodedScenario(sid, "waymax_state", one, source=path, record_index=i)


def parse_synthetic_spec(spec: str) -> tuple[int, int, str | None]:
    """``synthetic:N[:SEED[:PRESET]]`` -> ``(N, SEED, PRESET)``."""
    parts = spec.split(":")
    try:
        n = int(parts[1])
        seed = int(parts[2]) if len(parts) > 2 and parts[2] else 0
    except (IndexError, ValueError) as e:
        raise FormatError(f"{spec!r}: expected synthetic:N[:SEED[:PRESET]]") from e
    preset = parts[3] if len(parts) > 3 and parts[3] else None
    return n, seed, preset


SYNTHETIC_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "small": {"max_objects": 16, "num_roadgraph_points": 2000, "num_vehicles": (4, 8)},
    "womd": {"max_objects": 128, "num_roadgraph_points": 20000},
    "highway": {"layout_weights": (0.5, 0.5, 0.0, 0.0)},
    "urban": {"layout_weights": (0.0, 0.0, 0.6, 0.4)},
}
"""Named :class:`~diffdrive.data.synthetic.SyntheticConfig` overrides for ``--preset``:
``small`` (16 objects, 2000 roadgraph points, few vehicles: quick tests), ``womd`` (128
objects, 20000 points: WOMD-shaped), ``highway`` (straights and curves only), ``urban``
(intersections only). A ``PRESETS`` dict in the generator module takes precedence."""


def synthetic_config(preset: str | None = None, **overrides: Any) -> Any:
    """A :class:`diffdrive.data.synthetic.SyntheticConfig` from a preset name and overrides.

    Raises:
      FormatError: unknown preset.
    """
    from diffdrive.data import synthetic

    own = getattr(synthetic, "PRESETS", None)
    if preset is None:
        cfg = synthetic.SyntheticConfig()
    elif isinstance(own, dict) and preset in own:
        cfg = own[preset]() if callable(own[preset]) else own[preset]
    elif preset in SYNTHETIC_PRESETS:
        cfg = synthetic.SyntheticConfig(**SYNTHETIC_PRESETS[preset])
    else:
        known = sorted({*SYNTHETIC_PRESETS, *(own or {})})
        raise FormatError(f"unknown synthetic preset {preset!r}; known: {', '.join(known)}")
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg


def read_synthetic(spec: str, config: Any = None, **_: Any) -> Iterator[DecodedScenario]:
    """Scenarios from the procedural generator, ``spec`` = ``synthetic:N[:SEED[:PRESET]]``."""
    from diffdrive.data import synthetic

    n, seed, preset = parse_synthetic_spec(spec)
    cfg = config if config is not None else synthetic_config(preset)
    yield from synthetic.generate_dataset(n, seed, cfg)


# --------------------------------------------------------------------------- entry point


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def read_file(
    path: str | os.PathLike,
    format: str | None = None,
    on_error: str = "raise",
    stats: SkipStats | None = None,
    **opts: Any,
) -> Iterator[DecodedScenario]:
    """The scenarios of one file (or cache / synthetic spec).

    Args:
      path: file, cache directory or ``synthetic:`` spec.
      format: format name; ``None`` detects it.
      on_error: ``"raise"`` or ``"skip"``. Readers that support it skip bad records
        themselves; for others a failing file is skipped from the failure on (after the
        scenarios it already gave) and counted as abandoned.
      stats: a :class:`diffdrive.data.tfrecord.SkipStats` that counts what was skipped.
      **opts: reader options (e.g. ``max_num_rg_points``); ones a reader does not take
        are dropped.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    fmt = format or detect_format(path)
    reader = get_reader(fmt)
    kw = {k: v for k, v in opts.items() if _accepts(reader, k)}
    if _accepts(reader, "on_error"):
        kw["on_error"] = on_error
    if stats is not None and _accepts(reader, "stats"):
        kw["stats"] = stats
    try:
        yield from reader(str(path), **kw)
    except (ScenarioDecodeError, OSError, EOFError) as e:
        err = (
            e
            if isinstance(e, ScenarioDecodeError)
            else ScenarioDecodeError(str(path), None, None, f"{type(e).__name__}: {e}")
        )
        if on_error == "raise":
            if err is e:
                raise
            raise err from e
        if stats is not None:
            stats.add(err, abandons_file=True)


def read_scenarios(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    format: str | None = None,
    on_error: str = "raise",
    stats: SkipStats | None = None,
    **opts: Any,
) -> Iterator[DecodedScenario]:
    """Reads scenarios from files, directories, caches and ``synthetic:`` specs, in order.

    Args:
      paths: one path or several; directories expand with :func:`expand_paths`.
      format: one format for all files; ``None`` detects each file's.
      on_error: ``"raise"`` (default) or ``"skip"`` (see :func:`read_file`).
      stats: a :class:`~diffdrive.data.tfrecord.SkipStats` for what was skipped.
      **opts: reader options.

    Yields:
      :class:`DecodedScenario`, file by file.

    Raises:
      FormatError: a format is unknown or its reader missing.
      ScenarioDecodeError: a record is bad and ``on_error="raise"``.
    """
    files = expand_paths(paths)
    if not files:
        raise FormatError(f"no scenario files in {paths!r}")
    for f in files:
        yield from read_file(f, format=format, on_error=on_error, stats=stats, **opts)
