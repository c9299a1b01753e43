"""A complete third-party tensorframe plugin: one backbone, one head, one field, one reader.

tests/test_plugins.py installs this very file as a throwaway distribution ``tensorframe-toy``
(entry point ``toy = "toy_plugin"`` in the group ``tensorframe``) and proves that
``tensorframe plugins`` lists it and that ``build_model`` uses it.
"""

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

import tensorframe
from tensorframe.backbones import Backbone
from tensorframe.fields import FieldSpec
from tensorframe.heads import Head
from tensorframe.ops.radial import GaussianBasis
from tensorframe.ops.scatter import scatter_sum
from tensorframe.specs import BackboneSpec, FeatureDims, HeadSpec, PluginConfig, ReaderSpec
from tensorframe.types import Graph, InvariantFeatures, Sample

# ---- 1. a backbone: invariant features only ------------------------------------------


class ToyConfig(PluginConfig):
    width: int = 8


class ToyBackbone(Backbone):
    """Element embeddings times a distance expansion; no triplet features (the core lifts
    edge features to triplets for heads that need them)."""

    def __init__(self, config: ToyConfig, settings: tensorframe.GraphSettings) -> None:
        super().__init__()
        self.embedding = nn.Embedding(100, config.width)
        self.radial = GaussianBasis(settings.cutoff, config.width)
        self.mix = nn.Linear(2 * config.width, config.width)
        self.feature_dims = FeatureDims(node=config.width, edge=config.width)

    def forward(self, graph: Graph) -> InvariantFeatures:
        node = self.embedding(graph.numbers)
        # Centre and neighbour kept apart, so an edge and its reverse get different features.
        pair = self.mix(nn.functional.silu(torch.cat([node[graph.idx_i], node[graph.idx_j]], dim=-1)))
        return InvariantFeatures(node=node, edge=pair * self.radial(graph.edge_len))


# ---- 2. a field and a tensor head -----------------------------------------------------

TOY_FIELD = FieldSpec("toy_moment", "structure", "i", -1, "e*A", "sum", "a dipole-like toy vector")


class ToyHeadConfig(PluginConfig):
    hidden: int = 8


class ToyMomentHead(Head):
    """mu = sum_j sum_k t_kj e_kj: an invariant coefficient per edge times the edge's unit
    vector (odd parity, like a dipole), summed to atoms, then to structures.

    Shapes: -> (B, 3)
    """

    def __init__(self, config: ToyHeadConfig, dims: FeatureDims, fields: Mapping[str, FieldSpec]) -> None:
        super().__init__()
        self.field = fields["toy_moment"]  # the field table of the registry the model is built from
        self.coefficients = nn.Sequential(nn.Linear(dims.edge, config.hidden), nn.SiLU(), nn.Linear(config.hidden, 1))

    def forward(self, graph: Graph, features: InvariantFeatures) -> torch.Tensor:
        t = self.coefficients(features.edge) * graph.edge_envelope.unsqueeze(-1)  # (E, 1), invariant
        atomic = scatter_sum(t * graph.edge_dir, graph.idx_i, graph.num_nodes)  # (N, 3), equivariant
        return scatter_sum(atomic, graph.batch, graph.num_structures)  # (B, 3)


# ---- 3. a reader -----------------------------------------------------------------------


def read_toy(path, **options):
    """Lines of 'Z x y z': one molecule."""
    data = np.loadtxt(path, ndmin=2)
    return [Sample(data[:, 0].astype(int), data[:, 1:4])]


# ---- 4. the hooks --------------------------------------------------------------------


@tensorframe.hookimpl
def tensorframe_register_backbones():
    return [BackboneSpec("toy", ToyConfig, ToyBackbone, "toy backbone from a third-party plugin")]


@tensorframe.hookimpl
def tensorframe_register_heads():
    return [HeadSpec("toy_moment", ToyHeadConfig, ToyMomentHead, "toy vector head")]


@tensorframe.hookimpl
def tensorframe_register_fields():
    return [TOY_FIELD]


@tensorframe.hookimpl
def tensorframe_register_readers():
    return [ReaderSpec("toy", read_toy, (".toy",), "Z x y z lines")]
