"""The head contract: invariant features in, one tensor field out."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tensorframe.fields import FieldSpec
from tensorframe.types import Graph, InvariantFeatures


class Head(nn.Module):
    """Maps :class:`InvariantFeatures` to one field.

    Subclasses set ``field`` (a :class:`FieldSpec`: name, level, symmetry, parity, reduce)
    and ``needs_triplets``, and implement ``forward``; a head whose output has a fixed part
    sets ``add_identity`` or ``subtract_structure_mean`` (normalisation reads them).

    Shapes:
        forward(graph, features) -> (N, 3, ...) for atom-level fields,
                                    (B, 3, ...) for structure-level fields
    """

    field: FieldSpec
    needs_triplets: bool = False
    add_identity: bool = False
    """The head adds the identity to its rank-2 output (a positive-definite dielectric): its
    :class:`~tensorframe.normalization.FieldScaling` keeps the identity and scales the rest."""
    subtract_structure_mean: bool = False
    """The head subtracts each structure's mean atomic tensor (the acoustic sum rule), which
    would undo a shift: normalisation fits none for its field."""

    def forward(self, graph: Graph, features: InvariantFeatures) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def label_out_of_reach(self, label: np.ndarray) -> str | None:
        """Why this head can never produce ``label`` (one structure's label of its field, in
        the field's shape, (N, 3, ...) or (3, ...)), or None when it can. Training checks every
        label with it before the first step (e.g. eps with an eigenvalue below 1 for a head
        that is the identity plus a positive semi-definite tensor). Default: no constraint."""
        return None


def coefficient_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Invariant features -> basis coefficients: Linear, SiLU, Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))
