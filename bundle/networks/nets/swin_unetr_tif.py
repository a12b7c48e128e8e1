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

"""MONAI's ``SwinUNETR`` with a second, coarser Swin encoder fused by TIF, in the spirit of DS-TransUNet."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any, List, Mapping, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import PatchEmbed
from monai.networks.nets import SwinUNETR
from monai.networks.utils import copy_model_state

from bundle.networks.blocks.tif import TIFLevels

__all__ = ["SwinUNETRTIF", "DualScaleSwinViT"]


class DualScaleSwinViT(nn.Module):
    """Two Swin encoders on one image, their hidden states fused by TIF.

    ``fine`` is the model's own Swin encoder; ``coarse`` is a copy of it with patches
    ``coarse_scale`` times larger, so each of its hidden states has the same width at a
    ``coarse_scale`` times coarser grid. At each level in ``tif_levels`` a :class:`TIF` fuses the
    pair and returns their sum on the fine grid; the other levels pass through unchanged.

    A state dict of the plain encoder (keys without ``fine.``) is taken as the fine encoder's.
    """

    def __init__(
        self,
        fine: nn.Module,
        coarse_scale: int,
        tif_levels: Sequence[int],
        tif_args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.fine = fine
        self.coarse = copy.deepcopy(fine)  # starts from the fine encoder's weights
        embed = fine.patch_embed
        spatial_dims = embed.proj.weight.dim() - 2
        self.coarse.patch_embed = PatchEmbed(
            patch_size=[p * coarse_scale for p in embed.patch_size],
            in_chans=embed.proj.in_channels,
            embed_dim=embed.embed_dim,
            norm_layer=nn.LayerNorm if embed.norm is not None else None,  # type: ignore[arg-type]
            spatial_dims=spatial_dims,
        )
        widths = [fine.embed_dim * 2**i for i in range(5)]
        self.fusions = TIFLevels(widths, tif_levels, tif_args, "SwinUNETR's hidden states")
        self.register_load_state_dict_pre_hook(_plain_keys_to_fine)

    def forward(self, x: torch.Tensor, normalize: bool = True) -> List[torch.Tensor]:
        fine, coarse = self.fine(x, normalize), self.coarse(x, normalize)
        return self.fusions(fine, coarse)


def _plain_keys_to_fine(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        if not rest.startswith(("fine.", "coarse.", "fusions.")):
            state_dict[prefix + "fine." + rest] = state_dict.pop(key)


class SwinUNETRTIF(SwinUNETR):
    """``SwinUNETR`` whose decoder reads TIF fusions of two Swin encoders at two patch sizes.

    Same arguments as ``monai.networks.nets.SwinUNETR``, plus:

    Args:
        coarse_scale: the coarse encoder's patch size over ``patch_size``.
        tif_levels: hidden states to fuse: 0 (the patch embedding) to 4 (the deepest stage).
            Level 0 has the most tokens and so the costliest global attention.
        tif_args: other :class:`TIF` arguments (heads, head widths, MLP widths, depth, dropout).

    A plain ``SwinUNETR`` state dict loads with ``strict=False`` reporting only the new parts
    (``swinViT.coarse.*``, ``swinViT.fusions.*``) missing; the coarse encoder, built as a copy of
    the fine one, can start from the same weights with :meth:`init_coarse_from_fine`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *args: Any,
        coarse_scale: int = 2,
        tif_levels: Sequence[int] = (1, 2, 3, 4),
        tif_args: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(in_channels, out_channels, *args, **kwargs)
        self.swinViT = DualScaleSwinViT(self.swinViT, coarse_scale, tif_levels, tif_args)

    def load_from(self, weights: Mapping[str, Any]) -> None:
        """MONAI's ``SwinUNETR.load_from`` (self-supervised pretrained Swin weights) into the fine encoder,
        then :meth:`init_coarse_from_fine`. The inherited method would look for ``swinViT.layers1``."""
        SwinUNETR.load_from(SimpleNamespace(swinViT=self.swinViT.fine), weights)  # it reads only .swinViT
        self.init_coarse_from_fine()

    def init_coarse_from_fine(self) -> None:
        """Copy the fine encoder's Swin weights into the coarse one (its patch embedding excepted)."""
        copy_model_state(self.swinViT.coarse, self.swinViT.fine, exclude_vars="^patch_embed\\.")
