"""TFRecord files without TensorFlow: CRC-32C, record framing, sharded paths, writing.

A TFRecord file is a sequence of records, each framed as (little-endian)::

    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

Both checksums are verified on reading. A record whose *data* checksum fails can be
skipped (the length was intact, so the next record is found); a bad or cut-off *length*
leaves no way to find the next record, so the rest of that file is abandoned.

CRC-32C comes from the ``google_crc32c`` (or ``crc32c``) C extension when one is
importable, and otherwise from a table-driven numpy implementation in this module that
gives the same values (tested).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import logging
import math
import os
import re
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO, Literal

import numpy as np

from diffdrive.data.types import ScenarioDecodeError

logger = logging.getLogger(__name__)

PathSpec = str | os.PathLike | Sequence[str | os.PathLike]
OnError = Literal["raise", "skip"]

_LENGTH_BYTES = 8
_CRC_BYTES = 4
_MASK_DELTA = 0xA282EAD8

# ----------------------------------------------------------------------------- CRC-32C

_CRC32C_POLY_REFLECTED = 0x82F63B78


def _make_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ _CRC32C_POLY_REFLECTED, table >> 1)
    return table.astype(np.uint32)


_TABLE = _make_table()
_TABLE_LIST = [int(v) for v in _TABLE]
_BIT_SHIFTS = np.arange(32, dtype=np.uint32)
# Below this size the plain byte loop is faster than setting up the parallel blocks.
_PARALLEL_MIN_BYTES = 4096
_PARALLEL_BLOCKS = 1024


def _crc32c_register_loop(register: int, data: bytes | memoryview) -> int:
    """Runs the reflected CRC-32C register over ``data`` (no pre/post inversion)."""
    table = _TABLE_LIST
    for byte in bytes(data):
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


def _gf2_apply(columns: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Applies a linear map on 32-bit registers, given by its 32 column images, to ``states``."""
    bits = (states[:, None] >> _BIT_SHIFTS[None, :]) & np.uint32(1)  # (n, 32)
    return np.bitwise_xor.reduce(bits * columns[None, :], axis=1).astype(np.uint32)


def _crc32c_register_numpy(register: int, data: bytes | memoryview) -> int:
    """Same as :func:`_crc32c_register_loop`, with the bytes split over parallel blocks.

    The register update is linear over GF(2): running it over ``A || B`` from state ``s``
    gives ``Z_|B|(run(s, A)) xor run(0, B)``, where ``Z_L`` is the (linear) effect of ``L``
    zero bytes. So ``K`` equal blocks are run side by side from state 0 (one numpy
    gather per byte position), ``Z_L`` is obtained by running the 32 basis states over
    ``L`` zero bytes in the same loop, and the blocks are then folded pairwise.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    num_blocks = _PARALLEL_BLOCKS
    block_len = raw.size // num_blocks
    body = raw[: num_blocks * block_len].reshape(num_blocks, block_len)
    # Rows 0..K-1: the data blocks from state 0; rows K..K+31: basis states over zeros.
    columns_of_bytes = np.concatenate([body, np.zeros((32, block_len), np.uint8)]).T.copy()
    states = np.concatenate(
        [np.zeros(num_blocks, np.uint32), (np.uint32(1) << _BIT_SHIFTS).astype(np.uint32)]
    )
    for column in columns_of_bytes:
        states = _TABLE[(states ^ column) & 0xFF] ^ (states >> np.uint32(8))
    block_crcs, zeros_map = states[:num_blocks], states[num_blocks:]
    while block_crcs.size > 1:  # fold neighbours: run(0, A||B) = Z_|B|(run(0, A)) ^ run(0, B)
        block_crcs = _gf2_apply(zeros_map, block_crcs[0::2]) ^ block_crcs[1::2]
        zeros_map = _gf2_apply(zeros_map, zeros_map)  # Z_2L = Z_L o Z_L
    combined = int(_gf2_apply(zeros_map, np.array([register], np.uint32))[0] ^ block_crcs[0])
    return _crc32c_register_loop(combined, raw[num_blocks * block_len :].tobytes())


def crc32c_fallback(data: bytes | memoryview, value: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data`` in numpy/Python, continuing from ``value``.

    Args:
      data: the bytes.
      value: the CRC of the preceding bytes (0 to start).

    Returns:
      The unsigned 32-bit CRC, e.g. ``crc32c_fallback(b"123456789") == 0xE3069283``.
    """
    register = (~value) & 0xFFFFFFFF
    if len(data) >= _PARALLEL_MIN_BYTES:
        register = _crc32c_register_numpy(register, data)
    else:
        register = _crc32c_register_loop(register, data)
    return (~register) & 0xFFFFFFFF


def _native_crc32c():
    try:
        import google_crc32c

        if google_crc32c.implementation == "c":
            return lambda data, value=0: google_crc32c.extend(value, bytes(data))
    except ImportError:
        pass
    try:
        import crc32c as crc32c_module

        return lambda data, value=0: crc32c_module.crc32c(bytes(data), value)
    except ImportError:
        return None


