"""The general Cartesian tensor head (rank 1-4, any e3nn index-symmetry formula).

    T_j = P [ sum_{edges k->j} sum_w t^w_kj  w(e_kj)  +  sum_{triplets k->j->i} sum_w t^w_kji  w(e_kj, e_ji) ]

with invariant coefficients ``t`` from MLPs on the backbone's edge / triplet features
(times the smooth cutoff envelope), basis words ``w`` (see :mod:`tensorframe.ops.basis`)
and ``P`` the projector onto the formula's symmetric subspace. Atom-level fields return
``T_j``; structure-level fields reduce them with a mean (intensive) or a sum (extensive).
The paper's force, Born-charge, dielectric and piezo heads are special cases
(:mod:`tensorframe.heads.named`).
"""

from __future__ import annotations

import functools
from typing import Literal

import torch

from tensorframe.fields import FieldSpec
from tensorframe.heads.base import Head, coefficient_mlp
from tensorframe.ops.basis import default_edge_words, default_triplet_words, word_parity, word_product
from tensorframe.ops.scatter import scatter_mean, scatter_sum
from tensorframe.ops.symmetry import formula_rank, subspace_dim, symmetric_projector
from tensorframe.specs import FeatureDims, PluginConfig
from tensorframe.types import Graph, InvariantFeatures


class TensorHeadConfig(PluginConfig):
    """Options of the general ``tensor`` head. Unset symmetry/level/parity/reduce come from
    the field registry when ``field`` is a known field."""

    field: str
    symmetry: str | None = None
    level: Literal["atom", "structure"] | None = None
    parity: Literal[1, -1] | None = None
    reduce: Literal["mean", "sum"] | None = None
    units: str = ""
    edge_words: tuple[str, ...] | None = None
    triplet_words: tuple[str, ...] | None = None
    use_triplets: bool = True
    hidden: int = 64


