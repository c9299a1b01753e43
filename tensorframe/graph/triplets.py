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
    # Edges k -> j grouped by their centre j.
    incoming = edge_ids[torch.argsort(idx_i[edge_ids], stable=True)]
    in_degree = torch.bincount(idx_i[edge_ids], minlength=num_nodes)
    in_start = torch.cumsum(in_degree, 0) - in_degree
    # For every edge j -> i, one triplet per incoming edge of j.
    middle = idx_j[edge_ids]
    counts = in_degree[middle]
    idx_ji = torch.repeat_interleave(edge_ids, counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    offset = torch.arange(idx_ji.shape[0], device=device) - first
    idx_kj = incoming[in_start[idx_j[idx_ji]] + offset]
    same_image = (idx_j[idx_kj] == idx_i[idx_ji]) & (cell_shift[idx_kj] == -cell_shift[idx_ji]).all(dim=1)
    keep = ~same_image
    return idx_kj[keep], idx_ji[keep]
