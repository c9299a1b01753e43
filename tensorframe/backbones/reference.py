"""The reference backbone: a small invariant network for tests and examples (not meant for
production accuracy), registered by the built-in plugin as ``reference``.

Element embeddings, a Gaussian distance expansion times the cosine envelope, and
``num_interactions`` rounds of continuous-filter message passing; edge features mix both
atoms' states with the distance expansion (centre and neighbour kept apart). Optionally it also emits triplet features
(``triplets=True``) from the angle cosine, to exercise heads with native triplet input.
"""

from __future__ import annotations

import torch
from pydantic import PositiveInt
from torch import nn

from tensorframe.backbones.base import Backbone
from tensorframe.ops.radial import GaussianBasis, legendre_basis
from tensorframe.ops.scatter import scatter_sum
from tensorframe.specs import FeatureDims, GraphSettings, PluginConfig
from tensorframe.types import Graph, InvariantFeatures


class ReferenceBackboneConfig(PluginConfig):
    hidden: PositiveInt = 32
    num_radial: PositiveInt = 16
    num_interactions: PositiveInt = 2
    triplets: bool = False
    max_z: PositiveInt = 100


class ReferenceBackbone(Backbone):
    def __init__(self, config: ReferenceBackboneConfig, settings: GraphSettings) -> None:
        super().__init__()
        h = config.hidden
        self.max_z = config.max_z
        self.embedding = nn.Embedding(config.max_z + 1, h)
        self.radial = GaussianBasis(settings.cutoff, config.num_radial)
        self.filters = nn.ModuleList(nn.Linear(config.num_radial, h) for _ in range(config.num_interactions))
        self.updates = nn.ModuleList(
            nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h)) for _ in range(config.num_interactions)
        )
        self.edge_out = nn.Linear(2 * h + config.num_radial, h)
        self.triplet_angular = nn.Linear(8, h) if config.triplets else None
        self.feature_dims = FeatureDims(node=h, edge=h, triplet=h if config.triplets else None)

    def forward(self, graph: Graph) -> InvariantFeatures:
        rbf = self.radial(graph.edge_len) * graph.edge_envelope.unsqueeze(-1)
        node = self.embedding(graph.numbers)
        for filter_layer, update in zip(self.filters, self.updates, strict=True):
            # The envelope also on the filter's bias: messages vanish smoothly at the cutoff.
            messages = node[graph.idx_j] * filter_layer(rbf) * graph.edge_envelope.unsqueeze(-1)
            node = node + update(scatter_sum(messages, graph.idx_i, graph.num_nodes))
        # Centre first: the edge into an Al from an N differs from the edge into that N.
        edge = nn.functional.silu(self.edge_out(torch.cat([node[graph.idx_i], node[graph.idx_j], rbf], dim=-1)))
        triplet = None
        if self.triplet_angular is not None:
            angular = self.triplet_angular(legendre_basis(graph.triplet_cos, 8))
            triplet = edge[graph.idx_kj] * edge[graph.idx_ji] * angular
        return InvariantFeatures(node=node, edge=edge, triplet=triplet)


def build_reference_backbone(config: ReferenceBackboneConfig, settings: GraphSettings) -> ReferenceBackbone:
    return ReferenceBackbone(config, settings)
