"""The edges that enter triplets, and triplet indices into them."""

from __future__ import annotations

import torch


def triplet_edges(idx_kj: torch.Tensor, idx_ji: torch.Tensor, num_edges: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The edges that enter at least one triplet (as ``kj`` or ``ji``), and the triplet indices
    renumbered into that list, so that per-edge terms used only by triplets are computed on
    these edges alone (about a quarter of all edges at 6 Å / 4 Å): ``edges[kj] == idx_kj``
    and ``edges[ji] == idx_ji``.

    Shapes: idx_kj/idx_ji (T,) -> edges (S,) increasing, kj (T,), ji (T,)
    """
    used = torch.zeros(num_edges, dtype=torch.bool, device=idx_kj.device)
    used[idx_kj] = True
    used[idx_ji] = True
    edges = used.nonzero().squeeze(1)
    position = torch.cumsum(used, 0) - 1
    return edges, position.index_select(0, idx_kj), position.index_select(0, idx_ji)
