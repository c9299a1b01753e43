"""Periodic neighbour lists with vesin (small molecules: a dense distance matrix): one edge per
periodic image (a multigraph)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import vesin

from tensorframe.types import Sample

DEFAULT_SHELL_TOLERANCE = 1e-3
"""Å: neighbours at most this much farther than the K-th nearest count as its shell.

Far above the spread of equivalent distances (round-off after a rotation ~1e-15 Å; positions
written to 1e-8 Å, or symmetrised to ~1e-5 Å, in DFT data), and spglib's usual symprec. In
the e3nn BEC set (6 Å) the gaps between consecutive distances of an atom have a clear valley
between 1e-8 and 1e-5 Å; 1e-3 Å also merges the few real splittings below it (K = 32: 0.05 %
more edges than 1e-6 Å would keep). A shell is never split unless its own spread straddles
``d_K + tolerance``, i.e. two shells about 1e-3 Å apart, one of them smeared across that line."""


DENSE_MAX_ATOMS = 32
"""Non-periodic structures of at most this many atoms get their pairs from one all-pairs
distance matrix in numpy instead of vesin's cell list: 4x faster at 5 atoms, 2x at 20, even at
about 40 (measured, one thread); the pairs are the same (tested against vesin)."""


def find_pairs(
    positions: np.ndarray, box: np.ndarray, periodic: np.ndarray, cutoff: float, full_list: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of atoms (or periodic images) at most ``cutoff`` apart, as vesin returns them.

    ``full_list`` gives both directions of each pair; otherwise each pair once. Small molecules
    (no periodic direction, at most :data:`DENSE_MAX_ATOMS` atoms) use a dense distance
    matrix, everything else vesin.

    Shapes: positions (N, 3) Å, box (3, 3), periodic (3,) bool
        -> i, j (P,), shift (P, 3) image of ``j``, distance (P,) Å with ``r_j + shift @ box - r_i``
    """
    if not np.any(periodic) and positions.shape[0] <= DENSE_MAX_ATOMS:
        return _dense_pairs(np.asarray(positions, dtype=np.float64), float(cutoff), full_list)
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=full_list)
    return calculator.compute(points=positions, box=box, periodic=[bool(p) for p in periodic], quantities="ijSd")


