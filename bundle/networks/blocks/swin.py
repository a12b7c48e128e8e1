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

"""Swin Transformer encoder branch built from MONAI's Swin building blocks.

MONAI's ``SwinTransformer`` returns maps *after* patch merging with an affine-free norm, and its
``get_window_size`` shrinks the window (and drops the shift) on maps not larger than the window.
DS-TransUNet's branches, like the original Swin code, keep the window and shift fixed and zero-pad
the map to a multiple of the window, and take each stage's output *before* merging through a
learned LayerNorm. These classes reuse MONAI's ``PatchEmbed``, ``SwinTransformerBlock``,
``WindowAttention`` and ``PatchMergingV2``, changing only the windowing and computing window
attention with ``scaled_dot_product_attention`` in training too (MONAI uses it only without autograd).

``window_partition``, ``window_reverse`` and ``shifted_window_mask`` give MONAI's values, written so
that ``torch.export`` (ONNX's dynamo exporter) can keep height and width symbolic: windows counted by
ceiling division, explicit copies instead of ``contiguous()``, the shift mask from index comparisons.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import PatchEmbed
from monai.networks.layers import Conv
from monai.networks.nets.swin_unetr import (
    PatchMergingV2,
    SwinTransformerBlock,
    WindowAttention,
)
from monai.utils import ensure_tuple_rep

from bundle.networks.blocks.conv import conv_norm_relu
from bundle.networks.blocks.mlp import prenorm_mlp
from bundle.networks.memory import checkpoint, recomputes, release_heap_in_backward
from bundle.networks.padding import pad_to_multiple, padded_sizes
from bundle.networks.tracing import is_compiling

__all__ = [
    "PROJECT_FIRST_PADDING",
    "ConvPatchEmbed",
    "FusedWindowAttention",
    "SwinBlock",
    "SwinStage",
    "SwinBranch",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]


# SwinBlock projects q/k/v before padding the map to whole windows when padding adds this share of tokens or more
PROJECT_FIRST_PADDING = 1.25


class FusedWindowAttention(WindowAttention):
    """MONAI's ``WindowAttention`` computed by ``scaled_dot_product_attention``, with the relative
    position bias and shift mask as one additive mask, in training and inference alike.

    The bias is learned, and no fused CPU kernel gives its gradient; so in training the windows'
    query/key/value projection and attention are recomputed in backward, keeping neither q, k, v
    nor any attention matrix (about a tenth of the block's FLOPs, and 4 of its 6 stored tensors).
    :class:`SwinBlock` calls :meth:`attend` and the projection itself, recomputing the norm and the
    windowing too.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if recomputes(cheap=True):
            out = checkpoint(self.attend, x, mask)
        else:
            out = self.attend(x, mask)
        return self.proj_drop(self.proj(out))

    def attend(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Windowed multi-head attention of ``x`` (windows, tokens, channels), before the output projection."""
        return self.attend_projected(self.qkv(x), mask)

    def attend_projected(self, qkv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """:meth:`attend` from the windows' query/key/value projection ``qkv`` (windows, tokens, 3 * channels)."""
        b, n, c = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        head_dim = c // self.num_heads
        qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index[:n, :n].reshape(-1)]
        attn_mask = bias.reshape(n, n, self.num_heads).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            # a 4D mask (not a 5D broadcast) keeps SDPA off its slowest path
            attn_mask = (attn_mask + mask.unsqueeze(1)).repeat(b // mask.shape[0], 1, 1, 1)
        dropout_p = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2], attn_mask=attn_mask.to(qkv.dtype), dropout_p=dropout_p
        )
        out = out.transpose(1, 2)
        if torch.compiler.is_exporting():
            # the exporter's own SDPA decomposition returns (b, heads, n, d) contiguous: copy explicitly
            return out.clone(memory_format=torch.contiguous_format).view(b, n, c)
        # SDPA returns (b, heads, n, d) laid out as (b, n, heads, d): no copy here
        return out.contiguous().view(b, n, c)


