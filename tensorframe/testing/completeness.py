"""Completeness of a head on degenerate environments (PHYSICS.md, "Completeness on degenerate
environments").

Equivariance says what a head may not do; completeness says what it must be able to do. An
environment with point group G allows exactly the G-invariant subspace of the field's tensor
space (Neumann's principle). A head is *complete* on that environment when the span of its
outputs, over all invariant coefficient functions, is that whole subspace::

    from tensorframe.testing import CHECK_DIMS, assert_complete
    from tensorframe.testing.completeness import water

    head = my_builder(options, CHECK_DIMS)
    assert_complete(head, water())   # AssertionError: ... atom 0 (Z=8), site group C2v: span 2 of 3

How the span is measured (:func:`completeness_report`):

1. G: for a molecule, pymatgen's ``PointGroupAnalyzer`` (operations about the centre of
   mass; linear molecules get an explicit C_nv / D_nh with an n = 12 rotation about the axis,
   see :func:`environment_symmetry`); for a crystal, ``SpacegroupAnalyzer`` through
   :func:`tensorframe.testing.checks.point_group_operations`. Structure-level fields use the
   point group of the whole structure, atom-level fields the site group of each atom (the
   operations mapping it to itself, modulo lattice translations).
2. Required dimension: :func:`invariant_subspace_dim`, the trace of the group average of
   e3nn's ``CartesianTensor(formula).D_from_matrix`` (float64), times det R for fields whose
   parity is not the natural (-1)^rank.
3. Span: the environment's graph (float64) is tiled into copies, and every copy gets its own
   *orbit-invariant* random features: random Fourier features ``sin(W d + b)`` of invariant
   descriptors ``d`` that are equal on symmetry-equivalent atoms, edges and triplets (atomic
   number, radial fingerprints per species, a second round of them, edge lengths, angular
   fingerprints, triplet cosines). The head is re-initialised (``reset_parameters``) before
   every forward pass. With at least 3x the formula's dimension of such samples, the
   outputs' rows of an atom (or of the structure), projected onto the formula, have the rank
   of the head's span. Rows are normalised and the rank counts singular values above
   ``rtol`` (default :data:`SVD_RTOL` = 1e-7) times the largest.
4. Sanity: the outputs' largest component outside the G-invariant subspace, relative to their
   largest component, must stay below ``leak_tol`` (default :data:`LEAK_TOL` = 1e-8; it is
   ~1e-15 for an equivariant head). Above it the head is not equivariant, or the geometry is
   not exactly symmetric (build it from exact coordinates).

Reference environments (exact geometries, float64 :class:`~tensorframe.types.Sample`):
:data:`STANDARD_ENVIRONMENTS`, with :data:`PLANAR_ENVIRONMENTS` and
:data:`LINEAR_ENVIRONMENTS` naming the degenerate ones.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tensorframe.fields import FieldSpec
from tensorframe.ops.symmetry import formula_rank, subspace_dim, symmetric_projector
from tensorframe.specs import FeatureDims
from tensorframe.testing.checks import point_group_operations, rock_salt
from tensorframe.types import Graph, InvariantFeatures, Sample

__all__ = [
    "CHECK_DIMS",
    "LEAK_TOL",
    "LINEAR_AXIS_ORDER",
    "LINEAR_ENVIRONMENTS",
    "PLANAR_ENVIRONMENTS",
    "STANDARD_ENVIRONMENTS",
    "SVD_RTOL",
    "CompletenessReport",
    "EnvironmentSymmetry",
    "RegisteredHeadsCompleteness",
    "SiteCompleteness",
    "assert_complete",
    "assert_registered_heads_complete",
    "bcc",
    "benzene",
    "carbon_dioxide",
    "completeness_report",
    "environment_symmetry",
    "ethylene",
    "generate_group",
    "generic_molecule",
    "hbn_monolayer",
    "hydrogen_cyanide",
    "hypofluorous_acid",
    "invariant_projector",
    "invariant_subspace_dim",
    "point_group_name",
    "rock_salt",
    "water",
]

CHECK_DIMS = FeatureDims(node=16, edge=16, triplet=16)
"""Feature widths the checker feeds a head by default (build heads with these)."""

SVD_RTOL = 1e-7
"""Relative singular-value threshold of the span's rank (rows normalised to unit length)."""

LEAK_TOL = 1e-8
"""Largest allowed output component outside the G-invariant subspace, relative to the largest
output component."""

LINEAR_AXIS_ORDER = 12
"""Order n of the rotation about a linear molecule's axis in its C_nv / D_nh stand-in for
C_inf_v / D_inf_h. Invariants of C_n and of the continuous group agree up to rank n - 1."""

_ZERO_ROW = 1e-10  # output rows shorter than this times the output scale are zero (they vanish by symmetry)
_MAP_TOLERANCE = 1e-4  # Å: a molecule's symmetry operation must map atoms onto atoms this well


# ---------------------------------------------------------------- group theory


def _representation(formula: str, parity: int, rotations: np.ndarray) -> torch.Tensor:
    """The Cartesian action s(R) R (x) ... (x) R on flattened tensors (row-major).

    Shapes: rotations (G, 3, 3) -> (G, 3**rank, 3**rank)
    """
    r = torch.as_tensor(np.asarray(rotations, dtype=np.float64))
    rank = formula_rank(formula) if formula else 0
    out = torch.ones(r.shape[0], 1, 1, dtype=torch.float64)
    for _ in range(rank):
        out = torch.einsum("gab,gij->gaibj", out, r).reshape(r.shape[0], out.shape[1] * 3, out.shape[2] * 3)
    if parity != (-1) ** rank:
        out = out * torch.linalg.det(r)[:, None, None]
    return out


