"""The head contract: invariant features in, one tensor field out."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tensorframe.fields import FieldSpec
from tensorframe.ops.blocking import blocked_inference, row_blocks
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


def coefficient_columns(mlp: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` transposed, contiguous: one row per output coefficient, one column per item
    (the component-major layout the tensor heads work in).

    In inference (no autograd graph, no ``torch.compile``), the Linear-SiLU-Linear MLP of :func:`coefficient_mlp` runs
    on blocks of rows (:func:`~tensorframe.ops.blocking.row_blocks`) whose hidden activations
    stay in cache, with the last product written transposed (``W_2 h^T``); triplet-sized heads
    spend most of their time here. Same values as ``mlp(x).t()`` up to the rounding of a differently blocked matmul
    (tested to 1e-6 in float32). Any other module, or autograd, takes the plain path.

    Shapes: x (X, in) -> (out, X)
    """
    if not blocked_inference() or not _is_coefficient_mlp(mlp):
        return mlp(x).t().contiguous()
    first, _, last = mlp
    out = x.new_empty((last.out_features, x.shape[0]))
    for rows in row_blocks(x.shape[0], first.out_features):
        activations = torch.addmm(first.bias, x[rows], first.weight.t())
        nn.functional.silu(activations, inplace=True)
        torch.addmm(last.bias.unsqueeze(1), last.weight, activations.t(), out=out[:, rows])
    return out


def _is_coefficient_mlp(mlp: nn.Module) -> bool:
    """Whether ``mlp`` is exactly Linear (with bias), SiLU, Linear (with bias)."""
    return (isinstance(mlp, nn.Sequential) and len(mlp) == 3
            and isinstance(mlp[0], nn.Linear) and type(mlp[1]) is nn.SiLU and isinstance(mlp[2], nn.Linear)
            and mlp[0].bias is not None and mlp[2].bias is not None)
