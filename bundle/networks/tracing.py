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

"""Where a network's forward needs to know how it is being run."""

from __future__ import annotations

import torch

__all__ = ["is_compiling"]


def is_compiling() -> bool:
    """True under ``torch.compile`` and ``torch.export`` (ONNX's dynamo exporter); False in eager and TorchScript.

    Padding written for symbolic sizes is applied unconditionally there, so that the exported graph takes
    any height and width instead of the one it was traced at.
    """
    if torch.jit.is_scripting():
        return False
    return torch.compiler.is_compiling()