def invariant_projector(formula: str, parity: int, rotations: np.ndarray) -> torch.Tensor:
    """Orthogonal projector onto the G-invariant tensors of the formula's subspace, in
    Cartesian components: the group average of ``s(R) R (x) ... (x) R`` times the formula's
    projector (they commute).

    Shapes: rotations (G, 3, 3), a group -> (3**rank, 3**rank)
    """
    average = _representation(formula, parity, rotations).mean(0)
    if not formula:
        return average
    return average @ symmetric_projector(formula, dtype=torch.float64)


def invariant_subspace_dim(formula: str, parity: int, rotations: np.ndarray) -> int:
    """Dimension of the subspace of ``formula``-tensors of ``parity`` invariant under a group.

    The reference action is e3nn's ``CartesianTensor(formula).D_from_matrix`` built in float64
    (which carries the natural parity (-1)^rank), times det R when ``parity`` differs from it;
    the dimension is the trace of its group average (the number of trivial irreps).

    Args:
        formula: e3nn index-symmetry formula ("ij", "ij=ji", "ijk=ikj", ...; "" for a scalar).
        parity: +1 or -1 (the field's behaviour under inversion).
        rotations: (G, 3, 3) orthogonal Cartesian matrices (proper and improper) forming a group.

    Raises:
        ValueError: for non-orthogonal matrices, or a non-integer trace (not a group).
    """
    rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    error = np.abs(rotations @ rotations.transpose(0, 2, 1) - np.eye(3)).max()
    if error > 1e-8:
        raise ValueError(f"rotations: expected orthogonal matrices, found an error of {error:.2e}")
    det = torch.as_tensor(np.linalg.det(rotations))
    rank = formula_rank(formula) if formula else 0
    sign = det if parity != (-1) ** rank else torch.ones_like(det)
    if not formula:
        trace = float(sign.mean())
    else:
        from tensorframe.testing.equivariance import _d_matrix

        d = _d_matrix(formula, torch.as_tensor(rotations))
        trace = float((sign[:, None, None] * d).mean(0).diagonal().sum())
    if abs(trace - round(trace)) > 1e-6:
        raise ValueError(f"the group average has a non-integer trace {trace:.8f}: the matrices do not form a group")
    return int(round(trace))


def generate_group(generators: Sequence[np.ndarray] | np.ndarray, max_order: int = 1000) -> np.ndarray:
    """The finite group of 3x3 orthogonal matrices that the generators generate.

    Shapes: generators (K, 3, 3) -> (G, 3, 3), the identity first

    Raises:
        ValueError: when it grows past ``max_order`` (a generator of infinite order).
    """
    def key(m: np.ndarray) -> tuple[int, ...]:
        return tuple(np.round(m * 1e6).astype(np.int64).ravel().tolist())

    gens = [np.asarray(g, dtype=np.float64) for g in np.asarray(generators, dtype=np.float64).reshape(-1, 3, 3)]
    elements = {key(np.eye(3)): np.eye(3)}
    frontier = [np.eye(3)]
    while frontier:
        new = []
        for element in frontier:
            for gen in gens:
                product = gen @ element
                k = key(product)
                if k not in elements:
                    elements[k] = product
                    new.append(product)
        if len(elements) > max_order:
            raise ValueError(f"generate_group: more than {max_order} elements; a generator has infinite order")
        frontier = new
    return np.stack(list(elements.values()))


def _unique(rotations: np.ndarray) -> np.ndarray:
    seen: dict[tuple[int, ...], np.ndarray] = {}
    for m in np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3):
        seen.setdefault(tuple(np.round(m * 1e6).astype(np.int64).ravel().tolist()), m)
    return np.stack(list(seen.values()))


def _axis_angle(rotation: np.ndarray) -> tuple[np.ndarray, float]:
    """Axis (unit, sign arbitrary) and angle in [0, pi] of a proper rotation."""
    angle = math.acos(float(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)))
    values, vectors = np.linalg.eig(rotation)
    axis = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
    return axis / np.linalg.norm(axis), angle


def _element_order(m: np.ndarray, limit: int = 240) -> int:
    power = m.copy()
    for n in range(1, limit + 1):
        if np.abs(power - np.eye(3)).max() < 1e-6:
            return n
        power = m @ power
    return limit


