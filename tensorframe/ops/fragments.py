"""Fragments: the connected components of a graph (atoms joined by edges within the cutoff)."""

from __future__ import annotations

import torch


@torch.no_grad()
def connected_components(num_nodes: int, idx_i: torch.Tensor, idx_j: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The fragment of every atom: atoms joined by a path of edges share one label.

    Min-label propagation with pointer jumping: each round every atom takes the smallest
    label among itself and its neighbours, then the label of its label; it stops when
    nothing changes (rounds grow with the logarithm of the fragments' diameter in practice,
    with their diameter at worst). Edges of periodic images join their atoms like any other,
    so a crystal connected through its images is one fragment.

    Labels depend on atom order only through which index names a fragment; the partition
    does not.

    Shapes: idx_i, idx_j (E,) -> labels (N,) in 0..C-1 (numbered by smallest atom), C
    """
    labels = torch.arange(num_nodes, device=idx_i.device)
    while True:
        through_edges = labels.scatter_reduce(0, idx_i, labels.index_select(0, idx_j), reduce="amin")
        jumped = through_edges.index_select(0, through_edges)
        if torch.equal(jumped, labels):
            break
        labels = jumped
    _, dense = torch.unique(labels, return_inverse=True)
    return dense, int(dense.max()) + 1 if num_nodes else 0


__all__ = ["connected_components"]
