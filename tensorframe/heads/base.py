"""The head contract: invariant features in, one tensor field out."""

from __future__ import annotations

import torch
from torch import nn

from tensorframe.fields import FieldSpec
from tensorframe.types import Graph, InvariantFeatures


class Head(nn.Module):
    """Maps :class:`InvariantFeatures` to one field.

    Subclasses set ``field`` (a :class:`FieldSpec`: name, level, symmetry, parity, reduce)
    and ``needs_triplets``, and implement ``forward``.

    Shapes:
        forward(graph, features) -> (N, 3, ...) for atom-level fields,
                                    (B, 3, ...) for structure-level fields
    """

    field: FieldSpec
    needs_triplets: bool = False

    def forward(self, graph: Graph, features: InvariantFeatures) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def coefficient_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Invariant features -> basis coefficients: Linear, SiLU, Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))
