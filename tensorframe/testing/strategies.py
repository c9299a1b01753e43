"""Hypothesis strategies for structures and O(3) matrices, for tests of heads and backbones.

Every structure strategy returns a :class:`tensorframe.Sample`; lattices and matrices are
float64 numpy arrays. Structures stay small (2..8 atoms, a few dozen neighbours per atom at
a 3-4 Å cutoff) so a physics test runs in milliseconds per example::

    from hypothesis import given
    from tensorframe.testing import strategies as tfst

    @given(sample=tfst.crystals(), rotation=tfst.orthogonal_matrices())
    def test_my_head(sample, rotation):
        assert_equivariant(model, sample, rotation)

Guarantees, whatever hypothesis draws:
    * lattices: every plane spacing (height) >= ``min_height``; shears up to ``max_skew``
      cell lengths give strongly skewed cells (angles down to ~35 degrees);
    * structures: every pair of atoms, periodic images included, >= ``min_distance`` apart;
      volume per atom >= ``min_volume_per_atom`` for periodic directions, so neighbour
      counts stay small;
    * orthogonal matrices: exactly orthogonal in float64, det +1 (proper) or -1 (improper).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import vesin
from hypothesis import assume
from hypothesis import strategies as st

from tensorframe.types import Sample

__all__ = [
    "COMMON_ELEMENTS",
    "crystals",
    "lattices",
    "mixed_pbc_structures",
    "molecules",
    "orthogonal_matrices",
    "plane_heights",
    "slabs",
    "species",
    "structures",
]

COMMON_ELEMENTS: tuple[int, ...] = (1, 3, 6, 7, 8, 9, 11, 12, 13, 14, 16, 17, 22, 30, 31, 38, 56, 82)
"""Atomic numbers drawn by default: light and heavy, s-, p- and d-block."""

MIXED_PBC: tuple[tuple[bool, bool, bool], ...] = (
    (True, True, False), (True, False, True), (False, True, True),
    (True, False, False), (False, True, False), (False, False, True),
)

# Largest extra scaling accepted to separate close atoms; beyond it the draw is rejected
# (it would give a sparse structure with few edges).
_MAX_SEPARATION_SCALE = 1.6


def _unit_floats(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


@st.composite
def orthogonal_matrices(draw: st.DrawFn, proper: bool | None = None) -> np.ndarray:
    """Haar-random 3x3 orthogonal matrices, float64.

    QR of a Gaussian matrix with the signs of R's diagonal moved into Q (Haar measure on O(3)),
    a column flip to make it proper, then times -1 for an improper one.

    Args:
        proper: True for rotations (det +1), False for improper ones (det -1), None for both.

    Shapes: -> (3, 3)
    """
    seed = draw(st.integers(0, 2**32 - 1))
    gaussian = np.random.default_rng(seed).standard_normal((3, 3))
    q, r = np.linalg.qr(gaussian)
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    sign = draw(st.sampled_from([1.0, -1.0])) if proper is None else (1.0 if proper else -1.0)
    return sign * q


def plane_heights(cell: np.ndarray) -> np.ndarray:
    """Spacing of the lattice planes spanned by each pair of cell vectors: ``V / |a_j x a_k|``.

    Shapes: cell (3, 3) rows a_1..a_3 -> (3,)
    """
    volume = abs(np.linalg.det(cell))
    areas = np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=-1)
    return volume / areas


@st.composite
def lattices(
    draw: st.DrawFn,
    min_height: float = 2.0,
    max_skew: float = 1.0,
    volume: tuple[float, float] = (20.0, 120.0),
    rotate: bool = True,
) -> np.ndarray:
    """Random lattices (rows are the cell vectors, Å), including strongly skewed ones.

    A lower-triangular shape with aspect ratios up to 1.6 and shears up to ``max_skew`` cell
    lengths, scaled to a volume in ``volume`` (then up, if needed, until every plane spacing is
    at least ``min_height``), optionally turned by a random rotation.

    Shapes: -> (3, 3)
    """
    lengths = [draw(_unit_floats(1.0, 1.6)) for _ in range(3)]
    s21, s31, s32 = (draw(_unit_floats(-max_skew, max_skew)) for _ in range(3))
    cell = np.array([
        [lengths[0], 0.0, 0.0],
        [s21 * lengths[0], lengths[1], 0.0],
        [s31 * lengths[0], s32 * lengths[1], lengths[2]],
    ])
    target_volume = draw(_unit_floats(*volume))
    cell = cell * (target_volume / abs(np.linalg.det(cell))) ** (1.0 / 3.0)
    cell = cell * max(1.0, min_height / plane_heights(cell).min())
    if rotate:
        cell = cell @ draw(orthogonal_matrices(proper=True)).T
    return cell


def species(num_atoms: int, max_species: int = 3, elements: Sequence[int] = COMMON_ELEMENTS) -> st.SearchStrategy[np.ndarray]:
    """Atomic numbers for ``num_atoms`` atoms from at most ``max_species`` distinct elements
    (so repeated species, and symmetry-equivalent environments, are common).

    Shapes: -> (num_atoms,) int64
    """

    @st.composite
    def build(draw: st.DrawFn) -> np.ndarray:
        palette = draw(st.lists(st.sampled_from(tuple(elements)), min_size=1, max_size=max_species, unique=True))
        picks = draw(st.lists(st.sampled_from(palette), min_size=num_atoms, max_size=num_atoms))
        return np.asarray(picks, dtype=np.int64)

    return build()


def _min_pair_distance(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> float:
    """Shortest distance between two atoms or periodic images, or ``cutoff`` if none is shorter."""
    box = cell if pbc.any() else np.zeros((3, 3))
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=False)
    (distances,) = calculator.compute(points=positions, box=box, periodic=[bool(p) for p in pbc], quantities="d")
    return float(distances.min()) if distances.size else cutoff


def _separated(draw: st.DrawFn, fractional: np.ndarray, cell: np.ndarray, pbc: np.ndarray, min_distance: float):
    """Scale the cell (and so the positions) until all atoms are ``min_distance`` apart.

    Returns (positions, cell); rejects the draw when it would need more than a modest scaling.
    """
    positions = fractional @ cell
    shortest = _min_pair_distance(positions, cell, pbc, min_distance)
    if shortest >= min_distance:
        return positions, cell
    assume(shortest * _MAX_SEPARATION_SCALE > min_distance)
    scale = min_distance / shortest * (1.0 + 1e-9)
    return positions * scale, cell * scale


def _fractional(draw: st.DrawFn, num_atoms: int) -> np.ndarray:
    unit = st.floats(0.0, 1.0, exclude_max=True)
    return np.array([[draw(unit) for _ in range(3)] for _ in range(num_atoms)])


@st.composite
def crystals(
    draw: st.DrawFn,
    min_atoms: int = 2,
    max_atoms: int = 8,
    min_distance: float = 0.8,
    min_height: float = 2.0,
    min_volume_per_atom: float = 10.0,
    max_volume_per_atom: float = 16.0,
    max_skew: float = 1.0,
    max_species: int = 3,
) -> Sample:
    """Fully periodic crystals: a random (possibly skewed) lattice, random fractional positions.

    Shapes: Sample with numbers (N,), positions (N, 3), cell (3, 3), pbc all True; 2 <= N <= 8
    """
    num_atoms = draw(st.integers(min_atoms, max_atoms))
    per_atom = (num_atoms * min_volume_per_atom, num_atoms * max_volume_per_atom)
    cell = draw(lattices(min_height=min_height, max_skew=max_skew, volume=per_atom))
    pbc = np.ones(3, dtype=bool)
    positions, cell = _separated(draw, _fractional(draw, num_atoms), cell, pbc, min_distance)
    return Sample(draw(species(num_atoms, max_species)), positions, cell, pbc)


@st.composite
def molecules(
    draw: st.DrawFn,
    min_atoms: int = 2,
    max_atoms: int = 8,
    min_distance: float = 0.8,
    volume_per_atom: tuple[float, float] = (6.0, 12.0),
    max_species: int = 3,
) -> Sample:
    """Non-periodic clusters: random positions in a random box, at a random offset from the origin.

    Shapes: Sample with numbers (N,), positions (N, 3), cell zeros (3, 3), pbc all False
    """
    num_atoms = draw(st.integers(min_atoms, max_atoms))
    side = (num_atoms * draw(_unit_floats(*volume_per_atom))) ** (1.0 / 3.0)
    box = np.diag([side * draw(_unit_floats(0.7, 1.3)) for _ in range(3)])
    pbc = np.zeros(3, dtype=bool)
    positions, _ = _separated(draw, _fractional(draw, num_atoms), box, pbc, min_distance)
    offset = np.array([draw(_unit_floats(-5.0, 5.0)) for _ in range(3)])
    return Sample(draw(species(num_atoms, max_species)), positions + offset, np.zeros((3, 3)), pbc)


@st.composite
def mixed_pbc_structures(
    draw: st.DrawFn,
    pbc: Sequence[bool] | None = None,
    min_atoms: int = 2,
    max_atoms: int = 8,
    min_distance: float = 0.8,
    min_height: float = 2.0,
    min_volume_per_atom: float = 10.0,
    max_volume_per_atom: float = 16.0,
    max_skew: float = 1.0,
    max_species: int = 3,
) -> Sample:
    """Structures periodic along one or two cell vectors (slabs, wires).

    Atoms fill the cell's box; the non-periodic cell vectors are kept in ``cell`` (as ase and
    pymatgen do) but no image is taken along them.

    Args:
        pbc: a fixed pattern such as (True, True, False); None draws one of the six mixed ones.

    Shapes: Sample with numbers (N,), positions (N, 3), cell (3, 3), pbc (3,) mixed
    """
    pattern = np.asarray(pbc if pbc is not None else draw(st.sampled_from(MIXED_PBC)), dtype=bool)
    num_atoms = draw(st.integers(min_atoms, max_atoms))
    per_atom = (num_atoms * min_volume_per_atom, num_atoms * max_volume_per_atom)
    cell = draw(lattices(min_height=min_height, max_skew=max_skew, volume=per_atom))
    positions, cell = _separated(draw, _fractional(draw, num_atoms), cell, pattern, min_distance)
    return Sample(draw(species(num_atoms, max_species)), positions, cell, pattern)


def slabs(**kwargs) -> st.SearchStrategy[Sample]:
    """Slabs periodic along the first two cell vectors: ``pbc = (True, True, False)``."""
    return mixed_pbc_structures(pbc=(True, True, False), **kwargs)


def structures(**kwargs) -> st.SearchStrategy[Sample]:
    """Any of: crystals, molecules, mixed-pbc structures (keyword arguments go to all three
    where they apply: ``min_atoms``, ``max_atoms``, ``min_distance``, ``max_species``)."""
    return st.one_of(crystals(**kwargs), molecules(**kwargs), mixed_pbc_structures(**kwargs))
