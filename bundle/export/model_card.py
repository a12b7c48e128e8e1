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
from typing import Any, Dict


from bundle.export.constants import NETWORK_DESCRIPTIONS, PAPER

logger = logging.getLogger(__name__)

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
