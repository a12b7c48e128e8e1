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

"""MONAI's ``BasicUNet`` with dual-scale TIF fusion of its encoder features.

``BasicUNet`` (not ``UNet``) because its encoder and decoder are explicit modules (``conv_0``,
``down_1..4``, ``upcat_4..1``): the features of each level can be taken, fused and handed to the
decoder without touching MONAI's code. ``UNet`` nests its levels recursively inside one
``nn.Sequential``, so a fusion there would have to rebuild the network.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Sequence

import torch
from monai.networks.layers import Pool
from monai.networks.nets import BasicUNet

from bundle.networks.blocks.tif import TIFLevels

__all__ = ["BasicUNetTIF"]


class BasicUNetTIF(BasicUNet):
    """``BasicUNet`` whose skips are TIF fusions of two views of the image.

    The image and a coarser view of it (average-pooled by ``coarse_scale``) pass the same encoder
    (shared weights); at each level in ``tif_levels`` a :class:`TIF` lets the two feature maps
    exchange global context and returns their sum on the fine grid (``output="sum"``), which the
    decoder takes in place of the plain feature. The TIF blocks are the only new parameters, so a
    state dict of a plain ``BasicUNet`` loads with ``strict=False`` reporting only ``fusions.*``
    missing, and a trained ``BasicUNet`` can gain TIF and be fine-tuned.

    Args:
        spatial_dims, in_channels, out_channels, features, act, norm, bias, dropout, upsample:
            as ``monai.networks.nets.BasicUNet``.
        tif_levels: encoder levels to fuse: 0 (full resolution) to 4 (the bottleneck, 1/16).
            Full-resolution levels are costly (TIF attends over every pixel).
        coarse_scale: the coarse view's downsampling factor.
        tif_args: other :class:`TIF` arguments (heads, head widths, MLP widths, depth, dropout).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        bias: bool = True,
        dropout: float | tuple = 0.0,
        upsample: str = "deconv",
        tif_levels: Sequence[int] = (2, 3, 4),
        coarse_scale: int = 2,
        tif_args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, features, act, norm, bias, dropout, upsample)
        self.coarse_view = Pool[Pool.AVG, spatial_dims](kernel_size=coarse_scale)
        # keyed by level, so the keys say which level a TIF fuses
        self.fusions = TIFLevels(list(features[:5]), tif_levels, tif_args, "BasicUNet's encoder levels")

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The encoder's features at levels 0 (full resolution) to 4 (1/16)."""
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        return [x0, x1, x2, x3, self.down_4(x3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.fusions(self.encode(x), self.encode(self.coarse_view(x)))
        u4 = self.upcat_4(feats[4], feats[3])
        u3 = self.upcat_3(u4, feats[2])
        u2 = self.upcat_2(u3, feats[1])
        u1 = self.upcat_1(u2, feats[0])
        return self.final_conv(u1)
