"""neighbor_list sorts vesin's pairs, then cuts them to "closer than" the cutoff (issue 13,
item 3): pairs at exactly the cutoff are dropped, the order stays canonical, and two atoms on
top of each other are refused with the first such pair in vesin's order."""

from __future__ import annotations

import numpy as np
import pytest

from tensorframe.graph import neighbors
from tensorframe.graph.neighbors import neighbor_list
from tensorframe.types import Sample


def _molecule(positions: list[list[float]]) -> Sample:
    positions = np.asarray(positions, dtype=np.float64)
    return Sample(numbers=np.ones(len(positions), dtype=np.int64), positions=positions, cell=np.zeros((3, 3)),
                  pbc=np.zeros(3, dtype=bool), targets={})


class _FakeVesin:
    """Stands in for ``vesin.NeighborList``: returns fixed (i, j, S, d), unsorted and with a pair
    at exactly the cutoff (as some vesin versions do; the installed one may drop it itself)."""

    def __init__(self, cutoff: float, full_list: bool) -> None:
        self.cutoff = cutoff

    def compute(self, points: np.ndarray, box: np.ndarray, periodic: list[bool], quantities: str) -> tuple:
        i = np.array([2, 0, 1, 0, 2, 1], dtype=np.uint64)
        j = np.array([1, 1, 0, 2, 0, 2], dtype=np.uint64)
        dist = np.array([2.0, self.cutoff, self.cutoff, 1.0, 1.0, 2.0])
        return i, j, np.zeros((6, 3), dtype=np.int32), dist


def test_pairs_at_exactly_the_cutoff_are_dropped_and_edges_sorted_by_centre_then_distance(monkeypatch) -> None:
    monkeypatch.setattr(neighbors.vesin, "NeighborList", _FakeVesin)
    monkeypatch.setattr(neighbors, "DENSE_MAX_ATOMS", 0)  # through vesin (the fake), not the dense path
    nl = neighbors.neighbor_list(_molecule([[0, 0, 0], [3, 0, 0], [1, 0, 0]]), cutoff=3.0)
    assert nl.idx_i.tolist() == [0, 1, 2, 2]
    assert nl.idx_j.tolist() == [2, 2, 0, 1]
    assert nl.length.tolist() == [1.0, 2.0, 1.0, 2.0]
    assert nl.idx_i.dtype == nl.idx_j.dtype == nl.cell_shift.dtype == np.int64
    assert nl.cell_shift.shape == (4, 3)


def test_pairs_at_exactly_the_cutoff_do_not_count_towards_max_neighbors(monkeypatch) -> None:
    # Centre 0 sees 1 at the cutoff (dropped) and 2 at 1 Å: K = 1 keeps 2, not the cut pair's shell.
    monkeypatch.setattr(neighbors.vesin, "NeighborList", _FakeVesin)
    monkeypatch.setattr(neighbors, "DENSE_MAX_ATOMS", 0)  # through vesin (the fake), not the dense path
    nl = neighbors.neighbor_list(_molecule([[0, 0, 0], [3, 0, 0], [1, 0, 0]]), cutoff=3.0, max_neighbors=2)
    assert nl.idx_j[nl.idx_i == 0].tolist() == [2]
    assert nl.idx_j[nl.idx_i == 1].tolist() == [2]


def test_atoms_on_top_of_each_other_are_refused_naming_the_pair() -> None:
    with pytest.raises(ValueError, match=r"^positions: atoms 0 and 1 \(image \[0, 0, 0\]\) are 0\.00e\+00 Å apart; "
                                         r"expected distinct positions$"):
        neighbor_list(_molecule([[0, 0, 0], [0, 0, 0], [2, 0, 0]]), cutoff=3.0)
