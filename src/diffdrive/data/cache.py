"""A preprocessed scenario cache: fixed-shape shards of ``.npy`` files plus a JSON index.

Decoding WOMD protobufs costs milliseconds per scenario; reading a padded scenario back
from disk costs microseconds. :func:`build_cache` decodes once and writes::

    out_dir/
      build.json               settings of the build (written first; used to resume)
      shard_00000/             K scenarios, one file per flat key, batch axis first:
        log_trajectory.x.npy     (K, N, T) float32, uncompressed
        ...
        roadgraph_points.valid.npy  (K, P) bool
        meta.json              the shard's scenarios and the SHA-256 of each file
      shard_00001/ ...
      index.json               written last: every scenario's id, format, source, record,
                               assumptions and unpadded sizes; per-key shapes and dtypes;
                               every file's size and hash; a content hash over all of it

Layout choice: one array per key and shard, batch axis first, means a batch of
consecutive scenarios is one contiguous slice of each file, so an epoch reads each byte
once, sequentially, with ``np.load(mmap_mode='r')`` and no decompression. Shuffled epochs
permute the shard order and the rows within a shard, which keeps reads within one file
region at a time.

A shard is written into ``shard_XXXXX.tmp/`` and renamed when complete, so a build that
stops midway leaves only whole shards; building again into the same directory with the
same input skips them (checking their scenario ids) and continues. :func:`open_cache`
checks the index hash, that every file exists with its recorded size, and (``verify``)
each file's SHA-256, at open (``"full"``) or when a shard is first read (``"lazy"``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from diffdrive.data import batching
from diffdrive.data.types import DecodedScenario
from diffdrive.sim import datatypes

CACHE_FORMAT = "diffdrive-scenario-cache"
CACHE_VERSION = 1
INDEX_NAME = "index.json"
BUILD_NAME = "build.json"
SHARD_META = "meta.json"
_SHARD_RE = re.compile(r"^shard_(\d{5})$")


class CacheError(RuntimeError):
    """A cache directory is incomplete, corrupt or does not match the requested build."""


def _file_name(key: str) -> str:
    return key.replace("/", ".") + ".npy"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise CacheError(f"{path}: {what} is missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"{path}: {what} is not valid JSON ({e})") from e


def _content_hash(shards: list[dict], scenarios: list[dict], settings: dict) -> str:
    blob = json.dumps(
        {"shards": shards, "scenarios": scenarios, "settings": settings},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def _settings(
    shard_size: int, max_objects: int, num_roadgraph_points: int, num_timesteps: int, lights: int
) -> dict:
    return {
        "shard_size": int(shard_size),
        "max_objects": int(max_objects),
        "num_roadgraph_points": int(num_roadgraph_points),
        "num_timesteps": int(num_timesteps),
        "num_traffic_lights": int(lights),
    }


def _key_specs(settings: dict) -> dict[str, dict]:
    return {
        key: {
            "shape": list(
                batching.key_shape(
                    key,
                    settings["max_objects"],
                    settings["num_timesteps"],
                    settings["num_roadgraph_points"],
                    settings["num_traffic_lights"],
                )
            ),
            "dtype": batching.key_dtype(key).str,
        }
        for key in batching.canonical_keys()
    }


def _scenario_entry(s: DecodedScenario, arrays: dict, notes: list[str], sizes: dict) -> dict:
    return {
        "scenario_id": str(s.scenario_id),
        "format": str(s.format),
        "source": str(s.source),
        "record_index": int(s.record_index),
        "assumptions": [*map(str, s.assumptions), *notes],
        # unpadded sizes of what was stored; getitem slices back to them
        "num_objects": int(min(sizes["num_objects"], arrays["log_trajectory/x"].shape[0])),
        "num_timesteps": int(min(sizes["num_timesteps"], arrays["log_trajectory/x"].shape[1])),
        "num_roadgraph_points": int(
            min(sizes["num_roadgraph_points"], arrays["roadgraph_points/x"].shape[0])
        ),
        "num_traffic_lights": int(
            min(sizes["num_traffic_lights"], arrays["log_traffic_light/x"].shape[0])
        ),
    }


def _write_shard(out: Path, index: int, rows: list[dict], entries: list[dict]) -> dict:
    """Writes one shard atomically (temp dir + rename); returns its meta."""
    name = _shard_name(index)
    tmp = out / f"{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {}
    for key in batching.canonical_keys():
        arr = np.stack([r[key] for r in rows])
        fname = _file_name(key)
        np.save(tmp / fname, arr, allow_pickle=False)
        files[fname] = {"sha256": _sha256(tmp / fname), "bytes": (tmp / fname).stat().st_size}
    meta = {"shard": name, "count": len(rows), "files": files, "scenarios": entries}
    _write_json_atomic(tmp / SHARD_META, meta)
    os.rename(tmp, out / name)
    return meta


def _completed_shards(out: Path) -> list[int]:
    found = sorted(
        int(m.group(1)) for p in out.iterdir() if p.is_dir() and (m := _SHARD_RE.match(p.name))
    )
    complete = [i for i in found if (out / _shard_name(i) / SHARD_META).exists()]
    if complete != list(range(len(complete))) or len(complete) != len(found):
        raise CacheError(
            f"{out}: shard directories {[_shard_name(i) for i in found]} are not a complete "
            "run shard_00000..; delete the directory and build again"
        )
    return complete


def _clear_cache_dir(out: Path) -> None:
    """Removes only what a build writes (index, build settings, shard dirs)."""
    for p in out.iterdir():
        if p.name in (INDEX_NAME, BUILD_NAME, INDEX_NAME + ".tmp", BUILD_NAME + ".tmp"):
            p.unlink()
        elif p.is_dir() and (_SHARD_RE.match(p.name) or re.match(r"^shard_\d{5}\.tmp$", p.name)):
            shutil.rmtree(p)


def build_cache(
    scenarios: Iterable[DecodedScenario],
    out_dir: str | os.PathLike,
    shard_size: int = 64,
    max_objects: int = 128,
    num_roadgraph_points: int = 20000,
    num_timesteps: int | None = None,
    num_traffic_lights: int = datatypes.NUM_TRAFFIC_LIGHTS,
    overwrite: bool = False,
    progress: bool = True,
    total: int | None = None,
) -> Cache:
    """Decodes ``scenarios`` once into fixed-shape shards under ``out_dir``.

    Each scenario is brought to ``(max_objects, num_timesteps, num_roadgraph_points,
    num_traffic_lights)`` by :func:`diffdrive.data.batching.pad_arrays` (SDC-first object
    selection when there are more objects; lossy changes are recorded in its assumptions).

    If ``out_dir`` holds whole shards of an interrupted build with the same settings, they
    are kept: the matching number of input scenarios is consumed (their ids must match the
    shard's) and writing continues with the next shard.

    Args:
      scenarios: decoded scenarios, e.g. from :func:`diffdrive.data.sources.read_scenarios`.
      out_dir: cache directory (created).
      shard_size: scenarios per shard ``K``.
      max_objects: object slots ``N``.
      num_roadgraph_points: roadgraph points ``P``.
      num_timesteps: steps ``T``; ``None`` takes the first scenario's.
      num_traffic_lights: light slots ``L``.
      overwrite: replace a finished cache in ``out_dir`` (otherwise that is an error).
      progress: show a tqdm bar.
      total: number of scenarios for the bar (``len(scenarios)`` when it has one).

    Returns:
      The finished :class:`Cache`.

    Raises:
      FileExistsError: ``out_dir`` holds a finished cache and ``overwrite`` is False.
      CacheError: the partial build in ``out_dir`` used other settings or other input.
      ScenarioDecodeError: from the readers, or for a scenario with inconsistent arrays.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / INDEX_NAME).exists():
        if not overwrite:
            raise FileExistsError(f"{out}: already holds a finished cache (use overwrite)")
        _clear_cache_dir(out)
    for p in out.glob("shard_*.tmp"):
        shutil.rmtree(p)
    if total is None and hasattr(scenarios, "__len__"):
        total = len(scenarios)  # type: ignore[arg-type]

    settings = None
    if (out / BUILD_NAME).exists():
        settings = _read_json(out / BUILD_NAME, "build settings")
        want = {
            "shard_size": shard_size,
            "max_objects": max_objects,
            "num_roadgraph_points": num_roadgraph_points,
            "num_traffic_lights": num_traffic_lights,
        }
        if num_timesteps is not None:
            want["num_timesteps"] = num_timesteps
        diff = {k: (settings.get(k), v) for k, v in want.items() if settings.get(k) != v}
        if diff:
            raise CacheError(
                f"{out}: an unfinished build with other settings is there "
                f"(existing, requested: {diff}); use the same settings or another directory"
            )
    done = _completed_shards(out) if settings is not None else []
    if settings is None and any(out.iterdir()):
        stray = sorted(p.name for p in out.iterdir())[:5]
        raise CacheError(f"{out}: not empty and not a cache build ({stray}); use an empty dir")

    it = iter(scenarios)
    bar = tqdm(total=total, desc=f"cache {out.name}", unit="scn", disable=not progress)
    metas: list[dict] = []
    try:
        # Skip the shards a previous run completed, checking that the input matches.
        for i in done:
            meta = _read_json(out / _shard_name(i) / SHARD_META, "shard meta")
            for entry in meta["scenarios"]:
                s = next(it, None)
                if s is None:
                    raise CacheError(
                        f"{out}: the input ended before the {_shard_name(i)} of the earlier "
                        "build; it is not the same input"
                    )
                if str(s.scenario_id) != entry["scenario_id"]:
                    raise CacheError(
                        f"{out}/{_shard_name(i)}: holds scenario {entry['scenario_id']!r} where "
                        f"the input has {s.scenario_id!r}; it is not the same input"
                    )
                bar.update(1)
            metas.append(meta)
        if done and metas[-1]["count"] < shard_size:
            extra = next(it, None)
            if extra is not None:
                raise CacheError(
                    f"{out}: the earlier build ended after {_shard_name(done[-1])} but the "
                    f"input goes on ({extra.scenario_id!r}); it is not the same input"
                )

        rows: list[dict] = []
        entries: list[dict] = []
        for s in it:
            sizes = batching.scenario_sizes(s.arrays, s)
            if settings is None:
                t = sizes["num_timesteps"] if num_timesteps is None else num_timesteps
                settings = _settings(
                    shard_size, max_objects, num_roadgraph_points, t, num_traffic_lights
                )
                _write_json_atomic(
                    out / BUILD_NAME,
                    {"format": CACHE_FORMAT, "version": CACHE_VERSION, **settings},
                )
            arrays, notes = batching.pad_arrays(
                s.arrays,
                settings["max_objects"],
                settings["num_roadgraph_points"],
                settings["num_timesteps"],
                settings["num_traffic_lights"],
                scenario=s,
            )
            rows.append(arrays)
            entries.append(_scenario_entry(s, arrays, notes, sizes))
            if len(rows) == shard_size:
                metas.append(_write_shard(out, len(metas), rows, entries))
                rows, entries = [], []
            bar.update(1)
        if rows:
            metas.append(_write_shard(out, len(metas), rows, entries))
    finally:
        bar.close()

    if settings is None:
        raise ValueError(f"build_cache: no scenarios to write into {out}")
    shards = [{"name": m["shard"], "count": m["count"], "files": m["files"]} for m in metas]
    scen = [e for m in metas for e in m["scenarios"]]
    settings = {k: settings[k] for k in _settings(1, 1, 1, 1, 1)}
    index = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "num_scenarios": len(scen),
        "settings": settings,
        "keys": _key_specs(settings),
        "shards": shards,
        "scenarios": scen,
        "content_hash": _content_hash(shards, scen, settings),
    }
    _write_json_atomic(out / INDEX_NAME, index)
    return open_cache(out, verify="none")


