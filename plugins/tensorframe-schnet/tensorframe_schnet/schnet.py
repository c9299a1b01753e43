"""SchNet (Schütt et al., J. Chem. Phys. 148, 241722, 2018) as a tensorframe backbone.

    x_i      = Embedding(Z_i)                                          element embedding
    W_ji     = Dense(ssp(Dense(rbf(r_ji)))) * envelope(r_ji)           filter network
    x_i     += Dense(ssp(Dense( sum_j Dense(x_j) * W_ji )))            interaction block (cfconv)
    m_ji     = Dense(ssp(Dense([x_i, x_j, rbf(r_ji)])))                edge features for the heads

with ``ssp(x) = softplus(x) - log 2`` and ``rbf`` Gaussians on an even grid from 0 to the
cutoff. Only invariant inputs enter (element numbers, edge lengths, the envelope), so every
feature is invariant under rotations, reflections, translations and atom permutations. The
edge features keep the centre ``i`` and the neighbour ``j`` apart: the edge into an Al from
an N differs from the edge into that N. SchNet has no triplet messages; the core lifts the
edge features to triplets for heads that need them.
"""

from __future__ import annotations

import math

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


class SchNetConfig(PluginConfig):
    """Options of the ``schnet`` backbone (defaults of the SchNet paper)."""

    hidden: PositiveInt = 128
    num_filters: PositiveInt = 128
    num_interactions: PositiveInt = 3
    num_gaussians: PositiveInt = 50
    max_z: PositiveInt = 100
    """Largest atomic number the element embedding accepts."""


class ShiftedSoftplus(nn.Module):
    """``softplus(x) - log 2``: smooth, and zero at zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(x) - math.log(2.0)


def _reset_linear(layer: nn.Linear) -> None:
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class InteractionBlock(nn.Module):
    """One continuous-filter convolution with its atom-wise layers; returns the residual update.

    Shapes:
        x (N, hidden), rbf (E, num_gaussians), envelope (E,), idx_i, idx_j (E,) -> (N, hidden)
    """

    def __init__(self, hidden: int, num_filters: int, num_gaussians: int) -> None:
        super().__init__()
        self.filter_net = nn.Sequential(
            nn.Linear(num_gaussians, num_filters), ShiftedSoftplus(), nn.Linear(num_filters, num_filters)
        )
        self.to_filters = nn.Linear(hidden, num_filters, bias=False)
        self.from_filters = nn.Linear(num_filters, hidden)
        self.activation = ShiftedSoftplus()
        self.atomwise = nn.Linear(hidden, hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.filter_net[0], self.filter_net[2], self.to_filters, self.from_filters, self.atomwise):
            _reset_linear(layer)

    def forward(
        self, x: torch.Tensor, rbf: torch.Tensor, envelope: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor
    ) -> torch.Tensor:
        # Filter W(r_ji) from the distance expansion; the envelope takes it smoothly to 0 at the cutoff.
        filters = self.filter_net(rbf) * envelope.unsqueeze(-1)
        # cfconv: each neighbour's state (mapped to filter space once per atom) times the filter,
        # summed into the centre i.
        messages = self.to_filters(x)[idx_j] * filters
        aggregated = scatter_sum(messages, idx_i, x.shape[0])
        # Atom-wise layers back to the hidden width.
        return self.atomwise(self.activation(self.from_filters(aggregated)))


class SchNet(Backbone):
    """SchNet node and edge features (no triplet features).

    Shapes:
        forward(graph) -> InvariantFeatures(node (N, hidden), edge (E, hidden), triplet=None)
    """

    def __init__(self, config: SchNetConfig, settings: GraphSettings) -> None:
        super().__init__()
        hidden, gaussians = config.hidden, config.num_gaussians
        self.max_z = config.max_z
        self.embedding = nn.Embedding(config.max_z + 1, hidden)
        self.rbf = GaussianBasis(settings.cutoff, gaussians)
        self.interactions = nn.ModuleList(
            InteractionBlock(hidden, config.num_filters, gaussians) for _ in range(config.num_interactions)
        )
        # Edge MLP on [x_i, x_j, rbf]: its first Dense is split by input so that the node
        # parts are computed once per atom and gathered (the same map as one Linear on the concat).
        self.edge_center = nn.Linear(hidden, hidden)
        self.edge_neighbor = nn.Linear(hidden, hidden, bias=False)
        self.edge_rbf = nn.Linear(gaussians, hidden, bias=False)
        self.edge_activation = ShiftedSoftplus()
        self.edge_out = nn.Linear(hidden, hidden)
        self.feature_dims = FeatureDims(node=hidden, edge=hidden, triplet=None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.embedding.reset_parameters()
        for block in self.interactions:
            block.reset_parameters()
        for layer in (self.edge_center, self.edge_neighbor, self.edge_rbf, self.edge_out):
            _reset_linear(layer)

    def forward(self, graph: Graph) -> InvariantFeatures:
        if graph.num_nodes and not torch.compiler.is_compiling() and int(graph.numbers.max()) > self.max_z:
            raise ValueError(f"numbers: atomic number {int(graph.numbers.max())} exceeds backbone.max_z = "
                             f"{self.max_z}, the largest element this backbone embeds; raise max_z in its config")
        idx_i, idx_j = graph.idx_i, graph.idx_j
        # Element embedding.
        x = self.embedding(graph.numbers)
        # Gaussian expansion of the edge lengths (invariant).
        rbf = self.rbf(graph.edge_len)
        # Interaction blocks with residual updates.
        for interaction in self.interactions:
            x = x + interaction(x, rbf, graph.edge_envelope, idx_i, idx_j)
        # Edge features from centre, neighbour and distance (centre and neighbour kept apart).
        pre = self.edge_center(x)[idx_i] + self.edge_neighbor(x)[idx_j] + self.edge_rbf(rbf)
        edge = self.edge_out(self.edge_activation(pre))
        return InvariantFeatures(node=x, edge=edge, triplet=None)


def build_schnet(config: SchNetConfig, settings: GraphSettings) -> SchNet:
    return SchNet(config, settings)
