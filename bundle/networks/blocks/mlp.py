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

"""A pre-norm MLP (``mlp(norm(x))`` with MONAI's ``MLPBlock``) that keeps only its input for backward."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import MLPBlock

from bundle.networks.memory import autocast_state, recomputes

__all__ = ["prenorm_mlp"]

_CHUNK_ROWS = 4096  # tokens recomputed at once in backward


class _PreNormMLP(torch.autograd.Function):
    """``linear2(gelu(linear1(layer_norm(x))))`` that saves ``x`` alone.

    Plain autograd keeps the norm's input and output and two hidden-width tensors (GELU's input
    and output), 10 tensors of the input's size at an MLP ratio of 4. Backward recomputes the norm,
    ``linear1`` and GELU (about a sixth of the block's backward FLOPs) and never ``linear2``,
    a chunk of tokens at a time, under the forward's autocast (mixed precision), if any.
    """

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, weight1, bias1, weight2, bias2, eps: float):
        ctx.eps = eps
        ctx.autocast = autocast_state(x.device.type)
        ctx.save_for_backward(x, norm_weight, norm_bias, weight1, bias1, weight2)
        hidden = F.linear(F.layer_norm(x, x.shape[-1:], norm_weight, norm_bias, eps), weight1, bias1)
        return F.linear(F.gelu(hidden), weight2, bias2)

    @staticmethod
    def backward(ctx, grad_out):
        x, norm_weight, norm_bias, weight1, bias1, weight2 = ctx.saved_tensors
        width = x.shape[-1]
        x_rows, grad_rows = x.reshape(-1, width), grad_out.reshape(-1, grad_out.shape[-1])
        params = [norm_weight, norm_bias, weight1, bias1]
        grads_params = [torch.zeros_like(p) for p in params]
        grad_weight2 = torch.zeros_like(weight2)
        grad_x = torch.empty_like(x_rows)
        # tokens are independent: recompute and differentiate them in chunks, so that only one
        # chunk's hidden activations exist at a time
        with torch.autocast(x.device.type, **ctx.autocast):
            for start in range(0, x_rows.shape[0], _CHUNK_ROWS):
                rows = slice(start, start + _CHUNK_ROWS)
                with torch.enable_grad():
                    leaves = [x_rows[rows].detach().requires_grad_(True)] + [
                        p.detach().requires_grad_(True) for p in params
                    ]
                    normed = F.layer_norm(leaves[0], (width,), leaves[1], leaves[2], ctx.eps)
                    act = F.gelu(F.linear(normed, leaves[3], leaves[4]))
                grad_weight2 += grad_rows[rows].t() @ act.detach()
                grads = torch.autograd.grad(act, leaves, (grad_rows[rows] @ weight2).to(act.dtype))
                grad_x[rows] = grads[0]
                for total, g in zip(grads_params, grads[1:]):
                    total += g
        return (grad_x.view_as(x), *grads_params, grad_weight2, grad_rows.sum(0).to(weight2.dtype), None)


def prenorm_mlp(x: torch.Tensor, norm: nn.LayerNorm, mlp: MLPBlock) -> torch.Tensor:
    """``mlp(norm(x))``; in training with autograd, through :class:`_PreNormMLP` when the MLP is a
    GELU MLP without dropout (as in DS-TransUNet's Swin and TIF blocks), so that its hidden
    activations are recomputed in backward rather than stored. Same parameters, same outputs."""
    if (
        recomputes(cheap=True)
        and isinstance(mlp.fn, nn.GELU)
        and mlp.fn.approximate == "none"
        and isinstance(norm, nn.LayerNorm)
        and norm.elementwise_affine
        and (not mlp.training or (_no_dropout(mlp.drop1) and _no_dropout(mlp.drop2)))
    ):
        return _prenorm_mlp_function(x, norm, mlp)
    return mlp(norm(x))


def _no_dropout(module: nn.Module) -> bool:
    return not isinstance(module, nn.Dropout) or module.p == 0.0


@torch.jit.unused
def _prenorm_mlp_function(x: torch.Tensor, norm: nn.LayerNorm, mlp: MLPBlock) -> torch.Tensor:
    return _PreNormMLP.apply(
        x, norm.weight, norm.bias, mlp.linear1.weight, mlp.linear1.bias, mlp.linear2.weight, mlp.linear2.bias, norm.eps
    )
