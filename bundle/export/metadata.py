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
"""``configs/metadata.json``: MONAI's schema, the network's inputs and outputs, installable package pins."""

from __future__ import annotations

import copy
import logging
from importlib import metadata as package_metadata
from typing import Any, Dict

import torch

from bundle.errors import BundleInputError
from bundle.workflows.planning import INTENSITIES
from bundle.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from bundle.export.constants import REQUIRED_PACKAGES
from bundle.export.run_record import _eval_metrics

logger = logging.getLogger(__name__)


def package_versions() -> Dict[str, str]:
    """Installed versions (without local suffixes such as ``+cpu``, which PyPI does not serve)."""
    versions = {}
    for name in REQUIRED_PACKAGES:
        try:
            versions[name] = package_metadata.version(name).split("+")[0]
        except package_metadata.PackageNotFoundError as e:
            raise BundleInputError(f"{name} is not installed here; the bundle needs it (pip install {name})") from e
    return versions


def _network_summary(configs: Dict[str, Dict[str, Any]], network: torch.nn.Module) -> Dict[str, Any]:
    train = configs["train"]
    net_config = train["network_def"]
    preset = train.get("preset") if net_config.get("preset") == "@preset" else net_config.get("preset")
    image_size, roi = train.get("image_size"), train.get("roi_size")
    return {
        "class": network.__class__.__name__,
        "target": net_config["_target_"],
        "preset": preset,
        "params_m": sum(p.numel() for p in network.parameters()) / 1e6,
        "in_channels": int(train["in_channels"]),
        "out_channels": int(train["out_channels"]),
        "image_size": list(image_size) if isinstance(image_size, list) else None,
        "roi_size": list(roi) if isinstance(roi, list) else [64, 64],
        # what the network sees at once: the whole-image size, or the sliding window
        "inference_size": (
            list(image_size) if isinstance(image_size, list) else list(roi) if isinstance(roi, list) else [64, 64]
        ),
        # the side length inputs must be a multiple of, asked of the network (DSTransUNet.size_multiple); for
        # networks that do not say, 64: a multiple of what MONAI's UNet (16) and SwinUNETR (32) need
        "size_multiple": int(getattr(network, "size_multiple", 64)),
        "deep_supervision": bool(net_config.get("deep_supervision", False)),
        "intensity": train.get("intensity") if train.get("intensity") in INTENSITIES else "minmax",
        "settings": {
            k: train.get(k)
            for k in ("max_epochs", "batch_size", "crops_per_image", "learning_rate", "val_interval", "max_grad_norm")
        },
    }


def build_metadata(
    name: str,
    base: Dict[str, Any],
    net: Dict[str, Any],
    run: Dict[str, Any],
    version: str,
    changelog: str,
    dataset: str,
) -> Dict[str, Any]:
    meta = copy.deepcopy(base)
    meta["version"] = version
    meta["changelog"] = {version: changelog, **{k: v for k, v in base.get("changelog", {}).items() if k != version}}
    meta["monai_version"] = package_metadata.version("monai").split("+")[0]
    meta["pytorch_version"] = torch.__version__.split("+")[0]
    meta["numpy_version"] = package_metadata.version("numpy").split("+")[0]
    meta["required_packages_version"] = package_versions()
    meta["name"] = name.replace("_", " ")
    preset = f", preset {net['preset']}" if net["preset"] else ""
    meta["description"] = (
        f"A trained {net['class']}{preset} ({net['params_m']:.1f} M parameters) for 2D segmentation, from the "
        f"DS-TransUNet MONAI bundle (DS-TransUNet: Lin et al., IEEE TIM 2022). Trained on {dataset}. models/model.ts "
        f"is traced (torch.jit.trace), not scripted: it takes inputs whose height and width are multiples of "
        f"{net['size_multiple']}; models/model.onnx, when shipped, takes any size."
    )
    meta["data_source"] = dataset
    if run.get("demo_data"):
        meta["intended_use"] = (
            "A demonstration only: trained on synthetic drawings, not medical images. Not a medical device."
        )
    else:
        meta["intended_use"] = "Research and education. Not a medical device."
    meta["eval_metrics"] = _eval_metrics(run)
    data_format = meta["network_data_format"]
    data_format["inputs"]["image"]["num_channels"] = net["in_channels"]
    if net["in_channels"] != 3:
        data_format["inputs"]["image"]["channel_def"] = {str(c): f"channel {c}" for c in range(net["in_channels"])}
    image_format = data_format["inputs"]["image"]
    if net["intensity"] == "imagenet":
        image_format["value_range"] = [
            round((0 - max(IMAGENET_MEAN)) / min(IMAGENET_STD), 3),
            round((1 - min(IMAGENET_MEAN)) / min(IMAGENET_STD), 3),
        ]
        image_format["intensity"] = (
            f"imagenet: pixels scaled to 0..1 by their type's range, then per channel (x - mean) / std with ImageNet "
            f"mean {list(IMAGENET_MEAN)} and std {list(IMAGENET_STD)} (bundle.data.transforms.NormalizeImaged)"
        )
    else:
        image_format["value_range"] = [0, 1]
        image_format["intensity"] = (
            "minmax: each image scaled to 0..1 by its own minimum and maximum (bundle.data.transforms.NormalizeImaged)"
        )
    for tensor in (data_format["inputs"]["image"], data_format["outputs"]["pred"]):
        tensor["spatial_shape"] = [f"{net['size_multiple']}*n"] * 2
    data_format["outputs"]["pred"]["num_channels"] = net["out_channels"]
    data_format["outputs"]["pred"]["channel_def"] = (
        {"0": "foreground logit (sigmoid > 0.5: foreground)"}
        if net["out_channels"] == 1
        else {str(c): f"logit of class {c} (argmax: class)" for c in range(net["out_channels"])}
    )
    return meta
