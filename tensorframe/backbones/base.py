"""The backbone contract: a Graph in, rotation-invariant features out."""

from __future__ import annotations

from torch import nn

from tensorframe.specs import FeatureDims
from tensorframe.types import Graph, InvariantFeatures


class Backbone(nn.Module):
    """An invariant graph network.

    It may use only invariant geometry (``graph.edge_len``, ``graph.triplet_cos``, element
    types, the envelopes); never positions or directions themselves. Set ``feature_dims``;
    ``feature_dims.triplet`` is None when the backbone has no triplet messages, and the
    model then lifts edge features to triplets for heads that need them. Set ``max_z`` to
    the largest atomic number the backbone embeds (its config's ``max_z``): structures with
    heavier atoms are then refused before they reach it, naming the atom.

    Shapes:
        forward(graph) -> InvariantFeatures(node (N, Fn), edge (E, Fe), triplet (T, Ft) | None)
    """

    feature_dims: FeatureDims
    max_z: int | None = None
    """The largest atomic number the backbone embeds; None: unknown, and
    :func:`tensorframe.model.embedding_limit` takes the size of its smallest ``nn.Embedding``."""

    def prune_outputs(self, *, triplet: bool) -> None:
        """Called by :func:`tensorframe.model.build_model` with whether any head reads triplet
        features. A backbone may then skip the work whose only consumer is ``features.triplet``
        and return ``triplet=None`` (pruned outputs are exact: nothing downstream reads them).
        The default computes every output."""

    def forward(self, graph: Graph) -> InvariantFeatures:  # pragma: no cover
        raise NotImplementedError
