"""TFRecord framing, CRC-32C, sharded paths and corrupt-input handling."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from diffdrive.data import tfrecord
from diffdrive.data.types import ScenarioDecodeError

RECORDS = [b"first record", b"", b"third \x00\xff record" * 50]


def _write(path, records=RECORDS):
    tfrecord.write_tfrecord(path, records)
    return path


def _record_offsets(records=RECORDS) -> list[int]:
    """Byte offset of each record's frame (8 length + 4 crc + data + 4 crc)."""
    offsets, pos = [], 0
    for data in records:
        offsets.append(pos)
        pos += 16 + len(data)
    return offsets


def _flip_byte(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


# ----------------------------------------------------------------------------- CRC


@pytest.mark.parametrize("crc", [tfrecord.crc32c, tfrecord.crc32c_fallback])
def test_crc32c_known_vectors(crc):
    assert crc(b"") == 0
    assert crc(b"123456789") == 0xE3069283
    # RFC 3720 (iSCSI) appendix B.4 vectors.
    assert crc(bytes(32)) == 0x8A9136AA
    assert crc(b"\xff" * 32) == 0x62A8AB43
    assert crc(bytes(range(32))) == 0x46DD794E
    assert crc(bytes(range(31, -1, -1))) == 0x113FDB5C
    # Continuing from a previous value equals one pass over the concatenation.
    assert crc(b"56789", crc(b"1234")) == 0xE3069283


def test_fallback_block_parallel_path_matches_byte_loop():
    data = np.random.default_rng(0).integers(0, 256, 10_007, dtype=np.uint8).tobytes()
    assert len(data) >= tfrecord._PARALLEL_MIN_BYTES  # exercises the numpy path
    expected = (~tfrecord._crc32c_register_loop(0xFFFFFFFF, data)) & 0xFFFFFFFF
    assert tfrecord.crc32c_fallback(data) == expected
    head = tfrecord.crc32c_fallback(data[:5000])
    assert tfrecord.crc32c_fallback(data[5000:], head) == expected


@pytest.mark.skipif(tfrecord.CRC32C_BACKEND != "native", reason="no CRC-32C C extension")
def test_fallback_agrees_with_native_extension():
    rng = np.random.default_rng(1)
    for size in (1, 3, 4095, 4096, 4097, 65_536 + 13, 300_001):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert tfrecord.crc32c_fallback(data) == tfrecord.crc32c(data), size


def test_mask_crc_by_hand():
    # rotate right by 15: 0x00000001 -> 0x00020000; plus 0xA282EAD8.
    assert tfrecord.mask_crc(1) == 0x00020000 + 0xA282EAD8
    assert tfrecord.mask_crc(0) == 0xA282EAD8
    # 0x00008000 rotated right by 15 is 1.
    assert tfrecord.mask_crc(0x8000) == 1 + 0xA282EAD8
    # All ones stay all ones; the sum wraps modulo 2**32.
    assert tfrecord.mask_crc(0xFFFFFFFF) == 0xA282EAD8 - 1


def test_real_file_header_checksums(shared_data):
    raw = (shared_data / "womd/tf_example/motion_data_one_example.tfrecord").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert length == 1_182_904 and len(raw) == length + 16
    assert struct.unpack("<I", raw[8:12])[0] == tfrecord.masked_crc32c(raw[:8])
    assert struct.unpack("<I", raw[-4:])[0] == tfrecord.masked_crc32c(raw[12:-4])


# ----------------------------------------------------------------------------- framing


def test_write_then_read_round_trip(tmp_path):
    path = _write(tmp_path / "a.tfrecord")
    assert path.stat().st_size == sum(16 + len(r) for r in RECORDS)
    records = list(tfrecord.iter_records(path))
    assert [r.data for r in records] == RECORDS
    assert [r.index for r in records] == [0, 1, 2]
    assert {r.file for r in records} == {str(path)}


def test_gzip_round_trip(tmp_path):
    path = tmp_path / "a.tfrecord.gz"
    assert tfrecord.write_tfrecord(path, RECORDS, compression="gzip") == 3
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert [r.data for r in tfrecord.iter_records(path, compression="gzip")] == RECORDS


def test_frame_layout_by_hand():
    framed = tfrecord.frame_record(b"abc")
    assert framed[:8] == (3).to_bytes(8, "little")
    assert framed[12:15] == b"abc"
    assert int.from_bytes(framed[15:], "little") == tfrecord.masked_crc32c(b"abc")


# ----------------------------------------------------------------------------- paths


def test_sharded_filenames_follow_waymax():
    assert tfrecord.sharded_filenames("d/train", 3) == [
        "d/train-00000-of-00003",
        "d/train-00001-of-00003",
        "d/train-00002-of-00003",
    ]
    # The index is at least 5 wide, wider when the count needs it.
    assert tfrecord.sharded_filenames("x", 123456)[7] == "x-000007-of-123456"


def test_expand_sharded_glob_and_lists(tmp_path):
    for i in (2, 0, 1):  # created out of order
        _write(tmp_path / f"shard-{i:05d}-of-00003", [f"shard {i}".encode()])
    names = [f"shard-{i:05d}-of-00003" for i in range(3)]
    by_spec = tfrecord.expand_paths(str(tmp_path / "shard@3"))
    assert [p.split("/")[-1] for p in by_spec] == names
    by_glob = tfrecord.expand_paths(str(tmp_path / "shard-*-of-00003"))
    assert by_glob == by_spec
    assert tfrecord.expand_paths([by_spec[2], by_spec[0]]) == [by_spec[2], by_spec[0]]
    data = [r.data for r in tfrecord.iter_records(str(tmp_path / "shard@3"))]
    assert data == [b"shard 0", b"shard 1", b"shard 2"]


def test_expand_paths_errors_name_what_is_missing(tmp_path):
    _write(tmp_path / "s-00000-of-00002", [b"x"])
    with pytest.raises(FileNotFoundError, match=r"1 of 2 shards .*s-00001-of-00002"):
        tfrecord.expand_paths(str(tmp_path / "s@2"))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        tfrecord.expand_paths(str(tmp_path / "nothing-*"))
    with pytest.raises(FileNotFoundError, match="no such TFRecord file"):
        tfrecord.expand_paths(str(tmp_path / "absent.tfrecord"))


# ----------------------------------------------------------------------------- corruption


def _error(path, **kwargs) -> ScenarioDecodeError:
    with pytest.raises(ScenarioDecodeError) as info:
        list(tfrecord.iter_records(path, **kwargs))
    error = info.value
    assert str(path) in str(error) and f"record {error.record}" in str(error)
    return error


def test_flipped_length_byte(tmp_path):
    path = _write(tmp_path / "a.tfrecord")
    _flip_byte(path, _record_offsets()[1] + 0)
    error = _error(path)
    assert (error.record, error.field) == (1, "length")
    assert "length checksum mismatch" in error.reason


def test_flipped_length_crc_byte(tmp_path):
    path = _write(tmp_path / "a.tfrecord")
    _flip_byte(path, _record_offsets()[2] + 9)
    error = _error(path)
    assert (error.record, error.field) == (2, "length")


def test_flipped_data_byte(tmp_path):
    path = _write(tmp_path / "a.tfrecord")
    _flip_byte(path, _record_offsets()[2] + 12 + 100)
    error = _error(path)
    assert (error.record, error.field) == (2, "data crc")
    assert "data checksum mismatch" in error.reason


def test_flipped_data_crc_byte(tmp_path):
    path = _write(tmp_path / "a.tfrecord")
    _flip_byte(path, _record_offsets()[1] + 12 + len(RECORDS[1]))  # empty record's data crc
    error = _error(path)
    assert (error.record, error.field) == (1, "data crc")


@pytest.mark.parametrize(
    ("cut_at", "record", "field", "text"),
    [
        (lambda end, start: start + 3, 2, "length", "3 of the 8 length bytes"),
        (lambda end, start: start + 10, 2, "length", "length checksum is cut off by end of file"),
        (lambda end, start: start + 12 + 40, 2, "data", f"40 of {len(RECORDS[2])} data bytes"),
        (lambda end, start: end - 2, 2, "data crc", "data checksum is cut off by end of file"),
    ],
)
def test_truncated_file(tmp_path, cut_at, record, field, text):
    path = _write(tmp_path / "a.tfrecord")
    raw = path.read_bytes()
    path.write_bytes(raw[: cut_at(len(raw), _record_offsets()[2])])
    error = _error(path)
    assert (error.record, error.field) == (record, field)
    assert text in error.reason


def test_skip_mode_skips_bad_data_and_continues(tmp_path):
    path = _write(tmp_path / "a.tfrecord")
    _flip_byte(path, _record_offsets()[0] + 12)
    stats = tfrecord.SkipStats()
    records = list(tfrecord.iter_records(path, on_error="skip", stats=stats))
    assert [(r.index, r.data) for r in records] == [(1, RECORDS[1]), (2, RECORDS[2])]
    assert stats.skipped == 1 and stats.abandoned_files == []
    assert stats.errors[0].field == "data crc"
    assert stats.summary() == "1 record skipped, 0 files abandoned"


def test_skip_mode_abandons_file_after_bad_length(tmp_path):
    first = _write(tmp_path / "s-00000-of-00002")
    _write(tmp_path / "s-00001-of-00002", [b"next file"])
    _flip_byte(first, _record_offsets()[1] + 2)
    stats = tfrecord.SkipStats()
    records = list(tfrecord.iter_records(str(tmp_path / "s@2"), on_error="skip", stats=stats))
    # Record 0 of the first file, nothing after its broken length, then the second file.
    assert [r.data for r in records] == [RECORDS[0], b"next file"]
    assert stats.skipped == 1 and stats.abandoned_files == [str(first)]
    assert stats.errors[0].record == 1
    assert stats.summary() == "1 record skipped, 1 file abandoned"


def test_on_error_must_be_known(tmp_path):
    path = _write(tmp_path / "a.tfrecord")
    with pytest.raises(ValueError, match="on_error"):
        list(tfrecord.iter_records(path, on_error="ignore"))


def test_write_is_atomic_and_keeps_the_old_file_on_failure(tmp_path):
    path = _write(tmp_path / "a.tfrecord")
    before = path.read_bytes()

    def failing_records():
        yield b"new record"
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        tfrecord.write_tfrecord(path, failing_records())
    assert path.read_bytes() == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tfrecord"]  # no temp file left
    # A successful write replaces the file and leaves no temporary behind either.
    assert tfrecord.write_tfrecord(path, [b"only"]) == 1
    assert [r.data for r in tfrecord.iter_records(path)] == [b"only"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tfrecord"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
