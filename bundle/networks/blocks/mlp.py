"""A pre-norm MLP (``mlp(norm(x))`` with MONAI's ``MLPBlock``) that keeps only its input for backward."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import MLPBlock

__all__ = ["prenorm_mlp"]


class _PreNormMLP(torch.autograd.Function):
    """``linear2(gelu(linear1(layer_norm(x))))`` that saves ``x`` alone.

    Plain autograd keeps the norm's input and output and two hidden-width tensors (GELU's input
    and output), 10 tensors of the input's size at an MLP ratio of 4. Backward recomputes the norm,
    ``linear1`` and GELU (about a sixth of the block's backward FLOPs) and never ``linear2``.
    """

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, weight1, bias1, weight2, bias2, eps: float):
        ctx.eps = eps
        ctx.save_for_backward(x, norm_weight, norm_bias, weight1, bias1, weight2)
        hidden = F.linear(F.layer_norm(x, x.shape[-1:], norm_weight, norm_bias, eps), weight1, bias1)
        return F.linear(F.gelu(hidden), weight2, bias2)

    @staticmethod
    def backward(ctx, grad_out):
        x, norm_weight, norm_bias, weight1, bias1, weight2 = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in (x, norm_weight, norm_bias, weight1, bias1)]
            normed = F.layer_norm(leaves[0], x.shape[-1:], leaves[1], leaves[2], ctx.eps)
            act = F.gelu(F.linear(normed, leaves[3], leaves[4]))
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_weight2 = flat_grad.t() @ act.detach().reshape(-1, act.shape[-1])
        grads = torch.autograd.grad(act, leaves, grad_out @ weight2)
        return (*grads, grad_weight2, flat_grad.sum(0), None)


def prenorm_mlp(x: torch.Tensor, norm: nn.LayerNorm, mlp: MLPBlock) -> torch.Tensor:
    """``mlp(norm(x))``; in training with autograd, through :class:`_PreNormMLP` when the MLP is a
    GELU MLP without dropout (as in DS-TransUNet's Swin and TIF blocks), so that its hidden
    activations are recomputed in backward rather than stored. Same parameters, same outputs."""
    if (
        torch.is_grad_enabled()
        and not torch.jit.is_scripting()
        and not torch.jit.is_tracing()
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
