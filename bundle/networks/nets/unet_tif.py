"""MONAI's ``BasicUNet`` with dual-scale TIF fusion of its encoder features.

``BasicUNet`` (not ``UNet``) because its encoder and decoder are explicit modules (``conv_0``,
``down_1..4``, ``upcat_4..1``): the features of each level can be taken, fused and handed to the
decoder without touching MONAI's code. ``UNet`` nests its levels recursively inside one
``nn.Sequential``, so a fusion there would have to rebuild the network.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import BasicUNet

from bundle.networks.blocks.tif import TIF

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
        act: Union[str, tuple] = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: Union[str, tuple] = ("instance", {"affine": True}),
        bias: bool = True,
        dropout: Union[float, tuple] = 0.0,
        upsample: str = "deconv",
        tif_levels: Sequence[int] = (2, 3, 4),
        coarse_scale: int = 2,
        tif_args: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, features, act, norm, bias, dropout, upsample)
        if not set(tif_levels) <= {0, 1, 2, 3, 4}:
            raise ValueError(f"tif_levels must be among 0..4 (BasicUNet's encoder levels), got {tuple(tif_levels)}.")
        self.tif_levels = sorted(set(tif_levels))
        self.coarse_scale = coarse_scale
        level_channels = list(features[:5])
        # ModuleDict keyed by level, so the keys say which level a TIF fuses
        self.fusions = nn.ModuleDict(
            {str(i): TIF(level_channels[i], level_channels[i], output="sum", **dict(tif_args or {})) for i in self.tif_levels}
        )

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The encoder's features at levels 0 (full resolution) to 4 (1/16)."""
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        return [x0, x1, x2, x3, self.down_4(x3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.encode(x)
        coarse = self.encode(F.avg_pool2d(x, self.coarse_scale) if x.dim() == 4 else F.avg_pool3d(x, self.coarse_scale))
        feats = [self.fusions[str(i)](f, c) if str(i) in self.fusions else f for i, (f, c) in enumerate(zip(fine, coarse))]
        u4 = self.upcat_4(feats[4], feats[3])
        u3 = self.upcat_3(u4, feats[2])
        u2 = self.upcat_2(u3, feats[1])
        u1 = self.upcat_1(u2, feats[0])
        return self.final_conv(u1)