class Cache(Sequence):
    """A finished cache: a sequence of :class:`DecodedScenario` plus fast batch iteration.

    ``cache[i]`` returns the scenario as it was written, with padding removed (arrays cut
    back to the scenario's own object, step, point and light counts), its original
    ``format``, ``source``, ``record_index`` and ``assumptions`` (plus any object or
    point selection the build did). Use :func:`open_cache` to create one.

    Attributes:
      path: the cache directory.
      index: the parsed ``index.json``.
      mode: ``"mmap"`` (files memory-mapped, pages read on demand) or ``"stream"`` (a
        shard read whole into memory when first needed, one shard held at a time).
      verify: ``"full"``, ``"lazy"`` or ``"none"`` (see :func:`open_cache`).
    """

    def __init__(self, path: Path, index: dict, mode: str, verify: str, max_open_shards: int):
        self.path = path
        self.index = index
        self.mode = mode
        self.verify = verify
        self.settings: dict = index["settings"]
        self._shards: list[dict] = index["shards"]
        self._entries: list[dict] = index["scenarios"]
        counts = [s["count"] for s in self._shards]
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._open: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._max_open = 1 if mode == "stream" else max(1, max_open_shards)
        self._verified: set[int] = set()

    # ---- sizes ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    @property
    def scenario_ids(self) -> list[str]:
        return [e["scenario_id"] for e in self._entries]

    @property
    def nbytes(self) -> int:
        """Bytes of array data on disk (``.npy`` files, headers included)."""
        return int(sum(f["bytes"] for s in self._shards for f in s["files"].values()))

    @property
    def bytes_per_scenario(self) -> float:
        return self.nbytes / max(len(self), 1)

    def entry(self, i: int) -> dict:
        """The index entry (id, format, source, sizes, ...) of scenario ``i``."""
        return self._entries[self._norm(i)]

    def _norm(self, i: int) -> int:
        n = len(self)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"{self.path}: scenario index {i} out of range for {n} scenarios")
        return j

    def _locate(self, i: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return shard, int(i - self._offsets[shard])

    # ---- shard access --------------------------------------------------------------
    def verify_shard(self, shard: int) -> None:
        """Checks every file of a shard against its SHA-256; raises :class:`CacheError`."""
        info = self._shards[shard]
        d = self.path / info["name"]
        for fname, spec in info["files"].items():
            p = d / fname
            if not p.exists():
                raise CacheError(f"{p}: shard file is missing")
            got = _sha256(p)
            if got != spec["sha256"]:
                raise CacheError(
                    f"{p}: shard file is corrupt (SHA-256 {got[:12]}.. != recorded "
                    f"{spec['sha256'][:12]}..); rebuild the cache"
                )
        self._verified.add(shard)

    def verify_all(self, progress: bool = False) -> None:
        """Checks the SHA-256 of every file (reads the whole cache)."""
        for i in tqdm(range(self.num_shards), desc="verify", disable=not progress):
            self.verify_shard(i)

    def shard_arrays(self, shard: int) -> dict[str, np.ndarray]:
        """``{key: (count, ...) array}`` of one shard (memory-mapped in ``"mmap"`` mode)."""
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        if self.verify == "lazy" and shard not in self._verified:
            self.verify_shard(shard)
        info = self._shards[shard]
        d = self.path / info["name"]
        keys = self.index["keys"]
        arrays = {}
        for key, spec in keys.items():
            p = d / _file_name(key)
            try:
                a = np.load(p, mmap_mode="r" if self.mode == "mmap" else None, allow_pickle=False)
            except FileNotFoundError as e:
                raise CacheError(f"{p}: shard file is missing") from e
            except ValueError as e:
                raise CacheError(f"{p}: shard file is not a readable .npy ({e})") from e
            want = (info["count"], *spec["shape"])
            if a.shape != want or a.dtype.str != spec["dtype"]:
                raise CacheError(
                    f"{p}: shape {a.shape} dtype {a.dtype.str}, index says {want} {spec['dtype']}"
                )
            arrays[key] = a
        self._open[shard] = arrays
        while len(self._open) > self._max_open:
            self._open.popitem(last=False)
        return arrays

    def padded_arrays(self, i: int) -> dict[str, np.ndarray]:
        """Scenario ``i``'s flat arrays at the cache's fixed shape (copies)."""
        shard, row = self._locate(self._norm(i))
        return {k: np.array(a[row]) for k, a in self.shard_arrays(shard).items()}

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        j = self._norm(i)
        e = self._entries[j]
        shard, row = self._locate(j)
        n, t = e["num_objects"], e["num_timesteps"]
        p, lights = e["num_roadgraph_points"], e["num_traffic_lights"]
        arrays = {}
        for key, a in self.shard_arrays(shard).items():
            kind = batching.GROUPS[key.split("/", 1)[0]][1]
            r = a[row]
            if kind == "obj_time":
                r = r[:n, :t]
            elif kind == "obj":
                r = r[:n]
            elif kind == "pts":
                r = r[:p]
            else:
                r = r[:lights, :t]
            arrays[key] = np.array(r)
        return DecodedScenario(
            scenario_id=e["scenario_id"],
            format=e["format"],
            arrays=arrays,
            source=e["source"],
            record_index=e["record_index"],
            assumptions=tuple(e["assumptions"]),
        )

    def __iter__(self) -> Iterator[DecodedScenario]:
        for i in range(len(self)):
            yield self[i]

    # ---- batches ---------------------------------------------------------------------
    def iter_flat_batches(
        self,
        batch_size: int,
        drop_remainder: bool = False,
        shuffle_seed: int | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yields ``{key: (B, ...) array}`` batches at the cache's fixed shape.

        Without shuffling, batches are consecutive rows (contiguous reads). With
        ``shuffle_seed``, the shard order and the rows within each shard are permuted
        (so each epoch still reads shard by shard); batches may span two shards.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
        order = rng.permutation(self.num_shards) if rng is not None else range(self.num_shards)
        pending: list[tuple[int, np.ndarray]] = []  # (shard, rows)
        n_pending = 0

        def emit(parts: list[tuple[int, np.ndarray]]) -> dict[str, np.ndarray]:
            # np.array copies: the batch is read here (in a loader thread, if any) and
            # does not keep the memory map alive.
            chunks = [
                {k: np.array(a[rows]) for k, a in self.shard_arrays(s).items()} for s, rows in parts
            ]
            if len(chunks) == 1:
                return chunks[0]
            return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

        for shard in order:
            count = self._shards[int(shard)]["count"]
            rows = rng.permutation(count) if rng is not None else np.arange(count)
            start = 0
            while start < count:
                take = min(batch_size - n_pending, count - start)
                sel = rows[start : start + take]
                if rng is None:
                    sel = slice(int(sel[0]), int(sel[-1]) + 1)  # contiguous read
                pending.append((int(shard), sel))
                n_pending += take
                start += take
                if n_pending == batch_size:
                    yield emit(pending)
                    pending, n_pending = [], 0
        if pending and not drop_remainder:
            yield emit(pending)

    def iter_batches(
        self,
        batch_size: int,
        drop_remainder: bool = False,
        shuffle_seed: int | None = None,
    ) -> Iterator[datatypes.SimulatorState]:
        """Batched :class:`SimulatorState` (numpy leaves, ``(B, ...)``) for one epoch.

        Wrap in :class:`diffdrive.data.batching.PrefetchLoader` to overlap reading and
        the device transfer with computation.
        """
        for flat in self.iter_flat_batches(batch_size, drop_remainder, shuffle_seed):
            yield batching.state_from_flat_batch(flat)

    def subset(self, indices: Iterable[int] | slice) -> CacheSubset:
        """A view of the scenarios ``indices`` (a train/test split), in that order."""
        if isinstance(indices, slice):
            indices = range(*indices.indices(len(self)))
        return CacheSubset(self, [self._norm(i) for i in indices])

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"Cache({str(self.path)!r}, {len(self)} scenarios in {self.num_shards} shards, "
            f"N={s['max_objects']} T={s['num_timesteps']} P={s['num_roadgraph_points']}, "
            f"mode={self.mode!r})"
        )


class CacheSubset(Sequence):
    """Some scenarios of a :class:`Cache`, re-indexed from 0 (what ``Cache.subset`` returns).

    Offers what training and evaluation read from a cache: ``len``, ``[i]``,
    ``padded_arrays(i)``, ``settings``, ``scenario_ids`` and ``path``.

    Attributes:
      cache: the underlying cache.
      indices: the cache indices of this view's scenarios, in order.
    """

    def __init__(self, cache: Cache, indices: Sequence[int]):
        self.cache = cache
        self.indices = list(indices)
        self.settings = cache.settings
        self.path = cache.path

    def __len__(self) -> int:
        return len(self.indices)

    def _cache_index(self, i: int) -> int:
        n = len(self)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"{self.path}: subset index {i} out of range for {n} scenarios")
        return self.indices[j]

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.cache[self._cache_index(i)]

    def padded_arrays(self, i: int) -> dict[str, np.ndarray]:
        return self.cache.padded_arrays(self._cache_index(i))

    @property
    def scenario_ids(self) -> list[str]:
        ids = self.cache.scenario_ids
        return [ids[i] for i in self.indices]

    def __repr__(self) -> str:
        return f"CacheSubset({self.path}, {len(self)} of {len(self.cache)} scenarios)"


