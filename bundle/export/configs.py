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
"""The repository's YAML configs made into a zoo bundle's JSON configs (merged, overridden, self-contained)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Dict, Sequence

import yaml
from monai.bundle import ConfigParser
from monai.bundle.utils import ID_SEP_KEY, MACRO_KEY

from bundle.errors import BundleInputError
from bundle.workflows.planning import PLANNED, trained_network
from bundle.export.constants import ADD_BUNDLE_CODE, OVERLAY_CONFIGS, WORKFLOW_CONFIGS

logger = logging.getLogger(__name__)

# ---- configs ---------------------------------------------------------------------------------


def merged_configs(
    configs_dir: Path, extra_files: Sequence[Path], overrides: Dict[str, Any]
) -> Dict[str, Dict[str, Any]]:
    """The repository's workflow configs, each merged with ``extra_files`` (but the overlays) by MONAI's own
    ``ConfigParser.load_config_files``, as ``monai.bundle run --config_file "['train.yaml','networks/x.yaml']"``
    merges them, and ``overrides`` set by config id (``a#b`` too) where the id exists, as ``run`` sets them.

    Raises:
        BundleInputError: a config is missing or unreadable, or an override names an id no config has.
    """
    for path in extra_files:
        if not Path(path).is_file():
            raise BundleInputError(f"cannot read the config {path}: no such file")
    configs, used = {}, set()
    for name in WORKFLOW_CONFIGS:
        path = configs_dir / f"{name}.yaml"
        if not path.is_file():
            raise BundleInputError(f"no {path}: set --configs_dir to the folder with the bundle's YAML configs")
        files = [str(path)] + [str(f) for f in extra_files]
        try:  # an overlay is shipped as it is: its ids (e.g. train#sampler) name the config it goes over
            content = ConfigParser.load_config_file(path) if name in OVERLAY_CONFIGS else None
            parser = ConfigParser(content if content is not None else ConfigParser.load_config_files(files))
            # `%configs/train.yaml#id` macros written out: the zoo's configs stand alone
            parser.set(_rooted_macros(parser.get(), configs_dir.resolve().parent))
            parser.resolve_macro_and_relative_ids()
        except (OSError, KeyError, ValueError, yaml.YAMLError) as e:
            raise BundleInputError(f"cannot read the configs {files}: {e}") from e
        for key, value in overrides.items():
            if key in parser:
                parser[key] = copy.deepcopy(value)
                used.add(key)
        configs[name] = parser.get()
    unknown = sorted(set(overrides) - used)
    if unknown:
        raise BundleInputError(f"--{unknown[0]} is not a setting of the configs in {configs_dir} (a typo?)")
    return configs


def _rooted_macros(node: Any, root: Path) -> Any:
    """MONAI's ``%path#id`` macros with their relative paths taken from the bundle root ``root`` (MONAI reads them
    from the working directory, which for ``monai.bundle run`` is the bundle root)."""
    if isinstance(node, dict):
        return {k: _rooted_macros(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_rooted_macros(v, root) for v in node]
    if isinstance(node, str) and node.startswith(MACRO_KEY):
        path, ids = ConfigParser.split_path_id(node[len(MACRO_KEY) :])
        if path and not Path(path).is_absolute():
            return f"{MACRO_KEY}{root / path}{ID_SEP_KEY}{ids}"
    return node


def _add_requires(node: Any) -> Any:
    """Every component built from the bundle's own code first adds the bundle folder to ``sys.path``."""
    if isinstance(node, dict):
        node = {k: _add_requires(v) for k, v in node.items()}
        if str(node.get("_target_", "")).startswith("bundle."):
            required = node.get("_requires_")
            required = [] if required is None else required if isinstance(required, list) else [required]
            node["_requires_"] = ["@add_bundle_code", *[r for r in required if r != "@add_bundle_code"]]
        return node
    if isinstance(node, list):
        return [_add_requires(v) for v in node]
    return node


def zoo_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """A repository config made self-contained for a zoo bundle folder: ``bundle_root`` is ``.`` (override it
    with ``--bundle_root`` when running from elsewhere) and the bundle's code is imported from that folder."""
    config = copy.deepcopy(config)
    imports = list(config.get("imports", []))
    for statement in ("$import os", "$import sys"):
        if statement not in imports:
            imports.append(statement)
    out: Dict[str, Any] = {"imports": imports, "bundle_root": ".", "add_bundle_code": ADD_BUNDLE_CODE}
    for key, value in config.items():
        if key not in out:
            out[key] = _add_requires(value)
    return out


def _json_text(content: Any) -> str:
    return json.dumps(content, indent=4) + "\n"


def apply_plan(configs: Dict[str, Dict[str, Any]], plan: Dict[str, Any], overrides: Dict[str, Any]) -> None:
    """The run's planned settings (``runs/train/plan.json``) as plain values in every config that has them:
    a zoo bundle has no training run to read its scale from, and its train.json reproduces the run."""
    # the network as trained: from ImageNet weights, DSTransUNet has their linear patch embedding
    recorded = dict(plan)
    if "settings" in plan:
        recorded["pretrained"] = trained_network(plan)[1]
    for config in configs.values():
        for key in (*PLANNED, "keep_largest", "pretrained"):
            if key in config and key in recorded and key not in overrides:
                config[key] = copy.deepcopy(recorded[key])