class SwinBlock(SwinTransformerBlock):
    """MONAI's ``SwinTransformerBlock`` with the original Swin windowing: the window never shrinks,
    the shift is always applied, and the (normalised) map is zero-padded to a multiple of the window.

    Takes and returns channel-last maps ``(B, *spatial, C)``; same arguments as MONAI's block.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Sequence[int],
        shift_size: Sequence[int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__(
            dim=dim,
            num_heads=num_heads,
            window_size=window_size,
            shift_size=shift_size,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop=drop,
            attn_drop=attn_drop,
            drop_path=drop_path,
            use_checkpoint=use_checkpoint,
        )
        self.attn = FusedWindowAttention(
            dim, num_heads=num_heads, window_size=window_size, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop
        )
        self.window_size = list(window_size)
        self.shift_size = list(shift_size)
        self.shifted = any(s > 0 for s in shift_size)

    def forward(self, x: torch.Tensor, mask_matrix: torch.Tensor | None) -> torch.Tensor:
        # as MONAI's block, but checkpointing only where there is a backward to save memory for
        if recomputes(self.use_checkpoint):
            # the attention branch itself, not forward_part1, whose cheap recomputation would nest in this one
            attn = checkpoint(self.attention_branch, x, mask_matrix if self.shifted else None)
            x = x + self.drop_path(release_heap_in_backward(attn))
            return x + release_heap_in_backward(checkpoint(self.forward_part2, x))
        x = x + self.drop_path(self.forward_part1(x, mask_matrix))
        return x + self.forward_part2(x)

    def forward_part2(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(prenorm_mlp(x, self.norm2, self.mlp))

    def forward_part1(self, x: torch.Tensor, mask_matrix: torch.Tensor | None) -> torch.Tensor:
        mask = mask_matrix if self.shifted else None
        if recomputes(cheap=True):  # backward recomputes the branch from x, which the residual keeps anyway
            return checkpoint(self.attention_branch, x, mask)
        return self.attention_branch(x, mask)

    def attention_branch(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # the output projection is per token, so it commutes with the windowing: on the cropped map it
        # skips the padded tokens
        return self.attn.proj_drop(self.attn.proj(self.windowed_attention(x, mask)))

    def windowed_attention(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The attention branch up to its output projection: norm, query/key/value, (shifted, zero-padded)
        windows, attention within each window, and back to the map's own size."""
        spatial = list(x.shape[1:-1])
        x = self.norm1(x)
        # a padded token is zero after the norm, so its q/k/v is the bias alone: where padding adds many tokens,
        # project the map and pad with the bias (at 256 px the fine branch's 16 x 16 map becomes 21 x 21, 72%
        # more tokens); where it adds few, pad the map, whose channels cost a third of q/k/v's to window
        # (exported or compiled: always the map, so that no guard depends on symbolic sizes)
        project_first = not is_compiling() and math.prod(
            padded_sizes(spatial, self.window_size)
        ) >= PROJECT_FIRST_PADDING * math.prod(spatial)
        if project_first:
            x, cropped = _pad_projection(self.attn.qkv(x), self.window_size, self.attn.qkv.bias)
        else:
            x, cropped = pad_to_multiple(x, self.window_size, channel_last=True)
        padded: List[int] = [x.shape[0]] + list(x.shape[1:-1])
        dims = list(range(1, len(spatial) + 1))
        if self.shifted:
            x = torch.roll(x, shifts=[-s for s in self.shift_size], dims=dims)
        windows = window_partition(x, self.window_size)
        windows = self.attn.attend_projected(windows if project_first else self.attn.qkv(windows), mask)
        x = window_reverse(windows, self.window_size, padded)
        if self.shifted:
            x = torch.roll(x, shifts=self.shift_size, dims=dims)
        if cropped:
            x = (
                x[:, : spatial[0], : spatial[1]]
                if len(spatial) == 2
                else x[:, : spatial[0], : spatial[1], : spatial[2]]
            )
            if torch.compiler.is_exporting():  # a fresh layout: no stride guard on whether anything was padded
                x = x.clone(memory_format=torch.contiguous_format)
        return x


def _pad_projection(
    projected: torch.Tensor, window_size: Sequence[int], bias: torch.Tensor | None
) -> Tuple[torch.Tensor, bool]:
    """The projection of the zero-padded map, from the projection ``projected`` (B, *spatial, C) of the map:
    the padded tokens get the projection's ``bias`` (what a zero token projects to); and whether it was padded."""
    padded, was_padded = pad_to_multiple(projected, window_size, channel_last=True)
    if not was_padded or bias is None:
        return padded, was_padded
    inside = projected.new_ones((), dtype=torch.bool)
    for axis, size in enumerate(projected.shape[1:-1]):  # index comparisons: no guard on symbolic sizes
        shape = [1] * (projected.ndim - 1)
        shape[1 + axis] = -1
        inside = inside & (_positions(projected, padded.shape[1 + axis]) < size).view(shape)
    return torch.where(inside.unsqueeze(-1), padded, bias.to(padded.dtype)), True


