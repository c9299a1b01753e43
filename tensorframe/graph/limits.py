"""A memory budget for graphs, checked before the neighbour list and the triplets are built.

A dense or tiny cell (Al + N in a 0.5 Å cube passes the 0.3 Å overlap check) has tens of
thousands of neighbours per atom within 6 Å and hundreds of millions of triplets: building
them would try to allocate many GB and then fail or swap. So :func:`build_graph` checks:

1. before the neighbour list of each periodic structure, its edge count *estimated* from the
   density (``N^2 * ball_d(cutoff) / cell volume_d`` over the ``d`` periodic directions: the
   number of atom images within the cutoff of each atom, averaged);
2. after the neighbour lists and before the triplets, the batch's *exact* edge and triplet
   counts (``sum_j indeg(j) * outdeg(j)`` over edges shorter than the triplet cutoff).

Either one over the budget is a one-line error with the numbers, the structure and the ways
out (a larger budget, a smaller batch, a smaller cutoff or ``max_neighbors``). The budget
covers the graph's own arrays (indices, geometry and what building them needs at peak) plus,
when the caller gives them (``TensorModel.make_graph`` does: :meth:`activation_bytes`), the
model's activations per edge and per triplet: an estimate from its feature widths, not a
measurement, meant to catch the graph that cannot fit, not to plan a tight one. Measured on
4 Si supercells of 216 atoms (6 Å / 5 Å: 38k edges, 677k triplets, born + dielectric heads,
``torch.no_grad``, CPU, peak RSS growth): the estimate is 1.4x the measured 1.09 GiB for ETGNN
and 2.9x the measured 0.73 GiB for SchNet and the reference backbone. Training (autograd keeps
every activation) needs several times more than inference.

The budget is :data:`DEFAULT_GRAPH_MEMORY_GB` GiB per batch, or ``TENSORFRAME_GRAPH_MEMORY_GB``
from the environment, or what :func:`set_graph_memory_budget` (the CLI's ``--graph-memory``)
set for the process; ``build_graph(..., memory_budget_gb=...)`` overrides all three.
"""

from __future__ import annotations

import math
import os

import numpy as np

from tensorframe.types import Sample

GRAPH_MEMORY_ENV = "TENSORFRAME_GRAPH_MEMORY_GB"
DEFAULT_GRAPH_MEMORY_GB = 8.0
BYTES_PER_EDGE = 160
"""Edge arrays at peak: the neighbour search's (i, j, shift, distance) and their sorted copies,
then the graph's indices, image, vector, length, direction and envelope (~120 B measured as
the sum of the array sizes), rounded up."""
BYTES_PER_TRIPLET = 64
"""Triplet construction at peak: the repeated edge ids, the gather offsets, the candidate
k -> j edges, the reverse-pair keys and mask (~5 int64 per candidate), then the kept indices,
cosines and envelopes."""

_process_budget_gb: float | None = None


def set_graph_memory_budget(gib: float | None) -> None:
    """The process-wide budget in GiB (``None``: back to the environment / default).

    Raises:
        ValueError: for a non-positive or non-finite value.
    """
    global _process_budget_gb
    if gib is not None and not (math.isfinite(gib) and gib > 0):
        raise ValueError(f"graph memory budget: expected a positive number of GiB, got {gib}")
    _process_budget_gb = gib


def graph_memory_budget_gb() -> float:
    """The budget in force: :func:`set_graph_memory_budget`, else the environment, else the default.

    Raises:
        ValueError: for an environment value that is not a positive number.
    """
    if _process_budget_gb is not None:
        return _process_budget_gb
    text = os.environ.get(GRAPH_MEMORY_ENV)
    if text is None or text.strip() == "":
        return DEFAULT_GRAPH_MEMORY_GB
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{GRAPH_MEMORY_ENV}={text!r}: expected a positive number of GiB")
    return value


class GraphTooLarge(ValueError):
    """A structure or batch whose graph would exceed the memory budget."""


_HOW_TO_RAISE = (f"raise the budget with --graph-memory GB or {GRAPH_MEMORY_ENV}, or lower cutoff / "
                 f"set max_neighbors")


def _ball(dimension: int, radius: float) -> float:
    return {1: 2 * radius, 2: math.pi * radius**2, 3: 4 / 3 * math.pi * radius**3}[dimension]


