"""The general Cartesian tensor head (rank 1-4, any e3nn index-symmetry formula).

    T_j = P [ sum_v s^v_j v  +  sum_{edges k->j} sum_w t^w_kj  w(e_kj)
              +  sum_{triplets k->j->i} sum_w t^w_kji  w(e_kj, e_ji, e_kj x e_ji) ]

with invariant coefficients ``t`` from MLPs on the backbone's edge / triplet features
(times the smooth cutoff envelope), basis words ``w`` (see :mod:`tensorframe.ops.basis`),
identity-only atom words ``v`` (``delta_ij``, ``delta_ij delta_kl``, ...) whose coefficient
``s_j`` is a linear read-out of atom j's node features plus a sum of per-edge terms, and ``P``
the projector onto the formula's symmetric subspace. Atom-level fields return
``T_j``; structure-level fields reduce them with a mean (intensive) or a sum (extensive).
The paper's force, Born-charge, dielectric and piezo heads are special cases
(:mod:`tensorframe.heads.named`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import PositiveInt

from tensorframe.fields import FieldSpec
from tensorframe.heads.base import Head, coefficient_columns, coefficient_mlp
from tensorframe.heads.charge_flow import ChargeFlow
from tensorframe.ops.basis import (
    WordSet,
    check_word,
    complete_words,
    is_isotropic,
    isotropic_embedding,
    outer_rows,
    paper_words,
    weighted_word_sum,
    word_parity,
    word_product,
    word_skeleton,
)
from tensorframe.ops.fragments import connected_components
from tensorframe.ops.scatter import scatter_mean, scatter_sum
from tensorframe.ops.symmetry import formula_rank, subspace_dim, symmetric_projector
from tensorframe.specs import FeatureDims, FieldTable, PluginConfig
from tensorframe.types import Graph, InvariantFeatures

Basis = Literal["complete", "paper"]


class TensorHeadConfig(PluginConfig):
    """Options of the general ``tensor`` head. Unset symmetry/level/parity/reduce come from
    the field registry when ``field`` is a known field."""

    field: str
    symmetry: str | None = None
    level: Literal["atom", "structure"] | None = None
    parity: Literal[1, -1] | None = None
    reduce: Literal["mean", "sum"] | None = None
    units: str = ""
    basis: Basis = "complete"
    """``complete``: products of edge directions plus isotropic (identity) words per atom and
    edge and normal-direction (c = a x b) words per triplet, so planar and linear environments
    reach every component their symmetry allows; ``paper``: products of edge directions only."""
    atom_words: tuple[str, ...] | None = None
    edge_words: tuple[str, ...] | None = None
    triplet_words: tuple[str, ...] | None = None
    use_triplets: bool = True
    charge_flow: bool = False
    """Add sum_i q_i r_i (dipole) or sum_i nu_i (x) r_i + r_i (x) nu_i (polarizability), positions
    relative to the centroid and sum_i q_i = 0; molecules only (refused on periodic structures)."""
    hidden: PositiveInt = 64


class CartesianTensorHead(Head):
    """Basis words with invariant coefficients, summed per atom and projected onto a formula.

    Args:
        field: what is predicted (level, symmetry, parity, reduce).
        dims: widths of the backbone's features.
        edge_words / triplet_words: basis words (see :mod:`tensorframe.ops.basis`); each must
            have the field's rank and parity. Edge words use ``a`` and identity pairs.
        atom_words: identity-only words (``"II"``, ``"IJIJ"``): an isotropic part per atom,
            its coefficient from the atom's node features plus a sum of per-edge coefficients.
        nonnegative: softplus the coefficients (with words like ``"aa"``, ``"cc"``, ``"II"`` this
            makes the atomic tensors positive semi-definite).
        add_identity: add the identity to the result (rank 2).
        subtract_structure_mean: subtract each structure's mean atomic tensor (acoustic
            sum rule for Born charges; atom level only).
        mean_over: ``"structure"`` (default) or ``"fragment"``: with ``"fragment"`` the mean is
            subtracted per connected fragment (atoms joined by edges within the cutoff), so
            each fragment sums to zero on its own and a far-away molecule or lone atom does
            not shift the others (:func:`tensorframe.ops.fragments.connected_components`).
        charge_flow: add the charge-flow term of :mod:`tensorframe.heads.charge_flow`
            (molecular dipoles and polarizabilities; refused on periodic structures).
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
        atom_words: tuple[str, ...] = (),
        charge_flow: bool = False,
        mean_over: str = "structure",
    ) -> None:
        super().__init__()
        if not field.symmetry:
            raise ValueError(f"field {field.name!r}: a tensor head needs rank >= 1; use the scalar head")
        rank = formula_rank(field.symmetry)
        for word in (*atom_words, *edge_words, *triplet_words):
            try:
                check_word(word)
            except ValueError as error:
                raise ValueError(f"field {field.name!r}: {error}") from None
            if len(word) != rank or word_parity(word) != field.parity:
                raise ValueError(
                    f"field {field.name!r}: basis word {word!r} does not give a rank-{rank} tensor of parity "
                    f"{field.parity:+d}"
                )
        if any(set(word_skeleton(w)) - {"a"} for w in edge_words):
            raise ValueError(f"field {field.name!r}: edge words use the letter 'a' and identity pairs only, got {edge_words}")
        if any(word_skeleton(w) for w in atom_words):
            raise ValueError(f"field {field.name!r}: atom words are identity pairs only (like 'II'), got {atom_words}")
        if not edge_words and not triplet_words and not atom_words:
            raise ValueError(f"field {field.name!r}: no basis words; give edge_words or triplet_words")
        if add_identity and rank != 2:
            raise ValueError(f"field {field.name!r}: add_identity needs a rank-2 tensor")
        if subtract_structure_mean and field.level != "atom":
            raise ValueError(f"field {field.name!r}: subtracting the structure mean needs an atom-level field")
        words = WordSet(tuple(atom_words), tuple(edge_words), tuple(triplet_words))
        rank_found = basis_span_rank(field.symmetry, words)
        if rank_found < subspace_dim(field.symmetry):
            raise ValueError(
                f"field {field.name!r}: words {words.all} span only {rank_found} of the "
                f"{subspace_dim(field.symmetry)} dimensions of {field.symmetry!r} with parity {field.parity:+d}"
            )
        self.field = field
        self.rank = rank
        self.words = words
        self.atom_words = words.atom
        self.edge_words = words.edge
        self.triplet_words = words.triplet
        self.needs_triplets = bool(triplet_words)
        self.nonnegative = nonnegative
        self.add_identity = add_identity
        if mean_over not in ("structure", "fragment"):
            raise ValueError(f"field {field.name!r}: mean_over: expected 'structure' or 'fragment', got {mean_over!r}")
        self.subtract_structure_mean = subtract_structure_mean
        self.mean_over = mean_over
        # The edge MLP also gives one coefficient per atom word and edge, summed per atom.
        edge_outputs = len(edge_words) + len(atom_words)
        self.edge_coefficients = coefficient_mlp(dims.edge, hidden, edge_outputs) if edge_outputs else None
        if atom_words:
            # The per-edge isotropic terms start at zero: a sum over neighbours of a shared bias
            # would otherwise start every atom with an identity that grows with its neighbour count.
            last = self.edge_coefficients[-1]
            with torch.no_grad():
                last.weight[len(edge_words) :].zero_()
                last.bias[len(edge_words) :].zero_()
        # A linear read-out of the backbone's node features (already a deep invariant
        # representation): one matmul per head instead of an MLP's three ops.
        self.node_coefficients = torch.nn.Linear(dims.node, len(atom_words)) if atom_words else None
        triplet_dim = dims.triplet if dims.triplet is not None else dims.edge
        self.triplet_coefficients = coefficient_mlp(triplet_dim, hidden, len(triplet_words)) if triplet_words else None
        if atom_words:
            basis = torch.cat([isotropic_embedding(w, dtype=torch.get_default_dtype()) for w in atom_words])
            self.register_buffer("atom_basis", basis, persistent=False)  # (A, 3**M)
        self.charge_flow = ChargeFlow(field, dims, hidden) if charge_flow else None
        self._edge_plan = self._plan("edge", self.edge_words)
        self._triplet_plan = self._plan("triplet", self.triplet_words)

    def _plan(self, kind: str, words: tuple[str, ...]) -> _WordPlan:
        """How to evaluate ``words`` (see :class:`_WordPlan`); the identity embeddings of
        isotropic words are non-persistent buffers, so they follow ``.to()``."""
        direct, factored = [], {}
        for w, word in enumerate(words):
            if is_isotropic(word):
                continue
            letter = "a" if "a" in word else "b" if "b" in word else None
            if kind == "triplet" and letter is not None:
                position = word.index(letter)
                factored.setdefault((letter, position), []).append((w, word[:position] + word[position + 1 :]))
            else:
                direct.append((w, word))
        groups = []
        for skeleton in dict.fromkeys(word_skeleton(word) for word in words if is_isotropic(word)):
            columns = tuple(w for w, word in enumerate(words) if is_isotropic(word) and word_skeleton(word) == skeleton)
            name = f"{kind}_embedding_{len(groups)}"
            embedding = torch.stack([isotropic_embedding(words[w], dtype=torch.get_default_dtype()) for w in columns])
            self.register_buffer(name, embedding, persistent=False)  # (K, 3**m, 3**M)
            groups.append((skeleton, columns, name))
        by_letter: dict[str, list[tuple[int, tuple[tuple[int, str], ...]]]] = {}
        for (letter, position), items in factored.items():
            by_letter.setdefault(letter, []).append((position, tuple(items)))
        return _WordPlan(
            direct=tuple(direct),
            factored=tuple((letter, tuple(positions)) for letter, positions in by_letter.items()),
            isotropic=tuple(groups),
        )

    def _coefficients(self, raw: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
        if self.nonnegative:
            raw = torch.nn.functional.softplus(raw)
        return raw * envelope.unsqueeze(-1)

    def _coefficient_columns(self, raw: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
        """:meth:`_coefficients` in the component-major layout; in place on ``raw`` (a fresh
        tensor) in inference. Shapes: raw (W, X), envelope (X,) -> (W, X)"""
        if self.nonnegative:
            raw = torch.nn.functional.softplus(raw)
        if torch.is_grad_enabled():
            return raw * envelope.unsqueeze(0)
        return raw.mul_(envelope.unsqueeze(0))

    def _isotropic_sum(
        self, plan: _WordPlan, coefficients: torch.Tensor, centre: torch.Tensor, num_nodes: int,
        a: torch.Tensor, b: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """sum over items of coefficient x isotropic word, per centre atom: coefficient x
        skeleton summed per atom first (3**m wide), then the identities placed.

        Shapes (component-major): coefficients (W, X), centre (X,), a, b (3, X) -> (3**M, N) or None
        """
        out = None
        for skeleton, columns, name in plan.isotropic:
            embedding = getattr(self, name).to(a.dtype)
            weights = coefficients[list(columns)]  # (K, X)
            if skeleton:
                product = weighted_word_sum((skeleton,), a.new_ones((1, a.shape[1])), a, b)  # (3**m, X)
                weighted = (weights.unsqueeze(1) * product.unsqueeze(0)).reshape(len(columns) * product.shape[0], a.shape[1])
            else:
                weighted = weights
            summed = a.new_zeros((weighted.shape[0], num_nodes)).index_add_(1, centre, weighted)
            term = torch.einsum("kmn,kmf->fn", summed.view(len(columns), -1, num_nodes), embedding)
            out = term if out is None else out + term
        return out

    def atomic_tensors(self, graph: Graph, features: InvariantFeatures) -> torch.Tensor:
        """Per-atom tensors, flattened and projected.

        Work is done component-major (tensors as (3**M, items)), where outer products are
        contiguous row multiplications. Edge words and the triplet words that hold ``a`` (or
        ``b``) are accumulated per edge first:
        ``sum_t a_t (x) X_t = sum_e e_e (x) (sum over the triplets of edge e of X_t)``, since every
        triplet through edge ``k -> j`` shares its ``a``; the rank-M outer product is then formed
        per edge, not per triplet (there are several times more triplets).

        Shapes: -> (N, 3**rank)
        """
        dtype = graph.edge_dir.dtype
        num_nodes, num_edges = graph.num_nodes, graph.num_edges
        size = 3**self.rank
        out = graph.edge_dir.new_zeros((size, num_nodes))
        directions = graph.edge_dir.t().contiguous()  # (3, E)
        into_centre: list[torch.Tensor] = []  # (3**M, E) per edge, summed to the edge's centre idx_i
        from_centre: list[torch.Tensor] = []  # (3**M, E) per edge, summed to the edge's source idx_j
        num_edge_words = len(self.edge_words)
        if self.edge_coefficients is not None:
            raw = self.edge_coefficients(features.edge)
            if not self.nonnegative:  # one multiply by the envelope for word and isotropic columns
                raw = raw * graph.edge_envelope.unsqueeze(-1)
            if num_edge_words:
                coefficients = (self._coefficients(raw[:, :num_edge_words], graph.edge_envelope) if self.nonnegative
                                else raw[:, :num_edge_words]).t().contiguous()
                plan = self._edge_plan
                if plan.direct:
                    words = tuple(word for _, word in plan.direct)
                    columns = tuple(w for w, _ in plan.direct)
                    into_centre.append(weighted_word_sum(words, coefficients, directions, columns=columns))
                isotropic = self._isotropic_sum(plan, coefficients, graph.idx_i, num_nodes, directions)
                if isotropic is not None:
                    out = out + isotropic
        if self.node_coefficients is not None:
            # One isotropic coefficient per atom and word: node term plus the sum of edge terms,
            # made non-negative after summing (one softplus per atom, not one per edge).
            edge_terms = raw[:, num_edge_words:]
            if self.nonnegative:
                edge_terms = edge_terms * graph.edge_envelope.unsqueeze(-1)
            isotropic = self.node_coefficients(features.node).index_add(0, graph.idx_i, edge_terms)
            if self.nonnegative:
                isotropic = torch.nn.functional.softplus(isotropic)
            out = out + self.atom_basis.to(dtype).t() @ isotropic.t()
        if self.triplet_coefficients is not None:
            if features.triplet is None:
                raise ValueError(f"field {self.field.name!r}: this head needs triplet features; none were given")
            coefficients = self._coefficient_columns(
                coefficient_columns(self.triplet_coefficients, features.triplet), graph.triplet_envelope
            )  # (W, T)
            a = directions.index_select(1, graph.idx_kj)  # (3, T)
            b = directions.index_select(1, graph.idx_ji)
            plan = self._triplet_plan
            for letter, positions in plan.factored:
                # The rests of every position of this letter stacked: one scatter to the edges.
                rests = [weighted_word_sum(tuple(word for _, word in items), coefficients, a, b,
                                           columns=tuple(w for w, _ in items)) for _, items in positions]
                rest = rests[0] if len(rests) == 1 else torch.cat(rests, dim=0)
                edge_index = graph.idx_kj if letter == "a" else graph.idx_ji
                per_edge = rest.new_zeros((rest.shape[0], num_edges)).index_add_(1, edge_index, rest)
                width = 3 ** (self.rank - 1)
                for k, (position, _) in enumerate(positions):
                    placed = _insert_vector(directions, per_edge[k * width : (k + 1) * width], position, self.rank)
                    (into_centre if letter == "a" else from_centre).append(placed)
            centre = graph.idx_triplet_center
            if plan.direct:
                words = tuple(word for _, word in plan.direct)
                terms = weighted_word_sum(words, coefficients, a, b, columns=tuple(w for w, _ in plan.direct))
                out = out.index_add(1, centre, terms)
            isotropic = self._isotropic_sum(plan, coefficients, centre, num_nodes, a, b)
            if isotropic is not None:
                out = out + isotropic
        if into_centre:
            out = out.index_add(1, graph.idx_i, functools.reduce(torch.add, into_centre))
        if from_centre:
            out = out.index_add(1, graph.idx_j, functools.reduce(torch.add, from_centre))
        if _needs_projection(self.field.symmetry):
            # (P^T out)^T = out^T P with P symmetric: the projected (N, 3**M) tensors.
            return out.t() @ symmetric_projector(self.field.symmetry, dtype=dtype, device=out.device)
        return out.t().contiguous()

    def label_out_of_reach(self, label: np.ndarray) -> str | None:
        """With ``nonnegative`` coefficients on positive semi-definite words plus the identity
        (the ``positive_definite`` dielectric), every eigenvalue of the output is at least 1:
        a label with a smaller eigenvalue (below 1 - 1e-6) cannot be fitted."""
        if not (self.nonnegative and self.add_identity):
            return None
        matrices = np.asarray(label, dtype=np.float64).reshape(-1, 3, 3)
        lowest = np.linalg.eigvalsh(0.5 * (matrices + matrices.transpose(0, 2, 1))).min()
        if lowest >= 1.0 - 1e-6:
            return None
        return (f"has an eigenvalue {lowest:.4g} < 1, but this head is the identity plus a positive "
                f"semi-definite tensor (positive_definite: true), so every eigenvalue it predicts is >= 1; "
                f"check the labels (units? the electronic part only?) or set positive_definite: false")

    def forward(self, graph: Graph, features: InvariantFeatures) -> torch.Tensor:
        out = self.atomic_tensors(graph, features)
        if self.subtract_structure_mean:
            if self.mean_over == "fragment":
                groups, count = connected_components(graph.num_nodes, graph.idx_i, graph.idx_j)
            else:
                groups, count = graph.batch, graph.num_structures
            out = out - scatter_mean(out, groups, count).index_select(0, groups)
        if self.field.level == "structure":
            reduce = scatter_mean if self.field.reduce == "mean" else scatter_sum
            out = reduce(out, graph.batch, graph.num_structures)
        if self.charge_flow is not None:
            out = out + self.charge_flow(graph, features)
        if self.add_identity:
            out = out + torch.eye(3, dtype=out.dtype, device=out.device).reshape(1, 9)
        return out.reshape(out.shape[0], *self.field.shape)


@dataclass(frozen=True)
class _WordPlan:
    """How a head evaluates one kind of words.

    Attributes:
        direct: (column, word): product formed per item and summed to the centre atom.
        factored: (letter, ((position, ((column, rest word), ...)), ...)): triplet words holding
            the edge letter ``a`` (or ``b``) at ``position``; the rest is summed per edge first.
        isotropic: (skeleton, columns, buffer name of the stacked identity embeddings).
    """

    direct: tuple[tuple[int, str], ...]
    factored: tuple[tuple[str, tuple[tuple[int, tuple[tuple[int, str], ...]], ...]], ...]
    isotropic: tuple[tuple[str, tuple[int, ...], str], ...]


def _insert_vector(vectors: torch.Tensor, rest: torch.Tensor, position: int, rank: int) -> torch.Tensor:
    """Component-major outer product of ``vectors`` and ``rest`` with the vector's index at
    ``position`` of the rank-``rank`` tensor.

    Shapes: vectors (3, E), rest (3**(rank-1), E) -> (3**rank, E)
    """
    outer = outer_rows(vectors, rest)
    if position == 0:
        return outer
    items = rest.shape[-1]
    return outer.view(*([3] * rank), items).movedim(0, position).reshape(3**rank, items)


@functools.cache
def _needs_projection(formula: str) -> bool:
    return "=" in formula


@functools.cache
def basis_span_rank(formula: str, words: WordSet) -> int:
    """Rank of the projected basis products around one generic atom (16 random neighbours,
    enough rows for edge words alone to reach a fully symmetric rank-4 tensor's 15 dimensions).

    Equals the subspace dimension exactly when the words can reach every tensor of the formula.
    """
    generator = torch.Generator().manual_seed(1234)
    directions = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    pairs = torch.tensor([(p, q) for p in range(16) for q in range(16) if p != q])
    a, b = directions[pairs[:, 0]], directions[pairs[:, 1]]
    rows = [word_product(w, directions) for w in words.atom + words.edge]
    rows += [word_product(w, a, b) for w in words.triplet]
    stacked = torch.cat(rows) @ symmetric_projector(formula, dtype=torch.float64)
    return int(torch.linalg.matrix_rank(stacked, atol=1e-8).item())


def build_tensor_head(config: TensorHeadConfig, dims: FeatureDims, fields: FieldTable) -> CartesianTensorHead:
    """The ``tensor`` head from its config, filling unset options from ``fields[config.field]``
    (the field table of the registry the model is built from) when that field is registered."""
    known = fields.get(config.field)
    symmetry = config.symmetry or (known.symmetry if known else None)
    level = config.level or (known.level if known else None)
    if symmetry is None or level is None:
        raise ValueError(
            f"field {config.field!r} is not a registered field; give symmetry and level "
            f"(registered fields: {', '.join(sorted(fields))})"
        )
    rank = formula_rank(symmetry)
    parity = config.parity or (known.parity if known and known.symmetry == symmetry else (-1) ** rank)
    reduce = config.reduce or (known.reduce if known else "sum")
    units = config.units or (known.units if known else "")
    field = FieldSpec(config.field, level, symmetry, parity, units, reduce)
    words = select_words(symmetry, parity, config.basis, config.use_triplets)
    words = WordSet(
        atom=tuple(config.atom_words) if config.atom_words is not None else words.atom,
        edge=tuple(config.edge_words) if config.edge_words is not None else words.edge,
        triplet=tuple(config.triplet_words) if config.triplet_words is not None else words.triplet,
    )
    return CartesianTensorHead(
        field, dims, words.edge, words.triplet, hidden=config.hidden, atom_words=words.atom,
        charge_flow=config.charge_flow,
    )


def select_words(formula: str, parity: int, basis: Basis, use_triplets: bool = True) -> WordSet:
    """The default words of a general tensor head: ``"paper"`` gives products of edge
    directions only (``a^M`` per edge; triplet words for rank >= 2 with ``use_triplets``, or when
    no edge word has the parity); ``"complete"`` adds the isotropic and normal-direction words."""
    rank = formula_rank(formula)
    base = paper_words(rank, parity)
    if not (use_triplets and rank >= 2 or not base.edge):
        base = WordSet(edge=base.edge)
    if basis == "paper":
        return base
    return complete_words(formula, parity, base, use_triplets=use_triplets)
