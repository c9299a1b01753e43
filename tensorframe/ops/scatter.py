"""Sums and means over groups with native ``index_add``."""

from __future__ import annotations

import torch


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """``out[index[e]] += src[e]`` along the first dimension.

    Shapes: src (E, ...), index (E,) -> (dim_size, ...)
    """
    out = src.new_zeros((dim_size, *src.shape[1:]))
    return out.index_add_(0, index, src)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Mean of ``src`` per group; empty groups give zero.

    Shapes: src (E, ...), index (E,) -> (dim_size, ...)
    """
    total = scatter_sum(src, index, dim_size)
    count = torch.bincount(index, minlength=dim_size).clamp(min=1).to(src.dtype)
    return total / count.view(-1, *([1] * (src.dim() - 1)))