_NATIVE_CRC32C = _native_crc32c()
CRC32C_BACKEND = "native" if _NATIVE_CRC32C is not None else "numpy"
"""Which CRC-32C implementation :func:`crc32c` uses: ``native`` (C extension) or ``numpy``."""


def crc32c(data: bytes | memoryview, value: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``value``; a C extension if present.

    Returns:
      The unsigned 32-bit CRC.
    """
    if _NATIVE_CRC32C is not None:
        return _NATIVE_CRC32C(data, value)
    return crc32c_fallback(data, value)


def mask_crc(crc: int) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits and add a constant (mod 2**32)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data: bytes | memoryview) -> int:
    """The checksum stored in TFRecord framing for ``data``."""
    return mask_crc(crc32c(data))


# ----------------------------------------------------------------------------- paths

_SHARD_SPEC = re.compile(r"^(?P<base>.+)@(?P<count>\d+)$")
_GLOB_CHARS = re.compile(r"[*?\[]")


def sharded_filenames(base: str, num_shards: int) -> list[str]:
    """Waymax's ``name@N`` expansion: ``name-00000-of-0000N`` ... (index width at least 5)."""
    if num_shards <= 0:
        raise ValueError(f"sharded path {base}@{num_shards}: the shard count must be positive")
    width = max(5, int(math.log10(num_shards) + 1))
    return [f"{base}-{i:0{width}d}-of-{num_shards:05d}" for i in range(num_shards)]


def expand_paths(spec: PathSpec) -> list[str]:
    """Turns a file, a sharded spec or a glob (or a list of them) into sorted file paths.

    Accepted forms:

    * an existing file: itself;
    * ``name@N``: the ``N`` shards ``name-XXXXX-of-0000N`` (all must exist);
    * a glob such as ``dir/*.tfrecord`` or ``train.tfrecord-*-of-01000``: the matches,
      sorted by name (at least one must exist);
    * a list or tuple of the above: their expansions, concatenated in the given order.

    Raises:
      FileNotFoundError: a file, shard or glob that matches nothing; the message names it.
    """
    if isinstance(spec, (list, tuple)):
        return [path for item in spec for path in expand_paths(item)]
    text = os.fspath(spec)
    if os.path.isfile(text):
        return [text]
    match = _SHARD_SPEC.match(text) if "@" in os.path.basename(text) else None
    if match:
        files = sharded_filenames(match["base"], int(match["count"]))
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(
                f"sharded path {text!r}: {len(missing)} of {len(files)} shards are missing, "
                f"first {missing[0]!r}"
            )
        return files
    if _GLOB_CHARS.search(text):
        files = sorted(p for p in glob.glob(text) if os.path.isfile(p))
        if not files:
            raise FileNotFoundError(f"pattern {text!r} matches no file")
        return files
    raise FileNotFoundError(f"no such TFRecord file: {text!r}")


# ----------------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class Record:
    """One TFRecord record: its payload and where it came from."""

    file: str
    index: int
    data: bytes


@dataclasses.dataclass
class SkipStats:
    """What ``on_error='skip'`` left out; pass one in to find out after iterating.

    Attributes:
      skipped: number of records (or unreadable file tails) left out.
      abandoned_files: files whose remaining records could not be read because a
        length header was corrupt or cut off (no way to find the next record).
      errors: the error for each skipped record, in order.
    """

    skipped: int = 0
    abandoned_files: list[str] = dataclasses.field(default_factory=list)
    errors: list[ScenarioDecodeError] = dataclasses.field(default_factory=list)

    def add(self, error: ScenarioDecodeError, abandons_file: bool = False) -> None:
        self.skipped += 1
        self.errors.append(error)
        if abandons_file:
            self.abandoned_files.append(error.file)
        logger.warning(
            "skipped: %s%s", error, " (rest of the file abandoned)" if abandons_file else ""
        )

    def summary(self) -> str:
        """One line, e.g. ``2 records skipped, 1 file abandoned``."""
        return (
            f"{self.skipped} record{'s' if self.skipped != 1 else ''} skipped, "
            f"{len(self.abandoned_files)} file{'s' if len(self.abandoned_files) != 1 else ''} "
            "abandoned"
        )


class _Unrecoverable(Exception):
    """Internal: the framing is broken and the stream cannot be resynchronised."""

    def __init__(self, error: ScenarioDecodeError):
        self.error = error


def _open(path: str, compression: str | None) -> BinaryIO:
    if compression is None:
        return open(path, "rb")
    if compression == "gzip":
        return gzip.open(path, "rb")
    raise ValueError(f"unsupported TFRecord compression {compression!r} (None or 'gzip')")


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_one(stream: BinaryIO, path: str, index: int) -> bytes | None:
    """Reads record ``index``; ``None`` at a clean end of file.

    Raises:
      ScenarioDecodeError: a data checksum mismatch (the next record can still be read).
      _Unrecoverable: a broken or cut-off frame (nothing after it can be found).
    """

    def broken(field: str, reason: str) -> _Unrecoverable:
        return _Unrecoverable(ScenarioDecodeError(path, index, field, reason))

    header = _read_exact(stream, _LENGTH_BYTES + _CRC_BYTES)
    if not header:
        return None
    if len(header) < _LENGTH_BYTES:
        raise broken(
            "length", f"truncated record: {len(header)} of the 8 length bytes before end of file"
        )
    if len(header) < _LENGTH_BYTES + _CRC_BYTES:
        raise broken("length", "truncated record: the length checksum is cut off by end of file")
    length_bytes = header[:_LENGTH_BYTES]
    (stored_length_crc,) = struct.unpack("<I", header[_LENGTH_BYTES:])
    computed = masked_crc32c(length_bytes)
    if computed != stored_length_crc:
        raise broken(
            "length",
            f"length checksum mismatch (stored 0x{stored_length_crc:08x}, computed "
            f"0x{computed:08x}); the following records of this file cannot be located",
        )
    (length,) = struct.unpack("<Q", length_bytes)
    data = _read_exact(stream, length)
    if len(data) < length:
        raise broken(
            "data", f"truncated record: {len(data)} of {length} data bytes before end of file"
        )
    footer = _read_exact(stream, _CRC_BYTES)
    if len(footer) < _CRC_BYTES:
        raise broken("data crc", "truncated record: the data checksum is cut off by end of file")
    (stored_data_crc,) = struct.unpack("<I", footer)
    computed = masked_crc32c(data)
    if computed != stored_data_crc:
        raise ScenarioDecodeError(
            path,
            index,
            "data crc",
            f"data checksum mismatch (stored 0x{stored_data_crc:08x}, computed "
            f"0x{computed:08x}) over {length} bytes",
        )
    return data


def iter_records(
    spec: PathSpec,
    *,
    on_error: OnError = "raise",
    stats: SkipStats | None = None,
    compression: str | None = None,
) -> Iterator[Record]:
    """Streams the records of one file or of a sharded/glob spec, in sorted file order.

    Args:
      spec: a path, ``name@N``, a glob, or a list of those (see :func:`expand_paths`).
      on_error: ``"raise"`` (default) raises :class:`ScenarioDecodeError` at the first
        corrupt record. ``"skip"`` leaves corrupt records out, counts them in ``stats``
        and logs a warning; after a corrupt or truncated length header the rest of that
        file cannot be located, so the file is abandoned (and counted) and reading goes
        on with the next file.
      stats: where skipped records are counted (created internally if ``None``).
      compression: ``None`` for plain files (WOMD) or ``"gzip"`` for whole-file gzip.

    Yields:
      :class:`Record` (file, index within the file, payload bytes). Indices count every
      frame, corrupt ones included, so they match the position in the file.

    Raises:
      ScenarioDecodeError: with ``on_error="raise"``: the message names the file, the
        record index and the field (``length``, ``data`` or ``data crc``).
      FileNotFoundError: the spec matches no file.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    stats = stats if stats is not None else SkipStats()
    for path in expand_paths(spec):
        with _open(path, compression) as stream:
            index = 0
            while True:
                try:
                    data = _read_one(stream, path, index)
                except _Unrecoverable as broken:
                    if on_error == "raise":
                        raise broken.error from None
                    stats.add(broken.error, abandons_file=True)
                    break
                except ScenarioDecodeError as error:
                    if on_error == "raise":
                        raise
                    stats.add(error)
                    index += 1
                    continue
                if data is None:
                    break
                yield Record(path, index, data)
                index += 1


# ----------------------------------------------------------------------------- writing


def frame_record(data: bytes) -> bytes:
    """One record in TFRecord framing (length, its masked CRC, data, its masked CRC)."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_frames(out: BinaryIO, records: Iterable[bytes]) -> int:
    count = 0
    for data in records:
        out.write(frame_record(bytes(data)))
        count += 1
    return count


def write_tfrecord(
    path: str | os.PathLike, records: Iterable[bytes], *, compression: str | None = None
) -> int:
    """Writes ``records`` to a TFRecord file with correct checksums, atomically.

    The records go to a temporary file beside ``path`` that is renamed over ``path`` only
    once all of them are written, so readers never see a half-written file and a failure
    (e.g. ``records`` raising) leaves any existing ``path`` untouched.

    Args:
      path: output file (replaced).
      records: payloads, e.g. serialised ``tf.train.Example`` messages.
      compression: ``None`` or ``"gzip"``.

    Returns:
      The number of records written.
    """
    if compression not in (None, "gzip"):
        raise ValueError(f"unsupported TFRecord compression {compression!r} (None or 'gzip')")
    target = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(target))
    descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as raw:
            if compression == "gzip":
                # GzipFile writes its trailer on close and leaves ``raw`` open.
                with gzip.GzipFile(filename=name, mode="wb", fileobj=raw) as out:
                    count = _write_frames(out, records)
            else:
                count = _write_frames(raw, records)
            raw.flush()
            os.fsync(raw.fileno())
        # mkstemp creates the file private (0600); give it the usual permissions.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return count
