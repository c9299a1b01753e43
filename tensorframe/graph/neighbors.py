"""Periodic neighbour lists with vesin: one edge per periodic image (a multigraph)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import vesin

from tensorframe.types import Sample


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


def neighbor_list(sample: Sample, cutoff: float, max_neighbors: int | None = None) -> NeighborList:
    """All pairs closer than ``cutoff`` (Å), one edge per periodic image, both directions.

    Works for molecules (no cell), mixed and full periodicity, cutoffs larger than the
    cell and strongly skewed cells. ``max_neighbors`` keeps the nearest ones per centre
    (ties broken by index; a cap trades exact smoothness for bounded cost).

    Raises:
        ValueError: for a non-positive cutoff, or two atoms (or images) on top of each other.
    """
    if not cutoff > 0:
        raise ValueError(f"cutoff: expected a positive number of Å, got {cutoff}")
    box = sample.cell if sample.pbc.any() else np.zeros((3, 3))
    periodic_vectors = box[sample.pbc]
    if periodic_vectors.shape[0] and np.linalg.matrix_rank(periodic_vectors, tol=1e-8) < periodic_vectors.shape[0]:
        raise ValueError(
            f"cell: periodic directions {np.flatnonzero(sample.pbc).tolist()} need linearly independent, "
            f"non-zero cell vectors, got {periodic_vectors.tolist()}"
        )
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    # vesin returns (i, j, S, d) with r_j - r_i + S @ box pointing from i to the image of j.
    i, j, shift, dist = calculator.compute(
        points=sample.positions, box=box, periodic=[bool(p) for p in sample.pbc], quantities="ijSd"
    )
    # vesin keeps pairs at exactly the cutoff; "closer than" (as ase) drops them.
    inside = dist < cutoff
    idx_i = i[inside].astype(np.int64)
    idx_j = j[inside].astype(np.int64)
    shift = shift[inside].astype(np.int64)
    dist = dist[inside]
    if dist.size and dist.min() < 1e-6:
        bad = int(np.argmin(dist))
        raise ValueError(
            f"positions: atoms {idx_i[bad]} and {idx_j[bad]} (image {shift[bad].tolist()}) are "
            f"{dist[bad]:.2e} Å apart; expected distinct positions"
        )
    # Order edges by centre, then distance, then neighbour: a canonical, reproducible order.
    order = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], idx_j, dist, idx_i))
    idx_i, idx_j, shift, dist = idx_i[order], idx_j[order], shift[order], dist[order]
    if max_neighbors is not None:
        starts = np.searchsorted(idx_i, idx_i, side="left")
        rank = np.arange(idx_i.shape[0]) - starts
        keep = rank < max_neighbors
        idx_i, idx_j, shift, dist = idx_i[keep], idx_j[keep], shift[keep], dist[keep]
    return NeighborList(idx_i=idx_i, idx_j=idx_j, cell_shift=shift, length=dist)