class SwinStage(nn.Module):
    """``depth`` Swin blocks at one resolution, alternating plain and shifted windows.

    Takes and returns channel-last maps ``(B, *spatial, C)``.

    Args:
        dim: channels.
        depth: number of blocks.
        num_heads: attention heads.
        window_size: window side (int or one per spatial dim).
        drop_path: stochastic depth rate of each block.
        mlp_ratio: MLP hidden width over ``dim``.
        qkv_bias: learnable bias on query, key and value.
        drop: dropout rate.
        attn_drop: attention dropout rate.
        spatial_dims: 2 or 3.
        use_checkpoint: activation checkpointing inside each block (as MONAI's Swin blocks).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: Sequence[int] | int,
        drop_path: Sequence[float],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        spatial_dims: int = 2,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.window_size = list(ensure_tuple_rep(window_size, spatial_dims))
        self.shift_size = [w // 2 for w in self.window_size]
        self.blocks = nn.ModuleList(
            [
                SwinBlock(
                    dim,
                    num_heads,
                    self.window_size,
                    [0] * spatial_dims if i % 2 == 0 else self.shift_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop=drop,
                    attn_drop=attn_drop,
                    drop_path=float(drop_path[i]),
                    use_checkpoint=use_checkpoint,
                )
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = shifted_window_mask(padded_sizes(x.shape[1:-1], self.window_size), self.window_size, self.shift_size, x)
        for block in self.blocks:
            x = block(x, mask)
        return x


def window_partition(x: torch.Tensor, window_size: Sequence[int]) -> torch.Tensor:
    """``(B, *spatial, C)`` (spatial a multiple of the window) to ``(B * windows, tokens, C)``, as MONAI's
    ``window_partition``, with an explicit copy in place of ``contiguous()``: whether the permuted map is
    already contiguous (one window) is then no guard for an exporter with symbolic sizes."""
    shape: List[int] = [x.shape[0]]
    for s, w in zip(x.shape[1:-1], window_size):
        shape += [s // w, w]
    n = len(window_size)
    order = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [2 * n + 1]
    windows = x.view(shape + [x.shape[-1]]).permute(order).clone(memory_format=torch.contiguous_format)
    return windows.view(-1, math.prod(window_size), x.shape[-1])


def window_reverse(windows: torch.Tensor, window_size: Sequence[int], dims: Sequence[int]) -> torch.Tensor:
    """The inverse of :func:`window_partition`: ``(B * windows, tokens, C)`` to ``(B, *spatial, C)`` for
    ``dims`` = ``[B, *spatial]``, as MONAI's ``window_reverse`` (explicit copy as above)."""
    n = len(window_size)
    shape: List[int] = [dims[0]] + [s // w for s, w in zip(dims[1:], window_size)] + list(window_size) + [-1]
    order = [0] + [j for i in range(n) for j in (1 + i, 1 + n + i)] + [2 * n + 1]
    x = windows.view(shape).permute(order).clone(memory_format=torch.contiguous_format)
    return x.view(list(dims) + [windows.shape[-1]])


def _positions(like: torch.Tensor, size: int) -> torch.Tensor:
    """``arange(size)`` on ``like``'s device, made from ``like``: a traced graph (TorchScript) then creates it
    on the device of its input at run time, where ``arange(..., device=...)`` would fix the tracing device."""
    return like.new_ones(size, dtype=torch.long).cumsum(0) - 1


def shifted_window_mask(
    dims: Sequence[int], window_size: Sequence[int], shift_size: Sequence[int], like: torch.Tensor
) -> torch.Tensor:
    """MONAI's ``compute_mask``, the same values, from index comparisons instead of slice assignment:
    an exporter with symbolic sizes then needs no guard on whether a region is empty (one window).

    ``like`` is any tensor on the mask's device (the map it is for): the mask is made from it, so that
    a model traced on one device runs on another.

    Returns ``(windows, tokens, tokens)``: 0 where two tokens of a shifted window came from the same
    region of the map, -100 where the cyclic shift brought them together from different ones.
    """
    region = like.new_zeros((1,), dtype=torch.long)
    for size, window, shift in zip(dims, window_size, shift_size):
        index = _positions(like, size)
        # MONAI's regions along one axis: [0, size - window), [size - window, size - shift), [size - shift, size)
        along = (index >= size - window).long() + (index >= size - shift).long()
        region = region.unsqueeze(-1) * 3 + along
    region = region.reshape([1] + list(dims) + [1]).float()
    windows = window_partition(region, window_size).squeeze(-1)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return torch.where(diff != 0, torch.full_like(diff, -100.0), torch.zeros_like(diff))


def _init_swin_weights(module: nn.Module) -> None:
    """The Swin Transformer's own initialisation (the authors' encoders start from it before loading
    ImageNet weights): truncated normal (std 0.02) linear weights with zero bias, LayerNorm 1 and 0.
    PyTorch's default linear init is about 5x larger at these widths and slows training from scratch."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ConvPatchEmbed(nn.Module):
    """Patch embedding by early convolutions (Xiao et al., "Early Convolutions Help Transformers See
    Better", NeurIPS 2021): ``log2(patch_size)`` stride-2 3x3 convolutions with GroupNorm and ReLU,
    widening to ``embed_dim``, then a 1x1 projection and LayerNorm, where Swin patchifies with one
    linear map of each patch's pixels. The tokens then carry local features such as edges and thin lines.

    Returns a channel-first map of ``embed_dim`` channels at ``ceil(size / patch_size)``, as MONAI's
    ``PatchEmbed`` does.

    Args:
        patch_size: side of the patches; a power of 2.
        in_channels: input channels.
        embed_dim: channels of the tokens.
        spatial_dims: 2 or 3.
        norm_groups: GroupNorm groups of the convolutions (reduced to a divisor of the channels).
    """

    def __init__(
        self, patch_size: int, in_channels: int, embed_dim: int, spatial_dims: int = 2, norm_groups: int = 32
    ) -> None:
        super().__init__()
        steps = patch_size.bit_length() - 1  # log2 of a power of 2
        if patch_size < 2 or patch_size & (patch_size - 1):
            raise ValueError(f"ConvPatchEmbed needs a patch_size that is a power of 2 (2, 4, 8...), got {patch_size}.")
        # halving back from embed_dim, one width per stride; at least 8 channels for the first convolutions
        widths = [max(8, embed_dim // 2 ** (steps - 1 - i)) for i in range(steps)]
        self.convs = nn.Sequential(
            *[
                conv_norm_relu(spatial_dims, c_in, c_out, 3, norm_groups, strides=2)
                for c_in, c_out in zip([in_channels] + widths[:-1], widths)
            ]
        )
        self.proj = Conv[Conv.CONV, spatial_dims](widths[-1], embed_dim, kernel_size=1)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.convs(x))
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class SwinBranch(nn.Module):
    """One Swin encoder branch of DS-TransUNet: patch embedding, then per stage Swin blocks, a
    LayerNorm'd output taken before merging, and patch merging to the next stage.

    Returns a list of channel-first maps, one per stage, of ``embed_dim * 2**i`` channels at
    ``1 / (patch_size * 2**i)`` of the (right/bottom zero-padded) input size.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        embed_dim: channels of the first stage.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        patch_size: side of the patches embedded by the stem.
        window_size: window side.
        mlp_ratio: MLP hidden width over the stage width.
        qkv_bias: learnable bias on query, key and value.
        drop_rate: dropout rate.
        attn_drop_rate: attention dropout rate.
        drop_path_rate: stochastic depth, rising linearly from 0 to this over all blocks.
        use_checkpoint: activation checkpointing inside each block.
        patch_embed: ``"linear"`` (Swin's: one linear map of each patch's pixels, MONAI's ``PatchEmbed``)
            or ``"conv"`` (early convolutions, :class:`ConvPatchEmbed`).
        norm_groups: GroupNorm groups of the early convolutions (``patch_embed="conv"``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        patch_size: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        patch_embed: str = "linear",
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} must have one entry per stage.")
        if patch_embed not in ("linear", "conv"):
            raise ValueError(f"patch_embed must be 'linear' or 'conv', got patch_embed={patch_embed!r}.")
        self.patch_embed: nn.Module = (
            PatchEmbed(patch_size, in_channels, embed_dim, nn.LayerNorm, spatial_dims)
            if patch_embed == "linear"
            else ConvPatchEmbed(patch_size, in_channels, embed_dim, spatial_dims, norm_groups)
        )
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.channels = [embed_dim * 2**i for i in range(len(depths))]
        self.stages = nn.ModuleList()
        self.merges = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i, (dim, depth, heads) in enumerate(zip(self.channels, depths, num_heads)):
            start = sum(depths[:i])
            self.stages.append(
                SwinStage(
                    dim,
                    depth,
                    heads,
                    window_size,
                    rates[start : start + depth],
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    spatial_dims=spatial_dims,
                    use_checkpoint=use_checkpoint,
                )
            )
            self.norms.append(nn.LayerNorm(dim))
            if i < len(depths) - 1:
                self.merges.append(PatchMergingV2(dim, nn.LayerNorm, spatial_dims))
        self.apply(_init_swin_weights)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.pos_drop(self.patch_embed(x))
        x = x.movedim(1, -1)  # channel-last inside the branch
        outputs: List[torch.Tensor] = []
        for i, (stage, norm) in enumerate(zip(self.stages, self.norms)):
            x = stage(x)
            outputs.append(norm(x).movedim(-1, 1))
            if i < len(self.merges):
                x = self.merges[i](x)
        return outputs
