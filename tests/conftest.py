"""Shared fixtures: the naive TIF reference (kept in scripts/benchmark.py), real data, the authors' code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import load_script

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DS_TRANSUNET_DATA", REPO.parent / "shared" / "data"))
REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def benchmark_module():
    return load_script("benchmark", "ds_benchmark")


@pytest.fixture(scope="session")
def authors_key_shapes():
    """(key, shape) of every tensor of the authors' model, from shared/reference (or skip)."""
    tsv = REFERENCE / "official_ds_transunet_state_dict.tsv"
    if not tsv.is_file():
        pytest.skip(f"the authors' key list is not here: {tsv} (it ships in ../shared/reference)")
    rows = []
    for line in tsv.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            rows.append((key, tuple(int(s) for s in shape.split("x"))))
    return rows


def _shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "images").is_dir():
        pytest.skip(f"{name} not found at {path} (real data lives in ../shared/data, absent on users' machines)")
    return path


@pytest.fixture(scope="session")
def kvasir_dir():
    return _shared_dataset("kvasir-seg")


@pytest.fixture(scope="session")
def drive_dir():
    return _shared_dataset("drive")
