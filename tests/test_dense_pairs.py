"""Small molecules get their pairs from a dense distance matrix instead of vesin, a batch of them
in one pass (issue 13, item 3): the same pairs, distances, neighbour lists, graphs and overlap
errors as vesin's, one structure at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import vesin
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorframe.graph import build_graph, neighbors
from tensorframe.graph.neighbors import (
    DENSE_MAX_ATOMS,
    find_pairs,
    neighbor_list,
    small_molecule_neighbor_lists,
    well_separated_small_molecules,
)
from tensorframe.io.validation import InputError, check_structure
from tensorframe.testing.strategies import crystals, molecules
from tensorframe.types import Sample


def _vesin_pairs(sample: Sample, cutoff: float, full_list: bool) -> tuple[np.ndarray, ...]:
    return vesin.NeighborList(cutoff=cutoff, full_list=full_list).compute(
        points=sample.positions, box=np.zeros((3, 3)), periodic=[False] * 3, quantities="ijSd")


def _as_dict(i: np.ndarray, j: np.ndarray, shift: np.ndarray, dist: np.ndarray, full_list: bool) -> dict:
    """{(i, j): distance}, with each pair of a half list keyed (smaller, larger)."""
    pairs = {}
    for a, b, s, d in zip(i.tolist(), j.tolist(), np.asarray(shift).tolist(), dist.tolist(), strict=True):
        key = (a, b) if full_list else (min(a, b), max(a, b))
        assert s == [0, 0, 0] and a != b and key not in pairs  # each pair once (twice in a full list)
        pairs[key] = d
    return pairs


@settings(deadline=None)
@given(molecules(min_atoms=1, max_atoms=DENSE_MAX_ATOMS, volume_per_atom=(2.0, 12.0)),
       st.floats(0.5, 7.0), st.booleans())
def test_dense_pairs_are_vesins_pairs(sample: Sample, cutoff: float, full_list: bool) -> None:
    dense = _as_dict(*find_pairs(sample.positions, np.zeros((3, 3)), sample.pbc, cutoff, full_list), full_list)
    reference = _as_dict(*_vesin_pairs(sample, cutoff, full_list), full_list)
    assert dense.keys() == reference.keys()
    for pair, distance in dense.items():
        assert distance == pytest.approx(reference[pair], rel=1e-14, abs=1e-14)


@settings(deadline=None)
@given(molecules(min_atoms=1, max_atoms=DENSE_MAX_ATOMS, volume_per_atom=(2.0, 12.0)),
       st.floats(1.0, 7.0), st.one_of(st.none(), st.integers(1, 12)))
def test_neighbor_lists_and_graphs_of_small_molecules_match_the_vesin_path(
    sample: Sample, cutoff: float, max_neighbors: int | None
) -> None:
    dense = neighbor_list(sample, cutoff, max_neighbors)
    graph = build_graph([sample, sample], cutoff, 0.7 * cutoff, max_neighbors)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(neighbors, "DENSE_MAX_ATOMS", 0)
        reference = neighbor_list(sample, cutoff, max_neighbors)
        reference_graph = build_graph([sample, sample], cutoff, 0.7 * cutoff, max_neighbors)
    assert set(zip(dense.idx_i.tolist(), dense.idx_j.tolist(), strict=True)) == set(
        zip(reference.idx_i.tolist(), reference.idx_j.tolist(), strict=True))
    assert dense.idx_i.tolist() == reference.idx_i.tolist()  # canonical order: by centre, then distance
    np.testing.assert_allclose(dense.length, reference.length, rtol=1e-14, atol=1e-14)
    assert dense.cell_shift.dtype == dense.idx_i.dtype == np.int64
    assert graph.num_edges == reference_graph.num_edges and graph.num_triplets == reference_graph.num_triplets


def test_larger_and_periodic_structures_still_go_through_vesin(monkeypatch) -> None:
    calls = []
    original = vesin.NeighborList

    class Counting(original):  # type: ignore[misc, valid-type]
        def compute(self, *args, **kwargs):
            calls.append(kwargs["points"].shape[0])
            return super().compute(*args, **kwargs)

    monkeypatch.setattr(neighbors.vesin, "NeighborList", Counting)
    rng = np.random.default_rng(0)
    small = Sample(np.ones(DENSE_MAX_ATOMS, dtype=np.int64), rng.uniform(0, 8, (DENSE_MAX_ATOMS, 3)),
                   np.zeros((3, 3)), np.zeros(3, dtype=bool))
    large = Sample(np.ones(DENSE_MAX_ATOMS + 1, dtype=np.int64), rng.uniform(0, 8, (DENSE_MAX_ATOMS + 1, 3)),
                   np.zeros((3, 3)), np.zeros(3, dtype=bool))
    periodic = Sample(np.ones(2, dtype=np.int64), np.array([[0.0, 0, 0], [1.5, 1.5, 1.5]]), 4.0 * np.eye(3),
                      np.ones(3, dtype=bool))
    for sample in (small, large, periodic):
        neighbor_list(sample, 3.0)
    assert calls == [DENSE_MAX_ATOMS + 1, 2]


def test_overlapping_atoms_of_a_small_molecule_are_named_as_on_the_vesin_path(monkeypatch) -> None:
    sample = Sample(np.ones(4, dtype=np.int64), np.array([[0.0, 0, 0], [3, 0, 0], [1, 0, 0], [3.2, 0, 0]]),
                    np.zeros((3, 3)), np.zeros(3, dtype=bool))
    with pytest.raises(InputError) as dense:
        check_structure(sample, "structure 7", min_distance=0.5)
    monkeypatch.setattr(neighbors, "DENSE_MAX_ATOMS", 0)
    with pytest.raises(InputError) as reference:
        check_structure(sample, "structure 7", min_distance=0.5)
    assert str(dense.value) == str(reference.value)
    assert str(dense.value).startswith("structure 7: atoms 1 and 3 overlap, 0.200 Å apart")


def _same_lists(a, b) -> None:
    for field in ("idx_i", "idx_j", "cell_shift", "length"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), field


_mixed_batches = st.lists(
    st.one_of(molecules(min_atoms=1, max_atoms=DENSE_MAX_ATOMS, volume_per_atom=(2.0, 12.0)),
              molecules(min_atoms=DENSE_MAX_ATOMS + 1, max_atoms=DENSE_MAX_ATOMS + 4),
              crystals(max_atoms=3)),
    min_size=1, max_size=6)


@settings(deadline=None)
@given(_mixed_batches, st.floats(1.0, 5.0), st.one_of(st.none(), st.integers(1, 12)))
def test_batched_small_molecule_lists_equal_one_by_one_lists(samples, cutoff, max_neighbors) -> None:
    batched = small_molecule_neighbor_lists(samples, cutoff, max_neighbors, chunk=2)
    whole = small_molecule_neighbor_lists(samples, cutoff, max_neighbors)  # one chunk
    assert sorted(whole) == sorted(batched)
    for index in whole:
        _same_lists(whole[index], batched[index])
    small = [k for k, s in enumerate(samples) if not s.pbc.any() and s.num_atoms <= DENSE_MAX_ATOMS]
    assert sorted(batched) == (small if len(small) > 1 else [])
    for index, lists in batched.items():
        _same_lists(lists, neighbor_list(samples[index], cutoff, max_neighbors))
    # And the whole graph, batched or not (DENSE_MAX_ATOMS = 0: every structure through vesin).
    graph = build_graph(samples, cutoff, 0.8 * cutoff, max_neighbors, dtype=torch.float64)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(neighbors, "DENSE_MAX_ATOMS", 0)
        assert small_molecule_neighbor_lists(samples, cutoff, max_neighbors) == {}
        reference = build_graph(samples, cutoff, 0.8 * cutoff, max_neighbors, dtype=torch.float64)
    for field in ("idx_i", "idx_j", "cell_shift", "idx_kj", "idx_ji"):
        assert torch.equal(getattr(graph, field), getattr(reference, field)), field
    torch.testing.assert_close(graph.edge_vec, reference.edge_vec, rtol=0, atol=0)


def test_a_batch_with_overlapping_atoms_names_the_structure() -> None:
    good = Sample(np.ones(3, dtype=np.int64), np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), np.zeros((3, 3)),
                  np.zeros(3, dtype=bool))
    bad = Sample(np.ones(3, dtype=np.int64), np.array([[0.0, 0, 0], [1, 0, 0], [1, 0, 0]]), np.zeros((3, 3)),
                 np.zeros(3, dtype=bool))
    assert small_molecule_neighbor_lists([good, bad, good], 3.0) == {}
    with pytest.raises(ValueError, match=r"^structure 1: positions: atoms 1 and 2 "):
        build_graph([good, bad, good], 3.0)
    with pytest.raises(ValueError, match=r"^structure 0: max_neighbors: expected a positive integer"):
        build_graph([good, good], 3.0, max_neighbors=0)


def test_molecules_of_different_sizes_near_the_origin_keep_their_own_pairs() -> None:
    # Padding of the smaller molecule must never pair with anything (it would sit at the origin).
    a = Sample(np.ones(2, dtype=np.int64), np.array([[0.1, 0, 0], [1.1, 0, 0]]), np.zeros((3, 3)), np.zeros(3, dtype=bool))
    b = Sample(np.ones(4, dtype=np.int64), np.array([[0.0, 0.2, 0], [1, 0.2, 0], [0, 1.2, 0], [0, 0.2, 1]]),
               np.zeros((3, 3)), np.zeros(3, dtype=bool))
    for chunk in (256, 2, 1):  # several passes: each molecule keeps its own offset
        batched = small_molecule_neighbor_lists([a, b, a], 3.0, chunk=chunk)
        for index, sample in enumerate([a, b, a]):
            _same_lists(batched[index], neighbor_list(sample, 3.0))


@settings(deadline=None)
@given(st.lists(molecules(min_atoms=1, max_atoms=DENSE_MAX_ATOMS, min_distance=0.3, volume_per_atom=(1.0, 8.0)),
                min_size=1, max_size=6), st.floats(0.3, 1.5))
def test_well_separated_small_molecules_are_those_without_a_close_pair(samples, min_distance) -> None:
    def closest(sample: Sample) -> float:
        d = np.linalg.norm(sample.positions[:, None] - sample.positions[None], axis=-1)
        return d[~np.eye(len(d), dtype=bool)].min() if len(d) > 1 else np.inf
    expected = {k for k, s in enumerate(samples) if closest(s) >= min_distance}
    assert well_separated_small_molecules(samples, min_distance, chunk=2) == expected


def _checked(model, structures, min_distance: float = 0.5):
    try:
        return model.checked_samples(structures, min_distance)
    except (InputError, TypeError) as error:
        return type(error), str(error)


def test_batched_structure_checks_raise_the_first_failure_as_one_by_one() -> None:
    import tensorframe as tf

    model = tf.build_model({"cutoff": 4.0, "backbone": {"name": "reference", "hidden": 8, "num_radial": 4,
                                                         "num_interactions": 1}, "heads": [{"name": "dipole"}]})

    def molecule(positions, numbers=None) -> Sample:
        positions = np.asarray(positions, dtype=np.float64)
        numbers = np.ones(len(positions), dtype=np.int64) if numbers is None else np.asarray(numbers)
        return Sample(numbers, positions, np.zeros((3, 3)), np.zeros(3, dtype=bool))

    good = molecule([[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    overlapping = molecule([[0, 0, 0], [1, 0, 0], [1.2, 0, 0]])
    unknown = molecule([[0, 0, 0], [1, 0, 0]], numbers=[1, 200])
    batches = [
        [good, good, overlapping, good, unknown],  # the overlap (2) comes first
        [good, unknown, good, overlapping],  # the element (1) comes first
        [good, overlapping, "not a structure"],  # the overlap before the type error
        [good, good, "not a structure", overlapping],  # the type error (2) first
        [good, good, good],
    ]
    for structures in batches:
        batched = _checked(model, structures)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(neighbors, "DENSE_MAX_ATOMS", 0)
            one_by_one = _checked(model, structures)
        if isinstance(batched, list):
            assert isinstance(one_by_one, list) and len(batched) == len(one_by_one) == len(structures)
        else:
            assert batched == one_by_one
    assert _checked(model, batches[0])[1].startswith("structure 2: atoms 1 and 2 overlap")
    assert _checked(model, batches[1])[1].startswith("structure 1: ")
    assert _checked(model, batches[2])[1].startswith("structure 1: atoms 1 and 2 overlap")
    assert _checked(model, batches[3])[0] is TypeError and "structure 2" in _checked(model, batches[3])[1]
