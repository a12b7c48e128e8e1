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

"""Transformer Interactive Fusion (TIF), the fusion block of DS-TransUNet (Lin et al., IEEE TIM 2022).

TIF lets two feature maps of one image, seen at two scales, exchange global context: each map is
summarised by one global token, which is prepended to the *other* map's tokens before a pre-norm
transformer encoder runs over them. Attention is global over all tokens of a map, computed with
``torch.nn.functional.scaled_dot_product_attention`` so that no N x N matrix is kept for backward.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import MLPBlock

from bundle.networks.blocks.mlp import prenorm_mlp

__all__ = ["TIF", "TIFLevels", "TIFTransformer", "GlobalSelfAttention"]


class GlobalSelfAttention(nn.Module):
    """Multi-head self-attention over all tokens, with a head width independent of the input width.

    Args:
        dim: token width.
        num_heads: number of heads.
        head_dim: width of each head (the inner width is ``num_heads * head_dim``).
        dropout: dropout on the attention weights and on the output.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        inner_dim = num_heads * head_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * inner_dim, bias=False)
        # the seed leaves out the output projection when it would be square with a single head
        self.out_proj: nn.Module = nn.Identity() if (num_heads == 1 and head_dim == dim) else nn.Linear(inner_dim, dim)
        self.out_drop = nn.Dropout(dropout) if not isinstance(self.out_proj, nn.Identity) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).contiguous().view(b, n, self.num_heads * self.head_dim)
        return self.out_drop(self.out_proj(out))


class TIFTransformerLayer(nn.Module):
    """Pre-norm ViT layer: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (MONAI's ``MLPBlock``, GELU)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = GlobalSelfAttention(dim, num_heads, head_dim, dropout)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, dropout, act="GELU", dropout_mode="vit")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + prenorm_mlp(x, self.mlp_norm, self.mlp)


class TIFTransformer(nn.Module):
    """A stack of ``depth`` pre-norm transformer layers without positional encoding."""

    def __init__(self, dim: int, depth: int, num_heads: int, head_dim: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [TIFTransformerLayer(dim, num_heads, head_dim, mlp_dim, dropout) for _ in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


# Seed / authors' (`Cross_Att`) parameter names -> ours, relative to the TIF's own prefix.
_SEED_KEY_RULES = [
    (r"^transformer_s\.", "r_transformer."),
    (r"^transformer_l\.", "e_transformer."),
    (r"^norm_s\.", "r_token_norm."),
    (r"^linear_s\.", "r_token_proj."),
    (r"^norm_l\.", "e_token_norm."),
    (r"^linear_l\.", "e_token_proj."),
    (r"\.layers\.(\d+)\.0\.norm\.", r".layers.\1.attn_norm."),
    (r"\.layers\.(\d+)\.0\.fn\.to_qkv\.", r".layers.\1.attn.qkv."),
    (r"\.layers\.(\d+)\.0\.fn\.to_out\.0\.", r".layers.\1.attn.out_proj."),
    (r"\.layers\.(\d+)\.1\.norm\.", r".layers.\1.mlp_norm."),
    (r"\.layers\.(\d+)\.1\.fn\.net\.0\.", r".layers.\1.mlp.linear1."),
    (r"\.layers\.(\d+)\.1\.fn\.net\.3\.", r".layers.\1.mlp.linear2."),
]
_SEED_KEY_PATTERN = re.compile(r"^(transformer_[sl]|norm_[sl]|linear_[sl])\.")


def convert_seed_tif_key(key: str) -> str:
    """Map one key of the seed's TIF (or the authors' ``Cross_Att``) to this module's name for it."""
    for pattern, repl in _SEED_KEY_RULES:
        key = re.sub(pattern, repl, key)
    return key


# The seed's keyword names (``s``: the coarse, "small" map; ``l``: the fine, "large" one), accepted
# with a FutureWarning until 0.3.
_OLD_TIF_ARGUMENTS = {
    "dim_s": "coarse_channels",
    "dim_l": "fine_channels",
    "heads_s": "coarse_heads",
    "head_dim_s": "coarse_head_dim",
    "mlp_dim_s": "coarse_mlp_dim",
    "heads_l": "fine_heads",
    "head_dim_l": "fine_head_dim",
    "mlp_dim_l": "fine_mlp_dim",
}


def _renamed_arguments(given: Mapping[str, Any], values: Dict[str, Any]) -> Dict[str, Any]:
    for old, value in given.items():
        if old not in _OLD_TIF_ARGUMENTS:
            raise TypeError(f"TIF got an unexpected keyword argument {old!r}.")
        new = _OLD_TIF_ARGUMENTS[old]
        warnings.warn(
            f"TIF({old}=...) is deprecated since 0.2 and will be removed in 0.3; use {new}.",
            FutureWarning,
            stacklevel=3,
        )
        values[new] = value
    return values


