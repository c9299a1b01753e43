"""Triplets ``k -> j -> i`` built from an edge list in pure torch, without Python loops."""

from __future__ import annotations

import torch


def build_triplets(
    idx_i: torch.Tensor,
    idx_j: torch.Tensor,
    cell_shift: torch.Tensor,
    num_nodes: int,
    edge_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair every edge ``j -> i`` with every edge ``k -> j`` into the same atom ``j``.

    ``k`` and ``i`` must be distinct atom images: seen from ``j``, ``i`` sits in image
    ``-cell_shift[ji]`` and ``k`` in ``cell_shift[kj]``, so the pair is dropped only when
    ``idx_j[kj] == idx_i[ji]`` and ``cell_shift[kj] == -cell_shift[ji]`` (the edge's own
    reverse). Two images of one atom are distinct neighbours and both kept.

    Triplets come grouped by ``idx_ji`` (in edge order), and for each ``ji`` in the order
    of the incoming edges ``kj`` of ``j`` (in edge order).

    Args:
        edge_mask: (E,) bool, the edges allowed in triplets (e.g. shorter than the
            triplet cutoff); all edges when None.

    Shapes:
        idx_i, idx_j (E,), cell_shift (E, 3) -> idx_kj (T,), idx_ji (T,)
    """
    device = idx_i.device
    edge_ids = torch.arange(idx_i.shape[0], device=device)
    if edge_mask is not None:
        edge_ids = edge_ids[edge_mask]
    # Edges k -> j grouped by their centre j (index_select: faster than [] on CPU).
    centre = idx_i.index_select(0, edge_ids)
    incoming = edge_ids.index_select(0, torch.argsort(centre, stable=True))
    in_degree = torch.bincount(centre, minlength=num_nodes)
    in_start = torch.cumsum(in_degree, 0) - in_degree
    # For every edge j -> i, one triplet per incoming edge of j: triplet t of edge ji takes
    # incoming[in_start[j] + t - first_t], first_t the first triplet of ji; the per-edge
    # part in_start[j] - first_t is repeated once instead of three per-triplet gathers.
    middle = idx_j.index_select(0, edge_ids)
    counts = in_degree.index_select(0, middle)
    first = torch.cumsum(counts, 0) - counts
    num_triplets = int(counts.sum()) if counts.numel() else 0
    idx_ji = torch.repeat_interleave(edge_ids, counts, output_size=num_triplets)
    start = torch.repeat_interleave(in_start.index_select(0, middle) - first, counts, output_size=num_triplets)
    idx_kj = incoming.index_select(0, torch.arange(num_triplets, device=device) + start)
    keep = ~_reverse_pairs(idx_i, idx_j, cell_shift, num_nodes, idx_kj, idx_ji)
    return idx_kj[keep], idx_ji[keep]


def _reverse_pairs(
    idx_i: torch.Tensor,
    idx_j: torch.Tensor,
    cell_shift: torch.Tensor,
    num_nodes: int,
    idx_kj: torch.Tensor,
    idx_ji: torch.Tensor,
) -> torch.Tensor:
    """(T,) bool: ``idx_j[kj] == idx_i[ji]`` and ``cell_shift[kj] == -cell_shift[ji]``.

    Each edge's ``(idx_j, cell_shift)`` and ``(idx_i, -cell_shift)`` are packed into one
    integer per edge (exact, mixed radix), so the per-triplet work is two gathers and one
    comparison instead of gathers and comparisons of (T, 3) shifts. Falls back to the
    direct comparison if the packed key could overflow int64.
    """
    reach = int(cell_shift.abs().max()) if cell_shift.numel() else 0
    base = 2 * reach + 1
    if max(num_nodes, 1) * base**3 >= 2**62:
        return (idx_j[idx_kj] == idx_i[idx_ji]) & (cell_shift[idx_kj] == -cell_shift[idx_ji]).all(dim=1)
    digits = cell_shift + reach  # in [0, base)

    def pack(node: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return ((node * base + image[:, 0]) * base + image[:, 1]) * base + image[:, 2]

    key_kj = pack(idx_j, digits)  # atom k and its image, seen from j
    key_ji = pack(idx_i, 2 * reach - digits)  # atom i and the image -cell_shift[ji]
    return key_kj.index_select(0, idx_kj) == key_ji.index_select(0, idx_ji)