def point_group_name(rotations: np.ndarray) -> str:
    """Schoenflies symbol (``"C2v"``, ``"D6h"``, ``"Oh"``, ``"Cs"``, ...) of a finite point group.

    Shapes: rotations (G, 3, 3)
    """
    ops = _unique(rotations)
    det = np.linalg.det(ops)
    proper, improper = ops[det > 0], ops[det < 0]
    has_inversion = any(np.abs(m + np.eye(3)).max() < 1e-6 for m in improper)
    mirrors = [_axis_angle(-m)[0] for m in improper if _element_order(-m) == 2]
    axes: list[tuple[np.ndarray, int]] = []  # (axis, order of the largest rotation about it)
    for m in proper:
        n = _element_order(m)
        if n == 1:
            continue
        axis, _ = _axis_angle(m)
        for index, (other, order) in enumerate(axes):
            if abs(abs(float(axis @ other)) - 1.0) < 1e-6:
                axes[index] = (other, max(order, n))
                break
        else:
            axes.append((axis, n))
    if sum(order >= 3 for _, order in axes) > 1:
        names = {12: "T", 24: "Th" if has_inversion else ("Td" if len(improper) else "O"), 48: "Oh", 60: "I", 120: "Ih"}
        return names.get(len(ops), f"cubic group of order {len(ops)}")
    if not axes:
        if has_inversion:
            return "Ci"
        return "Cs" if mirrors else "C1"
    n = max(order for _, order in axes)
    candidates = [axis for axis, order in axes if order == n]
    # D2d: take the axis along which an S4 lies as the principal one.
    principal = candidates[0]
    for axis in candidates:
        if any(_element_order(m) == 4 and abs(abs(float(_axis_angle(-m)[0] @ axis)) - 1.0) < 1e-6 for m in improper):
            principal = axis
            break
    perpendicular_c2 = sum(order % 2 == 0 and abs(float(axis @ principal)) < 1e-6 for axis, order in axes)
    sigma_h = any(abs(abs(float(normal @ principal)) - 1.0) < 1e-6 for normal in mirrors)
    sigma_v = any(abs(float(normal @ principal)) < 1e-6 for normal in mirrors)
    if perpendicular_c2:
        if not len(improper):
            return f"D{n}"
        return f"D{n}h" if sigma_h else f"D{n}d"
    if not len(improper):
        return f"C{n}"
    if sigma_h:
        return f"C{n}h"
    if sigma_v:
        return f"C{n}v"
    return f"S{2 * n}"


@dataclass(frozen=True)
class EnvironmentSymmetry:
    """The symmetry operations of a structure, in the sample's own Cartesian frame.

    Attributes:
        name: Schoenflies symbol of the point group (``"D∞h"`` for a linear centrosymmetric
            molecule), with pymatgen's symbol in brackets for crystals (``"Oh (m-3m)"``).
        point_group: (G, 3, 3) the point group's matrices.
        operations: (M, 3, 3) the rotation part of each operation mapping the structure onto
            itself (the point group for a molecule; the space group modulo lattice
            translations for a crystal), with ``images`` (M, N): operation m maps atom a to
            atom ``images[m, a]``.
        linear: a linear molecule (C_inf_v / D_inf_h stood in for by C_nv / D_nh).
    """

    name: str
    point_group: np.ndarray
    operations: np.ndarray
    images: np.ndarray
    linear: bool = False

    def site_group(self, atom: int) -> np.ndarray:
        """(G_a, 3, 3) the operations that map ``atom`` onto itself."""
        return _unique(self.operations[self.images[:, atom] == atom])

    def site_name(self, atom: int) -> str:
        name = point_group_name(self.site_group(atom))
        if self.linear:
            name = name.replace(f"C{LINEAR_AXIS_ORDER}v", "C∞v").replace(f"D{LINEAR_AXIS_ORDER}h", "D∞h")
        return name

    def representatives(self) -> list[int]:
        """The first atom of each orbit (symmetry-inequivalent atoms)."""
        seen: set[int] = set()
        out = []
        for atom in range(self.images.shape[1]):
            if atom not in seen:
                out.append(atom)
                seen.update(self.images[:, atom].tolist())
        return out


def _atom_images(sample: Sample, rotations: np.ndarray, center: np.ndarray) -> np.ndarray:
    moved = np.einsum("gab,nb->gna", rotations, sample.positions - center) + center
    distance = np.linalg.norm(moved[:, :, None, :] - sample.positions[None, None, :, :], axis=-1)
    images = distance.argmin(-1)
    worst = float(distance.min(-1).max())
    if worst > _MAP_TOLERANCE or np.any(sample.numbers[images] != sample.numbers[None, :]):
        raise ValueError(
            f"a symmetry operation maps an atom {worst:.2e} Å away from any atom of its element: the geometry is "
            f"not exactly symmetric (tolerance {_MAP_TOLERANCE} Å); build it from exact coordinates"
        )
    return images


def _molecule_symmetry(sample: Sample, tolerance: float) -> EnvironmentSymmetry:
    from pymatgen.core import Molecule
    from pymatgen.symmetry.analyzer import PointGroupAnalyzer

    molecule = Molecule(sample.numbers.tolist(), sample.positions)
    analyzer = PointGroupAnalyzer(molecule, tolerance=tolerance, eigen_tolerance=1e-3, matrix_tolerance=tolerance)
    center = np.asarray(molecule.center_of_mass, dtype=np.float64)
    rotations = np.array([op.rotation_matrix for op in analyzer.get_symmetry_operations()]).reshape(-1, 3, 3)
    centered = sample.positions - center
    singular = np.linalg.svd(centered, compute_uv=False) if sample.num_atoms > 1 else np.zeros(3)
    linear = sample.num_atoms > 1 and singular[1] < 1e-6 * max(singular[0], 1e-12)
    name = analyzer.sch_symbol.replace("*", "∞")
    if linear:
        # pymatgen gives a finite subgroup of C_inf_v / D_inf_h (1 or 2 operations): add a
        # rotation of order LINEAR_AXIS_ORDER about the axis and a mirror containing it.
        axis = np.linalg.svd(centered)[2][0]
        k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
        angle = 2.0 * math.pi / LINEAR_AXIS_ORDER
        rotation = np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)
        normal = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
        normal /= np.linalg.norm(normal)
        mirror = np.eye(3) - 2.0 * np.outer(normal, normal)
        rotations = generate_group([*rotations, rotation, mirror])
        name = "D∞h" if any(np.abs(m + np.eye(3)).max() < 1e-6 for m in rotations) else "C∞v"
    error = np.abs(rotations @ rotations.transpose(0, 2, 1) - np.eye(3)).max()
    if error > 1e-6:
        raise ValueError(f"pymatgen's point-group operations are not orthogonal (error {error:.2e})")
    images = _atom_images(sample, rotations, center)
    return EnvironmentSymmetry(name, rotations, rotations, images, bool(linear))