class TIF(nn.Module):
    """Transformer Interactive Fusion of a ``fine`` feature map (``fine_channels``) and a ``coarse``
    one (``coarse_channels``): the same image seen at two scales.

    ``TIF(coarse_channels, fine_channels)`` computes what the seed's TIF computes: both maps become
    token sequences; each map's global token (LayerNorm, mean over tokens, Linear to the other map's
    width) is prepended to the other map's tokens; the coarse tokens pass a transformer of width
    ``coarse_channels`` (3 heads of 32, MLP 128) and the fine tokens one of width ``fine_channels``
    (1 head of 64, MLP 256); the prepended token is dropped and the tokens go back to their maps.

    Works on 2D and 3D maps (any number of spatial dims) of different widths and spatial sizes.
    Parameter names keep the paper's letters, ``e_*`` for the fine map and ``r_*`` for the coarse
    one, so that state dicts stay as they were.

    Outputs:
        - ``output="sum"`` (default, the seed's): ``fine + coarse``, on the fine grid and width. When
          the coarse map's spatial size differs, it is resampled onto the fine grid with
          ``F.interpolate(mode=resample_mode)``; when the widths differ, it is first projected to
          ``fine_channels`` by a learned per-token Linear (``r_to_e``; it exists only in that case).
        - ``output="pair"`` (the authors' DS-TransUNet): the tuple ``(fine, coarse)``, each on its own grid.

    State dicts saved from the seed's TIF or the authors' ``Cross_Att`` (keys such as
    ``transformer_s.layers.0.0.fn.to_qkv.weight``) load as they are; they are renamed on loading.

    Args:
        coarse_channels: channels of the coarse map (the seed's ``dim_s``).
        fine_channels: channels of the fine map (the seed's ``dim_l``).
        coarse_heads: attention heads of the coarse transformer.
        coarse_head_dim: width of each head of the coarse transformer.
        coarse_mlp_dim: hidden width of the coarse transformer's MLP.
        fine_heads: attention heads of the fine transformer.
        fine_head_dim: width of each head of the fine transformer.
        fine_mlp_dim: hidden width of the fine transformer's MLP.
        depth: transformer layers in each branch.
        dropout: dropout rate inside both transformers.
        output: ``"sum"`` or ``"pair"``, see above.
        resample_mode: interpolation mode used to bring the coarse map onto the fine grid in ``"sum"`` mode.

    Example::

        >>> tif = TIF(coarse_channels=96, fine_channels=128, output="pair")
        >>> fine, coarse = tif(torch.rand(2, 128, 32, 32), torch.rand(2, 96, 16, 16))
    """

    def __init__(
        self,
        coarse_channels: int | None = None,
        fine_channels: int | None = None,
        coarse_heads: int = 3,
        coarse_head_dim: int = 32,
        coarse_mlp_dim: int = 128,
        fine_heads: int = 1,
        fine_head_dim: int = 64,
        fine_mlp_dim: int = 256,
        depth: int = 1,
        dropout: float = 0.0,
        output: str = "sum",
        resample_mode: str = "nearest",
        **deprecated: Any,
    ) -> None:
        super().__init__()
        if deprecated:
            values = _renamed_arguments(
                deprecated,
                dict(
                    coarse_channels=coarse_channels,
                    fine_channels=fine_channels,
                    coarse_heads=coarse_heads,
                    coarse_head_dim=coarse_head_dim,
                    coarse_mlp_dim=coarse_mlp_dim,
                    fine_heads=fine_heads,
                    fine_head_dim=fine_head_dim,
                    fine_mlp_dim=fine_mlp_dim,
                ),
            )
            coarse_channels, fine_channels = values["coarse_channels"], values["fine_channels"]
            coarse_heads, coarse_head_dim, coarse_mlp_dim = (
                values["coarse_heads"],
                values["coarse_head_dim"],
                values["coarse_mlp_dim"],
            )
            fine_heads, fine_head_dim, fine_mlp_dim = (
                values["fine_heads"],
                values["fine_head_dim"],
                values["fine_mlp_dim"],
            )
        if coarse_channels is None or fine_channels is None:
            raise TypeError("TIF needs coarse_channels and fine_channels.")
        if output not in ("sum", "pair"):
            raise ValueError(f"TIF output must be 'sum' or 'pair', got output={output!r}.")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"TIF dropout must be in [0, 1], got dropout={dropout}.")
        self.coarse_channels = coarse_channels
        self.fine_channels = fine_channels
        self.resample_mode = resample_mode
        self.pair_output = output == "pair"
        self.e_token_norm = nn.LayerNorm(fine_channels)
        self.e_token_proj = nn.Linear(fine_channels, coarse_channels)
        self.r_token_norm = nn.LayerNorm(coarse_channels)
        self.r_token_proj = nn.Linear(coarse_channels, fine_channels)
        self.r_transformer = TIFTransformer(
            coarse_channels, depth, coarse_heads, coarse_head_dim, coarse_mlp_dim, dropout
        )
        self.e_transformer = TIFTransformer(fine_channels, depth, fine_heads, fine_head_dim, fine_mlp_dim, dropout)
        self.r_to_e: nn.Module = (
            nn.Linear(coarse_channels, fine_channels)
            if (output == "sum" and coarse_channels != fine_channels)
            else nn.Identity()
        )
        self.register_load_state_dict_pre_hook(_rename_seed_keys)

    def fuse_tokens(self, fine_tokens: torch.Tensor, coarse_tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The TIF exchange on token sequences ``(B, N_fine, fine_channels)`` and ``(B, N_coarse, coarse_channels)``."""
        fine_summary = self.e_token_proj(self.e_token_norm(fine_tokens).mean(dim=1, keepdim=True))
        coarse_summary = self.r_token_proj(self.r_token_norm(coarse_tokens).mean(dim=1, keepdim=True))
        coarse_out = self.r_transformer(torch.cat([fine_summary, coarse_tokens], dim=1))[:, 1:]
        fine_out = self.e_transformer(torch.cat([coarse_summary, fine_tokens], dim=1))[:, 1:]
        return fine_out, coarse_out

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor | Tuple[torch.Tensor, torch.Tensor]:
        if fine.shape[1] != self.fine_channels or coarse.shape[1] != self.coarse_channels:
            raise ValueError(
                f"TIF(coarse_channels={self.coarse_channels}, fine_channels={self.fine_channels}) expects the fine map "
                f"with {self.fine_channels} channels and the coarse map with {self.coarse_channels}, got fine "
                f"{tuple(fine.shape)} and coarse {tuple(coarse.shape)}."
            )
        fine_tokens, coarse_tokens = self.fuse_tokens(
            fine.flatten(2).transpose(1, 2), coarse.flatten(2).transpose(1, 2)
        )
        if self.pair_output:
            return _to_map(fine_tokens, fine.shape), _to_map(coarse_tokens, coarse.shape)
        coarse_tokens = self.r_to_e(coarse_tokens)
        coarse_map = coarse_tokens.transpose(1, 2).reshape(
            [coarse.shape[0], self.fine_channels] + list(coarse.shape[2:])
        )
        if coarse_map.shape[2:] != fine.shape[2:]:
            coarse_map = F.interpolate(coarse_map, size=fine.shape[2:], mode=self.resample_mode)
        return _to_map(fine_tokens, fine.shape) + coarse_map


class TIFLevels(nn.ModuleDict):
    """TIF fusions (``output="sum"``) of two feature pyramids at chosen levels, keyed by level.

    ``forward(fine, coarse)`` returns the fine pyramid with each chosen level replaced by its fusion
    with the coarse level; the other levels pass through.

    Args:
        widths: channels of each level (both pyramids).
        levels: the levels to fuse, indices into ``widths``.
        tif_args: other :class:`TIF` arguments.
        levels_name: what the levels are, for the error message.

    Raises:
        ValueError: a level outside ``0..len(widths)-1``.
    """

    def __init__(
        self,
        widths: Sequence[int],
        levels: Sequence[int],
        tif_args: Mapping[str, Any] | None = None,
        levels_name: str = "levels",
    ) -> None:
        if not set(levels) <= set(range(len(widths))):
            raise ValueError(f"tif_levels must be among 0..{len(widths) - 1} ({levels_name}), got {tuple(levels)}.")
        super().__init__(
            {str(i): TIF(widths[i], widths[i], output="sum", **dict(tif_args or {})) for i in sorted(set(levels))}
        )

    def forward(self, fine: Sequence[torch.Tensor], coarse: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [self[str(i)](f, c) if str(i) in self else f for i, (f, c) in enumerate(zip(fine, coarse))]


def _to_map(tokens: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(shape)


def _rename_seed_keys(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    for key in [k for k in state_dict if k.startswith(prefix) and _SEED_KEY_PATTERN.match(k[len(prefix) :])]:
        state_dict[prefix + convert_seed_tif_key(key[len(prefix) :])] = state_dict.pop(key)
