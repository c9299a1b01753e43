"""Scalar (rank-0) fields from node features: energies, charges, ..."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveInt

from tensorframe.fields import FieldSpec, builtin_field
from tensorframe.heads.base import Head, coefficient_mlp
from tensorframe.ops.scatter import scatter_mean, scatter_sum
from tensorframe.specs import FeatureDims, FieldTable, PluginConfig
from tensorframe.types import Graph, InvariantFeatures


class ScalarHeadConfig(PluginConfig):
    """Unset ``level``/``reduce``/``units`` come from the field registry for a registered scalar
    field (energy: structure level, sum, eV), else structure level, sum, no units."""

    field: str = "energy"
    level: Literal["atom", "structure"] | None = None
    reduce: Literal["mean", "sum"] | None = None
    units: str | None = None
    hidden: PositiveInt = 64


class ScalarHead(Head):
    """``y = reduce_j MLP(node_j)``; atom level returns the per-atom values.

    Energies (:attr:`FieldSpec.accumulates_in_float64`) come out in float64 whatever the
    model's dtype, so that a total of thousands of eV keeps meV steps.

    Shapes: -> (N,) atom level, (B,) structure level
    """

    def __init__(self, field: FieldSpec, dims: FeatureDims, hidden: int = 64) -> None:
        super().__init__()
        self.field = field
        self.mlp = coefficient_mlp(dims.node, hidden, 1)

    def forward(self, graph: Graph, features: InvariantFeatures) -> torch.Tensor:
        atomic = self.mlp(features.node).squeeze(-1)
        if self.field.accumulates_in_float64:  # energies: summed (and later shifted) in float64
            atomic = atomic.double()
        if self.field.level == "atom":
            return atomic
        reduce = scatter_mean if self.field.reduce == "mean" else scatter_sum
        return reduce(atomic, graph.batch, graph.num_structures)


def build_scalar_head(config: ScalarHeadConfig, dims: FeatureDims, fields: FieldTable) -> ScalarHead:
    """The ``scalar`` head; unset options come from ``fields[config.field]`` when registered."""
    known = fields.get(config.field)
    if known is not None and known.symmetry:
        raise ValueError(f"field {config.field!r} is a rank-{known.rank} tensor; use the tensor head for it")
    level = config.level or (known.level if known else "structure")
    reduce = config.reduce or (known.reduce if known else "sum")
    units = config.units if config.units is not None else (known.units if known else "")
    field = FieldSpec(config.field, level, "", 1, units, reduce)
    return ScalarHead(field, dims, hidden=config.hidden)


class EnergyHeadConfig(PluginConfig):
    """The total energy (eV): a sum of atomic energies, each an MLP of the atom's features plus
    the reference energy of its element (``normalize.E0s`` in training). With
    ``model.conservative: true`` forces, stress and virial are its derivatives."""

    hidden: PositiveInt = 64


def build_energy_head(config: EnergyHeadConfig, dims: FeatureDims, fields: FieldTable) -> ScalarHead:
    """The ``energy`` head: always the built-in ``energy`` field (eV, summed in float64);
    ``fields`` is not consulted."""
    return ScalarHead(builtin_field("energy"), dims, hidden=config.hidden)
