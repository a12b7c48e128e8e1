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
"""Zero padding of spatial sizes up to a multiple (the network's stride, a Swin window), written once."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from bundle.networks.tracing import is_compiling

__all__ = ["padded_sizes", "pad_to_multiple"]


def padded_sizes(sizes: Sequence[int], multiples: Sequence[int]) -> List[int]:
    """Each size rounded up to its multiple, by ceiling division: an exporter with symbolic sizes then
    needs no divisibility proof."""
    return [(s + m - 1) // m * m for s, m in zip(sizes, multiples)]


def pad_to_multiple(x: torch.Tensor, multiples: Sequence[int], channel_last: bool = False) -> Tuple[torch.Tensor, bool]:
    """``x`` zero-padded at the end of each spatial dimension to a multiple of ``multiples``, and whether it was
    padded. Spatial dimensions follow the batch and channel ones (``channel_last``: the channels come last).
    Under compile or export the pad is always applied (a zero pad where nothing is missing), so that the graph
    holds no branch on a symbolic size."""
    spatial = list(x.shape[1:-1]) if channel_last else list(x.shape[2:])
    target = padded_sizes(spatial, multiples)
    pad: List[int] = [0, 0] if channel_last else []
    for i in range(len(spatial) - 1, -1, -1):  # F.pad counts from the last dimension
        pad += [0, target[i] - spatial[i]]
    padded = is_compiling() or sum(pad) > 0
    return (F.pad(x, pad) if padded else x), padded
