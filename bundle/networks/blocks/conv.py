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

"""The convolution block the networks' conv stages share."""

from __future__ import annotations

import math

from monai.networks.blocks import Convolution

__all__ = ["conv_norm_relu", "group_norm"]


def group_norm(norm_groups: int, channels: int) -> tuple:
    """MONAI's ``norm`` argument for GroupNorm of ``channels`` with ``norm_groups`` groups, reduced to a divisor
    of ``channels`` (a narrow stage keeps as many groups as divide it)."""
    return ("group", {"num_groups": math.gcd(norm_groups, channels)})


def conv_norm_relu(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    norm_groups: int = 0,
    relu: bool = True,
    strides: int = 1,
) -> Convolution:
    """MONAI's ``Convolution`` with bias, then GroupNorm (when ``norm_groups``; reduced to a divisor of
    ``out_channels``) and ReLU (when ``relu``); neither: the convolution alone."""
    norm = group_norm(norm_groups, out_channels) if norm_groups else None
    return Convolution(
        spatial_dims,
        in_channels,
        out_channels,
        strides=strides,
        kernel_size=kernel_size,
        act="relu" if relu else None,
        norm=norm,
        bias=True,
        conv_only=not (relu or norm_groups),
    )
