"""Triplet features for backbones that have none: edge pairs plus an angular basis.

    h_kji = W2 silu( A m_kj + B m_ji + C P(cos theta_kji) )

``A m`` and ``B m`` are computed once per edge and gathered, so the per-triplet work is
``hidden`` wide, never (triplets x edge width x basis).
"""

from __future__ import annotations

import torch
from torch import nn

from tensorframe.ops.radial import legendre_basis
from tensorframe.types import Graph, InvariantFeatures


class TripletLifting(nn.Module):
    """Shapes: features.edge (E, Fe) -> (T, out_dim)"""

    def __init__(self, edge_dim: int, out_dim: int = 64, hidden: int = 64, num_angular: int = 8) -> None:
        super().__init__()
        self.num_angular = num_angular
        self.incoming = nn.Linear(edge_dim, hidden)
        self.outgoing = nn.Linear(edge_dim, hidden, bias=False)
        self.angular = nn.Linear(num_angular, hidden, bias=False)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, graph: Graph, features: InvariantFeatures) -> torch.Tensor:
        incoming = self.incoming(features.edge)
        outgoing = self.outgoing(features.edge)
        angular = self.angular(legendre_basis(graph.triplet_cos, self.num_angular))
        hidden = incoming.index_select(0, graph.idx_kj) + outgoing.index_select(0, graph.idx_ji) + angular
        return self.out(nn.functional.silu(hidden))
