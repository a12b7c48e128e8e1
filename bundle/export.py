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

"""Export a trained run as a MONAI model-zoo bundle: a self-contained folder and a zip of it.

    python -m bundle.export --name ds_transunet_polyp_segmentation
    python -m bundle.export --name unet_tif_polyp_segmentation --config_file configs/networks/unet_tif.yaml
    python -m bundle.export --name my_model --bundle_root RUN_DIR --preset small --out_channels 3 --onnx

Give it the folder training wrote to (``--bundle_root``: ``models/model.pt``, ``models/checkpoint.pt``,
``runs/train/datalist.json`` and, if you ran ``configs/evaluate.yaml``, ``eval/``) and the same network
config and settings the model was trained with: ``--config_file`` (merged over train, evaluate and
inference configs, as in training) and any ``--<id> <value>`` override (``--preset small``,
``--roi_size "[96, 96]"``, ``--max_epochs 100`` ...). It writes ``OUTPUT/NAME/`` and
``OUTPUT/NAME_vVERSION.zip`` (the folder at its top level, as zoo zips are):

- ``configs/``: ``metadata.json`` (MONAI's 20240725 schema; the package versions of this machine),
  ``inference.json``, ``train.json``, ``evaluate.json``, ``multi_gpu_train.json`` (4-space JSON, as the
  zoo formats them), ``logging.conf``;
- ``models/model.pt`` (weights only) and ``models/model.ts`` (MONAI's ``ckpt_export``, traced: the
  networks cannot be scripted, MONAI's 2D ``PatchEmbed`` indexes a third patch size), optionally
  ``models/model.onnx`` checked against ONNX Runtime;
- ``bundle/``: the Python code the configs name, so the folder runs without this repository installed;
- ``docs/README.md`` (the zoo's model card with the run's measured figures), ``docs/data_license.txt``,
  ``LICENSE``, ``large_files.yml`` (files over 25 MB with their MD5).

Nothing already exported is replaced unless ``--overwrite`` is given; the new bundle is built beside
the old one and swapped in only when complete.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import warnings
import zipfile
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import yaml

from bundle.workflows.checkpoints import load_model_weights, read_checkpoint
from bundle.errors import BundleInputError, find_input_error
from bundle.workflows.planning import INTENSITIES, PLANNED, read_plan
from bundle.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["export_bundle", "zoo_config", "main"]

logger = logging.getLogger(__name__)

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# the repository's configs/NAME.yaml, exported as configs/NAME.json (zoo bundles use JSON)
WORKFLOW_CONFIGS = ("inference", "train", "evaluate", "multi_gpu_train")
# merged over train by the user (`--config_file "['configs/train.json','configs/multi_gpu_train.json']"`):
# network configs go into train.json only
OVERLAY_CONFIGS = ("multi_gpu_train",)
# what the bundle's code and configs import besides MONAI, PyTorch and NumPy (pip names)
REQUIRED_PACKAGES = ("pytorch-ignite", "fire", "pillow", "tqdm", "nibabel", "tensorboard", "einops", "jsonschema")
LARGE_FILE_BYTES = 25 * 1024 * 1024
# the exported configs add the bundle folder to sys.path before building anything from its code:
# MONAI's `run` does that only after `initialize`, and `verify_net_in_out`, `ckpt_export` and
# `load` never do
ADD_BUNDLE_CODE = (
    "$sys.path.insert(0, os.path.abspath(@bundle_root)) if os.path.abspath(@bundle_root) not in sys.path else None"
)
NETWORK_DESCRIPTIONS = {
    "DSTransUNet": "DS-TransUNet (Lin et al., 2022) encodes the image with two Swin Transformer branches at two patch "
    "sizes, fuses their features with Transformer Interactive Fusion (TIF) blocks and decodes with Swin blocks and "
    "skip connections.",
    "BasicUNetTIF": "MONAI's BasicUNet with a second, half-resolution view of the input through the same encoder; "
    "Transformer Interactive Fusion (TIF) blocks fuse the two views' features at the chosen encoder levels.",
    "SwinUNETRTIF": "MONAI's SwinUNETR with a second Swin encoder at twice the patch size; Transformer Interactive "
    "Fusion (TIF) blocks fuse the two encoders' hidden states before the decoder.",
    "BasicUNet": "MONAI's BasicUNet.",
    "SwinUNETR": "MONAI's SwinUNETR (2D).",
}
PAPER = (
    "Lin, A., Chen, B., Xu, J., Zhang, Z., Lu, G., Zhang, D. DS-TransUNet: Dual Swin Transformer U-Net for Medical "
    "Image Segmentation. IEEE Transactions on Instrumentation and Measurement 71, 2022. arXiv:2106.06716"
)


# ---- configs ---------------------------------------------------------------------------------


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        with open(path) as f:
            content = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise BundleInputError(f"cannot read the config {path}: {e}") from e
    if not isinstance(content, dict):
        raise BundleInputError(f"the config {path} is not a mapping of ids to values")
    return content


def merged_configs(
    configs_dir: Path, extra_files: Sequence[Path], overrides: Dict[str, Any]
) -> Dict[str, Dict[str, Any]]:
    """The repository's workflow configs with ``extra_files`` merged over each but the overlays (top-level ids
    replaced, as ``--config_file "['train.yaml','networks/x.yaml']"`` does) and ``overrides`` set where the id exists.

    Raises:
        BundleInputError: a config is missing or unreadable, or an override names an id no config has.
    """
    extras = [_read_yaml(Path(f)) for f in extra_files]
    configs, used = {}, set()
    for name in WORKFLOW_CONFIGS:
        path = configs_dir / f"{name}.yaml"
        if not path.is_file():
            raise BundleInputError(f"no {path}: set --configs_dir to the folder with the bundle's YAML configs")
        config = _read_yaml(path)
        for extra in extras if name not in OVERLAY_CONFIGS else ():
            config.update(copy.deepcopy(extra))
        for key, value in overrides.items():
            if key in config:
                config[key] = copy.deepcopy(value)
                used.add(key)
        configs[name] = config
    unknown = sorted(set(overrides) - used)
    if unknown:
        raise BundleInputError(f"--{unknown[0]} is not a setting of the configs in {configs_dir} (a typo?)")
    return configs


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


# ---- what the run recorded -------------------------------------------------------------------


def read_run(bundle_root: Path) -> Dict[str, Any]:
    """Epochs trained and best validation Dice (``models/checkpoint.pt``), the split (``runs/train/datalist.json``)
    and test figures (``eval/``, written by ``configs/evaluate.yaml``), each where present."""
    run: Dict[str, Any] = {}
    checkpoint_path = bundle_root / "models" / "checkpoint.pt"
    if checkpoint_path.is_file():
        checkpoint = read_checkpoint(
            checkpoint_path, mmap=True
        )  # two numbers wanted: leave the optimizer state on disk
        trainer = checkpoint.get("trainer", {})
        saver = checkpoint.get("best_model_saver", {})
        if "epoch" in trainer or "epoch_length" in trainer:  # ignite keeps the iteration count and epoch length
            run["epochs"] = trainer.get("epoch") or trainer["iteration"] // max(1, trainer["epoch_length"])
        if "best_metric" in saver and saver.get("best_metric_epoch", -1) >= 0:
            run["best_val_dice"], run["best_epoch"] = float(saver["best_metric"]), int(saver["best_metric_epoch"])
    datalist_path = bundle_root / "runs" / "train" / "datalist.json"
    if datalist_path.is_file():
        with open(datalist_path) as f:
            datalist = json.load(f)
        run["split"] = {k: len(v) for k, v in datalist.items() if isinstance(v, list)}
        images = [
            str(item.get("image", "")) for items in datalist.values() if isinstance(items, list) for item in items
        ]
        run["demo_data"] = bool(images) and all("demo_data" in Path(p).parts for p in images)
        run["test_names"] = sorted(Path(item["image"]).name for item in datalist.get("test", []))
    metrics_path = bundle_root / "eval" / "metrics.csv"
    weights = bundle_root / "models" / "model.pt"
    if metrics_path.is_file() and metrics_path.stat().st_mtime < weights.stat().st_mtime:
        logger.warning(
            "%s is older than %s (another model's evaluation): left out of the model card", metrics_path, weights
        )
    elif metrics_path.is_file():
        with open(metrics_path) as f:
            run["eval"] = {row[0]: float(row[1]) for row in csv.reader(f) if len(row) == 2}
        raw_path = bundle_root / "eval" / "mean_dice_raw.csv"
        if raw_path.is_file():
            with open(raw_path) as f:
                rows = list(csv.reader(f))[1:]
            names = sorted(Path(row[0]).name for row in rows if row)
            run["eval_count"] = len(names)
            run["eval_is_test_split"] = bool(names) and names == run.get("test_names")
    return run


def package_versions() -> Dict[str, str]:
    """Installed versions (without local suffixes such as ``+cpu``, which PyPI does not serve)."""
    versions = {}
    for name in REQUIRED_PACKAGES:
        try:
            versions[name] = package_metadata.version(name).split("+")[0]
        except package_metadata.PackageNotFoundError as e:
            raise BundleInputError(f"{name} is not installed here; the bundle needs it (pip install {name})") from e
    return versions


# ---- the parts of the bundle -----------------------------------------------------------------


def apply_plan(configs: Dict[str, Dict[str, Any]], plan: Dict[str, Any], overrides: Dict[str, Any]) -> None:
    """The run's planned settings (``runs/train/plan.json``) as plain values in every config that has them:
    a zoo bundle has no training run to read its scale from, and its train.json reproduces the run."""
    for config in configs.values():
        for key in (*PLANNED, "keep_largest"):
            if key in config and key in plan and key not in overrides:
                config[key] = copy.deepcopy(plan[key])


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
        f"A trained {net['class']}{preset} ({net['params_m']:.1f} M parameters) for 2D segmentation, from the DS-TransUNet "
        f"MONAI bundle (DS-TransUNet: Lin et al., IEEE TIM 2022). Trained on {dataset}. models/model.ts is traced "
        "(torch.jit.trace), not scripted: it takes inputs whose height and width are multiples of 64, as the "
        "sliding-window inferer gives it."
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
    data_format["outputs"]["pred"]["num_channels"] = net["out_channels"]
    data_format["outputs"]["pred"]["channel_def"] = (
        {"0": "foreground logit (sigmoid > 0.5: foreground)"}
        if net["out_channels"] == 1
        else {str(c): f"logit of class {c} (argmax: class)" for c in range(net["out_channels"])}
    )
    return meta


def _eval_metrics(run: Dict[str, Any]) -> Dict[str, Any]:
    metrics: Dict[str, Any] = {}
    if "eval" in run:
        where = "test split" if run.get("eval_is_test_split") else f"{run.get('eval_count', '?')} evaluated images"
        for key, value in run["eval"].items():
            metrics[key] = round(value, 4)
        metrics["evaluated_on"] = f"the run's {where} at native resolution (configs/evaluate.yaml)"
    if "best_val_dice" in run:
        metrics["best_val_mean_dice"] = round(run["best_val_dice"], 4)
    if not metrics:
        metrics["mean_dice"] = "not measured: run configs/evaluate.yaml before exporting"
    return metrics


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_large_files(root: Path, files_url: Optional[str]) -> List[str]:
    """``large_files.yml`` in the zoo's form (path, url, hash) for files over 25 MB; returns their paths."""
    large = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.stat().st_size > LARGE_FILE_BYTES
    )
    lines = [
        "# Files over 25 MB: the zoo keeps them out of git and fetches them with",
        "#   python -m monai.bundle download_large_files --bundle_path <this folder>",
        "# (already here: the MD5 is checked and nothing is downloaded).",
    ]
    if not files_url:
        lines.append("# url: where you upload the file (bundle.export --files_url BASE writes BASE/<path>).")
    lines.append("large_files:" if large else "large_files: []")
    for path in large:
        url = f"{files_url.rstrip('/')}/{path}" if files_url else ""
        lines += [
            f'  - path: "{path}"',
            f'    url: "{url}"',
            f'    hash_val: "{_md5(root / path)}"',
            '    hash_type: "md5"',
        ]
    (root / "large_files.yml").write_text("\n".join(lines) + "\n")
    return large