class CartesianTensorHead(Head):
    """Edge and triplet basis products with invariant coefficients, projected onto a formula.

    Args:
        field: what is predicted (level, symmetry, parity, reduce).
        dims: widths of the backbone's features.
        edge_words / triplet_words: basis words; each must have the field's rank and parity.
        nonnegative: softplus the coefficients (with words like ``"aa"`` this makes the
            atomic tensors positive semi-definite).
        add_identity: add the identity to the result (rank 2).
        subtract_structure_mean: subtract each structure's mean atomic tensor (acoustic
            sum rule for Born charges; atom level only).
    """

    def __init__(
        self,
        field: FieldSpec,
        dims: FeatureDims,
        edge_words: tuple[str, ...],
        triplet_words: tuple[str, ...],
        hidden: int = 64,
        nonnegative: bool = False,
        add_identity: bool = False,
        subtract_structure_mean: bool = False,
    ) -> None:
        super().__init__()
        if not field.symmetry:
            raise ValueError(f"field {field.name!r}: a tensor head needs rank >= 1; use the scalar head")
        rank = formula_rank(field.symmetry)
        for word in (*edge_words, *triplet_words):
            if len(word) != rank or word_parity(word) != field.parity:
                raise ValueError(
                    f"field {field.name!r}: basis word {word!r} does not give a rank-{rank} tensor of parity "
                    f"{field.parity:+d}"
                )
        if any(set(w) - {"a"} for w in edge_words):
            raise ValueError(f"field {field.name!r}: edge words use the letter 'a' only, got {edge_words}")
        if not edge_words and not triplet_words:
            raise ValueError(f"field {field.name!r}: no basis words; give edge_words or triplet_words")
        if add_identity and rank != 2:
            raise ValueError(f"field {field.name!r}: add_identity needs a rank-2 tensor")
        if subtract_structure_mean and field.level != "atom":
            raise ValueError(f"field {field.name!r}: subtracting the structure mean needs an atom-level field")
        rank_found = basis_span_rank(field.symmetry, edge_words, triplet_words)
        if rank_found < subspace_dim(field.symmetry):
            raise ValueError(
                f"field {field.name!r}: words {edge_words + triplet_words} span only {rank_found} of the "
                f"{subspace_dim(field.symmetry)} dimensions of {field.symmetry!r} with parity {field.parity:+d}"
            )
        self.field = field
        self.rank = rank
        self.edge_words = tuple(edge_words)
        self.triplet_words = tuple(triplet_words)
        self.needs_triplets = bool(triplet_words)
        self.nonnegative = nonnegative
        self.add_identity = add_identity
        self.subtract_structure_mean = subtract_structure_mean
        self.edge_coefficients = coefficient_mlp(dims.edge, hidden, len(edge_words)) if edge_words else None
        triplet_dim = dims.triplet if dims.triplet is not None else dims.edge
        self.triplet_coefficients = coefficient_mlp(triplet_dim, hidden, len(triplet_words)) if triplet_words else None

    def _coefficients(self, mlp: torch.nn.Module, features: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
        raw = mlp(features)
        if self.nonnegative:
            raw = torch.nn.functional.softplus(raw)
        return raw * envelope.unsqueeze(-1)

    def atomic_tensors(self, graph: Graph, features: InvariantFeatures) -> torch.Tensor:
        """Per-atom tensors, flattened and projected.

        Shapes: -> (N, 3**rank)
        """
        dtype = graph.edge_dir.dtype
        out = graph.edge_dir.new_zeros((graph.num_nodes, 3**self.rank))
        if self.edge_coefficients is not None:
            coefficients = self._coefficients(self.edge_coefficients, features.edge, graph.edge_envelope)
            terms = sum(
                coefficients[:, w : w + 1] * word_product(word, graph.edge_dir)
                for w, word in enumerate(self.edge_words)
            )
            out = out.index_add(0, graph.idx_i, terms)
        if self.triplet_coefficients is not None:
            if features.triplet is None:
                raise ValueError(f"field {self.field.name!r}: this head needs triplet features; none were given")
            coefficients = self._coefficients(self.triplet_coefficients, features.triplet, graph.triplet_envelope)
            a = graph.edge_dir.index_select(0, graph.idx_kj)  # index_select: ~3x faster than [idx] on CPU
            b = graph.edge_dir.index_select(0, graph.idx_ji)
            terms = sum(
                coefficients[:, w : w + 1] * word_product(word, a, b) for w, word in enumerate(self.triplet_words)
            )
            out = out.index_add(0, graph.idx_triplet_center, terms)
        if _needs_projection(self.field.symmetry):
            out = out @ symmetric_projector(self.field.symmetry, dtype=dtype, device=out.device)
        return out

    def forward(self, graph: Graph, features: InvariantFeatures) -> torch.Tensor:
        out = self.atomic_tensors(graph, features)
        if self.subtract_structure_mean:
            out = out - scatter_mean(out, graph.batch, graph.num_structures)[graph.batch]
        if self.field.level == "structure":
            reduce = scatter_mean if self.field.reduce == "mean" else scatter_sum
            out = reduce(out, graph.batch, graph.num_structures)
        if self.add_identity:
            out = out + torch.eye(3, dtype=out.dtype, device=out.device).reshape(1, 9)
        return out.reshape(out.shape[0], *self.field.shape)


@functools.cache
def _needs_projection(formula: str) -> bool:
    return "=" in formula


@functools.cache
def basis_span_rank(formula: str, edge_words: tuple[str, ...], triplet_words: tuple[str, ...]) -> int:
    """Rank of the projected basis products around one generic atom (16 random neighbours,
    enough rows for edge words alone to reach a fully symmetric rank-4 tensor's 15 dimensions).

    Equals the subspace dimension exactly when the words can reach every tensor of the formula.
    """
    generator = torch.Generator().manual_seed(1234)
    directions = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    pairs = torch.tensor([(p, q) for p in range(16) for q in range(16) if p != q])
    a, b = directions[pairs[:, 0]], directions[pairs[:, 1]]
    rows = [word_product(w, directions) for w in edge_words]
    rows += [word_product(w, a, b) for w in triplet_words]
    stacked = torch.cat(rows) @ symmetric_projector(formula, dtype=torch.float64)
    return int(torch.linalg.matrix_rank(stacked, atol=1e-8).item())


def build_tensor_head(config: TensorHeadConfig, dims: FeatureDims) -> CartesianTensorHead:
    """The ``tensor`` head from its config, filling unset options from the field registry."""
    from tensorframe.registry import get_registry

    known = get_registry().items["field"].get(config.field)
    symmetry = config.symmetry or (known.symmetry if known else None)
    level = config.level or (known.level if known else None)
    if symmetry is None or level is None:
        raise ValueError(
            f"field {config.field!r} is not a registered field; give symmetry and level "
            f"(registered fields: {', '.join(get_registry().names('field'))})"
        )
    rank = formula_rank(symmetry)
    parity = config.parity or (known.parity if known and known.symmetry == symmetry else (-1) ** rank)
    reduce = config.reduce or (known.reduce if known else "sum")
    units = config.units or (known.units if known else "")
    field = FieldSpec(config.field, level, symmetry, parity, units, reduce)
    edge_words = config.edge_words if config.edge_words is not None else default_edge_words(rank, parity)
    if config.triplet_words is not None:
        triplet_words = config.triplet_words
    elif config.use_triplets and rank >= 2 or not edge_words:
        triplet_words = default_triplet_words(rank, parity)
    else:
        triplet_words = ()
    return CartesianTensorHead(field, dims, tuple(edge_words), tuple(triplet_words), hidden=config.hidden)
