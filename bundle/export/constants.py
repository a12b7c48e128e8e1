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
"""What every part of the exporter shares: the configs it exports, the packages it pins, the paper."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# the repository's configs/NAME.yaml, exported as configs/NAME.json (zoo bundles use JSON)
WORKFLOW_CONFIGS = ("inference", "train", "evaluate", "multi_gpu_train", "multi_gpu_evaluate", "inference_onnx")
# merged by the user over another (`--config_file "['configs/train.json','configs/evaluate.json']"`, the
# multi-GPU files over those, inference_onnx over inference): network configs go into the base configs only
OVERLAY_CONFIGS = ("evaluate", "multi_gpu_train", "multi_gpu_evaluate", "inference_onnx")
# shipped only with models/model.onnx
ONNX_CONFIGS = ("inference_onnx",)
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
