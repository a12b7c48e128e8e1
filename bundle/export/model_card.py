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
"""``docs/README.md``, the zoo's model card, filled from the run's figures."""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from string import Template
from typing import Any, Dict

from bundle.export.artifacts import onnx_converter_kwargs
from bundle.export.constants import NETWORK_DESCRIPTIONS, PAPER

logger = logging.getLogger(__name__)

# the zoo's model card (docs/README.md), with $fields filled in by build_readme
TEMPLATE = Path(__file__).with_name("model_card.md")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _performance(net: Dict[str, Any], run: Dict[str, Any], checks: Dict[str, float], scale: str) -> str:
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
        kept = (
            f"`models/model.pt` holds the final weights, of epoch {run.get('epochs', '?')}: the validation split was "
            "too small to choose weights from"
            if run.get("keep_weights") == "final"
            else "`models/model.pt` holds the weights of that epoch"
        )
        perf.append(
            f"Best validation mean Dice during training: {run['best_val_dice']:.4f} (epoch {run['best_epoch']} of "
            f"{run.get('epochs', '?')}; {kept})."
        )
    if not perf:
        perf.append("Not measured: the run had no `eval/metrics.csv` or `models/checkpoint.pt` when it was exported.")
    if run.get("demo_data"):
        perf.append(
            "\n**These figures are on synthetic demo drawings, not medical images: they show the pipeline works, "
            "nothing about medicine.**"
        )
    tile = net["inference_size"]
    line = (
        f"\nExport checks: `models/model.ts` vs PyTorch, max abs difference {checks['torchscript']:.2e} "
        f"(4 random {tile[0]} x {tile[1]} tiles)"
    )
    onnx = {k.split(" ", 1)[1]: v for k, v in checks.items() if k.startswith("onnx ")}
    if onnx:
        sizes = ", ".join(f"{v:.2e} at {k.replace('x', ' x ')}" for k, v in onnx.items())
        line += f"; `models/model.onnx` in ONNX Runtime vs PyTorch, max abs difference {sizes} (batch x height x width)"
    perf.append(line + ".")
    return "\n".join(perf)


def build_readme(
    name: str, meta: Dict[str, Any], net: Dict[str, Any], run: Dict[str, Any], dataset: str, checks: Dict[str, float]
) -> str:
    """The model card: ``model_card.md`` filled in with the run's network, data, settings and measured figures."""
    c, tile = net["in_channels"], net["inference_size"]
    scale = (
        f"whole images resized to {tile[0]} x {tile[1]}, logits resized back"
        if net["image_size"]
        else f"sliding window, {tile[0]} x {tile[1]} tiles"
    )
    split = run.get("split", {})
    s = net["settings"]
    onnx = any(k.startswith("onnx ") for k in checks)
    binary = net["out_channels"] == 1
    fields = {
        "name": meta["name"],
        "description": meta["description"],
        "net_class": net["class"],
        "preset": f" (preset `{net['preset']}`)" if net["preset"] else "",
        "params_m": f"{net['params_m']:.2f}",
        "target": net["target"],
        "in_channels": c,
        "out_channels": net["out_channels"],
        "output_kind": "one foreground logit" if binary else "one logit per class",
        "network_description": NETWORK_DESCRIPTIONS.get(net["class"], ""),
        "onnx_config": "`inference_onnx.json`, " if onnx else "",
        "tile": f"{tile[0]} x {tile[1]}",
        "tile_h": tile[0],
        "tile_w": tile[1],
        "size_multiple": net["size_multiple"],
        "onnx_file": (
            "- `models/model.onnx`: the network in ONNX, exported by MONAI's `onnx_export` (the dynamo exporter) with\n"
            "  batch, height and width free: it takes any image size, padding internally as the PyTorch network does;\n"
            "  checked against PyTorch in ONNX Runtime at export (see Performance).\n"
            if onnx
            else ""
        ),
        "dataset": dataset,
        "split": (
            ", ".join(f"{n} {k}" for k, n in split.items()) if split else "not recorded (no runs/train/datalist.json)"
        ),
        "input_kind": "RGB" if c == 3 else f"{c}-channel",
        "scale": scale,
        "mask_values": "0/255" if binary else "0/255, or class indices",
        "training_views": (
            f"whole images resized to {tile[0]} x {tile[1]} with random zoom"
            if net["image_size"]
            else f"native-resolution patches of {tile[0]} x {tile[1]} (random crops, half centred on the foreground)"
        ),
        "batch_size": s["batch_size"],
        "crops_per_image": s["crops_per_image"],
        "learning_rate": s["learning_rate"],
        "max_epochs": s["max_epochs"],
        "max_grad_norm": s["max_grad_norm"],
        "val_interval": s["val_interval"],
        "supervision": (
            " on the main and auxiliary outputs (MONAI's DeepSupervisionLoss, weights 0.6, 0.2, 0.2)"
            if net["deep_supervision"]
            else ""
        ),
        "epochs": run.get("epochs", "unknown (no models/checkpoint.pt)"),
        "performance": _performance(net, run, checks, scale),
        "monai_version": meta["monai_version"],
        "pytorch_version": meta["pytorch_version"],
        "pins": " ".join(f"{k}=={v}" for k, v in meta["required_packages_version"].items()),
        "onnx_inference": (
            "# the same with the ONNX model in ONNX Runtime (pip install onnxruntime)\n"
            "python -m monai.bundle run --config_file \"['configs/inference.json','configs/inference_onnx.json']\" "
            "--inputs /path/to/images --output_dir outputs\n"
            if onnx
            else ""
        ),
        "converter_kwargs": repr(onnx_converter_kwargs()),  # Python syntax: fire parses the argument as a literal
        "onnx_python": (
            "import onnxruntime                             # any size: here 300 x 420\n"
            'session = onnxruntime.InferenceSession("models/model.onnx")\n'
            f'(logits,) = session.run(None, {{"image": torch.rand(1, {c}, 300, 420).numpy()}})\n'
            if onnx
            else ""
        ),
        "python_version": platform.python_version(),
        "system": f"{platform.system()} {platform.machine()}",
        "data_limitation": (
            "Trained on synthetic demo drawings: a demonstration of the pipeline, not a model for any medical use."
            if run.get("demo_data")
            else "Trained on one dataset; expect lower accuracy on images from other devices, centres or populations."
        ),
        "onnx_limitation": ", or `models/model.onnx`, which takes any size" if onnx else "",
        "paper": PAPER,
    }
    return Template(TEMPLATE.read_text()).substitute(fields)
