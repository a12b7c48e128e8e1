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

"""A network exported to ONNX, run by ONNX Runtime where MONAI's workflows expect a PyTorch network.

``configs/inference_onnx.yaml`` puts it in place of the PyTorch network: MONAI's evaluator, the
bundle's inferer (whole images or sliding windows), post-processing and writers stay as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from bundle.errors import BundleInputError

__all__ = ["ONNXRuntimeNetwork"]


class ONNXRuntimeNetwork(nn.Module):
    """``models/model.onnx`` as a module: tensors in, logits out (on the input's device).

    Args:
        path: the ONNX file (``python -m bundle.export --onnx`` or MONAI's ``onnx_export``).
        providers: ONNX Runtime execution providers, in order of preference; default: CUDA when this
            ONNX Runtime has it, then the CPU.
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError as e:
            raise BundleInputError("running the ONNX model needs onnxruntime: pip install onnxruntime") from e
        path = Path(path)
        if not path.is_file():
            raise BundleInputError(
                f"no ONNX model at {path}: export one (python -m bundle.export --onnx, or monai.bundle onnx_export)"
            )
        available = onnxruntime.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.path = path
        self.session = onnxruntime.InferenceSession(str(path), providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = np.ascontiguousarray(x.detach().float().cpu().numpy())
        logits, *_ = self.session.run(None, {self.input_name: image})
        return torch.from_numpy(logits).to(x.device)