def _dense_pairs(
    positions: np.ndarray, cutoff: float, full_list: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`find_pairs` of a molecule from its (N, N) distance matrix (row i: centre i)."""
    vectors = positions[None, :, :] - positions[:, None, :]  # [i, j] = r_j - r_i
    distances = np.sqrt((vectors * vectors).sum(axis=-1))
    close = distances <= cutoff
    np.fill_diagonal(close, False)
    if not full_list:
        close = np.triu(close)
    i, j = np.nonzero(close)
    return i, j, np.zeros((i.size, 3), dtype=np.int64), distances[i, j]


@dataclass(frozen=True)
class NeighborList:
    """Directed edges ``j -> i`` of one structure, in the convention of :class:`Graph`.

    Shapes:
        idx_i, idx_j (E,) int64; cell_shift (E, 3) int64 image of ``j``; length (E,) Å
    """

    idx_i: np.ndarray
    idx_j: np.ndarray
    cell_shift: np.ndarray
    length: np.ndarray


def neighbor_list(
    sample: Sample,
    cutoff: float,
    max_neighbors: int | None = None,
    shell_tolerance: float = DEFAULT_SHELL_TOLERANCE,
) -> NeighborList:
    """All pairs closer than ``cutoff`` (Å), one edge per periodic image, both directions.

    Works for molecules (no cell), mixed and full periodicity, cutoffs larger than the
    cell and strongly skewed cells.

    ``max_neighbors = K`` caps each centre by whole shells: with ``d_K`` the K-th smallest
    distance of that centre (all of them if it has fewer than K), it keeps every neighbour
    with ``distance <= d_K + shell_tolerance``. So the K nearest are always kept, together
    with the rest of the K-th shell (a centre may keep more than K, e.g. all 12 of an fcc
    shell at K = 8); a shell of equidistant neighbours is kept or dropped whole, never
    split. The choice depends only on distances, never on atom order, so the capped graph
    is exactly equivariant under rotations, reflections and permutations of the atoms. It
    is not smooth: a shell crossing ``d_K`` changes the graph discontinuously (only the
    cutoff has a smooth envelope).

    Args:
        max_neighbors: K >= 1, or None for no cap.
        shell_tolerance: Å, > 0; distances within it of ``d_K`` count as the same shell.

    Returns:
        edges in canonical order: by centre, then distance, neighbour and image.

    Raises:
        ValueError: for a non-positive cutoff, a cap below 1, a non-positive or non-finite
            shell tolerance, or two atoms (or images) on top of each other.
    """
    problem = _settings_problem(cutoff, max_neighbors, shell_tolerance)
    if problem:
        raise ValueError(problem)
    box = sample.cell if sample.pbc.any() else np.zeros((3, 3))
    periodic_vectors = box[sample.pbc]
    if periodic_vectors.shape[0] and np.linalg.matrix_rank(periodic_vectors, tol=1e-8) < periodic_vectors.shape[0]:
        raise ValueError(
            f"cell: periodic directions {np.flatnonzero(sample.pbc).tolist()} need linearly independent, "
            f"non-zero cell vectors, got {periodic_vectors.tolist()}"
        )
    # (i, j, S, d) with r_j - r_i + S @ box pointing from i to the image of j.
    i, j, shift, dist = find_pairs(sample.positions, box, sample.pbc, cutoff)
    _check_distinct(i, j, shift, dist, cutoff)
    return _canonical(i, j, shift, dist, cutoff, max_neighbors, shell_tolerance)


def _settings_problem(cutoff: float, max_neighbors: int | None, shell_tolerance: float) -> str | None:
    """What is wrong with these neighbour-list settings, or None."""
    if not cutoff > 0:
        return f"cutoff: expected a positive number of Å, got {cutoff}"
    if max_neighbors is not None and not max_neighbors >= 1:
        return f"max_neighbors: expected a positive integer or None, got {max_neighbors}"
    if not (shell_tolerance > 0 and np.isfinite(shell_tolerance)):
        return f"shell_tolerance: expected a positive, finite number of Å, got {shell_tolerance}"
    return None


def _canonical(i: np.ndarray, j: np.ndarray, shift: np.ndarray, dist: np.ndarray, cutoff: float,
               max_neighbors: int | None, shell_tolerance: float) -> NeighborList:
    """The pairs closer than ``cutoff`` in canonical order, capped by whole shells (see
    :func:`neighbor_list`). Centres of several structures may be given with distinct (offset)
    indices: each centre's edges are ordered and capped on their own."""
    # Order edges by centre, then distance, then neighbour: a canonical, reproducible order.
    # Sorted first, then cut to "closer than" the cutoff (vesin keeps pairs at exactly the
    # cutoff; ase drops them): one gather per array (the sort is stable, so the order of the
    # kept edges is the same as sorting the kept edges).
    order = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], j, dist, i))
    order = order[dist[order] < cutoff]
    idx_i, idx_j = i[order].astype(np.int64), j[order].astype(np.int64)
    shift, dist = shift[order].astype(np.int64), dist[order]
    if max_neighbors is not None and dist.size:
        # Per centre, the K-th smallest distance (the last one if fewer): an order
        # statistic, the same whatever the atom order; keep whole shells up to it.
        starts = np.searchsorted(idx_i, idx_i, side="left")
        ends = np.searchsorted(idx_i, idx_i, side="right")
        kth = dist[np.minimum(starts + int(max_neighbors), ends) - 1]
        keep = dist <= kth + shell_tolerance
        idx_i, idx_j, shift, dist = idx_i[keep], idx_j[keep], shift[keep], dist[keep]
    return NeighborList(idx_i=idx_i, idx_j=idx_j, cell_shift=shift, length=dist)


def small_molecules(samples: Sequence[Sample]) -> list[int]:
    """Indices of the structures that take the dense path: no periodic direction, at most
    :data:`DENSE_MAX_ATOMS` atoms."""
    return [k for k, s in enumerate(samples) if not s.pbc.any() and s.num_atoms <= DENSE_MAX_ATOMS]


