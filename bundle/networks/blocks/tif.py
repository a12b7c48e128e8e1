"""Transformer Interactive Fusion (TIF), the fusion block of DS-TransUNet (Lin et al., IEEE TIM 2022).

TIF lets two feature maps of one image, seen at two scales, exchange global context: each map is
summarised by one global token, which is prepended to the *other* map's tokens before a pre-norm
transformer encoder runs over them. Attention is global over all tokens of a map, computed with
``torch.nn.functional.scaled_dot_product_attention`` so that no N x N matrix is kept for backward.
"""

from __future__ import annotations

import re
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

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
        self.out_proj: nn.Module = (
            nn.Identity() if (num_heads == 1 and head_dim == dim) else nn.Linear(inner_dim, dim)
        )
        self.out_drop = nn.Dropout(dropout) if not isinstance(self.out_proj, nn.Identity) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2], dropout_p=self.dropout if self.training else 0.0
        )
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

    def __init__(
        self, dim: int, depth: int, num_heads: int, head_dim: int, mlp_dim: int, dropout: float = 0.0
    ) -> None:
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


class TIF(nn.Module):
    """Transformer Interactive Fusion of two feature maps ``e`` (width ``dim_l``) and ``r`` (width ``dim_s``).

    ``TIF(dim_s, dim_l)`` computes what the seed's TIF computes: both maps become token sequences;
    each map's global token (LayerNorm, mean over tokens, Linear to the other map's width) is
    prepended to the other map's tokens; ``r``'s tokens pass a transformer of width ``dim_s``
    (3 heads of 32, MLP 128) and ``e``'s a transformer of width ``dim_l`` (1 head of 64, MLP 256);
    the prepended token is dropped and the tokens go back to their maps.

    Works on 2D and 3D maps (any number of spatial dims) of different widths and spatial sizes.

    Outputs:
        - ``output="sum"`` (default, the seed's): ``e + r``, on ``e``'s grid and width. When ``r``'s
          spatial size differs from ``e``'s, ``r`` is resampled onto ``e``'s grid with
          ``F.interpolate(mode=resample_mode)``; when ``dim_s != dim_l``, ``r`` is first projected to
          ``dim_l`` by a learned per-token Linear (``r_to_e``; it exists only in that case).
        - ``output="pair"`` (the authors' DS-TransUNet): the tuple ``(e, r)``, each on its own grid.

    State dicts saved from the seed's TIF or the authors' ``Cross_Att`` (keys such as
    ``transformer_s.layers.0.0.fn.to_qkv.weight``) load as they are; they are renamed on loading.

    Args:
        dim_s: channels of ``r`` (the coarse / "small" branch).
        dim_l: channels of ``e`` (the fine / "large" branch).
        heads_s: attention heads of the ``r`` transformer.
        head_dim_s: width of each head of the ``r`` transformer.
        mlp_dim_s: hidden width of the ``r`` transformer's MLP.
        heads_l: attention heads of the ``e`` transformer.
        head_dim_l: width of each head of the ``e`` transformer.
        mlp_dim_l: hidden width of the ``e`` transformer's MLP.
        depth: transformer layers in each branch.
        dropout: dropout rate inside both transformers.
        output: ``"sum"`` or ``"pair"``, see above.
        resample_mode: interpolation mode used to bring ``r`` onto ``e``'s grid in ``"sum"`` mode.

    Example::

        >>> tif = TIF(dim_s=96, dim_l=128, output="pair")
        >>> e, r = tif(torch.rand(2, 128, 32, 32), torch.rand(2, 96, 16, 16))
    """

    def __init__(
        self,
        dim_s: int,
        dim_l: int,
        heads_s: int = 3,
        head_dim_s: int = 32,
        mlp_dim_s: int = 128,
        heads_l: int = 1,
        head_dim_l: int = 64,
        mlp_dim_l: int = 256,
        depth: int = 1,
        dropout: float = 0.0,
        output: str = "sum",
        resample_mode: str = "nearest",
    ) -> None:
        super().__init__()
        if output not in ("sum", "pair"):
            raise ValueError(f"TIF output must be 'sum' or 'pair', got output={output!r}.")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"TIF dropout must be in [0, 1], got dropout={dropout}.")
        self.dim_s = dim_s
        self.dim_l = dim_l
        self.output = output
        self.resample_mode = resample_mode
        self.pair_output = output == "pair"
        self.e_token_norm = nn.LayerNorm(dim_l)
        self.e_token_proj = nn.Linear(dim_l, dim_s)
        self.r_token_norm = nn.LayerNorm(dim_s)
        self.r_token_proj = nn.Linear(dim_s, dim_l)
        self.r_transformer = TIFTransformer(dim_s, depth, heads_s, head_dim_s, mlp_dim_s, dropout)
        self.e_transformer = TIFTransformer(dim_l, depth, heads_l, head_dim_l, mlp_dim_l, dropout)
        self.r_to_e: nn.Module = (
            nn.Linear(dim_s, dim_l) if (output == "sum" and dim_s != dim_l) else nn.Identity()
        )
        self.register_load_state_dict_pre_hook(_rename_seed_keys)

    def fuse_tokens(self, e_tokens: torch.Tensor, r_tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The TIF exchange on token sequences ``(B, Ne, dim_l)`` and ``(B, Nr, dim_s)``."""
        e_token = self.e_token_proj(self.e_token_norm(e_tokens).mean(dim=1, keepdim=True))
        r_token = self.r_token_proj(self.r_token_norm(r_tokens).mean(dim=1, keepdim=True))
        r_out = self.r_transformer(torch.cat([e_token, r_tokens], dim=1))[:, 1:]
        e_out = self.e_transformer(torch.cat([r_token, e_tokens], dim=1))[:, 1:]
        return e_out, r_out

    def forward(
        self, e: torch.Tensor, r: torch.Tensor
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        if e.shape[1] != self.dim_l or r.shape[1] != self.dim_s:
            raise ValueError(
                f"TIF(dim_s={self.dim_s}, dim_l={self.dim_l}) expects e with {self.dim_l} channels and r with "
                f"{self.dim_s} channels, got e {tuple(e.shape)} and r {tuple(r.shape)}."
            )
        e_tokens, r_tokens = self.fuse_tokens(e.flatten(2).transpose(1, 2), r.flatten(2).transpose(1, 2))
        if self.pair_output:
            return _to_map(e_tokens, e.shape), _to_map(r_tokens, r.shape)
        r_tokens = self.r_to_e(r_tokens)
        r_map = r_tokens.transpose(1, 2).reshape([r.shape[0], self.dim_l] + list(r.shape[2:]))
        if r_map.shape[2:] != e.shape[2:]:
            r_map = F.interpolate(r_map, size=e.shape[2:], mode=self.resample_mode)
        return _to_map(e_tokens, e.shape) + r_map


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
        self, widths: Sequence[int], levels: Sequence[int], tif_args: Optional[Mapping[str, Any]] = None, levels_name: str = "levels"
    ) -> None:
        if not set(levels) <= set(range(len(widths))):
            raise ValueError(f"tif_levels must be among 0..{len(widths) - 1} ({levels_name}), got {tuple(levels)}.")
        super().__init__({str(i): TIF(widths[i], widths[i], output="sum", **dict(tif_args or {})) for i in sorted(set(levels))})

    def forward(self, fine: Sequence[torch.Tensor], coarse: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [self[str(i)](f, c) if str(i) in self else f for i, (f, c) in enumerate(zip(fine, coarse))]


def _to_map(tokens: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(shape)


def _rename_seed_keys(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    for key in [k for k in state_dict if k.startswith(prefix) and _SEED_KEY_PATTERN.match(k[len(prefix) :])]:
        state_dict[prefix + convert_seed_tif_key(key[len(prefix) :])] = state_dict.pop(key)
