"""A complete third-party tensorframe plugin: one backbone, one head, one field, one reader.

tests/test_plugins.py installs this very file as a throwaway distribution ``tensorframe-toy``
(entry point ``toy = "toy_plugin"`` in the group ``tensorframe``) and proves that
``tensorframe plugins`` lists it and that ``build_model`` uses it; tests/test_plugin_guide.py
runs the backbone and head contracts on it (docs/examples/test_toy_plugin.py).
"""

import numpy as np
import torch
from torch import nn

import tensorframe
from tensorframe import (
    Backbone,
    BackboneSpec,
    CartesianTensorHead,
    FeatureDims,
    FieldSpec,
    FieldTable,
    GaussianBasis,
    Graph,
    GraphSettings,
    HeadSpec,
    InvariantFeatures,
    PluginConfig,
    ReaderSpec,
    Sample,
    scatter_sum,
)

# ---- 1. a backbone: invariant features only ------------------------------------------


class ToyConfig(PluginConfig):
    width: int = 8


class ToyBackbone(Backbone):
    """Element embeddings times a distance expansion per edge, summed into the atoms; no
    triplet features (the core lifts edge features to triplets for heads that need them)."""

    def __init__(self, config: ToyConfig, settings: GraphSettings) -> None:
        super().__init__()
        self.embedding = nn.Embedding(100, config.width)
        self.radial = GaussianBasis(settings.cutoff, config.width)
        self.mix = nn.Linear(2 * config.width, config.width)
        self.feature_dims = FeatureDims(node=config.width, edge=config.width)

    def forward(self, graph: Graph) -> InvariantFeatures:
        species = self.embedding(graph.numbers)  # (N, width)
        # Centre and neighbour kept apart, so an edge and its reverse get different features.
        pair = self.mix(nn.functional.silu(torch.cat([species[graph.idx_i], species[graph.idx_j]], dim=-1)))
        # Times the envelope: an edge fades out smoothly as its neighbour reaches the cutoff.
        edge = pair * self.radial(graph.edge_len) * graph.edge_envelope.unsqueeze(-1)  # (E, width)
        node = species + scatter_sum(edge, graph.idx_i, graph.num_nodes)  # one message pass: (N, width)
        return InvariantFeatures(node=node, edge=edge)


# ---- 2. a field and a tensor head -----------------------------------------------------

TOY_FIELD = FieldSpec("toy_moment", "structure", "i", -1, "e*A", "sum", "a dipole-like toy vector")


class ToyHeadConfig(PluginConfig):
    hidden: int = 8


def build_toy_moment_head(config: ToyHeadConfig, dims: FeatureDims, fields: FieldTable) -> CartesianTensorHead:
    """mu = sum_j sum_k t_kj e_kj: an invariant coefficient per edge (from the edge features)
    times the edge's unit vector (the word "a": odd parity, like a dipole), summed to atoms,
    then to structures (the field's ``reduce``). Shapes: -> (B, 3)"""
    return CartesianTensorHead(fields["toy_moment"], dims, edge_words=("a",), triplet_words=(), hidden=config.hidden)


# ---- 3. a reader -----------------------------------------------------------------------


def read_toy(path, *, fields, **options):
    """Lines of 'Z x y z': one molecule, no labels (``fields``: the registry's field table)."""
    data = np.loadtxt(path, ndmin=2)
    return [Sample(data[:, 0].astype(int), data[:, 1:4])]


# ---- 4. the hooks --------------------------------------------------------------------


@tensorframe.hookimpl
def tensorframe_register_backbones():
    return [BackboneSpec("toy", ToyConfig, ToyBackbone, "toy backbone from a third-party plugin")]


@tensorframe.hookimpl
def tensorframe_register_heads():
    return [HeadSpec("toy_moment", ToyHeadConfig, build_toy_moment_head, "toy vector head")]


@tensorframe.hookimpl
def tensorframe_register_fields():
    return [TOY_FIELD]


@tensorframe.hookimpl
def tensorframe_register_readers():
    return [ReaderSpec("toy", read_toy, (".toy",), "Z x y z lines")]