def _padded_distances(positions: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Distances within each molecule, padded to the largest: ``[b, i, j] = |r_j - r_i|`` (NaN
    where an atom is padding), and the mask of real pairs ``i != j``.

    Shapes: B arrays (n_b, 3) -> (B, n, n) float64, (B, n, n) bool
    """
    counts = np.array([p.shape[0] for p in positions])
    width = int(counts.max())
    which = np.repeat(np.arange(len(positions)), counts)  # (N,) molecule of each atom
    local = np.arange(which.size) - np.repeat(np.cumsum(counts) - counts, counts)
    padded = np.full((len(positions), width, 3), np.nan)  # padding: never close to anything
    padded[which, local] = np.concatenate(positions).astype(np.float64, copy=False)
    vectors = padded[:, None, :, :] - padded[:, :, None, :]  # [b, i, j] = r_j - r_i
    with np.errstate(invalid="ignore"):
        distances = np.sqrt((vectors * vectors).sum(axis=-1))
    real = np.arange(width) < counts[:, None]  # (B, n)
    pair = real[:, :, None] & real[:, None, :]
    pair[:, np.arange(width), np.arange(width)] = False
    return distances, pair


def well_separated_small_molecules(samples: Sequence[Sample], min_distance: float, chunk: int = 256) -> set[int]:
    """Indices of the small molecules (:func:`small_molecules`) whose atoms are all at least
    ``min_distance`` Å apart, found ``chunk`` molecules per pass; their overlap check can be
    skipped. The others (and every other structure) still need theirs."""
    small = small_molecules(samples)
    clear: set[int] = set()
    for start in range(0, len(small), chunk):
        part = small[start:start + chunk]
        distances, pair = _padded_distances([samples[k].positions for k in part])
        with np.errstate(invalid="ignore"):
            too_close = ((distances < min_distance) & pair).any(axis=(1, 2))
        clear.update(k for k, bad in zip(part, too_close.tolist(), strict=True) if not bad)
    return clear


def small_molecule_neighbor_lists(
    samples: Sequence[Sample],
    cutoff: float,
    max_neighbors: int | None = None,
    shell_tolerance: float = DEFAULT_SHELL_TOLERANCE,
    chunk: int = 256,
) -> dict[int, NeighborList]:
    """``{index: neighbor_list(samples[index], ...)}`` for the small molecules among ``samples``
    (no periodic direction, at most :data:`DENSE_MAX_ATOMS` atoms), ``chunk`` molecules per pass
    over a (B, n, n) distance array instead of one call per structure; the same lists, arrays
    and order. Empty (the caller then takes them one by one, which names a bad structure) when
    fewer than two qualify, the settings are invalid, or two atoms of one lie on top of each
    other.

    Shapes: -> per index, a NeighborList with the structure's own atom indices
    """
    small = small_molecules(samples)
    if len(small) < 2 or _settings_problem(cutoff, max_neighbors, shell_tolerance):
        return {}
    counts = np.array([samples[k].num_atoms for k in small])
    offsets = np.concatenate(([0], np.cumsum(counts)))
    found = []  # (molecule, i, j, distance) per chunk of molecules
    for first in range(0, len(small), chunk):
        distances, pair = _padded_distances([samples[k].positions for k in small[first:first + chunk]])
        with np.errstate(invalid="ignore"):
            close = (distances <= cutoff) & pair
        molecule, i, j = np.nonzero(close)
        found.append((molecule + first, i, j, distances[molecule, i, j]))
    molecule, i, j, dist = (np.concatenate(arrays) for arrays in zip(*found, strict=True))
    if dist.size and dist.min() < 1e-6:
        return {}
    start = offsets[molecule]
    lists = _canonical(i + start, j + start, np.zeros((i.size, 3), dtype=np.int64), dist, cutoff,
                       max_neighbors, shell_tolerance)
    bounds = np.searchsorted(lists.idx_i, offsets)
    result = {}
    for position, index in enumerate(small):
        part = slice(bounds[position], bounds[position + 1])
        base = offsets[position]
        result[index] = NeighborList(idx_i=lists.idx_i[part] - base, idx_j=lists.idx_j[part] - base,
                                     cell_shift=lists.cell_shift[part], length=lists.length[part])
    return result


def _check_distinct(i: np.ndarray, j: np.ndarray, shift: np.ndarray, dist: np.ndarray, cutoff: float) -> None:
    """Refuse two atoms (or images) on top of each other among vesin's pairs closer than ``cutoff``,
    naming the closest such pair.

    Shapes: i, j (E,), shift (E, 3), dist (E,) as :func:`find_pairs` returns them.

    Raises:
        ValueError: ``positions: atoms a and b (image [..]) are d Å apart; expected distinct positions``.
    """
    if not (dist.size and dist.min() < 1e-6):
        return
    inside = dist < cutoff
    idx_i, idx_j, shift, dist = i[inside].astype(np.int64), j[inside].astype(np.int64), shift[inside], dist[inside]
    if dist.size and dist.min() < 1e-6:
        bad = int(np.argmin(dist))
        raise ValueError(
            f"positions: atoms {idx_i[bad]} and {idx_j[bad]} (image {shift[bad].astype(np.int64).tolist()}) are "
            f"{dist[bad]:.2e} Å apart; expected distinct positions"
        )
