"""Shared fixtures: the real data in ../shared, found relative to the project root."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"
GOLDEN = SHARED / "conformance" / "waymax_golden.json"


def _need(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        pytest.skip(f"{path} not found: the real data and conformance files live in ../shared")
    return path


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def golden() -> dict:
    with open(_need(GOLDEN)) as f:
        return json.load(f)


def golden_array(value, dtype=np.float32) -> np.ndarray:
    """Golden JSON lists to arrays; the strings 'nan'/'inf' become floats."""

    def conv(v):
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, str):
            return float(v)
        return v

    return np.asarray(conv(value), dtype=dtype)
