"""Charge-flow terms of molecular dipoles and polarizabilities.

    mu    += sum_i q_i (r_i - r_c)                     with sum_i q_i = 0 per structure
    alpha += sum_i nu_i (x) (r_i - r_c) + (r_i - r_c) (x) nu_i

``q_i`` is an invariant per-atom charge (node features), ``nu_i = sum_k t_ki e_ki`` an
equivariant per-atom vector, ``r_c`` the centroid of the structure. The constraint
``sum q = 0`` and the centroid make both terms translation invariant; they carry the
long-range, geometry-driven part that local edge words cannot (charge transfer across a
molecule, PaiNN's dipole and polarizability outputs). Positions of a periodic structure are
defined only modulo the lattice, so the terms are refused there.
"""

from __future__ import annotations

import torch
from torch import nn

from tensorframe.fields import FieldSpec
from tensorframe.heads.base import coefficient_mlp
from tensorframe.ops.scatter import scatter_mean, scatter_sum
from tensorframe.specs import FeatureDims
from tensorframe.types import Graph, InvariantFeatures


def charge_flow_supported(field: FieldSpec) -> bool:
    """A summed structure-level polar vector (dipole) or even rank-2 tensor (polarizability)."""
    if field.level != "structure" or field.reduce != "sum":
        return False
    return (field.rank == 1 and field.parity == -1) or (field.rank == 2 and field.parity == 1)


class ChargeFlow(nn.Module):
    """The charge-flow term of one field.

    Shapes: forward(graph, features) -> (B, 3) for a dipole, (B, 9) for a rank-2 tensor
    """

    def __init__(self, field: FieldSpec, dims: FeatureDims, hidden: int = 64) -> None:
        super().__init__()
        if not charge_flow_supported(field):
            raise ValueError(
                f"field {field.name!r}: charge_flow needs a summed structure-level dipole (rank 1, parity -1) or "
                f"polarizability-like tensor (rank 2, parity +1), got level {field.level!r}, reduce "
                f"{field.reduce!r}, rank {field.rank}, parity {field.parity:+d}"
            )
        self.rank = field.rank
        self.field_name = field.name
        if self.rank == 1:
            self.charges = coefficient_mlp(dims.node, hidden, 1)
        else:
            self.vectors = coefficient_mlp(dims.edge, hidden, 1)

    def forward(self, graph: Graph, features: InvariantFeatures) -> torch.Tensor:
        periodic = graph.pbc.any(dim=1)
        if bool(periodic.any()):
            first = int(torch.nonzero(periodic)[0, 0])
            raise ValueError(
                f"field {self.field_name!r}: charge_flow is defined for molecules only; structure {first} of "
                f"the batch is periodic (positions are defined only modulo the lattice); turn charge_flow off"
            )
        num_structures = graph.num_structures
        centroid = scatter_mean(graph.positions, graph.batch, num_structures)
        relative = graph.positions - centroid.index_select(0, graph.batch)
        if self.rank == 1:
            charges = self.charges(features.node)
            charges = charges - scatter_mean(charges, graph.batch, num_structures).index_select(0, graph.batch)
            return scatter_sum(charges * relative, graph.batch, num_structures)
        weights = self.vectors(features.edge) * graph.edge_envelope.unsqueeze(-1)
        vectors = scatter_sum(weights * graph.edge_dir, graph.idx_i, graph.num_nodes)
        outer = vectors.unsqueeze(-1) * relative.unsqueeze(-2)
        return scatter_sum((outer + outer.transpose(-1, -2)).flatten(1), graph.batch, num_structures)
