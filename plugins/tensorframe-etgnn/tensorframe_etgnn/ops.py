"""A memory-lean gather-and-multiply for per-triplet filters."""

from __future__ import annotations

import torch

from tensorframe.ops.scatter import scatter_sum


class _GatherMul(torch.autograd.Function):
    """``x[index] * weight`` that saves ``x`` (edge-sized) instead of ``x[index]`` (triplet-sized)
    for the backward pass, and gathers again there."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, index, weight)
        return x.index_select(0, index) * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, index, weight = ctx.saved_tensors
        grad_x = scatter_sum(grad * weight, index, x.shape[0]) if ctx.needs_input_grad[0] else None
        grad_weight = grad * x.index_select(0, index) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_weight


def gather_mul(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x[index] * weight`` without keeping the gathered ``x[index]`` alive for backward.

    Shapes: x (E, F), index (T,), weight (T, F) -> (T, F)
    """
    return _GatherMul.apply(x, index, weight)
