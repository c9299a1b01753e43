"""Per-structure graph topology built once and reused: training's graph cache.

Training shows every structure to the model once per epoch (and again in validation), and
a structure's neighbour list and triplets depend only on its positions and cell (fixed
during training) and on the graph settings. :class:`GraphCache` keeps, per structure (keyed
by its index in the dataset), the neighbour list ``(idx_i, idx_j, cell_shift)`` and its
local triplets ``(idx_kj, idx_ji)``; :meth:`GraphCache.graph` joins a batch from them with
atom and edge offsets (triplets never cross structures) and recomputes all geometry from the
positions, so the result is identical, field by field, to :func:`build_graph`'s.

The cache is tied to one :class:`CacheKey` (cutoff, triplet cutoff, max_neighbors, shell
tolerance, dtype): asked for a graph with another key it empties itself first, so a model
with other graph settings never reads a stale topology. The graph memory budget of
:mod:`tensorframe.graph.limits` is checked for every batch from cached counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tensorframe.graph.collate import assemble_graph, build_graph, edge_geometry
from tensorframe.graph.limits import (
    check_estimated_edges,
    check_graph_size,
    count_triplets,
    estimated_edges,
    graph_memory_budget_gb,
)
from tensorframe.graph.neighbors import DEFAULT_SHELL_TOLERANCE, neighbor_list
from tensorframe.graph.store import CHUNK_STRUCTURES, CacheKey, Topology, TopologyStore, open_or_build_store
from tensorframe.graph.triplets import build_triplets
from tensorframe.types import Graph, Sample

CACHE_BYTES_PER_EDGE = 48
"""idx_i, idx_j (2 int64), cell_shift (3 int64) and the triplet mask (1 bool), rounded up."""
CACHE_BYTES_PER_TRIPLET = 16
"""idx_kj, idx_ji (2 int64)."""
DEFAULT_CACHE_BUDGET_GB = 4.0
"""GiB: ``graph_cache: auto`` stays off when the estimated cache of a run's split structures
(train, valid and test) exceeds this: a fixed amount of host memory, independent of the
per-batch graph budget of :mod:`tensorframe.graph.limits`."""


def structure_topologies(samples: Sequence[Sample], key: CacheKey, wheres: Sequence[str], budget_gb: float,
                         activation_bytes: tuple[float, float] = (0.0, 0.0)) -> list[Topology]:
    """The neighbour lists and local triplets of ``samples``, as :func:`build_graph` builds them.

    One neighbour search per structure, then the triplets of all of them at once (as a batch:
    a few torch calls instead of a few per structure), split back per structure (triplets
    never cross structures and come grouped by their ``ji`` edge, in edge order). The
    triplet mask is ``edge_len < triplet_cutoff`` of the centred positions in ``key.dtype``.

    Raises:
        ValueError: naming the structure's ``where``, for bad cutoffs or overlapping atoms.
        GraphTooLarge: a structure over the memory budget.
    """
    lists, candidates = [], []
    for sample, where in zip(samples, wheres, strict=True):
        check_estimated_edges(sample, key.cutoff, budget_gb, where, activation_bytes)
        try:
            nl = neighbor_list(sample, key.cutoff, key.max_neighbors, key.shell_tolerance)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
        count = count_triplets(nl.idx_i, nl.idx_j, nl.length < key.triplet_cutoff, sample.num_atoms)
        check_graph_size(nl.idx_i.shape[0], count, sample.num_atoms, 1, budget_gb, where, activation_bytes)
        lists.append(nl)
        candidates.append(count)
    atom_offsets = np.cumsum([0] + [s.num_atoms for s in samples[:-1]])
    edge_counts = np.array([nl.idx_i.shape[0] for nl in lists])
    edge_offsets = np.cumsum([0, *edge_counts[:-1]])
    idx_i = torch.from_numpy(np.concatenate([nl.idx_i + o for nl, o in zip(lists, atom_offsets, strict=True)]))
    idx_j = torch.from_numpy(np.concatenate([nl.idx_j + o for nl, o in zip(lists, atom_offsets, strict=True)]))
    shift = torch.from_numpy(np.concatenate([nl.cell_shift.reshape(-1, 3) for nl in lists]))
    edge_batch = torch.repeat_interleave(torch.arange(len(samples)), torch.from_numpy(edge_counts))
    positions = torch.from_numpy(np.concatenate([s.positions - s.positions.mean(axis=0) for s in samples]))
    cell = torch.from_numpy(np.stack([s.cell for s in samples]))
    _, edge_len, _ = edge_geometry(positions.to(key.dtype), cell.to(key.dtype), idx_i, idx_j, shift, edge_batch)
    in_triplets = (edge_len < key.triplet_cutoff).numpy()
    idx_kj, idx_ji = (t.numpy() for t in build_triplets(idx_i, idx_j, shift, positions.shape[0],
                                                          torch.from_numpy(in_triplets)))
    triplet_ends = np.cumsum(np.bincount(edge_batch.numpy()[idx_ji], minlength=len(samples)))[:-1]
    edge_ends = np.cumsum(edge_counts)[:-1]
    return [
        Topology(nl.idx_i, nl.idx_j, nl.cell_shift.reshape(-1, 3), mask, kj - offset, ji - offset, count)
        for nl, mask, kj, ji, offset, count in zip(
            lists, np.split(in_triplets, edge_ends), np.split(idx_kj, triplet_ends), np.split(idx_ji, triplet_ends),
            edge_offsets, candidates, strict=True)
    ]


def estimated_cache_bytes(samples: Sequence[Sample], cutoff: float, triplet_cutoff: float,
                          max_neighbors: int | None) -> float:
    """Bytes a cache of ``samples`` would hold, estimated before building anything.

    Neighbours per atom from the density (:func:`estimated_edges`; ``N - 1`` for a molecule),
    capped at ``max_neighbors``; triplets per atom as the square of the neighbours within
    the triplet cutoff. An estimate for choosing, not a measurement.
    """
    total = 0.0
    for sample in samples:
        n = max(sample.num_atoms, 1)
        per_atom = {}
        for name, radius in (("edges", cutoff), ("triplet_edges", triplet_cutoff)):
            estimate = estimated_edges(sample, radius)
            neighbours = (n - 1) if estimate is None else estimate / n
            per_atom[name] = min(neighbours, max_neighbors) if max_neighbors is not None else neighbours
        triplet_neighbours = min(per_atom["triplet_edges"], per_atom["edges"])
        total += n * (per_atom["edges"] * CACHE_BYTES_PER_EDGE + triplet_neighbours**2 * CACHE_BYTES_PER_TRIPLET)
    return total


class GraphCache:
    """Topologies of structures keyed by their dataset index: in memory (filled on first use),
    or, with a ``directory``, in a :class:`~tensorframe.graph.store.TopologyStore` on disk
    built by :meth:`prepare` (keys it does not hold are built per batch and kept in memory).

    Pickles with its contents (a store as its folder), so data-loader workers started after
    :meth:`prepare` read the same topologies; what a worker adds stays in that worker.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.key: CacheKey | None = None
        self.topologies: dict[int, Topology] = {}
        self.store: TopologyStore | None = None

    def __len__(self) -> int:
        return len(self.topologies) + (len(self.store) if self.store is not None else 0)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached arrays (in memory and on disk)."""
        held = sum(t.nbytes for t in self.topologies.values())
        return held + (self.store.nbytes if self.store is not None else 0)

    def clear(self) -> None:
        self.key, self.topologies, self.store = None, {}, None

    def _use_key(self, key: CacheKey) -> None:
        if key != self.key:
            self.clear()
            self.key = key

    def _lookup(self, key: int) -> Topology | None:
        if self.store is not None and key in self.store:
            return self.store[key]
        return self.topologies.get(key)

    def prepare(self, samples: Sequence[Sample], keys: Sequence[int], recipe: GraphRecipe,
                names: Sequence[str] | None = None, memory_budget_gb: float | None = None) -> None:
        """Have the topologies of ``samples`` (one distinct key each) for the graphs of
        ``recipe`` before the first batch: on disk, the store of exactly these structures is
        opened, or built and written (once per fingerprint, see :mod:`tensorframe.graph.store`);
        in memory, the missing ones are built in chunks. ``names`` and ``memory_budget_gb`` as
        in :meth:`graph`.

        Raises:
            ValueError, GraphTooLarge: as :func:`build_graph`, naming the structure.
            OSError: the cache directory cannot be written.
        """
        triplet_cutoff = _checked_triplet_cutoff(recipe.cutoff, recipe.triplet_cutoff)
        key = CacheKey(float(recipe.cutoff), float(triplet_cutoff), recipe.max_neighbors,
                       float(recipe.shell_tolerance), recipe.dtype)
        self._use_key(key)
        budget = graph_memory_budget_gb() if memory_budget_gb is None else memory_budget_gb

        def build(chunk: Sequence[Sample], positions: Sequence[int]) -> list[Topology]:
            wheres = [names[p] if names is not None else f"structure {keys[p]}" for p in positions]
            return structure_topologies(chunk, key, wheres, budget, recipe.activation_bytes)

        if self.directory is not None:
            self.store = open_or_build_store(self.directory, key, samples, list(keys), build)
            return
        missing = [p for p, k in enumerate(keys) if self._lookup(k) is None]
        for start in range(0, len(missing), CHUNK_STRUCTURES):
            positions = missing[start : start + CHUNK_STRUCTURES]
            built = build([samples[p] for p in positions], positions)
            self.topologies.update((keys[p], topology) for p, topology in zip(positions, built, strict=True))

    def graph(
        self,
        samples: Sequence[Sample],
        keys: Sequence[int],
        cutoff: float,
        triplet_cutoff: float | None = None,
        max_neighbors: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        shell_tolerance: float = DEFAULT_SHELL_TOLERANCE,
        memory_budget_gb: float | None = None,
        names: Sequence[str] | None = None,
        activation_bytes: tuple[float, float] = (0.0, 0.0),
    ) -> Graph:
        """The :class:`Graph` :func:`build_graph` gives for ``samples`` (same arguments), with the
        topologies of ``keys`` (one per sample, e.g. dataset indices) taken from the cache or
        built and stored. Geometry is recomputed from the positions every call.

        Raises:
            ValueError, GraphTooLarge: as :func:`build_graph`.
        """
        if len(samples) == 0:
            raise ValueError("samples: expected at least one structure, got none")
        if len(keys) != len(samples):
            raise ValueError(f"keys: expected one per sample ({len(samples)}), got {len(keys)}")
        triplet_cutoff = _checked_triplet_cutoff(cutoff, triplet_cutoff)
        self._use_key(CacheKey(float(cutoff), float(triplet_cutoff), max_neighbors, float(shell_tolerance), dtype))
        key = self.key
        budget = graph_memory_budget_gb() if memory_budget_gb is None else memory_budget_gb
        missing = list(dict.fromkeys(k for k in keys if self._lookup(k) is None))
        if missing:
            first = {k: index for index, k in reversed(list(enumerate(keys)))}
            wheres = [names[first[k]] if names is not None else f"structure {first[k]}" for k in missing]
            built = structure_topologies([samples[first[k]] for k in missing], key, wheres, budget, activation_bytes)
            self.topologies.update(zip(missing, built, strict=True))
        parts = [self._lookup(k) for k in keys]
        num_atoms = sum(s.num_atoms for s in samples)
        check_graph_size(sum(t.idx_i.shape[0] for t in parts), sum(t.candidates for t in parts), num_atoms,
                         len(samples), budget, f"batch of {len(samples)} structures", activation_bytes)
        return _joined_graph(samples, parts, key, device)


@dataclass(frozen=True)
class GraphRecipe:
    """How a model builds its graphs: the settings of :func:`build_graph` without the
    structures. Plain data, so it travels to data-loader worker processes (a model does not
    need to); :meth:`TensorModel.graph_recipe <tensorframe.model.TensorModel.graph_recipe>`
    gives a model's.
    """

    cutoff: float
    triplet_cutoff: float
    max_neighbors: int | None = None
    dtype: torch.dtype = torch.float32
    shell_tolerance: float = DEFAULT_SHELL_TOLERANCE
    activation_bytes: tuple[float, float] = (0.0, 0.0)

    @property
    def options(self) -> dict:
        """Keyword arguments of :func:`build_graph` and :meth:`GraphCache.graph`, devices aside."""
        return {"cutoff": self.cutoff, "triplet_cutoff": self.triplet_cutoff, "max_neighbors": self.max_neighbors,
                "dtype": self.dtype, "shell_tolerance": self.shell_tolerance,
                "activation_bytes": self.activation_bytes}

    def build(self, samples: Sequence[Sample], device: torch.device | str | None = None,
              names: Sequence[str] | None = None, cache: GraphCache | None = None,
              keys: Sequence[int] | None = None) -> Graph:
        """The batch's :class:`Graph`; with a ``cache`` and ``keys`` (one per sample) its topologies
        come from the cache: the same graph.

        Raises:
            ValueError, GraphTooLarge: as :func:`build_graph`.
        """
        if cache is not None and keys is not None:
            return cache.graph(samples, keys, device=device, names=names, **self.options)
        return build_graph(samples, device=device, names=names, **self.options)


def _checked_triplet_cutoff(cutoff: float, triplet_cutoff: float | None) -> float:
    triplet_cutoff = cutoff if triplet_cutoff is None else triplet_cutoff
    if not 0 < triplet_cutoff <= cutoff:
        raise ValueError(f"triplet_cutoff: expected 0 < triplet_cutoff <= cutoff = {cutoff}, got {triplet_cutoff}")
    return triplet_cutoff


def _joined_graph(samples: Sequence[Sample], parts: Sequence[Topology], key: CacheKey,
                  device: torch.device | str | None) -> Graph:
    """One batch from per-structure topologies: atom offsets on the atom indices, edge offsets
    on the triplet indices. If the batch's triplet mask differs from the cached one (an edge
    length rounding across the triplet cutoff differently in the batch), the batch's triplets
    are rebuilt, so the result is always :func:`build_graph`'s."""
    atom_offsets = np.cumsum([0] + [s.num_atoms for s in samples[:-1]])
    edge_counts = [t.idx_i.shape[0] for t in parts]
    edge_offsets = np.cumsum([0, *edge_counts[:-1]])

    def joined(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(arrays)).to(device=device, dtype=torch.long)

    idx_i = joined([t.idx_i + o for t, o in zip(parts, atom_offsets, strict=True)])
    idx_j = joined([t.idx_j + o for t, o in zip(parts, atom_offsets, strict=True)])
    cell_shift = joined([t.cell_shift for t in parts])
    edge_batch = torch.repeat_interleave(torch.arange(len(samples)), torch.tensor(edge_counts)).to(device)
    cached_mask = torch.from_numpy(np.concatenate([t.in_triplets for t in parts])).to(device)
    idx_kj = joined([t.idx_kj + o for t, o in zip(parts, edge_offsets, strict=True)])
    idx_ji = joined([t.idx_ji + o for t, o in zip(parts, edge_offsets, strict=True)])
    return assemble_graph(samples, idx_i, idx_j, cell_shift, edge_batch, key.cutoff, key.triplet_cutoff,
                          key.dtype, device, triplets=(idx_kj, idx_ji, cached_mask))


__all__ = [
    "CACHE_BYTES_PER_EDGE",
    "CACHE_BYTES_PER_TRIPLET",
    "DEFAULT_CACHE_BUDGET_GB",
    "CacheKey",
    "GraphCache",
    "GraphRecipe",
    "Topology",
    "estimated_cache_bytes",
    "structure_topologies",
]
