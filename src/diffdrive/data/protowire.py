"""A minimal protobuf wire-format reader and writer (no generated code, no TensorFlow).

Enough to read ``tf.train.Example`` and WOMD ``Scenario`` messages field by field and to
write ``tf.train.Example``. Errors are :class:`WireError` with the byte offset; callers add
the file, record and field.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


class WireError(ValueError):
    """Malformed protobuf bytes."""


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decodes a base-128 varint at ``pos``; returns ``(value, new_pos)``."""
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise WireError(f"truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes at byte {pos}")


def iter_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, object]]:
    """Yields ``(field_number, wire_type, value)`` for each field of a message.

    ``value`` is an int for varints, ``bytes``-like (memoryview) for length-delimited
    fields, and the raw 4/8 bytes for fixed32/fixed64.
    """
    buf = memoryview(buf)
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise WireError(f"field number 0 at byte {pos}")
        if wire == VARINT:
            value, pos = read_varint(buf, pos)
        elif wire == LENGTH_DELIMITED:
            size, pos = read_varint(buf, pos)
            if pos + size > end:
                raise WireError(
                    f"length-delimited field {field} overruns the message at byte {pos}"
                )
            value = buf[pos : pos + size]
            pos += size
        elif wire == FIXED32:
            if pos + 4 > end:
                raise WireError(f"truncated fixed32 field {field} at byte {pos}")
            value = buf[pos : pos + 4]
            pos += 4
        elif wire == FIXED64:
            if pos + 8 > end:
                raise WireError(f"truncated fixed64 field {field} at byte {pos}")
            value = buf[pos : pos + 8]
            pos += 8
        else:
            raise WireError(f"unsupported wire type {wire} for field {field} at byte {pos}")
        yield field, wire, value


def to_signed64(value: int) -> int:
    """Reinterprets an unsigned varint as int64 (protobuf ``int64``/``int32``)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def zigzag_decode(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def packed_varints(buf: bytes | memoryview) -> list[int]:
    """Decodes a packed repeated varint field into signed 64-bit ints."""
    out = []
    pos = 0
    end = len(buf)
    while pos < end:
        v, pos = read_varint(buf, pos)
        out.append(to_signed64(v))
    return out


def packed_floats(buf: bytes | memoryview) -> np.ndarray:
    if len(buf) % 4:
        raise WireError(f"packed float field of {len(buf)} bytes is not a multiple of 4")
    return np.frombuffer(bytes(buf), dtype="<f4")


def packed_doubles(buf: bytes | memoryview) -> np.ndarray:
    if len(buf) % 8:
        raise WireError(f"packed double field of {len(buf)} bytes is not a multiple of 8")
    return np.frombuffer(bytes(buf), dtype="<f8")


def fixed32_float(raw: bytes | memoryview) -> float:
    return struct.unpack("<f", bytes(raw))[0]


def fixed64_double(raw: bytes | memoryview) -> float:
    return struct.unpack("<d", bytes(raw))[0]


# ----------------------------------------------------------------------------- writing


def encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_key(field: int, wire: int) -> bytes:
    return encode_varint((field << 3) | wire)


def encode_bytes_field(field: int, payload: bytes) -> bytes:
    return encode_key(field, LENGTH_DELIMITED) + encode_varint(len(payload)) + payload


def encode_varint_field(field: int, value: int) -> bytes:
    return encode_key(field, VARINT) + encode_varint(value)


# ------------------------------------------------------------------ vectorised (numpy)


def packed_varints_array(buf: bytes | memoryview) -> np.ndarray:
    """Decodes a packed repeated varint field into an int64 array, vectorised.

    Same result as :func:`packed_varints` (values are truncated to 64 bits and read as
    two's complement, so ``-1`` written as a 10-byte varint comes back as ``-1``), but
    without a Python loop per value.

    Raises:
      WireError: the last varint is cut off, or one is longer than 10 bytes.
    """
    raw = np.frombuffer(buf, dtype=np.uint8)
    if raw.size == 0:
        return np.zeros(0, np.int64)
    if raw[-1] & 0x80:
        raise WireError(f"truncated varint at the end of a {raw.size}-byte packed field")
    is_last = raw < 0x80
    if is_last.all():  # every value fits in one byte: the common case for flags and types
        return raw.astype(np.int64)
    ends = np.flatnonzero(is_last)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > 10:
        bad = int(starts[np.argmax(lengths > 10)])
        raise WireError(f"varint longer than 10 bytes at byte {bad} of a packed field")
    position_in_value = np.arange(raw.size) - np.repeat(starts, lengths)
    shifts = (7 * position_in_value).astype(np.uint64)
    # Groups occupy disjoint bit ranges, so adding them equals OR-ing them; bits shifted
    # past bit 63 are dropped, as protobuf does.
    groups = (raw & 0x7F).astype(np.uint64) << shifts
    return np.add.reduceat(groups, starts).view(np.int64)


def encode_packed_varints_array(values: np.ndarray) -> bytes:
    """Encodes integers as concatenated varints (the payload of a packed field).

    Negative values are written as 10-byte two's-complement varints, as protobuf does for
    ``int64``.
    """
    unsigned = np.ascontiguousarray(values, dtype=np.int64).ravel().view(np.uint64)
    if unsigned.size == 0:
        return b""
    if (unsigned < 0x80).all():
        return unsigned.astype(np.uint8).tobytes()
    shifts = np.arange(10, dtype=np.uint64) * np.uint64(7)
    groups = ((unsigned[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)  # (n, 10)
    # A value needs one more byte for each 7-bit boundary it reaches: 1 to 10 bytes.
    num_bytes = 1 + sum(
        (unsigned >= np.uint64(1 << (7 * k))).astype(np.int64) for k in range(1, 10)
    )
    byte_index = np.arange(10)[None, :]
    groups[byte_index < (num_bytes[:, None] - 1)] |= 0x80  # continuation bits
    return groups[byte_index < num_bytes[:, None]].tobytes()
