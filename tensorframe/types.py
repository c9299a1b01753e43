"""Typed containers passed between the stages of a tensorframe model.

    structure -> Sample -> Graph -> InvariantFeatures (backbone) -> heads -> {field: tensor}

The conventions for edges and triplets are written once, in :class:`Graph`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch


@dataclass(frozen=True)
class Sample:
    """One structure, as numpy arrays, with optional labels.

    Shapes:
        numbers:   (N,)    atomic numbers, int
        positions: (N, 3)  Cartesian positions in Å
        cell:      (3, 3)  lattice vectors as rows in Å; zeros for a molecule
        pbc:       (3,)    periodic directions, bool
        targets:   {field name: array}, atom-level fields (N, ...) and structure-level (...)
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    targets: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "numbers", np.asarray(self.numbers, dtype=np.int64).reshape(-1))
        object.__setattr__(self, "positions", np.asarray(self.positions, dtype=np.float64))
        object.__setattr__(self, "cell", np.asarray(self.cell, dtype=np.float64))
        pbc = np.asarray(self.pbc, dtype=bool)
        if pbc.shape == ():
            pbc = np.full(3, bool(pbc))
        object.__setattr__(self, "pbc", pbc)
        n = self.numbers.shape[0]
        if self.positions.shape != (n, 3):
            raise ValueError(f"positions: expected shape ({n}, 3) for {n} atoms, got {self.positions.shape}")
        if self.cell.shape != (3, 3):
            raise ValueError(f"cell: expected shape (3, 3), got {self.cell.shape}")
        if self.pbc.shape != (3,):
            raise ValueError(f"pbc: expected shape (3,), got {self.pbc.shape}")
        if not np.all(np.isfinite(self.positions)):
            raise ValueError("positions: expected finite numbers, found NaN or inf")

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    def with_targets(self, targets: dict[str, np.ndarray]) -> Sample:
        return replace(self, targets=dict(targets))


@dataclass
class Graph:
    """A batch of structures as one periodic multigraph, with geometry computed once.

    Edge convention (the only place it is defined): edge ``e`` is a directed edge
    ``j -> i`` from the neighbour ``idx_j[e]`` (taken in the periodic image
    ``cell_shift[e]``) to the centre ``idx_i[e]``. One edge exists per periodic image, so a
    small cell gives several edges between the same two atoms, and every edge has its
    reverse. ``edge_vec[e] = pos[idx_i] - (pos[idx_j] + cell_shift @ cell)`` points along
    the edge, from ``j`` to ``i`` — the paper's ``e_ji``; ``edge_dir`` is its unit vector.
    Atom-level sums over edges go to the centre ``idx_i``.

    Triplet convention: triplet ``t`` is a path ``k -> j -> i`` of two edges,
    ``idx_kj[t]`` (from ``k`` into the centre ``j``) and ``idx_ji[t]`` (from ``j`` out to
    ``i``), with ``k`` and ``i`` distinct atom images (two images of one atom are distinct
    neighbours). Both orders of every neighbour pair are present. Triplet sums go to the
    centre ``idx_j``; the angle at ``j`` has ``cos = -edge_dir[idx_kj] . edge_dir[idx_ji]``.
    Only edges shorter than ``triplet_cutoff`` enter triplets.

    Shapes:
        numbers (N,), positions (N, 3), batch (N,) structure index of each atom,
        ptr (B+1,) atom offsets, cell (B, 3, 3), pbc (B, 3),
        idx_i, idx_j (E,), cell_shift (E, 3) integer image of j, edge_batch (E,),
        edge_vec (E, 3), edge_len (E,), edge_dir (E, 3), edge_envelope (E,),
        idx_kj, idx_ji (T,), triplet_envelope (T,), triplet_cos (T,)
    """

    numbers: torch.Tensor
    positions: torch.Tensor
    batch: torch.Tensor
    ptr: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    idx_i: torch.Tensor
    idx_j: torch.Tensor
    cell_shift: torch.Tensor
    edge_batch: torch.Tensor
    edge_vec: torch.Tensor
    edge_len: torch.Tensor
    edge_dir: torch.Tensor
    edge_envelope: torch.Tensor
    idx_kj: torch.Tensor
    idx_ji: torch.Tensor
    triplet_cos: torch.Tensor
    triplet_envelope: torch.Tensor
    cutoff: float
    triplet_cutoff: float

    @property
    def num_nodes(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.idx_i.shape[0])

    @property
    def num_triplets(self) -> int:
        return int(self.idx_kj.shape[0])

    @property
    def num_structures(self) -> int:
        return int(self.ptr.shape[0] - 1)

    @property
    def idx_triplet_center(self) -> torch.Tensor:
        """(T,) the centre atom ``j`` of each triplet."""
        return self.idx_i.index_select(0, self.idx_kj)

    @property
    def atoms_per_structure(self) -> torch.Tensor:
        """(B,) number of atoms of each structure."""
        return self.ptr[1:] - self.ptr[:-1]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Graph:
        """A copy on ``device`` with floating tensors cast to ``dtype``."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                cast = dtype if (dtype is not None and value.is_floating_point()) else None
                value = value.to(device=device, dtype=cast)
            out[f.name] = value
        return Graph(**out)


@dataclass
class InvariantFeatures:
    """What a backbone hands to the heads: rotation-invariant features only.

    Shapes:
        node:    (N, Fn)
        edge:    (E, Fe)  in the order of ``Graph.idx_i``
        triplet: (T, Ft)  in the order of ``Graph.idx_kj``, or None when the backbone has
                 no triplet messages (the model then lifts edge features to triplets)
    """

    node: torch.Tensor
    edge: torch.Tensor
    triplet: torch.Tensor | None = None
