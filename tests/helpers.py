"""What the bundle tests share: the bundle's command lines run as a user types them, small demo
settings, and MONAI's metadata schema from ../shared."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# evaluation is an overlay on training's config, as in model-zoo bundles
EVALUATE = "['configs/train.yaml','configs/evaluate.yaml']"
# next to the shared data (conftest.py reads DS_TRANSUNET_DATA the same way)
SHARED = Path(os.environ.get("DS_TRANSUNET_DATA", REPO.parent / "shared" / "data")).parent
SCHEMA = SHARED / "monai" / "meta_schema_20240725.json"


def load_script(name: str, module_name: str | None = None):
    """``scripts/<name>.py`` as a module (scripts/ is not a package), registered in ``sys.modules``."""
    spec = importlib.util.spec_from_file_location(module_name or name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module

# tiny and quick: 12 demo pairs (10 train, 1 validation, 1 test), 64-pixel crops
SMALL = [
    "--demo_count",
    "12",
    "--roi_size",
    "[64, 64]",
    "--batch_size",
    "4",
    "--crops_per_image",
    "2",
    "--val_interval",
    "1",
]


def cli_env() -> dict:
    return dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))


def run_command(args, cwd: Path = REPO, timeout: int = 400) -> subprocess.CompletedProcess:
    """Run ``args`` in ``cwd``; fails the test, with the output's end, unless it exits 0."""
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def run_bundle(args, timeout: int = 400) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run ...`` from the repository root, as the README says."""
    return run_command([sys.executable, "-m", "monai.bundle", "run", *args], REPO, timeout)


def local_metadata_schema(folder: Path) -> Path:
    """A copy of MONAI's metadata schema in ``folder`` (``verify_metadata --filepath`` then reads it instead of
    downloading it); skips the test where ../shared is absent."""
    if not SCHEMA.is_file():
        pytest.skip(f"MONAI's metadata schema is not here: {SCHEMA} (it ships in ../shared/monai)")
    return Path(shutil.copy(SCHEMA, folder / "schema.json"))
