"""Scalar (rank-0) fields from node features: energies, charges, ..."""

from __future__ import annotations

from typing import Literal

import torch

from tensorframe.fields import FieldSpec
from tensorframe.heads.base import Head, coefficient_mlp
from tensorframe.ops.scatter import scatter_mean, scatter_sum
from tensorframe.specs import FeatureDims, PluginConfig
from tensorframe.types import Graph, InvariantFeatures


class ScalarHeadConfig(PluginConfig):
    field: str = "energy"
    level: Literal["atom", "structure"] = "structure"
    reduce: Literal["mean", "sum"] = "sum"
    units: str = ""
    hidden: int = 64


class ScalarHead(Head):
    """``y = reduce_j MLP(node_j)``; atom level returns the per-atom values.

    Shapes: -> (N,) atom level, (B,) structure level
    """

    def __init__(self, field: FieldSpec, dims: FeatureDims, hidden: int = 64) -> None:
        super().__init__()
        self.field = field
        self.mlp = coefficient_mlp(dims.node, hidden, 1)

    def forward(self, graph: Graph, features: InvariantFeatures) -> torch.Tensor:
        atomic = self.mlp(features.node).squeeze(-1)
        if self.field.level == "atom":
            return atomic
        reduce = scatter_mean if self.field.reduce == "mean" else scatter_sum
        return reduce(atomic, graph.batch, graph.num_structures)


def build_scalar_head(config: ScalarHeadConfig, dims: FeatureDims) -> ScalarHead:
    field = FieldSpec(config.field, config.level, "", 1, config.units, config.reduce)
    return ScalarHead(field, dims, hidden=config.hidden)
