# Copyright (c) DS-TransUNet MONAI bundle developers
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""``python -m bundle.export``: the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

from bundle.errors import BundleInputError
from bundle.export.build import export_bundle
from bundle.export.constants import REPO_CONFIGS

logger = logging.getLogger(__name__)


def _parse_overrides(extra: List[str]) -> Dict[str, Any]:
    """``--id value`` pairs, each value parsed as ``python -m monai.bundle run`` parses it (Python Fire:
    ``--roi_size "[96, 96]"``, ``--learning_rate 1.0e-3``), so the export reads what training read."""
    from fire.parser import DefaultParseValue

    overrides, i = {}, 0
    while i < len(extra):
        key = extra[i]
        if not key.startswith("--") or len(key) < 3:
            raise BundleInputError(f"unexpected argument {key!r}: settings are given as --<id> <value>")
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(extra):
            value, i = extra[i + 1], i + 2
        else:
            raise BundleInputError(f"{key} needs a value")
        overrides[key[2:]] = DefaultParseValue(value)
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bundle.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True, help="bundle name, e.g. ds_transunet_polyp_segmentation")
    parser.add_argument("--bundle_root", type=Path, default=Path("."), help="the training run's folder (default: .)")
    parser.add_argument("--output", type=Path, default=Path("dist"), help="where the folder and zip go (default: dist)")
    parser.add_argument(
        "--config_file",
        type=Path,
        action="append",
        default=[],
        help="a network config the model was trained with (repeatable)",
    )
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument("--changelog", default=None, help="the changelog entry of this version")
    parser.add_argument("--dataset", default=None, help="the training data, for the model card (name and link)")
    parser.add_argument("--data_license", type=Path, default=None, help="a text file with the training data's terms")
    parser.add_argument("--files_url", default=None, help="where the large files will be hosted (large_files.yml urls)")
    parser.add_argument("--onnx", action="store_true", help="also write models/model.onnx, checked with ONNX Runtime")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export of this name and version")
    parser.add_argument(
        "--configs_dir", type=Path, default=REPO_CONFIGS, help="the bundle's YAML configs (default: the repository's)"
    )
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        folder, zip_path = export_bundle(
            args.name,
            args.bundle_root,
            args.output,
            args.config_file,
            _parse_overrides(extra),
            args.version,
            args.changelog,
            args.dataset,
            args.data_license,
            args.files_url,
            args.onnx,
            args.overwrite,
            args.configs_dir,
        )
    except BundleInputError as e:
        sys.stderr.write(f"ERROR: {e}\n")
        return 1
    print(f"exported {folder} and {zip_path}")
    print(
        f"check it: cd {folder} && python -m monai.bundle verify_net_in_out network_def "
        "--meta_file configs/metadata.json --config_file configs/inference.json"
    )
    return 0