def copy_code(root: Path) -> None:
    """The ``bundle`` package the configs name (this exporter left out), without caches."""
    source = Path(__file__).resolve().parent
    shutil.copytree(
        source,
        root / "bundle",
        ignore=lambda d, names: [
            n for n in names if n == "__pycache__" or n.endswith(".pyc") or (Path(d) == source and n == "export.py")
        ],
    )


def export_torchscript(root: Path, net: Dict[str, Any]) -> None:
    """``models/model.ts`` through MONAI's ``ckpt_export``, traced on one tile (scripting fails in MONAI's 2D ``PatchEmbed``)."""
    from monai.bundle import ckpt_export

    shape = [1, net["in_channels"], *net["inference_size"]]
    with warnings.catch_warnings():  # the tracer's notes on shape-dependent branches: the padding is traced out
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        ckpt_export(
            net_id="network_def",
            filepath=str(root / "models" / "model.ts"),
            ckpt_file=str(root / "models" / "model.pt"),
            meta_file=str(root / "configs" / "metadata.json"),
            config_file=str(root / "configs" / "inference.json"),
            bundle_root=str(root),
            use_trace=True,
            input_shape=shape,
        )


def _compare_torchscript(root: Path, network: torch.nn.Module, net: Dict[str, Any]) -> float:
    """Max abs difference of ``model.ts`` and the PyTorch network on a sliding-window batch of random tiles."""
    scripted = torch.jit.load(str(root / "models" / "model.ts"), map_location="cpu")
    x = torch.rand(4, net["in_channels"], *net["inference_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((scripted(x) - network.eval()(x)).abs().max())


def export_onnx(root: Path, network: torch.nn.Module, net: Dict[str, Any]) -> float:
    """``models/model.onnx`` (torch.onnx, dynamo exporter, batch size free); returns the max abs difference of
    ONNX Runtime's output to PyTorch's on a batch of random tiles."""
    try:
        import onnxruntime
    except ImportError as e:
        raise BundleInputError(
            "--onnx needs onnx, onnxscript and onnxruntime: pip install onnx onnxscript onnxruntime"
        ) from e
    path = root / "models" / "model.onnx"
    example = torch.rand(2, net["in_channels"], *net["inference_size"])
    network = network.eval()
    with torch.no_grad():
        program = torch.onnx.export(
            network,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["pred"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
        )
    program.save(str(path))
    x = torch.rand(4, net["in_channels"], *net["inference_size"], generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        return float((torch.from_numpy(out) - network(x)).abs().max())


def make_zip(root: Path, zip_path: Path) -> None:
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, Path(root.name) / path.relative_to(root))


# ---- the model card --------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def build_readme(
    name: str, meta: Dict[str, Any], net: Dict[str, Any], run: Dict[str, Any], dataset: str, checks: Dict[str, Any]
) -> str:
    c, roi = net["in_channels"], net["inference_size"]
    scale = (
        f"whole images resized to {roi[0]} x {roi[1]}, logits resized back"
        if net["image_size"]
        else f"sliding window, {roi[0]} x {roi[1]} tiles"
    )
    preset = f" (preset `{net['preset']}`)" if net["preset"] else ""
    split = run.get("split", {})
    split_text = (
        ", ".join(f"{n} {k}" for k, n in split.items()) if split else "not recorded (no runs/train/datalist.json)"
    )
    s = net["settings"]
    perf = []
    if "eval" in run:
        where = "the run's test split" if run.get("eval_is_test_split") else f"{run.get('eval_count', '?')} images"
        perf.append(
            f"Measured by `configs/evaluate.yaml` on {where}, at each image's native resolution ({scale}, "
            "threshold 0.5):\n"
        )
        perf.append("| metric | value |\n|---|---|")
        perf += [f"| {k} | {_fmt(v)} |" for k, v in run["eval"].items()]
        perf.append("")
    if "best_val_dice" in run:
        perf.append(
            f"Best validation mean Dice during training: {run['best_val_dice']:.4f} (epoch {run['best_epoch']} of "
            f"{run.get('epochs', '?')}; `models/model.pt` holds the weights of that epoch)."
        )
    if not perf:
        perf.append("Not measured: the run had no `eval/metrics.csv` or `models/checkpoint.pt` when it was exported.")
    if run.get("demo_data"):
        perf.append(
            "\n**These figures are on synthetic demo drawings, not medical images: they show the pipeline works, "
            "nothing about medicine.**"
        )
    perf.append(
        f"\nExport checks: `models/model.ts` vs PyTorch, max abs difference {checks['torchscript']:.2e} "
        f"(4 random {roi[0]} x {roi[1]} tiles)"
        + (f"; `models/model.onnx` in ONNX Runtime vs PyTorch {checks['onnx']:.2e}." if "onnx" in checks else ".")
    )
    supervision = (
        " on the main and auxiliary outputs (MONAI's DeepSupervisionLoss, weights 0.6, 0.2, 0.2)"
        if net["deep_supervision"]
        else ""
    )
    pins = " ".join(f"{k}=={v}" for k, v in meta["required_packages_version"].items())
    onnx_line = (
        "- `models/model.onnx`: the network in ONNX (any batch size, "
        f"{roi[0]} x {roi[1]} tiles), checked against ONNX Runtime at export.\n"
        if "onnx" in checks
        else ""
    )
    return f"""# Model Overview

{meta['name']}. {meta['description']}

A {net['class']}{preset} with {net['params_m']:.2f} M parameters (`{net['target']}`), {c} input channel(s),
{net['out_channels']} output channel(s) ({'one foreground logit' if net['out_channels'] == 1 else 'one logit per class'}).
{NETWORK_DESCRIPTIONS.get(net['class'], '')}

Files:
- `configs/inference.json`, `train.json`, `evaluate.json`, `multi_gpu_train.json`, `metadata.json`, `logging.conf`.
- `models/model.pt`: the weights (a state dict). `models/model.ts`: TorchScript made by
  `python -m monai.bundle ckpt_export` with `--use_trace true`. The network cannot be scripted (MONAI's 2D
  `PatchEmbed` indexes a third patch size), so it is traced on one {roi[0]} x {roi[1]} tile: it takes any batch
  size and any height and width that are multiples of 64, without the network's own padding for other sizes.
{onnx_line}- `bundle/`: the Python code the configs name; the folder runs without installing anything but the packages below.

## Data

Trained on: {dataset}. Split of the run: {split_text}.
License of the data: see `docs/data_license.txt`.

Inputs: {'RGB' if c == 3 else f'{c}-channel'} 2D images (PNG, JPEG, TIFF, BMP, GIF or NIfTI), intensities scaled to [0, 1]
per image; any size (inference: {scale}). Outputs: a mask of the input's size,
written as `<name>_mask.png` (0/255{'' if net['out_channels'] == 1 else ', or class indices'}) and `<name>_overlay.png`.

## Training configuration

`configs/train.json` as exported: {'whole images resized to ' + str(roi[0]) + ' x ' + str(roi[1]) + ' with random zoom' if net['image_size'] else 'native-resolution patches of ' + str(roi[0]) + ' x ' + str(roi[1]) + ' (random crops, half centred on the foreground)'},
batch {s['batch_size']} images x {s['crops_per_image']} view(s), AdamW (learning rate {s['learning_rate']}, weight decay 1e-4)
with linear warm-up and a cosine schedule over {s['max_epochs']} epochs, gradient norm clipped at {s['max_grad_norm']},
Dice + cross-entropy{supervision}, flips, 90 degree rotations and intensity jitter; validation every
{s['val_interval']} epochs at native resolution (the settings come from the run's plan, `runs/train/plan.json`).
This model: {run.get('epochs', 'unknown (no models/checkpoint.pt)')} epochs.

## Performance

{chr(10).join(perf)}

## MONAI Bundle Commands

Run these in this folder, or from anywhere with `--bundle_root <this folder>` added (the configs import the
bundle's code from there):

```bash
pip install "monai=={meta['monai_version']}" "torch=={meta['pytorch_version']}" {pins}

# inference: a folder, an image, or a list of them; writes <output_dir>/<name>_mask.png and _overlay.png
python -m monai.bundle run --config_file configs/inference.json --inputs /path/to/images --output_dir outputs

# evaluation on image/mask pairs (images/ and masks/ paired by name): per-image Dice and IoU, summary CSVs
python -m monai.bundle run --config_file configs/evaluate.json --dataset_dir /path/to/data

# training on your data, from scratch (writes models/ and runs/ here: --ckpt_dir and --output_dir write elsewhere)
python -m monai.bundle run training --config_file configs/train.json --dataset_dir /path/to/data \
    --ckpt_dir /path/to/new_run/models --output_dir /path/to/new_run/runs
torchrun --nproc_per_node=2 -m monai.bundle run training \\
    --config_file "['configs/train.json','configs/multi_gpu_train.json']" --dataset_dir /path/to/data

# MONAI's checks (verify_metadata fetches the schema; give --filepath to a local copy offline)
python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath schema.json
python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json --config_file configs/inference.json
python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt \\
    --meta_file configs/metadata.json --config_file configs/inference.json --use_trace true --input_shape "[1, {c}, {roi[0]}, {roi[1]}]"
```

From Python, without the network:

```python
import torch
ts = torch.jit.load("models/model.ts")          # traced; logits for tiles whose sides are multiples of 64
logits = ts(torch.rand(1, {c}, {roi[0]}, {roi[1]}))
```

## System configuration

Exported with MONAI {meta['monai_version']}, PyTorch {meta['pytorch_version']}, Python {platform.python_version()} on
{platform.system()} {platform.machine()}. Inference runs on CPU or a CUDA GPU (mixed precision on CUDA). The configs choose
`cuda` when available; give `--device cpu` to force the CPU.

## Limitations

- {'Trained on synthetic demo drawings: a demonstration of the pipeline, not a model for any medical use.' if run.get('demo_data') else 'Trained on one dataset; expect lower accuracy on images from other devices, centres or populations.'}
- Not a medical device; for research and education.
- `models/model.ts` is traced: for sizes that are not multiples of 64 use `models/model.pt` with the configs
  (the network pads internally), or the sliding-window inferer.
- The training split, augmentation and schedule are those of `configs/train.json`; figures on other data may differ.

## Citation

```bibtex
@article{{lin2022ds,
  title={{DS-TransUNet: Dual Swin Transformer U-Net for Medical Image Segmentation}},
  author={{Lin, Ailiang and Chen, Bingzhi and Xu, Jiayu and Zhang, Zheng and Lu, Guangming and Zhang, David}},
  journal={{IEEE Transactions on Instrumentation and Measurement}},
  volume={{71}},
  pages={{1--15}},
  year={{2022}}
}}
```

## References

- {PAPER}
- Liu, Z. et al. Swin Transformer: Hierarchical Vision Transformer using Shifted Windows. ICCV 2021.
- MONAI Consortium. MONAI: Medical Open Network for AI. https://monai.io

# License

The code and weights: Apache License 2.0 (`LICENSE`). The training data: `docs/data_license.txt`.
"""


# ---- the export ------------------------------------------------------------------------------


def _default_dataset(run: Dict[str, Any]) -> str:
    if run.get("demo_data"):
        return "synthetic demo drawings generated by bundle/data/demo.py (a demo, not medicine)"
    return "the run's own images (name the dataset with --dataset)"


def _data_license(run: Dict[str, Any], license_file: Optional[Path]) -> str:
    if license_file is not None:
        try:
            return license_file.read_text()
        except OSError as e:
            raise BundleInputError(f"cannot read --data_license {license_file}: {e}") from e
    if run.get("demo_data"):
        return (
            "The training data are synthetic drawings generated by this bundle's code (bundle/data/demo.py), under the "
            "bundle's Apache License 2.0. They contain no patient data.\n"
        )
    logger.warning("no --data_license given: docs/data_license.txt says the data's terms were not stated")
    return (
        "The terms of the training data were not stated when this bundle was exported. Before using or sharing "
        "the model, check the license of the dataset it was trained on (see docs/README.md, Data).\n"
    )


def export_bundle(
    name: str,
    bundle_root: Path = Path("."),
    output: Path = Path("dist"),
    config_files: Sequence[Path] = (),
    overrides: Optional[Dict[str, Any]] = None,
    version: str = "0.1.0",
    changelog: Optional[str] = None,
    dataset: Optional[str] = None,
    data_license: Optional[Path] = None,
    files_url: Optional[str] = None,
    onnx: bool = False,
    overwrite: bool = False,
    configs_dir: Path = REPO_CONFIGS,
) -> Tuple[Path, Path]:
    """Write ``output/name/`` and ``output/name_v<version>.zip``; returns both paths. See the module docstring.

    Raises:
        BundleInputError: a bad name or version, no trained model, weights that do not fit the configured
            network, an unknown setting, or an existing export without ``overwrite``.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise BundleInputError(f"--name {name!r}: use lower-case letters, digits and underscores, as zoo bundles do")
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise BundleInputError(f"--version {version!r}: use MAJOR.MINOR.PATCH, e.g. 0.1.0")
    bundle_root, output, configs_dir = Path(bundle_root), Path(output), Path(configs_dir)
    weights = bundle_root / "models" / "model.pt"
    if not weights.is_file():
        raise BundleInputError(f"no trained model at {weights}: train first, or set --bundle_root to the run's folder")
    target, zip_path = output / name, output / f"{name}_v{version}.zip"
    for path in (target, zip_path):
        if path.exists() and not overwrite:
            raise BundleInputError(f"{path} exists: give --overwrite to replace it, or another --output or --version")

    configs = merged_configs(configs_dir, config_files, dict(overrides or {}))
    apply_plan(configs, read_plan(bundle_root / "runs" / "train"), dict(overrides or {}))
    from monai.bundle import ConfigParser

    if "check_settings" in configs["train"]:  # the settings shipped in train.json, checked as training checks them
        checks = ConfigParser(copy.deepcopy(configs["train"]))
        checks["check_settings#weights"] = []  # weight files of the training machine need not exist here
        try:
            checks.get_parsed_content("check_settings")
        except Exception as e:
            raise find_input_error(e) or e

    network = ConfigParser(copy.deepcopy(configs["inference"])).get_parsed_content("network_def")
    load_model_weights(network, weights)  # one clear error if the settings are not the training's
    network.eval()
    net = _network_summary(configs, network)
    run = read_run(bundle_root)
    dataset = dataset or _default_dataset(run)
    changelog = changelog or f"exported on {datetime.date.today().isoformat()}: {net['class']} trained on {dataset}"

    output.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=output)) / name  # swapped in when complete
    try:
        (build / "configs").mkdir(parents=True)
        (build / "models").mkdir()
        (build / "docs").mkdir()
        for config_name in WORKFLOW_CONFIGS:
            (build / "configs" / f"{config_name}.json").write_text(_json_text(zoo_config(configs[config_name])))
        shutil.copy(configs_dir / "logging.conf", build / "configs" / "logging.conf")
        base_meta = json.loads((configs_dir / "metadata.json").read_text())
        meta = build_metadata(name, base_meta, net, run, version, changelog, dataset)
        (build / "configs" / "metadata.json").write_text(_json_text(meta))
        torch.save(network.state_dict(), build / "models" / "model.pt")
        copy_code(build)
        export_torchscript(build, net)
        checks = {"torchscript": _compare_torchscript(build, network, net)}
        if onnx:
            checks["onnx"] = export_onnx(build, network, net)
        license_text = Path(__file__).resolve().parents[1] / "LICENSE"
        if not license_text.is_file():
            raise BundleInputError(f"no LICENSE at {license_text} (export from the repository checkout)")
        shutil.copy(license_text, build / "LICENSE")
        (build / "docs" / "data_license.txt").write_text(_data_license(run, data_license))
        (build / "docs" / "README.md").write_text(build_readme(name, meta, net, run, dataset, checks))
        write_large_files(build, files_url)
        make_zip(build, build.parent / zip_path.name)
        _swap_in(build, target)
        _swap_in(build.parent / zip_path.name, zip_path)
    finally:
        shutil.rmtree(build.parent, ignore_errors=True)
    for key, value in checks.items():
        logger.info("%s vs PyTorch: max abs difference %.2e", key, value)
    return target, zip_path


def _swap_in(new: Path, target: Path) -> None:
    """Replace ``target`` by ``new``; the old one is removed only after the new one is in place."""
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        os.replace(target, old)
    os.replace(new, target)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()


def _parse_overrides(extra: List[str]) -> Dict[str, Any]:
    """``--id value`` pairs (values in YAML: ``--roi_size "[96, 96]"``, ``--learning_rate 1.0e-3``)."""
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
        overrides[key[2:]] = yaml.safe_load(value)
    return overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
