"""Padding a batch graph to a few fixed sizes (buckets), for kernels that are built per shape.

On CPUs, bfloat16 matrix products go through oneDNN, which builds (JIT-compiles) a kernel for
every new matrix shape and caches it. A training batch has new atom, edge and triplet counts
at every step, so under ``torch.autocast`` each product pays that build again and the
bfloat16 speed-up is lost. :func:`pad_graph` appends a padding structure so that the number
of atoms, edges, triplets and edges inside triplets each lands on a bucket
(:func:`bucket_size`: a few sizes per doubling); the same kernels then serve many batches.

The padding structure never touches the real ones: its atoms, edges and triplets index only
each other, so every per-row map, gather and scatter of a backbone keeps the real rows exact,
and the real features are the leading rows of the padded ones (:meth:`PaddedGraph.unpad`).
Its geometry is finite (edges of half the smaller cutoff along x, envelopes zero), so its
rows stay finite and, as nothing downstream reads them, carry zero gradients: they add
nothing to any weight's gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from tensorframe.types import Graph, InvariantFeatures

STEPS_PER_DOUBLING = 4
"""Buckets per doubling of a count: padding adds at most 19 % (about 9 % on average)."""

MIN_BUCKET = 64
ALIGNMENT = 16


def bucket_size(count: int, steps: int = STEPS_PER_DOUBLING, minimum: int = MIN_BUCKET) -> int:
    """The smallest bucket >= ``count``: ``minimum * 2**(k / steps)`` rounded up to a multiple
    of 16, for the smallest integer ``k >= 0`` that reaches ``count``."""
    if count <= minimum:
        return minimum
    k = max(0, math.floor(steps * math.log2(count / minimum)) - 1)
    while True:
        size = ALIGNMENT * math.ceil(minimum * 2.0 ** (k / steps) / ALIGNMENT)
        if size >= count:
            return size
        k += 1


@dataclass(frozen=True)
class PaddedGraph:
    """A graph with a padding structure appended, and the real counts to cut the features back.

    Shapes: graph has N' >= N + 1 atoms, E' >= E edges, T' >= T triplets and B + 1 structures.
    """

    graph: Graph
    num_nodes: int
    num_edges: int
    num_triplets: int

    def unpad(self, features: InvariantFeatures) -> InvariantFeatures:
        """The real rows of the padded graph's features (leading rows; views, no copy).

        Shapes: node (N', Fn), edge (E', Fe), triplet (T', Ft) or None -> (N, Fn), (E, Fe), (T, Ft)
        """
        triplet = features.triplet[: self.num_triplets] if features.triplet is not None else None
        return InvariantFeatures(node=features.node[: self.num_nodes], edge=features.edge[: self.num_edges],
                                 triplet=triplet)


def pad_graph(graph: Graph, steps: int = STEPS_PER_DOUBLING, minimum: int = MIN_BUCKET) -> PaddedGraph:
    """``graph`` with a padding structure appended so that its atom, edge, triplet and
    triplet-edge counts are buckets (:func:`bucket_size`).

    The padding structure has at least one atom; its edges are self-loops of its first atom
    along x, of length half the smaller cutoff, with a zero envelope; its triplets join its
    edges, cycling over the first few of them so that the number of distinct edges inside
    triplets (real and padding) is a bucket too. Gradients flow to the real ``edge_vec`` and
    ``positions`` through the concatenation.
    """
    n, e, t = graph.num_nodes, graph.num_edges, graph.num_triplets
    device = graph.idx_i.device
    used = torch.zeros(e, dtype=torch.bool, device=device)
    used[graph.idx_kj] = True
    used[graph.idx_ji] = True
    in_triplets = int(used.sum())
    pad_triplet_edges = bucket_size(in_triplets + 1, steps, minimum) - in_triplets
    pad_nodes = bucket_size(n + 1, steps, minimum) - n
    pad_edges = bucket_size(e + pad_triplet_edges, steps, minimum) - e
    pad_triplets = bucket_size(t + pad_triplet_edges, steps, minimum) - t

    index = graph.idx_i
    real_structures = graph.num_structures
    first_pad_atom = torch.full((pad_edges,), n, dtype=index.dtype, device=device)
    float_dtype = graph.edge_vec.dtype
    length = 0.5 * min(graph.cutoff, graph.triplet_cutoff)
    pad_vec = torch.zeros((pad_edges, 3), dtype=float_dtype, device=device)
    pad_vec[:, 0] = length
    pad_dir = torch.zeros_like(pad_vec)
    pad_dir[:, 0] = 1.0
    cycle = torch.arange(pad_triplets, dtype=graph.idx_kj.dtype, device=device) % pad_triplet_edges + e

    def cat(real: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return torch.cat([real, pad.to(real.dtype)])

    number = graph.numbers[:1] if n else torch.ones(1, dtype=graph.numbers.dtype, device=device)
    padded = replace(
        graph,
        numbers=cat(graph.numbers, number.expand(pad_nodes)),
        positions=cat(graph.positions, graph.positions.new_zeros((pad_nodes, 3))),
        batch=cat(graph.batch, torch.full((pad_nodes,), real_structures, device=device)),
        ptr=cat(graph.ptr, torch.tensor([n + pad_nodes], device=device)),
        cell=cat(graph.cell, graph.cell.new_zeros((1, 3, 3))),
        pbc=cat(graph.pbc, graph.pbc.new_zeros((1, 3))),
        idx_i=cat(graph.idx_i, first_pad_atom),
        idx_j=cat(graph.idx_j, first_pad_atom),
        cell_shift=cat(graph.cell_shift, graph.cell_shift.new_zeros((pad_edges, 3))),
        edge_batch=cat(graph.edge_batch, torch.full((pad_edges,), real_structures, device=device)),
        edge_vec=cat(graph.edge_vec, pad_vec),
        edge_len=cat(graph.edge_len, pad_vec[:, 0]),
        edge_dir=cat(graph.edge_dir, pad_dir),
        edge_envelope=cat(graph.edge_envelope, pad_vec.new_zeros(pad_edges)),
        idx_kj=cat(graph.idx_kj, cycle),
        idx_ji=cat(graph.idx_ji, cycle),
        triplet_cos=cat(graph.triplet_cos, pad_vec.new_full((pad_triplets,), 0.5)),
        triplet_envelope=cat(graph.triplet_envelope, pad_vec.new_zeros(pad_triplets)),
    )
    return PaddedGraph(padded, n, e, t)