def estimated_edges(sample: Sample, cutoff: float) -> float | None:
    """Edges within ``cutoff`` estimated from the density of a periodic structure; None for a
    molecule (its neighbour list is at most ``N (N - 1)`` edges and is counted exactly).

    ``N^2 * ball_d(cutoff) / V_d``: for ``d`` periodic directions, ``V_d`` the volume (area,
    length) of the periodic cell vectors and ``ball_d`` that of a ``d``-ball. Exact on average
    for a uniform 3D crystal when the cutoff sphere holds many cells; an overestimate for a slab
    or wire whose atoms spread along the non-periodic directions.
    """
    periodic = sample.cell[sample.pbc]
    dimension = periodic.shape[0]
    if dimension == 0:
        return None
    gram = periodic @ periodic.T
    volume = math.sqrt(max(float(np.linalg.det(gram)), 0.0))
    if volume == 0.0:
        return None  # a degenerate cell: the structure checks name it
    n = sample.num_atoms
    return float(n) * n * _ball(dimension, cutoff) / volume


def check_estimated_edges(sample: Sample, cutoff: float, budget_gb: float, where: str,
                          activation_bytes: tuple[float, float] = (0.0, 0.0)) -> None:
    """Refuse a periodic structure whose estimated edges alone exceed the budget.

    Raises:
        GraphTooLarge: naming ``where``, the estimate, the density and the ways out.
    """
    estimate = estimated_edges(sample, cutoff)
    per_edge = BYTES_PER_EDGE + activation_bytes[0]
    if estimate is None or estimate * per_edge <= budget_gb * 2**30:
        return
    per_atom = estimate / max(sample.num_atoms, 1)
    raise GraphTooLarge(
        f"{where}: about {estimate:,.0f} edges ({per_atom:,.0f} neighbours per atom within {cutoff:g} Å of "
        f"{sample.num_atoms} atoms in this cell) would need ~{_gib(estimate * per_edge)} for the edges "
        f"alone, over the {budget_gb:g} GiB graph budget; check the cell (units? scale?) or "
        f"{_HOW_TO_RAISE}"
    )


def count_triplets(idx_i: np.ndarray, idx_j: np.ndarray, in_triplets: np.ndarray, num_nodes: int) -> int:
    """Triplet candidates ``k -> j -> i``: ``sum_j indeg(j) * outdeg(j)`` over the edges allowed
    in triplets (an upper bound on the triplets built: each edge's own reverse is dropped
    later, at most one per edge). Shapes: idx_i, idx_j, in_triplets (E,) -> int."""
    indeg = np.bincount(idx_i[in_triplets], minlength=num_nodes).astype(np.int64)
    outdeg = np.bincount(idx_j[in_triplets], minlength=num_nodes).astype(np.int64)
    return int(indeg @ outdeg)


def check_graph_size(edges: int, triplets: int, num_atoms: int, num_structures: int, budget_gb: float,
                     where: str, activation_bytes: tuple[float, float] = (0.0, 0.0)) -> None:
    """Refuse a batch whose exact edges and triplets exceed the budget.

    Args:
        activation_bytes: the model's bytes per edge and per triplet on top of the graph's.

    Raises:
        GraphTooLarge: naming ``where``, the counts, the bytes and the ways out.
    """
    per_edge, per_triplet = activation_bytes
    needed = edges * (BYTES_PER_EDGE + per_edge) + triplets * (BYTES_PER_TRIPLET + per_triplet)
    if needed <= budget_gb * 2**30:
        return
    batch = " or a smaller batch size" if num_structures > 1 else ""
    raise GraphTooLarge(
        f"{where}: {edges:,} edges and {triplets:,} triplets ({edges / max(num_atoms, 1):,.0f} neighbours "
        f"and {triplets / max(num_atoms, 1):,.0f} triplets per atom) would need ~{_gib(needed)} for the graph"
        f"{' and the model on it' if per_edge or per_triplet else ''}, "
        f"over the {budget_gb:g} GiB graph budget; {_HOW_TO_RAISE}{batch}"
    )


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:,.1f} GiB"


__all__ = [
    "DEFAULT_GRAPH_MEMORY_GB",
    "GRAPH_MEMORY_ENV",
    "GraphTooLarge",
    "check_estimated_edges",
    "check_graph_size",
    "count_triplets",
    "estimated_edges",
    "graph_memory_budget_gb",
    "set_graph_memory_budget",
]
