"""Batching samples into one :class:`Graph`, with geometry computed once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from tensorframe.graph.limits import check_estimated_edges, check_graph_size, count_triplets, graph_memory_budget_gb
from tensorframe.graph.neighbors import DEFAULT_SHELL_TOLERANCE, neighbor_list, small_molecule_neighbor_lists
from tensorframe.graph.triplets import build_triplets
from tensorframe.ops.radial import cosine_cutoff
from tensorframe.types import Graph, Sample


def build_graph(
    samples: Sequence[Sample],
    cutoff: float,
    triplet_cutoff: float | None = None,
    max_neighbors: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    positions: torch.Tensor | None = None,
    shell_tolerance: float = DEFAULT_SHELL_TOLERANCE,
    memory_budget_gb: float | None = None,
    names: Sequence[str] | None = None,
    activation_bytes: tuple[float, float] = (0.0, 0.0),
) -> Graph:
    """Neighbour lists for each sample, joined by atom offsets, then triplets and geometry.

    Positions are taken relative to each structure's centroid (subtracted in float64), so a
    structure far from the origin (1e6 Å) keeps its float32 geometry, and every output is
    the same as at the origin; ``Graph.positions`` are these centred positions.

    Args:
        triplet_cutoff: only edges shorter than this enter triplets (default: ``cutoff``).
        max_neighbors, shell_tolerance: the per-centre cap of :func:`neighbor_list`: whole
            shells up to the K-th nearest neighbour, equal within ``shell_tolerance`` Å.
        positions: (N, 3) optional positions tensor (e.g. with ``requires_grad``) that
            replaces the samples' positions in the geometry (used as given, not centred).
        memory_budget_gb: GiB for the graph's arrays (default:
            :func:`tensorframe.graph.limits.graph_memory_budget_gb`), checked before building.
        names: one per sample, starting its error messages (default ``"structure <i>"``).
        activation_bytes: a model's bytes per edge and per triplet, counted in the budget.

    Raises:
        ValueError: naming the structure index, for bad cutoffs or overlapping atoms.
        GraphTooLarge: (a ValueError) a structure or the batch over the memory budget.
    """
    if len(samples) == 0:
        raise ValueError("samples: expected at least one structure, got none")
    triplet_cutoff = cutoff if triplet_cutoff is None else triplet_cutoff
    if not 0 < triplet_cutoff <= cutoff:
        raise ValueError(f"triplet_cutoff: expected 0 < triplet_cutoff <= cutoff = {cutoff}, got {triplet_cutoff}")
    budget = graph_memory_budget_gb() if memory_budget_gb is None else memory_budget_gb
    idx_i, idx_j, shifts, edge_batch = [], [], [], []
    offset = num_triplets = 0
    batched = small_molecule_neighbor_lists(samples, cutoff, max_neighbors, shell_tolerance)
    for index, sample in enumerate(samples):
        where = names[index] if names is not None else f"structure {index}"
        check_estimated_edges(sample, cutoff, budget, where, activation_bytes)
        try:
            nl = batched[index] if index in batched else neighbor_list(sample, cutoff, max_neighbors, shell_tolerance)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
        triplets = count_triplets(nl.idx_i, nl.idx_j, nl.length < triplet_cutoff, sample.num_atoms)
        check_graph_size(nl.idx_i.shape[0], triplets, sample.num_atoms, 1, budget, where, activation_bytes)
        num_triplets += triplets
        idx_i.append(nl.idx_i + offset)
        idx_j.append(nl.idx_j + offset)
        shifts.append(nl.cell_shift)
        edge_batch.append(np.full(nl.idx_i.shape[0], index, dtype=np.int64))
        offset += sample.num_atoms

    def long(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(arrays)).to(device=device, dtype=torch.long)

    check_graph_size(sum(a.shape[0] for a in idx_i), num_triplets, offset, len(samples), budget,
                     f"batch of {len(samples)} structures", activation_bytes)
    return assemble_graph(samples, long(idx_i), long(idx_j), long([s.reshape(-1, 3) for s in shifts]),
                          long(edge_batch), cutoff, triplet_cutoff, dtype, device, positions)


def assemble_graph(
    samples: Sequence[Sample],
    idx_i: torch.Tensor,
    idx_j: torch.Tensor,
    cell_shift: torch.Tensor,
    edge_batch: torch.Tensor,
    cutoff: float,
    triplet_cutoff: float,
    dtype: torch.dtype,
    device: torch.device | str | None,
    positions: torch.Tensor | None = None,
    triplets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> Graph:
    """The :class:`Graph` of a batch from its joined edges: atoms, geometry, triplets.

    ``triplets = (idx_kj, idx_ji, in_triplets)`` are prebuilt triplets (e.g. from
    :class:`tensorframe.graph.cache.GraphCache`) with the edge mask they were built from;
    they are used when that mask equals this batch's ``edge_len < triplet_cutoff`` and
    rebuilt otherwise, so the result never depends on where the triplets came from.

    Shapes: idx_i, idx_j, edge_batch (E,) long; cell_shift (E, 3) long;
    triplets (T,), (T,) long and (E,) bool.
    """
    counts = [s.num_atoms for s in samples]
    numbers = torch.from_numpy(np.concatenate([s.numbers for s in samples])).to(device=device, dtype=torch.long)
    if positions is None:
        centred = [s.positions - s.positions.mean(axis=0) for s in samples]  # float64
        positions = torch.from_numpy(np.concatenate(centred)).to(device=device, dtype=dtype)
    cell = torch.from_numpy(np.stack([s.cell for s in samples])).to(device=device, dtype=dtype)
    pbc = torch.from_numpy(np.stack([s.pbc for s in samples])).to(device=device)
    batch = torch.repeat_interleave(torch.arange(len(samples), device=device), torch.tensor(counts, device=device))
    ptr = torch.tensor([0, *np.cumsum(counts).tolist()], device=device, dtype=torch.long)

    edge_vec, edge_len, edge_dir = edge_geometry(positions, cell, idx_i, idx_j, cell_shift, edge_batch)
    in_triplets = edge_len.detach() < triplet_cutoff
    if triplets is not None and torch.equal(triplets[2], in_triplets):
        idx_kj, idx_ji = triplets[0], triplets[1]
    else:
        idx_kj, idx_ji = build_triplets(idx_i, idx_j, cell_shift, sum(counts), in_triplets)
    return Graph(
        numbers=numbers,
        positions=positions,
        batch=batch,
        ptr=ptr,
        cell=cell,
        pbc=pbc,
        idx_i=idx_i,
        idx_j=idx_j,
        cell_shift=cell_shift,
        edge_batch=edge_batch,
        edge_vec=edge_vec,
        edge_len=edge_len,
        edge_dir=edge_dir,
        idx_kj=idx_kj,
        idx_ji=idx_ji,
        cutoff=float(cutoff),
        triplet_cutoff=float(triplet_cutoff),
        **derived_geometry(edge_len, edge_dir, idx_kj, idx_ji, cutoff, triplet_cutoff),
    )


def derived_geometry(edge_len: torch.Tensor, edge_dir: torch.Tensor, idx_kj: torch.Tensor, idx_ji: torch.Tensor,
                     cutoff: float, triplet_cutoff: float) -> dict[str, torch.Tensor]:
    """The envelopes and triplet cosines of :class:`Graph` from edge lengths and directions.

    Shapes: edge_len (E,), edge_dir (E, 3), idx_kj/idx_ji (T,) -> edge_envelope (E,),
    triplet_cos (T,), triplet_envelope (T,)
    """
    # Gathers with index_select (faster than [] on CPU); the envelope is evaluated per edge
    # and then gathered, rather than twice per triplet.
    triplet_cos = (-(edge_dir.index_select(0, idx_kj) * edge_dir.index_select(0, idx_ji)).sum(-1)).clamp(-1.0, 1.0)
    edge_triplet_envelope = cosine_cutoff(edge_len, triplet_cutoff)
    triplet_envelope = edge_triplet_envelope.index_select(0, idx_kj) * edge_triplet_envelope.index_select(0, idx_ji)
    return {"edge_envelope": cosine_cutoff(edge_len, cutoff), "triplet_cos": triplet_cos,
            "triplet_envelope": triplet_envelope}


def deform_graph(graph: Graph, positions: torch.Tensor, strain: torch.Tensor) -> Graph:
    """``graph`` with positions and cells under a homogeneous strain, geometry recomputed.

    Rows transform as ``x -> x (I + sym(strain))`` (positions, cell vectors, so every edge
    vector); the edges and triplets stay those of ``graph``. With ``positions`` and
    ``strain`` as autograd leaves (strain zero), ``-dE/dpositions`` are the forces and
    ``dE/dstrain`` is ``V sigma`` (the negative virial) of an energy computed on the result.

    Shapes: positions (N, 3), strain (B, 3, 3) -> Graph
    """
    deformation = torch.eye(3, dtype=positions.dtype, device=positions.device) + 0.5 * (strain + strain.transpose(1, 2))
    moved = torch.einsum("na,nab->nb", positions, deformation.index_select(0, graph.batch))
    cell = torch.bmm(graph.cell.to(positions.dtype), deformation)
    edge_vec, edge_len, edge_dir = edge_geometry(moved, cell, graph.idx_i, graph.idx_j, graph.cell_shift,
                                                 graph.edge_batch)
    return replace(graph, positions=moved, cell=cell, edge_vec=edge_vec, edge_len=edge_len, edge_dir=edge_dir,
                   **derived_geometry(edge_len, edge_dir, graph.idx_kj, graph.idx_ji, graph.cutoff,
                                      graph.triplet_cutoff))


def edge_geometry(
    positions: torch.Tensor,
    cell: torch.Tensor,
    idx_i: torch.Tensor,
    idx_j: torch.Tensor,
    cell_shift: torch.Tensor,
    edge_batch: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Edge vectors ``r_i - (r_j + shift @ cell)``, their lengths and unit vectors.

    Shapes:
        positions (N, 3), cell (B, 3, 3), idx_i/idx_j/edge_batch (E,), cell_shift (E, 3)
        -> edge_vec (E, 3), edge_len (E,), edge_dir (E, 3)
    """
    image = torch.einsum("ea,eab->eb", cell_shift.to(positions.dtype), cell[edge_batch])
    edge_vec = positions[idx_i] - positions[idx_j] - image
    edge_len = torch.linalg.vector_norm(edge_vec, dim=-1)
    edge_dir = edge_vec / edge_len.unsqueeze(-1)
    return edge_vec, edge_len, edge_dir


__all__ = ["assemble_graph", "build_graph", "deform_graph", "derived_geometry", "edge_geometry"]
