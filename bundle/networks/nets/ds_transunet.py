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

"""DS-TransUNet: Dual Swin Transformer U-Net (Lin et al., IEEE TIM 2022, arXiv 2106.06716).

Two Swin encoder branches see the image at two patch sizes (the fine branch at ``patch_size``, the
coarse one at ``coarse_patch_size``); at each stage a TIF block lets them exchange global context,
and the pair, concatenated, becomes the skip of a U-Net decoder whose deep stages hold Swin blocks.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers import Pool

from bundle.networks.blocks.conv import conv_norm_relu, group_norm
from bundle.networks.blocks.swin import SwinBranch, SwinStage
from bundle.networks.blocks.tif import TIF
from bundle.networks.memory import cheap_recomputation, checkpoint, recomputes, release_heap_in_backward
from bundle.networks.padding import pad_to_multiple
from bundle.networks.tracing import is_compiling
from bundle.networks.swin_weights import load_swin_weights

__all__ = ["DSTransUNet", "PRESETS", "convert_authors_state_dict"]

# Named configurations. ``base`` is the authors' model (their ``UNet(dim=128)``): a Swin-B fine
# branch and a Swin-T coarse branch at patch 8. ``small`` and ``tiny`` train on a 2-core CPU.
PRESETS: Dict[str, Dict[str, Any]] = {
    "base": dict(
        embed_dim=128,
        depths=(2, 2, 18, 2),
        num_heads=(4, 8, 16, 32),
        drop_path_rate=0.5,
        coarse_embed_dim=96,
        coarse_depths=(2, 2, 6, 2),
        coarse_num_heads=(3, 6, 12, 24),
        coarse_drop_path_rate=0.2,
    ),
    "small": dict(
        embed_dim=64,
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 8, 16),
        drop_path_rate=0.2,
        coarse_embed_dim=48,
        coarse_depths=(2, 2, 2, 2),
        coarse_num_heads=(2, 4, 8, 16),
        coarse_drop_path_rate=0.1,
    ),
    "tiny": dict(
        embed_dim=32,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 4, 8),
        drop_path_rate=0.1,
        coarse_embed_dim=24,
        coarse_depths=(2, 2, 2, 2),
        coarse_num_heads=(1, 2, 4, 8),
        coarse_drop_path_rate=0.1,
    ),
}


class UpConv(Convolution):
    """Nearest x2 upsampling, then 3x3 conv, GroupNorm and ReLU (the authors' ``up_conv``)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            kernel_size=3,
            act="relu",
            norm=group_norm(groups, out_channels),
            bias=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 2D maps with at least as many positions as channels (where oneDNN runs the 2x2 kernels well): the
        # same conv of the upsampled map computed at the input's resolution, 2.25x fewer FLOPs and a quarter
        # of the input stored for backward; exported or compiled: as written (no guard on symbolic sizes)
        if x.ndim == 4 and not is_compiling() and x.shape[2] * x.shape[3] >= x.shape[1]:
            return self.adn(upsampled_conv3x3(x, self.conv.weight, self.conv.bias))
        return super().forward(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def upsampled_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` for a 3x3
    ``weight``, without the upsampled map: each output pixel of row parity ``a`` and column parity ``b``
    sees a 2x2 neighbourhood of ``x`` through a 2x2 kernel summed from the 3x3 one (rows ``(0, 1 + 2)`` for
    even rows, ``(0 + 1, 2)`` for odd ones; columns likewise). The four kernels run as one convolution
    of the padded input, and their outputs are interleaved. The same sums in another order (to ~1e-7)."""
    out_channels, (h, w) = weight.shape[0], x.shape[2:]
    rows = [
        torch.stack([weight[:, :, 0], weight[:, :, 1] + weight[:, :, 2]], 2),
        torch.stack([weight[:, :, 0] + weight[:, :, 1], weight[:, :, 2]], 2),
    ]
    kernels = [
        torch.stack([r[..., 0], r[..., 1] + r[..., 2]] if b == 0 else [r[..., 0] + r[..., 1], r[..., 2]], -1)
        for r in rows
        for b in (0, 1)
    ]
    y = F.conv2d(F.pad(x, (1, 1, 1, 1)), torch.cat(kernels), None if bias is None else bias.repeat(4))
    y = y.unflatten(1, (2, 2, out_channels))  # (B, row parity, column parity, C, h + 1, w + 1)
    # parity a reads input rows (i - 1 + a, i + a): the padded conv's rows a .. a + h
    parts = [torch.stack([y[:, a, b, :, a : a + h, b : b + w] for b in (0, 1)], -1) for a in (0, 1)]
    return torch.stack(parts, -3).reshape(x.shape[0], out_channels, 2 * h, 2 * w)


class ConvDecoderStage(nn.Module):
    """Up-convolve ``x``, concatenate ``(skip, x)``, 3x3 conv + ReLU (the authors' ``Decoder``); with
    ``convs`` > 1, that many - 1 more 3x3 conv + GroupNorm + ReLU blocks (``refine``), as a U-Net decoder
    block has two."""

    def __init__(
        self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int, groups: int, convs: int = 1
    ) -> None:
        super().__init__()
        self.up = UpConv(spatial_dims, in_channels, out_channels, groups)
        self.fuse = conv_norm_relu(spatial_dims, skip_channels + out_channels, out_channels, 3)
        self.refine = nn.Sequential(
            *[conv_norm_relu(spatial_dims, out_channels, out_channels, 3, groups) for _ in range(convs - 1)]
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.refine(self.fuse(torch.cat([skip, self.up(x)], dim=1)))


class SwinDecoderStage(nn.Module):
    """The authors' ``Swin_Decoder``: up-convolve to ``in_channels // 2``, Swin blocks, 1x1 conv to
    ``in_channels // 4``; the skip gets its own 1x1 conv to ``in_channels // 4``; concatenate
    ``(skip, x)`` and 3x3 conv + ReLU to ``in_channels // 2``."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        num_heads: int,
        depth: int = 2,
        window_size: int = 7,
        drop_path_rate: float = 0.2,
        groups: int = 32,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        mid, quarter = in_channels // 2, in_channels // 4
        self.up = UpConv(spatial_dims, in_channels, mid, groups)
        self.swin = SwinStage(
            mid,
            depth,
            num_heads,
            window_size,
            torch.linspace(0, drop_path_rate, depth).tolist(),
            spatial_dims=spatial_dims,
            use_checkpoint=use_checkpoint,
        )
        self.reduce = conv_norm_relu(spatial_dims, mid, quarter, 1)
        self.skip_reduce = conv_norm_relu(spatial_dims, skip_channels, quarter, 1)
        self.fuse = conv_norm_relu(spatial_dims, 2 * quarter, mid, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.swin(self.up(x).movedim(1, -1)).movedim(-1, 1)
        return self.fuse(torch.cat([self.skip_reduce(skip), self.reduce(x)], dim=1))


class DSTransUNet(nn.Module):
    """DS-TransUNet for 2D (or 3D) segmentation, from MONAI's Swin building blocks and :class:`TIF`.

    Architecture arguments left as ``None`` are taken from ``preset``; any given one overrides it.
    ``DSTransUNet(preset="base")`` is the authors' configuration (171 M parameters);
    ``DSTransUNet.from_authors(path)`` loads their checkpoint into it.

    Any input size works: the input is zero-padded right/bottom to a multiple of the coarsest
    stride (64 for the presets) and the logits are cropped back to the input's size.

    In training on large maps (the fine branch's first token map of 4 MiB or more, e.g. ``base``
    at 512 px), cheap activations are recomputed in backward rather than stored (window attention,
    the pre-norm MLPs, the conv stem and the half-resolution decoder stage; ``bundle.networks.memory``);
    on smaller ones storing them is faster. ``use_checkpoint`` recomputes every block, at any size, but
    the last decoder stage and the head: their backward runs first, while everything stored is still held.
    Export with ``torch.jit.trace`` (MONAI's ``PatchEmbed`` cannot be scripted in 2D; the trace fixes the
    padding, so sides must be multiples of 64) or with ``torch.export`` / ``torch.onnx.export(..., dynamo=True)``,
    which keep batch, height and width symbolic (any size), in eval mode under ``torch.no_grad()``.

    Args:
        spatial_dims: 2, or 3 for volumes.
        in_channels: input channels.
        out_channels: output channels (classes; 1 for a binary sigmoid output).
        preset: ``"base"``, ``"small"`` or ``"tiny"``; fills the architecture arguments left ``None``.
        embed_dim: channels of the fine branch's first stage (doubling per stage).
        depths: Swin blocks per stage of the fine branch.
        num_heads: attention heads per stage of the fine branch.
        patch_size: patch size of the fine branch (the decoder's last two stages assume 4).
        drop_path_rate: stochastic depth of the fine branch.
        coarse_embed_dim: channels of the coarse branch's first stage.
        coarse_depths: Swin blocks per stage of the coarse branch.
        coarse_num_heads: attention heads per stage of the coarse branch.
        coarse_patch_size: patch size of the coarse branch (twice ``patch_size``).
        coarse_drop_path_rate: stochastic depth of the coarse branch.
        window_size: Swin window side, everywhere.
        mlp_ratio: Swin MLP width over the stage width.
        qkv_bias: learnable query/key/value bias in Swin attention.
        drop_rate: dropout in the Swin branches.
        attn_drop_rate: attention dropout in the Swin branches.
        dual_scale: use the coarse branch (False: single-scale ablation, skips from the fine branch only).
        fusion: ``"tif"`` (DS-TransUNet) or ``"concat"`` (the ablation's two scales without TIF).
        decoder: ``"swin"`` (Swin blocks in the deep decoder stages) or ``"conv"`` (plain conv stages).
        decoder_depth: Swin blocks per Swin decoder stage.
        decoder_num_heads: heads per Swin decoder stage, deepest first (default: width / 2 / 64).
        decoder_drop_path_rate: stochastic depth in each Swin decoder stage.
        tif_depth: transformer layers in each TIF branch.
        tif_args: other :class:`TIF` arguments (``coarse_heads``, ``coarse_head_dim``, ``coarse_mlp_dim``,
            ``fine_heads``, ``fine_head_dim``, ``fine_mlp_dim``, ``dropout``); the seed's values by default.
        norm_groups: GroupNorm groups in conv blocks (reduced to a divisor of the channels).
        stem_channels: channels of the CNN stem and the last decoder stage at full resolution (twice as
            many at half resolution); default ``embed_dim // 4``, the authors' 32 at ``base``. The only
            path at full resolution, so thin structures (vessels) may want more than ``tiny``'s 8
            (the bundle's configs: 16, with ``stem="conv"``).
        stem: the full-resolution stem: ``"linear"`` (the authors': a 1x1 conv of the image, so the
            full-resolution skip carries no features of its own) or ``"conv"`` (two 3x3 conv, GroupNorm
            and ReLU blocks, as a UNet's first stage: local features at full resolution, for thin structures).
        patch_embed: how both Swin branches embed patches: ``"linear"`` (Swin's and the authors': one
            linear map of each patch's pixels; ImageNet weights load into it) or ``"conv"`` (early
            convolutions, :class:`~bundle.networks.blocks.swin.ConvPatchEmbed`: stride-2 3x3 convs, so
            the tokens start from local features; ImageNet weights then load into everything else) or
            ``"stem"`` (the same early convolutions, from the CNN stem's half-resolution features instead of
            the image: a hybrid encoder whose tokens start from four convolutions deep, as a U-Net's would).
        stem_decoder_convs: 3x3 conv blocks in each of the two decoder stages fed by the stem (half and full
            resolution) once the skip is joined: 1, the authors'; 2, as a U-Net decoder block.
        deep_supervision: in training mode, also return the two auxiliary logits (from the deepest
            skip and from the H/4 decoder stage, upsampled to the input size), as
            ``[main, aux_deep, aux_quarter]`` for ``monai.losses.DeepSupervisionLoss``.
        aux_relu: put a ReLU on the auxiliary logits, as the authors' code does (a bug: it keeps
            their sigmoid at or above 0.5); only to reproduce their model.
        use_checkpoint: activation checkpointing of every Swin block, TIF, skip block and decoder stage but
            the last (see above), as MONAI's ``SwinUNETR(use_checkpoint=True)``; on the CPU with glibc it also
            hands freed heap memory back to the OS during backward (see ``bundle.networks.memory``).
        fine_weights: an ImageNet Swin (V1) classification checkpoint for the fine branch, in the
            Microsoft, timm, torchvision or Hugging Face layout (the paper: Swin-B,
            ``swin_base_patch4_window12_384_22k.pth``, into ``preset="base"``); see
            :func:`bundle.networks.load_swin_weights` for what is adapted. The load report is logged.
        coarse_weights: the same for the coarse branch (the paper: Swin-T, ``swin_tiny_patch4_window7_224.pth``;
            its patch-4 kernel is resampled to ``coarse_patch_size``).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        preset: str = "base",
        embed_dim: int | None = None,
        depths: Sequence[int] | None = None,
        num_heads: Sequence[int] | None = None,
        patch_size: int = 4,
        drop_path_rate: float | None = None,
        coarse_embed_dim: int | None = None,
        coarse_depths: Sequence[int] | None = None,
        coarse_num_heads: Sequence[int] | None = None,
        coarse_patch_size: int = 8,
        coarse_drop_path_rate: float | None = None,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        dual_scale: bool = True,
        fusion: str = "tif",
        decoder: str = "swin",
        decoder_depth: int = 2,
        decoder_num_heads: Sequence[int] | None = None,
        decoder_drop_path_rate: float = 0.2,
        tif_depth: int = 1,
        tif_args: Mapping[str, Any] | None = None,
        norm_groups: int = 32,
        stem_channels: int | None = None,
        stem: str = "linear",
        patch_embed: str = "linear",
        stem_decoder_convs: int = 1,
        deep_supervision: bool = False,
        aux_relu: bool = False,
        use_checkpoint: bool = False,
        fine_weights: str | os.PathLike | None = None,
        coarse_weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"DSTransUNet preset must be one of {sorted(PRESETS)}, got preset={preset!r}.")
        if spatial_dims not in (2, 3):
            raise ValueError(f"DSTransUNet spatial_dims must be 2 or 3, got spatial_dims={spatial_dims}.")
        if fusion not in ("tif", "concat"):
            raise ValueError(f"DSTransUNet fusion must be 'tif' or 'concat', got fusion={fusion!r}.")
        if decoder not in ("swin", "conv"):
            raise ValueError(f"DSTransUNet decoder must be 'swin' or 'conv', got decoder={decoder!r}.")
        if patch_embed not in ("linear", "conv", "stem"):
            raise ValueError(f"DSTransUNet patch_embed must be 'linear', 'conv' or 'stem', got {patch_embed!r}.")
        if stem not in ("linear", "conv"):
            raise ValueError(f"DSTransUNet stem must be 'linear' or 'conv', got stem={stem!r}.")
        if isinstance(stem_decoder_convs, bool) or not isinstance(stem_decoder_convs, int) or stem_decoder_convs < 1:
            raise ValueError(f"DSTransUNet stem_decoder_convs must be 1 or more, got {stem_decoder_convs!r}.")
        if patch_size != 4:
            raise ValueError(f"DSTransUNet's decoder ends in two x2 stages, so patch_size must be 4, got {patch_size}.")
        if coarse_patch_size % patch_size:
            raise ValueError(
                f"coarse_patch_size ({coarse_patch_size}) must be a multiple of patch_size ({patch_size})."
            )
        p = dict(PRESETS[preset])
        given = dict(
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            drop_path_rate=drop_path_rate,
            coarse_embed_dim=coarse_embed_dim,
            coarse_depths=coarse_depths,
            coarse_num_heads=coarse_num_heads,
            coarse_drop_path_rate=coarse_drop_path_rate,
        )
        p.update({k: v for k, v in given.items() if v is not None})
        n_stages = len(p["depths"])
        if dual_scale and len(p["coarse_depths"]) != n_stages:
            raise ValueError(
                f"depths {p['depths']} and coarse_depths {p['coarse_depths']} need the same number of stages."
            )

        self.spatial_dims = spatial_dims
        self.out_channels = out_channels
        self.dual_scale = dual_scale
        self.use_tif = dual_scale and fusion == "tif"
        self.deep_supervision = deep_supervision
        self.use_checkpoint = use_checkpoint
        self.stem = stem
        self.embed_from_stem = patch_embed == "stem"
        self.size_multiple = max(patch_size, coarse_patch_size if dual_scale else 1) * 2 ** (n_stages - 1)
        self.patch_size = patch_size
        self.embed_dim = p["embed_dim"]

        dim = p["embed_dim"]
        channels = [dim * 2**i for i in range(n_stages)]
        width = dim // 4 if stem_channels is None else int(stem_channels)
        if width < 1:
            raise ValueError(f"DSTransUNet stem_channels must be a positive number of channels, got {stem_channels}.")
        # patch_embed "stem": both branches read the stem's half-resolution map (2 * width channels), at half the stride
        branch_in, branch_stride = (2 * width, 2) if self.embed_from_stem else (in_channels, 1)
        branch_args = dict(
            window_size=window_size,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            use_checkpoint=use_checkpoint,
            patch_embed="conv" if self.embed_from_stem else patch_embed,
            norm_groups=norm_groups,
        )
        self.fine_branch = SwinBranch(
            spatial_dims,
            branch_in,
            dim,
            p["depths"],
            p["num_heads"],
            patch_size // branch_stride,
            drop_path_rate=p["drop_path_rate"],
            **branch_args,
        )
        coarse_channels = [0] * n_stages
        self.coarse_branch: SwinBranch | None = None
        if dual_scale:
            coarse_channels = [p["coarse_embed_dim"] * 2**i for i in range(n_stages)]
            self.coarse_branch = SwinBranch(
                spatial_dims,
                branch_in,
                p["coarse_embed_dim"],
                p["coarse_depths"],
                p["coarse_num_heads"],
                coarse_patch_size // branch_stride,
                drop_path_rate=p["coarse_drop_path_rate"],
                **branch_args,
            )
        self.fusions = nn.ModuleList(
            [
                TIF(cs, c, depth=tif_depth, output="pair", **dict(tif_args or {}))
                for cs, c in zip(coarse_channels, channels)
            ]
            if self.use_tif
            else []
        )
        self.skip_blocks = nn.ModuleList(
            [
                nn.Sequential(
                    conv_norm_relu(spatial_dims, c + cs, c, 3, norm_groups),
                    conv_norm_relu(spatial_dims, c, c, 3, norm_groups),
                )
                for c, cs in zip(channels, coarse_channels)
            ]
        )

        heads = list(decoder_num_heads or [max(1, c // 2 // 64) for c in reversed(channels[1:])])
        if len(heads) != n_stages - 1:
            raise ValueError(f"decoder_num_heads needs {n_stages - 1} entries (deepest first), got {heads}.")
        self.decoder = nn.ModuleList()
        for i, c in enumerate(reversed(channels[1:])):
            if decoder == "swin":
                stage: nn.Module = SwinDecoderStage(
                    spatial_dims,
                    c,
                    c // 2,
                    heads[i],
                    decoder_depth,
                    window_size,
                    decoder_drop_path_rate,
                    norm_groups,
                    use_checkpoint,
                )
            else:
                stage = ConvDecoderStage(spatial_dims, c, c // 2, c // 2, norm_groups)
            self.decoder.append(stage)
        # a small CNN stem on the raw image gives the skips at full and half resolution
        self.stem_full: nn.Module = (
            conv_norm_relu(spatial_dims, in_channels, width, 1, relu=False)
            if stem == "linear"
            else nn.Sequential(
                conv_norm_relu(spatial_dims, in_channels, width, 3, norm_groups),
                conv_norm_relu(spatial_dims, width, width, 3, norm_groups),
            )
        )
        self.stem_half = nn.Sequential(
            Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2),
            conv_norm_relu(spatial_dims, width, 2 * width, 3, norm_groups),
            conv_norm_relu(spatial_dims, 2 * width, 2 * width, 3, norm_groups),
        )
        for c_in, c_out in ((dim, 2 * width), (2 * width, width)):
            self.decoder.append(ConvDecoderStage(spatial_dims, c_in, c_out, c_out, norm_groups, stem_decoder_convs))
        self.head = conv_norm_relu(spatial_dims, width, out_channels, 1, relu=False)
        self.aux_heads = nn.ModuleList(
            [conv_norm_relu(spatial_dims, c, out_channels, 1, relu=aux_relu) for c in (channels[-1], channels[0])]
            if deep_supervision
            else []
        )
        # ImageNet Swin weights last: they replace the Swin initialisation of the branches
        if fine_weights:
            load_swin_weights(self.fine_branch, fine_weights, target_name="DSTransUNet fine branch")
        if coarse_weights:
            if self.coarse_branch is None:
                raise ValueError("coarse_weights given, but dual_scale=False: this DSTransUNet has no coarse branch.")
            load_swin_weights(self.coarse_branch, coarse_weights, target_name="DSTransUNet coarse branch")

    # -- forward -----------------------------------------------------------------------------
    def _run(self, module: Callable[..., Any], *args: torch.Tensor, cheap: bool = False) -> Any:
        """Run ``module``, recomputing it in backward under ``use_checkpoint``, or when it is ``cheap``
        (a conv stage at full or half resolution, whose activations are large and FLOPs few) and the maps
        are large."""
        if self.training and (recomputes(self.use_checkpoint) or (cheap and recomputes(cheap=True))):
            out = checkpoint(module, *args)
            return release_heap_in_backward(out) if self.use_checkpoint else out
        return module(*args)

    def _skips(self, x: torch.Tensor) -> List[torch.Tensor]:
        fine = self.fine_branch(x)
        if self.coarse_branch is None:
            return [self._run(block, e) for block, e in zip(self.skip_blocks, fine)]
        coarse = self.coarse_branch(x)
        skips = []
        for i, (e, r) in enumerate(zip(fine, coarse)):
            if self.use_tif:
                e, r = self._run(self.fusions[i], e, r)
            r = F.interpolate(r, size=e.shape[2:], mode="nearest")
            skips.append(self._run(self.skip_blocks[i], torch.cat([e, r], dim=1)))
        return skips

    def _full_resolution(self, x: torch.Tensor, stem_full: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder[-1](x, stem_full))

    def forward(self, x: torch.Tensor) -> torch.Tensor | List[torch.Tensor]:
        size = list(x.shape[2:])
        x, _ = pad_to_multiple(x, [self.size_multiple] * len(size))
        if self.training and recomputes():  # a backward follows: is the first token map large enough to recompute?
            tokens = x.shape[0] * math.prod(s // self.patch_size for s in x.shape[2:])
            with cheap_recomputation(tokens * self.embed_dim * x.element_size()):
                return self._forward(x, size)
        return self._forward(x, size)

    def _forward(self, x: torch.Tensor, size: List[int]) -> torch.Tensor | List[torch.Tensor]:
        # the conv stem's full-resolution activations are worth recomputing; a 1x1 conv's output is kept anyway
        stem_full = self.stem_full(x) if self.stem == "linear" else self._run(self.stem_full, x, cheap=True)
        stem_half = self._run(self.stem_half, stem_full, cheap=True)
        skips = self._skips(stem_half if self.embed_from_stem else x)
        d = skips[-1]
        n_swin = len(skips) - 1
        for i in range(n_swin):
            d = self._run(self.decoder[i], d, skips[n_swin - 1 - i])
        quarter = d
        d = self._run(self.decoder[n_swin], d, stem_half, cheap=True)
        # not recomputed: the last stage's backward runs first, while everything stored is still held anyway
        out = _crop(self._full_resolution(d, stem_full), size)
        if not (self.deep_supervision and self.training):
            return out
        aux = [self.aux_heads[0](skips[-1]), self.aux_heads[1](quarter)]
        return [out] + [_crop(F.interpolate(a, size=x.shape[2:], mode="nearest"), size) for a in aux]

    # -- the authors' weights ----------------------------------------------------------------
    @classmethod
    def from_authors(cls, state_dict: str | os.PathLike | Mapping[str, torch.Tensor], **kwargs: Any) -> "DSTransUNet":
        """Build a model configured like the authors' ``UNet(dim=128, n_class)`` and load their weights.

        Args:
            state_dict: the authors' state dict, or a path to a checkpoint holding it (a bare state
                dict, or one under ``"state_dict"`` / ``"model"``; ``module.`` prefixes are removed).
            kwargs: other constructor arguments (e.g. ``use_checkpoint=True``); the architecture is fixed.

        The model has deep supervision with the authors' ReLU on the auxiliary logits, so that it
        computes what theirs computes; set ``model.deep_supervision = False`` to get one output.
        """
        sd = load_authors_state_dict(state_dict)
        out_channels = sd["final.weight"].shape[0]
        in_channels = sd["down1.weight"].shape[1]
        args: Dict[str, Any] = dict(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            preset="base",
            deep_supervision=True,
            aux_relu=True,
        )
        args.update(kwargs)
        model = cls(**args)
        model.load_state_dict(convert_authors_state_dict(sd), strict=True)
        return model


def _crop(x: torch.Tensor, size: List[int]) -> torch.Tensor:
    if len(size) == 2:
        return x[:, :, : size[0], : size[1]]
    return x[:, :, : size[0], : size[1], : size[2]]


# The authors' parameter names -> ours. TIF keys inside ``fusions.*`` are renamed by TIF itself.
_AUTHORS_KEY_RULES: List[Tuple[str, str]] = [
    (r"^encoder\.", "fine_branch."),
    (r"^encoder2\.", "coarse_branch."),
    (r"_branch\.layers\.(\d+)\.blocks\.", r"_branch.stages.\1.blocks."),
    (r"_branch\.layers\.(\d+)\.downsample\.", r"_branch.merges.\1."),
    (r"_branch\.norm(\d+)\.", r"_branch.norms.\1."),
    (r"\.mlp\.fc1\.", ".mlp.linear1."),
    (r"\.mlp\.fc2\.", ".mlp.linear2."),
    (r"^cross_att_(\d+)\.", lambda m: f"fusions.{int(m.group(1)) - 1}."),
    (r"^change(\d+)\.conv\.0\.", lambda m: f"skip_blocks.{int(m.group(1)) - 1}.0.conv."),
    (r"^change(\d+)\.conv\.1\.", lambda m: f"skip_blocks.{int(m.group(1)) - 1}.0.adn.N."),
    (r"^change(\d+)\.conv\.3\.", lambda m: f"skip_blocks.{int(m.group(1)) - 1}.1.conv."),
    (r"^change(\d+)\.conv\.4\.", lambda m: f"skip_blocks.{int(m.group(1)) - 1}.1.adn.N."),
    (r"^layer(\d+)\.up\.layer\.", lambda m: f"decoder.{int(m.group(1)) - 1}.swin."),
    (r"^layer(\d+)\.up\.up\.up\.1\.", lambda m: f"decoder.{int(m.group(1)) - 1}.up.conv."),
    (r"^layer(\d+)\.up\.up\.up\.2\.", lambda m: f"decoder.{int(m.group(1)) - 1}.up.adn.N."),
    (r"^layer(\d+)\.up\.up\.1\.", lambda m: f"decoder.{int(m.group(1)) - 1}.up.conv."),
    (r"^layer(\d+)\.up\.up\.2\.", lambda m: f"decoder.{int(m.group(1)) - 1}.up.adn.N."),
    (r"^layer(\d+)\.up\.conv_relu\.0\.", lambda m: f"decoder.{int(m.group(1)) - 1}.reduce.conv."),
    (r"^layer(\d+)\.conv2\.0\.", lambda m: f"decoder.{int(m.group(1)) - 1}.skip_reduce.conv."),
    (r"^layer(\d+)\.conv_relu\.0\.", lambda m: f"decoder.{int(m.group(1)) - 1}.fuse.conv."),
    (r"^down1\.", "stem_full.conv."),
    (r"^down2\.conv\.1\.", "stem_half.1.conv."),
    (r"^down2\.conv\.2\.", "stem_half.1.adn.N."),
    (r"^down2\.conv\.4\.", "stem_half.2.conv."),
    (r"^down2\.conv\.5\.", "stem_half.2.adn.N."),
    (r"^final\.", "head.conv."),
    (r"^loss1\.0\.", "aux_heads.0.conv."),
    (r"^loss2\.0\.", "aux_heads.1.conv."),
]


def convert_authors_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename the keys of the authors' DS-TransUNet state dict to :class:`DSTransUNet`'s."""
    converted = {}
    for key, value in state_dict.items():
        for pattern, repl in _AUTHORS_KEY_RULES:
            key = re.sub(pattern, repl, key)
        converted[key] = value
    return converted


def load_authors_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Read the authors' state dict from a mapping or a checkpoint file, unwrapping common containers."""
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"DS-TransUNet checkpoint not found: {os.fspath(source)}")
        source = torch.load(source, map_location="cpu", weights_only=True)
    sd = dict(source)
    for container in ("state_dict", "model", "network"):
        if container in sd and isinstance(sd[container], Mapping):
            sd = dict(sd[container])
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}
    if "final.weight" not in sd or "down1.weight" not in sd:
        raise KeyError("not an authors' DS-TransUNet state dict: keys 'final.weight' and 'down1.weight' are missing.")
    return sd
