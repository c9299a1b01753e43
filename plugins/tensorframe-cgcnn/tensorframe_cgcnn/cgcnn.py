"""CGCNN (Xie & Grossman, Phys. Rev. Lett. 120, 145301, 2018) as a tensorframe backbone.

    v_i    = Embedding(Z_i)                                                  element embedding
    u_ji   = Gaussians(r_ji)                                                 distance expansion
    z_ji   = [v_i, v_j, u_ji]
    v_i   += sum_j sigmoid(z_ji W_f + b_f) * softplus(z_ji W_s + b_s) * envelope(r_ji)   gated conv
    m_ji   = Dense(softplus(Dense(z_ji)))                                    edge features for the heads

Normalisation: the paper's batch norm makes a structure's output depend on its batch, so
the gate pre-activations ``z W`` of each edge get a LayerNorm (``norm="layer"``) or none
(``norm="none"``), before the envelope. The summed messages are not normalised, so a
neighbour entering the cutoff changes the atom smoothly. Only invariant inputs enter; the
edge features keep the centre ``i`` and the neighbour ``j`` apart. CGCNN has no triplet
messages; the core lifts the edge features to triplets for heads that need them.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveInt
from torch import nn

from tensorframe import (
    Backbone,
    FeatureDims,
    GaussianBasis,
    Graph,
    GraphSettings,
    InvariantFeatures,
    PluginConfig,
    scatter_sum,
)


class CGCNNConfig(PluginConfig):
    """Options of the ``cgcnn`` backbone."""

    hidden: PositiveInt = 64
    num_layers: PositiveInt = 3
    num_gaussians: PositiveInt = 40
    norm: Literal["layer", "none"] = "layer"
    """LayerNorm on each edge's gate pre-activations, or none (never batch norm)."""
    max_z: PositiveInt = 100
    """Largest atomic number the element embedding accepts."""


class EdgeLinear(nn.Module):
    """``[v_i, v_j, u_ji] W + b`` with the node parts computed once per atom, then gathered.

    Shapes: v (N, node_dim), u (E, edge_dim), idx_i, idx_j (E,) -> (E, out_dim)
    """

    def __init__(self, node_dim: int, edge_dim: int, out_dim: int) -> None:
        super().__init__()
        self.center = nn.Linear(node_dim, out_dim)
        self.neighbor = nn.Linear(node_dim, out_dim, bias=False)
        self.edge = nn.Linear(edge_dim, out_dim, bias=False)

    def reset_parameters(self) -> None:
        for layer in (self.center, self.neighbor, self.edge):
            layer.reset_parameters()

    def forward(self, v: torch.Tensor, u: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor) -> torch.Tensor:
        return self.center(v)[idx_i] + self.neighbor(v)[idx_j] + self.edge(u)


class GatedConv(nn.Module):
    """One CGCNN convolution; returns the residual update of the atoms.

    Shapes:
        v (N, hidden), u (E, num_gaussians), envelope (E,), idx_i, idx_j (E,) -> (N, hidden)
    """

    def __init__(self, hidden: int, num_gaussians: int, norm: str = "layer") -> None:
        super().__init__()
        self.linear = EdgeLinear(hidden, num_gaussians, 2 * hidden)  # W_f and W_s side by side
        self.norm = nn.LayerNorm(2 * hidden) if norm == "layer" else nn.Identity()

    def reset_parameters(self) -> None:
        self.linear.reset_parameters()
        if isinstance(self.norm, nn.LayerNorm):
            self.norm.reset_parameters()

    def forward(
        self, v: torch.Tensor, u: torch.Tensor, envelope: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor
    ) -> torch.Tensor:
        # Pre-activations z W + b of the gate and the core, z = [v_i, v_j, u_ji], normalised per edge.
        gate, core = self.norm(self.linear(v, u, idx_i, idx_j)).chunk(2, dim=-1)
        # Gated message, taken smoothly to zero at the cutoff by the envelope.
        messages = torch.sigmoid(gate) * nn.functional.softplus(core) * envelope.unsqueeze(-1)
        # Sum the messages into the centre i.
        return scatter_sum(messages, idx_i, v.shape[0])


class CGCNN(Backbone):
    """CGCNN node and edge features (no triplet features).

    Shapes:
        forward(graph) -> InvariantFeatures(node (N, hidden), edge (E, hidden), triplet=None)
    """

    def __init__(self, config: CGCNNConfig, settings: GraphSettings) -> None:
        super().__init__()
        hidden, gaussians = config.hidden, config.num_gaussians
        self.max_z = config.max_z
        self.embedding = nn.Embedding(config.max_z + 1, hidden)
        self.expansion = GaussianBasis(settings.cutoff, gaussians)
        self.convs = nn.ModuleList(GatedConv(hidden, gaussians, config.norm) for _ in range(config.num_layers))
        self.edge_in = EdgeLinear(hidden, gaussians, hidden)
        self.edge_out = nn.Linear(hidden, hidden)
        self.feature_dims = FeatureDims(node=hidden, edge=hidden, triplet=None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.embedding.reset_parameters()
        for conv in self.convs:
            conv.reset_parameters()
        self.edge_in.reset_parameters()
        self.edge_out.reset_parameters()

    def forward(self, graph: Graph) -> InvariantFeatures:
        if graph.num_nodes and not torch.compiler.is_compiling() and int(graph.numbers.max()) > self.max_z:
            raise ValueError(f"numbers: atomic number {int(graph.numbers.max())} exceeds backbone.max_z = "
                             f"{self.max_z}, the largest element this backbone embeds; raise max_z in its config")
        idx_i, idx_j = graph.idx_i, graph.idx_j
        # Element embedding.
        v = self.embedding(graph.numbers)
        # Gaussian distance expansion u_ji (invariant), fixed through the layers as in the paper.
        u = self.expansion(graph.edge_len)
        # Gated convolutions with residual updates.
        for conv in self.convs:
            v = v + conv(v, u, graph.edge_envelope, idx_i, idx_j)
        # Edge features from centre, neighbour and distance (centre and neighbour kept apart).
        edge = self.edge_out(nn.functional.softplus(self.edge_in(v, u, idx_i, idx_j)))
        return InvariantFeatures(node=v, edge=edge, triplet=None)


def build_cgcnn(config: CGCNNConfig, settings: GraphSettings) -> CGCNN:
    return CGCNN(config, settings)