def _crystal_symmetry(sample: Sample, symprec: float) -> EnvironmentSymmetry:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from tensorframe.testing.checks import sample_to_structure

    rotations, maps = point_group_operations(sample, symprec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        symbol = SpacegroupAnalyzer(sample_to_structure(sample), symprec=symprec).get_point_group_symbol()
    operations = np.stack([rotation for rotation, _ in maps])
    images = np.stack([image for _, image in maps])
    return EnvironmentSymmetry(f"{point_group_name(rotations)} ({symbol})", rotations, operations, images)


def environment_symmetry(sample: Sample, symprec: float = 1e-3, tolerance: float = 0.01) -> EnvironmentSymmetry:
    """Point group, site groups and atom maps of a molecule (no periodic direction) or a crystal
    (all directions periodic).

    Molecules: pymatgen's ``PointGroupAnalyzer(tolerance=tolerance, eigen_tolerance=1e-3,
    matrix_tolerance=tolerance)``, whose operations act about the centre of mass; each must map
    every atom within 1e-4 Å of an atom of its element. A linear molecule's reported group is
    a finite subgroup (1 or 2 operations), so the group used is generated by those, a rotation
    by 2 pi / :data:`LINEAR_AXIS_ORDER` about the axis and a mirror containing the axis: C_12v
    or D_12h, whose invariants equal C_inf_v / D_inf_h's up to rank 11.
    Crystals: :func:`tensorframe.testing.checks.point_group_operations` (SpacegroupAnalyzer at
    ``symprec``, checked to be in the sample's frame).

    Raises:
        ValueError: for partly periodic samples, or a geometry that is not exactly symmetric.
    """
    if sample.pbc.all():
        return _crystal_symmetry(sample, symprec)
    if not sample.pbc.any():
        return _molecule_symmetry(sample, tolerance)
    raise ValueError(
        f"completeness: needs a molecule (no periodic direction) or a crystal (all periodic), got pbc "
        f"{sample.pbc.tolist()}; give a slab a vacuum gap and pbc True in every direction"
    )


# ---------------------------------------------------------------- orbit-invariant features

_GAMMAS = (0.6, 1.2, 2.4, 4.8)  # 1/Å, radial fingerprints exp(-gamma r)


def _descriptors(graph: Graph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Invariant descriptors equal on symmetry-equivalent atoms, edges and triplets.

    node: one-hot species, per-species radial fingerprints sum_nb exp(-gamma r), and a second
    round (neighbours' fingerprints weighted by exp(-r)); edge: both ends' species and node
    descriptors, the length, and angular fingerprints over the triplets the edge is in (as
    the edge in and as the edge out); triplet: both edges' descriptors and powers of cos.

    Shapes: -> node (N, Dn), edge (E, De), triplet (T, Dt), each column standardised
    """
    numbers = graph.numbers
    species = torch.unique(numbers)
    onehot = (numbers[:, None] == species[None, :]).to(torch.float64)
    r = graph.edge_len.to(torch.float64)
    gammas = torch.tensor(_GAMMAS, dtype=torch.float64)
    radial = torch.exp(-r[:, None] * gammas[None, :])  # (E, M)
    per_edge = (onehot[graph.idx_j][:, :, None] * radial[:, None, :]).flatten(1)
    first = torch.zeros(graph.num_nodes, per_edge.shape[1], dtype=torch.float64).index_add(0, graph.idx_i, per_edge)
    second = torch.zeros_like(first).index_add(0, graph.idx_i, torch.exp(-r)[:, None] * first[graph.idx_j])
    node = torch.cat([onehot, first, second], dim=1)
    cos = graph.triplet_cos.to(torch.float64)
    powers = torch.stack([cos, cos**2, cos**3], dim=1)  # (T, 3)
    angular_in = torch.zeros(graph.num_edges, 3 * 2, dtype=torch.float64)
    angular_out = torch.zeros_like(angular_in)
    if graph.num_triplets:
        weight_ji = torch.exp(-r[graph.idx_ji][:, None] * gammas[None, :2])
        weight_kj = torch.exp(-r[graph.idx_kj][:, None] * gammas[None, :2])
        angular_in = angular_in.index_add(0, graph.idx_kj, (powers[:, :, None] * weight_ji[:, None, :]).flatten(1))
        angular_out = angular_out.index_add(0, graph.idx_ji, (powers[:, :, None] * weight_kj[:, None, :]).flatten(1))
    edge = torch.cat(
        [onehot[graph.idx_i], onehot[graph.idx_j], r[:, None], 1.0 / r[:, None], radial,
         node[graph.idx_i], node[graph.idx_j], angular_in, angular_out],
        dim=1,
    )
    triplet = torch.cat([edge[graph.idx_kj], edge[graph.idx_ji], powers], dim=1)

    def standardise(x: torch.Tensor) -> torch.Tensor:
        # Columns that vary by less than 1e-6 of their size are dropped: dividing by a tiny
        # spread would blow rounding differences between equivalent items up.
        if x.shape[0] == 0:
            return x
        std = x.std(0, unbiased=False)
        varies = std > 1e-6 * x.abs().amax(0)
        return torch.where(varies, (x - x.mean(0)) / torch.where(varies, std, torch.ones_like(std)), torch.zeros_like(x))

    return standardise(node), standardise(edge), standardise(triplet)


def _fourier(
    x: torch.Tensor, copy_index: torch.Tensor, copies: int, width: int, generator: torch.Generator
) -> torch.Tensor:
    """``sin(x W_c + b_c)`` with a fresh random (W_c, b_c) per copy c.

    Shapes: x (X, D), copy_index (X,) -> (X, width)
    """
    d = x.shape[1]
    w = torch.randn(d, copies * width, generator=generator, dtype=torch.float64) * (1.5 / math.sqrt(max(d, 1)))
    b = torch.rand(copies * width, generator=generator, dtype=torch.float64) * (2.0 * math.pi)
    every = (x @ w + b).reshape(x.shape[0], copies, width)
    return torch.sin(every[torch.arange(x.shape[0]), copy_index])


# ---------------------------------------------------------------- the check


@dataclass(frozen=True)
class SiteCompleteness:
    """The span of a head on one atom (``atom`` None: the structure).

    Attributes:
        group: Schoenflies symbol of the group (site group for an atom).
        group_order: its number of operations.
        span: rank of the outputs (projected onto the formula).
        required: dimension of the G-invariant subspace.
        leakage: largest output component outside that subspace, relative to the largest
            output component (about 1e-15 for an equivariant head).
        singular_values: of the normalised output rows, largest first.
    """

    atom: int | None
    element: int | None
    group: str
    group_order: int
    span: int
    required: int
    leakage: float
    singular_values: tuple[float, ...]
    leak_tol: float = LEAK_TOL

    @property
    def complete(self) -> bool:
        return self.span == self.required and self.leakage <= self.leak_tol

    def describe(self) -> str:
        where = "the structure" if self.atom is None else f"atom {self.atom} (Z={self.element})"
        kind = "point group" if self.atom is None else "site group"
        text = f"{where}, {kind} {self.group} (order {self.group_order}): span {self.span} of {self.required}"
        if self.leakage > self.leak_tol:
            text += (f"; outputs leave the invariant subspace by {self.leakage:.2e} (> {self.leak_tol:.0e}): the head "
                     "is not equivariant, or the geometry is not exactly symmetric")
        elif self.span < self.required:
            text += " (components the symmetry allows are missing)"
        return text


@dataclass(frozen=True)
class CompletenessReport:
    """Completeness of one head on one environment, per checked site.

    ``complete`` is True when every site's outputs span exactly its G-invariant subspace.
    """

    field: FieldSpec
    environment: str
    point_group: str
    sites: tuple[SiteCompleteness, ...]
    samples: int
    rtol: float
    leak_tol: float

    @property
    def complete(self) -> bool:
        return all(site.complete for site in self.sites)

    @property
    def span(self) -> tuple[int, ...]:
        return tuple(site.span for site in self.sites)

    @property
    def required(self) -> tuple[int, ...]:
        return tuple(site.required for site in self.sites)

    @property
    def failures(self) -> tuple[SiteCompleteness, ...]:
        return tuple(site for site in self.sites if not site.complete)

    def headline(self) -> str:
        f = self.field
        return (f"field {f.name!r} ({f.level} level, symmetry {f.symmetry!r}, parity {f.parity:+d}) on "
                f"{self.environment} (point group {self.point_group})")

    def __str__(self) -> str:
        state = "complete" if self.complete else "NOT complete"
        lines = [f"{self.headline()}: {state}"]
        lines += [f"  {site.describe()}" for site in self.sites]
        return "\n".join(lines)


_PREPARED: dict[tuple, tuple] = {}  # environment symmetry, tiled graph and descriptors, by sample and settings


def _prepared(sample: Sample, copies: int, cutoff: float, triplet_cutoff: float, symprec: float) -> tuple:
    from tensorframe.graph.collate import build_graph

    key = (sample.numbers.tobytes(), sample.positions.tobytes(), sample.cell.tobytes(), sample.pbc.tobytes(),
           copies, cutoff, triplet_cutoff, symprec)
    if key not in _PREPARED:
        if len(_PREPARED) >= 64:
            _PREPARED.pop(next(iter(_PREPARED)))
        symmetry = environment_symmetry(sample, symprec)
        graph = build_graph([sample] * copies, cutoff, triplet_cutoff, dtype=torch.float64)
        _PREPARED[key] = (symmetry, graph, _descriptors(graph))
    return _PREPARED[key]


def _default_cutoff(sample: Sample) -> float:
    if sample.pbc.any():
        return 4.5
    if sample.num_atoms < 2:
        return 2.0
    distance = np.linalg.norm(sample.positions[:, None] - sample.positions[None], axis=-1)
    return float(max(distance.max() + 0.5, 2.0))


def _reinitialise(head: nn.Module, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in head.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


def completeness_report(
    head: nn.Module | Callable[[FeatureDims], nn.Module],
    sample: Sample,
    atom: int | Sequence[int] | None = None,
    *,
    environment: str | None = None,
    dims: FeatureDims | None = None,
    cutoff: float | None = None,
    triplet_cutoff: float | None = None,
    samples: int | None = None,
    copies: int = 8,
    seed: int = 0,
    symprec: float = 1e-3,
    rtol: float = SVD_RTOL,
    leak_tol: float = LEAK_TOL,
) -> CompletenessReport:
    """Measure the span of a head's outputs on an environment against the dimension its point
    group allows (see the module docstring for the method).

    Args:
        head: a :class:`~tensorframe.heads.base.Head` (with ``field``), or a builder
            ``dims -> Head``. It is copied and run in float64; the original is not touched.
        sample: the environment, an exactly symmetric molecule or crystal (all pbc True; a
            slab or monolayer in a cell with a vacuum gap).
        atom: atom-level fields: the atom(s) to check; default one atom of each
            symmetry-inequivalent orbit. Ignored for structure-level fields.
        environment: a name for messages (default: the chemical formula).
        dims: feature widths the head was built for (default :data:`CHECK_DIMS`).
        cutoff, triplet_cutoff: graph cutoffs in Å; default: every atom of a molecule (largest
            distance + 0.5 Å), 4.5 Å in a crystal; triplets as far as the cutoff.
        samples: number of (features, head initialisation) samples, rounded up to a multiple of
            ``copies``; default 3x the dimension of the formula's subspace (at least 6).
        copies: copies of the structure per forward pass (the head is re-initialised per pass).
        rtol: singular values below ``rtol`` times the largest do not count towards the span.
        leak_tol: largest allowed relative output component outside the invariant subspace.

    Returns:
        a :class:`CompletenessReport` with one :class:`SiteCompleteness` per checked site.
    """
    __tracebackhide__ = True
    dims = dims or CHECK_DIMS
    if dims.triplet is None:
        dims = FeatureDims(dims.node, dims.edge, dims.edge)
    module = head if isinstance(head, nn.Module) else head(dims)
    spec: FieldSpec = module.field
    formula, rank = spec.symmetry, spec.rank
    size = 3**rank
    formula_projector = symmetric_projector(formula, dtype=torch.float64) if formula else torch.ones(1, 1, dtype=torch.float64)
    total = samples if samples is not None else max(6, 3 * (subspace_dim(formula) if formula else 1))
    cutoff = _default_cutoff(sample) if cutoff is None else float(cutoff)
    triplet_cutoff = cutoff if triplet_cutoff is None else float(triplet_cutoff)
    symmetry, graph, (node_d, edge_d, triplet_d) = _prepared(sample, copies, cutoff, triplet_cutoff, symprec)
    if spec.level == "atom":
        if atom is None:
            atoms = symmetry.representatives()
        else:
            atoms = [int(atom)] if isinstance(atom, (int, np.integer)) else [int(a) for a in atom]
        bad = [a for a in atoms if not 0 <= a < sample.num_atoms]
        if bad:
            raise ValueError(f"atom: {bad} out of range for {sample.num_atoms} atoms")
    else:
        atoms = [None]

    working = copy.deepcopy(module).to(torch.float64)
    working.eval()
    node_copy = graph.batch
    edge_copy = graph.edge_batch
    triplet_copy = graph.edge_batch.index_select(0, graph.idx_kj)
    generator = torch.Generator().manual_seed(seed)
    passes = math.ceil(total / copies)
    total = passes * copies
    rows: list[torch.Tensor] = []
    with torch.no_grad():
        for index in range(passes):
            _reinitialise(working, seed * 100_003 + index)
            features = InvariantFeatures(
                node=_fourier(node_d, node_copy, copies, dims.node, generator),
                edge=_fourier(edge_d, edge_copy, copies, dims.edge, generator),
                triplet=_fourier(triplet_d, triplet_copy, copies, dims.triplet, generator),
            )
            out = working(graph, features).to(torch.float64)
            expected = (graph.num_nodes if spec.level == "atom" else copies, *spec.shape)
            if tuple(out.shape) != expected:
                raise ValueError(
                    f"field {spec.name!r}: the head returned shape {tuple(out.shape)}, expected {expected} "
                    f"({copies} copies of a {sample.num_atoms}-atom structure)"
                )
            rows.append(out.reshape(out.shape[0], size))
        # The scale of the outputs when nothing cancels: the same head on features drawn
        # independently for every item (not orbit-invariant), so that outputs that vanish by
        # symmetry are measured against the size of the terms that cancel.
        broken = InvariantFeatures(
            node=torch.sin(torch.randn(node_d.shape[0], dims.node, generator=generator, dtype=torch.float64)),
            edge=torch.sin(torch.randn(edge_d.shape[0], dims.edge, generator=generator, dtype=torch.float64)),
            triplet=torch.sin(torch.randn(triplet_d.shape[0], dims.triplet, generator=generator, dtype=torch.float64)),
        )
        reference = float((working(graph, broken).to(torch.float64).reshape(-1, size) @ formula_projector).abs().max())
    outputs = torch.stack(rows)  # (passes, X, size)

    sites = []
    for a in atoms:
        if a is None:
            x = outputs.reshape(-1, size)
            group = symmetry.point_group
            name = symmetry.name
        else:
            x = outputs[:, graph.ptr[:-1] + a].reshape(-1, size)
            group = symmetry.site_group(a)
            name = symmetry.site_name(a)
        x = x @ formula_projector
        required = invariant_subspace_dim(formula, spec.parity, group)
        element = None if a is None else int(sample.numbers[a])
        scale = max(float(x.abs().max()), reference)
        norms = x.norm(dim=1)
        keep = norms > _ZERO_ROW * scale
        if scale == 0.0 or not bool(keep.any()):
            sites.append(SiteCompleteness(a, element, name, len(group), 0, required, 0.0, (), leak_tol))
            continue
        leakage = float((x - x @ invariant_projector(formula, spec.parity, group)).abs().max()) / scale
        singular = torch.linalg.svdvals(x[keep] / norms[keep, None])
        span = int((singular > rtol * singular[0]).sum())
        sites.append(SiteCompleteness(
            a, element, name, len(group), span, required, leakage, tuple(float(s) for s in singular), leak_tol
        ))
    return CompletenessReport(
        field=spec,
        environment=environment or _formula(sample),
        point_group=symmetry.name,
        sites=tuple(sites),
        samples=total,
        rtol=rtol,
        leak_tol=leak_tol,
    )


def _formula(sample: Sample) -> str:
    from pymatgen.core import Element

    order = list(dict.fromkeys(int(z) for z in sample.numbers))
    counts = {z: int((sample.numbers == z).sum()) for z in order}
    text = "".join(f"{Element.from_Z(z).symbol}{counts[z] if counts[z] > 1 else ''}" for z in order)
    return text + (" crystal" if sample.pbc.any() else "")


def assert_complete(
    head: nn.Module | Callable[[FeatureDims], nn.Module],
    sample: Sample,
    atom: int | Sequence[int] | None = None,
    **options: Any,
) -> CompletenessReport:
    """Assert that a head is complete on an environment (see :func:`completeness_report`, which
    takes the same arguments).

    Raises:
        AssertionError: naming the field, the environment, its point group, and for each
            failing site its (site) group, the span found and the dimension required.
    """
    __tracebackhide__ = True
    report = completeness_report(head, sample, atom, **options)
    if not report.complete:
        failing = "\n".join(f"  {site.describe()}" for site in report.failures)
        raise AssertionError(f"head is not complete: {report.headline()}:\n{failing}")
    return report


# ---------------------------------------------------------------- registered heads


@dataclass
class RegisteredHeadsCompleteness:
    """What :func:`assert_registered_heads_complete` checked: the reports (head label,
    environment) -> report, and the heads it skipped with the reason."""

    reports: dict[tuple[str, str], CompletenessReport] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def failures(self) -> dict[tuple[str, str], CompletenessReport]:
        return {key: report for key, report in self.reports.items() if not report.complete}

    def table(self) -> str:
        """One line per (head, environment): span / required per checked site."""
        width = max([len(label) for label, _ in self.reports] + [4])
        lines = [f"{'head':{width}s}  {'environment':12s} {'point group':14s} span/required per site"]
        for (label, env), report in self.reports.items():
            cells = ", ".join(f"{s.span}/{s.required}" for s in report.sites)
            lines.append(f"{label:{width}s}  {env:12s} {report.point_group:14s} {cells}{'' if report.complete else '  <-'}")
        return "\n".join(lines)


def _label(name: str, options: Mapping[str, Any]) -> str:
    if not options:
        return name
    return f"{name}[{', '.join(f'{k}={v}' for k, v in options.items())}]"


def assert_registered_heads_complete(
    registry: Any = None,
    environments: Mapping[str, Sample | Callable[[], Sample]] | None = None,
    heads: Sequence[str] | None = None,
    options: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    dims: FeatureDims | None = None,
    raise_on_failure: bool = True,
    **check_options: Any,
) -> RegisteredHeadsCompleteness:
    """Check every registered head (or ``heads``) on every environment.

    Each head is built with each option set of ``options[name]`` (default: ``[{}]``, its
    default options) through ``spec.build(spec.config.model_validate(opts), dims)``. A head
    whose options do not validate or whose builder raises ``ValueError`` with them is skipped
    with the reason (the ``tensor`` head needs a ``field``: give
    ``options={"tensor": [{"field": "polarizability"}, ...]}``).

    Args:
        registry: a :class:`~tensorframe.registry.Registry` (default: the installed plugins).
        environments: name -> Sample (or a function returning one); default
            :data:`STANDARD_ENVIRONMENTS`.
        raise_on_failure: raise one AssertionError listing every incomplete (head,
            environment, site); otherwise just return.
        check_options: passed to :func:`completeness_report`.

    Returns:
        :class:`RegisteredHeadsCompleteness`.
    """
    __tracebackhide__ = True
    from pydantic import ValidationError

    from tensorframe.registry import PluginError, get_registry

    registry = registry or get_registry()
    dims = dims or CHECK_DIMS
    environments = STANDARD_ENVIRONMENTS if environments is None else environments
    samples = {name: env() if callable(env) else env for name, env in environments.items()}
    result = RegisteredHeadsCompleteness()
    for name in heads if heads is not None else registry.names("head"):
        spec = registry.get("head", name)
        for opts in (options or {}).get(name, [{}]):
            label = _label(name, opts)
            try:
                head = spec.build(spec.config.model_validate(dict(opts)), dims)
            except ValidationError as error:
                missing = [".".join(map(str, e["loc"])) for e in error.errors()]
                result.skipped[label] = f"needs options: {', '.join(missing)}"
                continue
            except (ValueError, PluginError) as error:
                result.skipped[label] = f"does not build with these options: {error}"
                continue
            for env_name, sample in samples.items():
                result.reports[label, env_name] = completeness_report(
                    head, sample, environment=env_name, dims=dims, **check_options
                )
    if raise_on_failure and result.failures:
        lines = []
        for (label, _), report in result.failures.items():
            for site in report.failures:
                lines.append(f"  head {label}: {report.headline()}: {site.describe()}")
        raise AssertionError(f"{len(result.failures)} (head, environment) pairs are not complete:\n" + "\n".join(lines))
    return result


# ---------------------------------------------------------------- reference environments


def _molecule(numbers: Sequence[int], positions: Sequence[Sequence[float]]) -> Sample:
    return Sample(np.asarray(numbers), np.asarray(positions, dtype=np.float64))


def generic_molecule() -> Sample:
    """Five atoms (C, N, O, F, H) at fixed generic positions: point group C1."""
    positions = [
        [0.000, 0.000, 0.000],
        [1.412, 0.183, -0.097],
        [-0.371, 1.326, 0.244],
        [0.286, -0.517, 1.291],
        [-0.903, -0.642, -0.718],
    ]
    return _molecule([6, 7, 8, 9, 1], positions)


def water() -> Sample:
    """H2O in the xy plane, C2 axis along y (r = 0.9572 Å, angle 104.52 deg): C2v, planar."""
    half = math.radians(104.52) / 2
    r = 0.9572
    return _molecule([8, 1, 1], [[0.0, 0.0, 0.0], [r * math.sin(half), r * math.cos(half), 0.0],
                                 [-r * math.sin(half), r * math.cos(half), 0.0]])


def ethylene() -> Sample:
    """C2H4 in the xy plane, C=C along x: D2h, planar."""
    c, hx, hy = 0.6695, 1.2321, 0.9289
    return _molecule([6, 6, 1, 1, 1, 1], [[c, 0, 0], [-c, 0, 0], [hx, hy, 0], [hx, -hy, 0], [-hx, hy, 0], [-hx, -hy, 0]])


def benzene() -> Sample:
    """C6H6 in the xy plane (C-C 1.397 Å, C-H 1.084 Å): D6h, planar ring."""
    angles = [k * math.pi / 3 for k in range(6)]
    ring = [[1.397 * math.cos(t), 1.397 * math.sin(t), 0.0] for t in angles]
    hydrogens = [[2.481 * math.cos(t), 2.481 * math.sin(t), 0.0] for t in angles]
    return _molecule([6] * 6 + [1] * 6, ring + hydrogens)


def hypofluorous_acid() -> Sample:
    """HOF in the xy plane (O-H 0.966 Å, O-F 1.442 Å, angle 97.2 deg): Cs, planar."""
    angle = math.radians(97.2)
    return _molecule([8, 1, 9], [[0.0, 0.0, 0.0], [0.966, 0.0, 0.0], [1.442 * math.cos(angle), 1.442 * math.sin(angle), 0.0]])


def carbon_dioxide() -> Sample:
    """CO2 along z (C=O 1.16 Å): D_inf_h, linear."""
    return _molecule([6, 8, 8], [[0.0, 0.0, 0.0], [0.0, 0.0, 1.16], [0.0, 0.0, -1.16]])


def hydrogen_cyanide() -> Sample:
    """HCN along z (C-H 1.064 Å, C-N 1.156 Å): C_inf_v, linear."""
    return _molecule([1, 6, 7], [[0.0, 0.0, -1.064], [0.0, 0.0, 0.0], [0.0, 0.0, 1.156]])


def hbn_monolayer(a: float = 2.504, vacuum: float = 20.0) -> Sample:
    """Hexagonal BN monolayer in the xy plane, c = ``vacuum`` Å, pbc all True: D3h (-6m2)."""
    cell = np.array([[a, 0.0, 0.0], [-a / 2, a * math.sqrt(3.0) / 2, 0.0], [0.0, 0.0, vacuum]])
    fractional = np.array([[1.0 / 3.0, 2.0 / 3.0, 0.5], [2.0 / 3.0, 1.0 / 3.0, 0.5]])
    return Sample(np.array([5, 7]), fractional @ cell, cell, np.ones(3, dtype=bool))


def bcc(a: float = 2.87, number: int = 26) -> Sample:
    """Body-centred cubic (Fe), conventional cubic cell with 2 atoms: Oh (m-3m) on every atom."""
    cell = a * np.eye(3)
    return Sample(np.array([number, number]), np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]) @ cell, cell,
                  np.ones(3, dtype=bool))


STANDARD_ENVIRONMENTS: dict[str, Callable[[], Sample]] = {
    "generic": generic_molecule,
    "water": water,
    "ethylene": ethylene,
    "benzene": benzene,
    "hof": hypofluorous_acid,
    "co2": carbon_dioxide,
    "hcn": hydrogen_cyanide,
    "rock_salt": rock_salt,
    "hbn": hbn_monolayer,
    "bcc": bcc,
}
"""Name -> function returning the environment's Sample (exact geometry)."""

PLANAR_ENVIRONMENTS = ("water", "ethylene", "benzene", "hof", "hbn")
LINEAR_ENVIRONMENTS = ("co2", "hcn")
