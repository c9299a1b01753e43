"""Point groups for the tests: the group average of e3nn's Cartesian-tensor representation,
finite groups from generators, Schoenflies names, and the symmetry operations of molecules
(pymatgen's ``PointGroupAnalyzer``) and crystals (``SpacegroupAnalyzer``) with the site group of
each atom. Used by :mod:`tensorframe.testing.completeness`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tensorframe.ops.symmetry import formula_rank, symmetric_projector
from tensorframe.testing.invariance import point_group_operations
from tensorframe.types import Sample

LINEAR_AXIS_ORDER = 12
"""Order n of the rotation about a linear molecule's axis in its C_nv / D_nh stand-in for
C_inf_v / D_inf_h. Invariants of C_n and of the continuous group agree up to rank n - 1."""

_MAP_TOLERANCE = 1e-4  # Å: a molecule's symmetry operation must map atoms onto atoms this well


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

    from tensorframe.testing.invariance import sample_to_structure

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
    Crystals: :func:`tensorframe.testing.invariance.point_group_operations` (SpacegroupAnalyzer at
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