def open_cache(
    path: str | os.PathLike,
    mode: str = "mmap",
    verify: str = "lazy",
    max_open_shards: int = 16,
) -> Cache:
    """Opens a finished cache and checks it.

    Always checked: the index parses, its content hash matches, every shard directory and
    file exists with the recorded size, and each shard's ``meta.json`` agrees with the
    index. Then, by ``verify``: ``"full"`` hashes every file now, ``"lazy"`` hashes a
    shard's files the first time it is read, ``"none"`` skips hashing.

    Args:
      path: the cache directory.
      mode: ``"mmap"`` or ``"stream"``.
      verify: ``"full"``, ``"lazy"`` or ``"none"``.
      max_open_shards: memory-mapped shards kept open at once (``"mmap"`` mode).

    Raises:
      CacheError: incomplete build, edited index, missing, truncated or corrupt shard.
    """
    if mode not in ("mmap", "stream"):
        raise ValueError(f"open_cache: mode must be 'mmap' or 'stream', got {mode!r}")
    if verify not in ("full", "lazy", "none"):
        raise ValueError(f"open_cache: verify must be 'full', 'lazy' or 'none', got {verify!r}")
    root = Path(path)
    if not root.is_dir():
        raise CacheError(f"{root}: no such cache directory")
    if not (root / INDEX_NAME).exists():
        if (root / BUILD_NAME).exists():
            raise CacheError(
                f"{root}: the build did not finish (no {INDEX_NAME}); run the same build "
                "again to resume it"
            )
        raise CacheError(f"{root}: not a scenario cache (no {INDEX_NAME})")
    index = _read_json(root / INDEX_NAME, "cache index")
    if index.get("format") != CACHE_FORMAT or index.get("version") != CACHE_VERSION:
        raise CacheError(
            f"{root / INDEX_NAME}: format {index.get('format')!r} version "
            f"{index.get('version')!r}, expected {CACHE_FORMAT!r} version {CACHE_VERSION}"
        )
    try:
        shards, scen, settings = index["shards"], index["scenarios"], index["settings"]
        expected_hash = index["content_hash"]
    except KeyError as e:
        raise CacheError(f"{root / INDEX_NAME}: missing entry {e}") from e
    if _content_hash(shards, scen, settings) != expected_hash:
        raise CacheError(f"{root / INDEX_NAME}: content hash mismatch; the index was altered")
    if sum(s["count"] for s in shards) != len(scen) or index["num_scenarios"] != len(scen):
        raise CacheError(f"{root / INDEX_NAME}: shard counts do not add up to the scenarios")
    offset = 0
    for s in shards:
        d = root / s["name"]
        if not d.is_dir():
            raise CacheError(f"{d}: shard directory is missing")
        meta = _read_json(d / SHARD_META, "shard meta")
        ids = [e["scenario_id"] for e in scen[offset : offset + s["count"]]]
        if meta.get("files") != s["files"] or [e["scenario_id"] for e in meta["scenarios"]] != ids:
            raise CacheError(f"{d / SHARD_META}: does not match {root / INDEX_NAME}")
        for fname, spec in s["files"].items():
            p = d / fname
            try:
                size = p.stat().st_size
            except FileNotFoundError as e:
                raise CacheError(f"{p}: shard file is missing") from e
            if size != spec["bytes"]:
                raise CacheError(f"{p}: {size} bytes, the index records {spec['bytes']}")
        offset += s["count"]
    cache = Cache(root, index, mode=mode, verify=verify, max_open_shards=max_open_shards)
    if verify == "full":
        cache.verify_all()
    return cache


def read_cache(path: str | os.PathLike, **opts: Any) -> Iterator[DecodedScenario]:
    """Reader for :mod:`diffdrive.data.sources`: the scenarios of a cache, in order.

    Options ``mode`` and ``verify`` go to :func:`open_cache`; others are ignored.
    """
    kw = {k: opts[k] for k in ("mode", "verify") if k in opts}
    yield from open_cache(path, **kw)
