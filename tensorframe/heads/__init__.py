"""Tensor heads: invariant coefficients x equivariant basis products."""

from tensorframe.heads.base import Head
from tensorframe.heads.scalar import ScalarHead
from tensorframe.heads.tensor import CartesianTensorHead

__all__ = ["CartesianTensorHead", "Head", "ScalarHead"]
