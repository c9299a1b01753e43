"""The periodic multigraph and its triplets, checked against independent references.

Neighbour lists are compared with ``ase.neighborlist.neighbor_list`` (a different
implementation from vesin) as multisets of ``(i, j, shift)``; triplets with a brute-force
enumeration of ordered pairs of distinct neighbour images built from the ase list. The
edge convention under test is the one of :class:`tensorframe.types.Graph`: edge ``j -> i``
has ``edge_vec = r_i - (r_j + shift @ cell)``, while ase's ``D`` is ``r_j + S @ cell - r_i``.
"""

from __future__ import annotations

import functools
from collections import Counter

import ase
import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list as ase_neighbor_list
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tensorframe as tf
import tensorframe.graph.collate as collate
from tensorframe.graph import build_graph
from tensorframe.graph.neighbors import DEFAULT_SHELL_TOLERANCE, NeighborList, neighbor_list
from tensorframe.testing import (
    assert_equivariant,
    assert_neumann,
    assert_permutation_invariant,
    point_group_operations,
    rock_salt,
    rotate_sample,
    tetragonal_perovskite,
    wurtzite,
)
from tensorframe.testing import strategies as tfst
from tensorframe.types import Sample

# An edge whose length is this close to the cutoff may be kept by one implementation and
# dropped by the other (``<`` vs ``<=``, rounding); every other edge must agree exactly.
BOUNDARY = 1e-9
MIN_DISTANCE = 0.5  # Å, closest approach of two atom images in generated structures


def _rotation(angles: tuple[float, float, float]) -> np.ndarray:
    a, b, c = angles
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


@st.composite
def structures(
    draw,
    max_atoms: int = 4,
    lengths: tuple[float, float] = (1.3, 3.5),
    max_shear: float = 2.5,
) -> Sample:
    """Random crystals, slabs, wires and molecules.

    Lattice rows ``(L1, 0, 0), (s21, L2, 0), (s31, s32, L3)`` with shears up to
    ``max_shear`` times the lengths (angles down to about 20 degrees), turned by a random
    rotation; fractional coordinates in [-0.5, 1.5) so atoms may sit outside the cell. A
    non-periodic direction may have a zero cell vector; a molecule has no cell at all.
    """
    n = draw(st.integers(1, max_atoms))
    pbc = np.array(draw(st.tuples(st.booleans(), st.booleans(), st.booleans())))
    diag = [draw(st.floats(*lengths)) for _ in range(3)]
    shears = [draw(st.floats(-max_shear, max_shear)) for _ in range(3)]
    lower = np.array(
        [[diag[0], 0, 0], [shears[0] * diag[0], diag[1], 0], [shears[1] * diag[0], shears[2] * diag[1], diag[2]]]
    )
    cell = lower @ _rotation(tuple(draw(st.floats(0, 2 * np.pi)) for _ in range(3))).T
    frac = np.array([[draw(st.floats(-0.5, 1.5)) for _ in range(3)] for _ in range(n)])
    positions = frac @ cell
    if not pbc.any():
        cell = np.zeros((3, 3))
    else:
        for axis in np.flatnonzero(~pbc):
            if draw(st.booleans()):
                cell[axis] = 0.0
    numbers = np.array([draw(st.sampled_from([1, 6, 8, 11, 17, 22])) for _ in range(n)])
    sample = Sample(numbers, positions, cell, pbc)
    assume(_ase_list(sample, MIN_DISTANCE, "d").size == 0)
    return sample


def _atoms(sample: Sample) -> ase.Atoms:
    return ase.Atoms(numbers=sample.numbers, positions=sample.positions, cell=sample.cell, pbc=sample.pbc)


def _ase_list(sample: Sample, cutoff: float, quantities: str = "ijSD"):
    return ase_neighbor_list(quantities, _atoms(sample), cutoff)


def _edge_keys(i, j, shift) -> list[tuple[int, ...]]:
    return [(int(a), int(b), *map(int, s)) for a, b, s in zip(i, j, shift, strict=True)]


def _graph64(samples, cutoff, **kwargs):
    return build_graph(samples, cutoff, dtype=torch.float64, **kwargs)


@settings(deadline=None)
@given(sample=structures(), cutoff=st.floats(0.8, 4.0))
def test_neighbors_match_ase(sample: Sample, cutoff: float):
    """Same (i, j, shift) multiset as ase, one edge per image, and the same vectors."""
    graph = _graph64([sample], cutoff, triplet_cutoff=min(cutoff, 0.1))
    ours = _edge_keys(graph.idx_i, graph.idx_j, graph.cell_shift)
    i, j, shift, distance_vector = _ase_list(sample, cutoff)
    theirs = _edge_keys(i, j, shift)
    assert max(Counter(ours).values(), default=1) == 1, "an edge appears twice"
    assert max(Counter(theirs).values(), default=1) == 1
    ours_len = dict(zip(ours, graph.edge_len.tolist(), strict=True))
    theirs_vec = dict(zip(theirs, distance_vector, strict=True))
    for key in set(ours) ^ set(theirs):
        length = ours_len[key] if key in ours_len else np.linalg.norm(theirs_vec[key])
        assert abs(length - cutoff) < BOUNDARY, f"edge {key} of length {length} differs from ase"
    # Shifts only along periodic directions.
    assert not graph.cell_shift[:, ~torch.from_numpy(sample.pbc)].any()
    common = [k for k in ours if k in theirs_vec]
    if common:
        position = {k: e for e, k in enumerate(ours)}
        rows = torch.tensor([position[k] for k in common])
        expected = -torch.tensor(np.array([theirs_vec[k] for k in common]))
        torch.testing.assert_close(graph.edge_vec[rows], expected, rtol=0, atol=1e-10)
        torch.testing.assert_close(graph.edge_len[rows], expected.norm(dim=-1), rtol=0, atol=1e-10)
    torch.testing.assert_close(graph.edge_dir.norm(dim=-1), torch.ones(graph.num_edges, dtype=torch.float64))
    torch.testing.assert_close(graph.edge_dir * graph.edge_len[:, None], graph.edge_vec)
    assert (graph.edge_len < cutoff).all()


def test_pairs_at_exactly_the_cutoff_are_not_edges():
    """"Closer than the cutoff", as ase: the self-images of an atom in a 2 Å cube are 2 Å
    away, so a 2 Å cutoff gives no edges and a slightly larger one gives six."""
    sample = Sample([1], [[0.0, 0.0, 0.0]], np.eye(3) * 2.0, [True, True, True])
    assert _ase_list(sample, 2.0, "i").size == 0
    assert _graph64([sample], 2.0).num_edges == 0
    assert _graph64([sample], 2.0 + 1e-9).num_edges == 6


@settings(deadline=None)
@given(sample=structures(), cutoff=st.floats(0.8, 4.0))
def test_every_edge_has_its_reverse(sample: Sample, cutoff: float):
    """(i, j, S) <-> (j, i, -S), with the opposite vector."""
    graph = _graph64([sample], cutoff, triplet_cutoff=min(cutoff, 0.1))
    forward = _edge_keys(graph.idx_i, graph.idx_j, graph.cell_shift)
    reverse = _edge_keys(graph.idx_j, graph.idx_i, -graph.cell_shift)
    assert Counter(forward) == Counter(reverse)
    position = {k: e for e, k in enumerate(forward)}
    partner = torch.tensor([position[k] for k in reverse], dtype=torch.long)
    torch.testing.assert_close(graph.edge_vec[partner], -graph.edge_vec, rtol=0, atol=1e-12)


def _brute_force_triplets(sample: Sample, triplet_cutoff: float) -> dict[tuple[int, ...], float]:
    """All ordered pairs of distinct neighbour images (k, S_k), (i, S_i) of every centre j,
    from ase's list, with cos of the angle k-j-i computed from the positions.

    Key: (j, k, *S_k, i, *S_i) with images relative to the centre j in image 0.
    """
    centre, neighbour, shift = _ase_list(sample, triplet_cutoff, "ijS")
    cell = sample.cell
    out: dict[tuple[int, ...], float] = {}
    for j in range(sample.num_atoms):
        rows = np.flatnonzero(centre == j)
        for p in rows:
            for q in rows:
                if neighbour[p] == neighbour[q] and (shift[p] == shift[q]).all():
                    continue  # the same atom image
                to_k = sample.positions[neighbour[p]] + shift[p] @ cell - sample.positions[j]
                to_i = sample.positions[neighbour[q]] + shift[q] @ cell - sample.positions[j]
                cos = to_k @ to_i / np.linalg.norm(to_k) / np.linalg.norm(to_i)
                key = (j, int(neighbour[p]), *map(int, shift[p]), int(neighbour[q]), *map(int, shift[q]))
                assert key not in out
                out[key] = float(cos)
    return out


def _our_triplets(graph) -> dict[tuple[int, ...], float]:
    kj, ji = graph.idx_kj, graph.idx_ji
    centre = graph.idx_i[kj]
    assert torch.equal(graph.idx_j[ji], centre), "edge ji must leave the centre of edge kj"
    # k sits in image shift[kj] of the centre; i in image -shift[ji] (the centre is j's image shift[ji] seen from i).
    keys = [
        (int(j), int(k), *map(int, sk), int(i), *map(int, -si))
        for j, k, sk, i, si in zip(centre, graph.idx_j[kj], graph.cell_shift[kj], graph.idx_i[ji], graph.cell_shift[ji], strict=True)
    ]
    assert len(set(keys)) == len(keys), "a triplet appears twice"
    return dict(zip(keys, graph.triplet_cos.tolist(), strict=True))


@settings(deadline=None)
@given(
    sample=structures(max_atoms=3, lengths=(1.6, 3.0), max_shear=1.2),
    cutoff=st.floats(1.0, 3.0),
    fraction=st.floats(0.4, 1.0),
)
def test_triplets_match_brute_force(sample: Sample, cutoff: float, fraction: float):
    """Triplets are exactly the ordered pairs of distinct neighbour images within the
    triplet cutoff (two images of one atom are distinct; both orders present), and
    ``triplet_cos`` is the cosine of the angle k-j-i."""
    triplet_cutoff = fraction * cutoff
    graph = _graph64([sample], cutoff, triplet_cutoff=triplet_cutoff)
    ours = _our_triplets(graph)
    reference = _brute_force_triplets(sample, triplet_cutoff)
    lengths = graph.edge_len
    involved = torch.cat([lengths[graph.idx_kj], lengths[graph.idx_ji]])
    assert (involved < triplet_cutoff).all()
    near_boundary = ((lengths - triplet_cutoff).abs() < BOUNDARY).any()
    if not near_boundary:
        assert set(ours) == set(reference)
    for key in set(ours) & set(reference):
        assert ours[key] == pytest.approx(reference[key], abs=1e-10)
    # Both orders of every pair: swapping (k, S_k) and (i, S_i) maps the set onto itself.
    assert {(key[0], *key[5:9], *key[1:5]) for key in ours} == set(ours)


def test_triplets_of_self_images():
    """A 1-atom chain with a cutoff over two periods: the atom's own images +-1, +-2 are
    four distinct neighbours, so 4 * 3 ordered pairs, with straight and zero angles."""
    sample = Sample([6], [[0.1, 0.2, 0.3]], np.diag([1.5, 0.0, 0.0]), [True, False, False])
    graph = _graph64([sample], 3.2)
    assert sorted(graph.cell_shift[:, 0].tolist()) == [-2, -1, 1, 2]
    ours = _our_triplets(graph)
    assert len(ours) == 12
    cosines = sorted(ours.values())
    # k, i on opposite sides: 180 degrees (8 pairs); same side, different images: 0 degrees (4).
    assert cosines == pytest.approx([-1.0] * 8 + [1.0] * 4, abs=1e-12)
    assert _our_triplets(graph).keys() == _brute_force_triplets(sample, 3.2).keys()


@settings(deadline=None)
@given(
    first=structures(max_atoms=3, lengths=(1.6, 3.0), max_shear=1.2),
    second=structures(max_atoms=3, lengths=(1.6, 3.0), max_shear=1.2),
    cutoff=st.floats(1.0, 3.0),
)
def test_batch_equals_singles_with_offsets(first: Sample, second: Sample, cutoff: float):
    triplet_cutoff = 0.8 * cutoff
    both = _graph64([first, second], cutoff, triplet_cutoff=triplet_cutoff)
    singles = [_graph64([s], cutoff, triplet_cutoff=triplet_cutoff) for s in (first, second)]
    n0, e0 = singles[0].num_nodes, singles[0].num_edges
    assert both.ptr.tolist() == [0, n0, n0 + singles[1].num_nodes]
    assert both.batch.tolist() == [0] * n0 + [1] * singles[1].num_nodes
    assert both.edge_batch.tolist() == [0] * e0 + [1] * singles[1].num_edges
    for name in ("idx_i", "idx_j"):
        expected = torch.cat([getattr(singles[0], name), getattr(singles[1], name) + n0])
        assert torch.equal(getattr(both, name), expected)
    for name in ("cell_shift", "edge_vec", "edge_len", "edge_envelope", "numbers", "positions"):
        expected = torch.cat([getattr(singles[0], name), getattr(singles[1], name)])
        torch.testing.assert_close(getattr(both, name), expected, rtol=0, atol=0)
    torch.testing.assert_close(both.cell, torch.cat([singles[0].cell, singles[1].cell]))
    assert both.pbc.tolist() == [first.pbc.tolist(), second.pbc.tolist()]

    def triplet_rows(graph, edge_offset=0):
        pairs = torch.stack([graph.idx_kj + edge_offset, graph.idx_ji + edge_offset], dim=1)
        return sorted(map(tuple, pairs.tolist()))

    assert triplet_rows(both) == sorted(triplet_rows(singles[0]) + triplet_rows(singles[1], e0))
    batched = dict(zip(map(tuple, torch.stack([both.idx_kj, both.idx_ji], 1).tolist()), both.triplet_cos.tolist(), strict=True))
    for offset, single in ((0, singles[0]), (e0, singles[1])):
        for kj, ji, cos in zip(single.idx_kj.tolist(), single.idx_ji.tolist(), single.triplet_cos.tolist(), strict=True):
            assert batched[(kj + offset, ji + offset)] == cos


def _around(nl: NeighborList, centre: int) -> tuple[list[tuple[int, ...]], np.ndarray]:
    rows = np.flatnonzero(nl.idx_i == centre)
    return _edge_keys(nl.idx_i[rows], nl.idx_j[rows], nl.cell_shift[rows]), nl.length[rows]


@settings(deadline=None)
@given(
    sample=tfst.structures(),
    cutoff=st.floats(2.0, 5.0),
    max_neighbors=st.integers(1, 40),
    tolerance=st.sampled_from([DEFAULT_SHELL_TOLERANCE, 1e-6, 0.05]),
)
def test_max_neighbors_keeps_whole_shells(sample: Sample, cutoff: float, max_neighbors: int, tolerance: float):
    """Per centre, the kept set is exactly {distance <= d_K + tolerance} with d_K the K-th
    smallest distance (an order statistic): it holds the K nearest, and every neighbour tied
    with one of them is kept too (a shell is never split), in the canonical edge order."""
    full = neighbor_list(sample, cutoff)
    capped = neighbor_list(sample, cutoff, max_neighbors, tolerance)
    all_keys = _edge_keys(full.idx_i, full.idx_j, full.cell_shift)
    kept_keys = _edge_keys(capped.idx_i, capped.idx_j, capped.cell_shift)
    position = {key: e for e, key in enumerate(all_keys)}
    assert [position[key] for key in kept_keys] == sorted(position[key] for key in kept_keys), "canonical order lost"
    assert np.array_equal(capped.length, full.length[[position[key] for key in kept_keys]])
    for centre in range(sample.num_atoms):
        keys, lengths = _around(full, centre)
        kept = set(_around(capped, centre)[0])
        if not keys:
            assert not kept
            continue
        d_k = np.sort(lengths)[min(max_neighbors, len(keys)) - 1]
        assert kept == {k for k, d in zip(keys, lengths, strict=True) if d <= d_k + tolerance}
        assert len(kept) >= min(max_neighbors, len(keys))
        assert {k for k, d in zip(keys, lengths, strict=True) if d <= d_k} <= kept, "one of the K nearest dropped"
        dropped = [d for k, d in zip(keys, lengths, strict=True) if k not in kept]
        if dropped:
            assert min(dropped) > d_k + tolerance
            # No dropped neighbour is tied (to round-off) with one of the K nearest.
            nearest = lengths[lengths <= d_k]
            assert np.abs(np.asarray(dropped)[:, None] - nearest[None, :]).min() > 1e-9


@settings(deadline=None)
@given(
    sample=tfst.structures(),
    cutoff=st.floats(2.0, 5.0),
    max_neighbors=st.integers(1, 40),
    rotation=tfst.orthogonal_matrices(),
    data=st.data(),
)
def test_max_neighbors_ignores_atom_order_and_orientation(sample, cutoff, max_neighbors, rotation, data):
    """The capped edge set (i, j, shift) of a rotated (or reflected), permuted structure is the
    original one relabelled: nothing depends on atom order or orientation."""
    permutation = np.asarray(data.draw(st.permutations(range(sample.num_atoms))))
    moved = Sample(sample.numbers[permutation], sample.positions[permutation] @ rotation.T, sample.cell @ rotation.T,
                   sample.pbc)
    before = neighbor_list(sample, cutoff, max_neighbors)
    after = neighbor_list(moved, cutoff, max_neighbors)
    relabelled = _edge_keys(permutation[after.idx_i], permutation[after.idx_j], after.cell_shift)
    assert Counter(relabelled) == Counter(_edge_keys(before.idx_i, before.idx_j, before.cell_shift))


def _fcc(a: float = 3.61) -> Sample:
    return Sample([29], [[0.0, 0.0, 0.0]], 0.5 * a * np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]),
                  [True, True, True])


@pytest.mark.parametrize("max_neighbors, kept", [(1, 12), (8, 12), (12, 12), (13, 18), (18, 18), (19, 42)])
def test_max_neighbors_counts_whole_fcc_shells(max_neighbors, kept):
    """fcc shells hold 12, 6, 24 atoms: a cap inside a shell keeps all of it (more than K)."""
    assert neighbor_list(_fcc(), 5.2, max_neighbors).idx_i.size == kept


def test_shell_tolerance_merges_nearly_equal_distances():
    """Neighbours 1.0 and 1.0005 Å away are one shell at the default tolerance, two at 1e-4 Å."""
    sample = Sample([1, 1, 1], [[0, 0, 0], [1.0, 0, 0], [0, 1.0005, 0]])
    for tolerance, kept in ((DEFAULT_SHELL_TOLERANCE, [1, 2]), (1e-4, [1])):
        nl = neighbor_list(sample, 3.0, 1, shell_tolerance=tolerance)
        assert nl.idx_j[nl.idx_i == 0].tolist() == kept


@pytest.mark.parametrize("tolerance", [0.0, -1e-3, float("nan"), float("inf")])
def test_bad_shell_tolerance_is_an_error(tolerance):
    sample = Sample([1, 1], [[0, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"shell_tolerance: expected a positive, finite number of Å"):
        neighbor_list(sample, 2.0, 4, shell_tolerance=tolerance)
    with pytest.raises(ValueError, match=r"structure 0: shell_tolerance"):
        build_graph([sample], 2.0, max_neighbors=4, shell_tolerance=tolerance)


@pytest.mark.parametrize("max_neighbors", [0, -2])
def test_non_positive_max_neighbors_is_an_error(max_neighbors):
    sample = Sample([1, 1], [[0, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"max_neighbors: expected a positive integer"):
        neighbor_list(sample, 2.0, max_neighbors)


# ---------------------------------------------------------------- the cap in crystals with degenerate shells


def _bcc(a: float = 2.87) -> Sample:
    """bcc iron in its conventional cubic cell (2 atoms): shells of 8, 6, 12, 24, 8, ... atoms."""
    return Sample([26, 26], [[0.0, 0.0, 0.0], [a / 2, a / 2, a / 2]], np.eye(3) * a, [True, True, True])


CRYSTALS = {"rock_salt": rock_salt, "wurtzite": wurtzite, "tetragonal_perovskite": tetragonal_perovskite, "bcc": _bcc}


@functools.cache
def _capped_model(max_neighbors: int) -> tf.TensorModel:
    torch.manual_seed(max_neighbors)
    config = {"cutoff": 6.0, "triplet_cutoff": 4.0, "max_neighbors": max_neighbors, "backbone": {"name": "reference"},
              "heads": [{"name": "born"}, {"name": "dielectric"}]}
    return tf.build_model(config).double().eval()


def _permuted(sample: Sample, permutation) -> Sample:
    permutation = np.asarray(permutation)
    return Sample(sample.numbers[permutation], sample.positions[permutation], sample.cell, sample.pbc)


@functools.cache
def _space_group(name: str):
    return point_group_operations(CRYSTALS[name]())[1]


def _old_rank_cap(sample: Sample, cutoff: float, max_neighbors: int | None = None,
                  shell_tolerance: float = DEFAULT_SHELL_TOLERANCE) -> NeighborList:
    """The former cap: the first K edges of each centre in the canonical order, so a tie inside
    a shell is broken by neighbour index and image (``shell_tolerance`` is ignored)."""
    nl = neighbor_list(sample, cutoff)
    if max_neighbors is None:
        return nl
    keep = np.arange(nl.idx_i.size) - np.searchsorted(nl.idx_i, nl.idx_i) < max_neighbors
    return NeighborList(nl.idx_i[keep], nl.idx_j[keep], nl.cell_shift[keep], nl.length[keep])


def _closed_under_symmetry(sample: Sample, nl: NeighborList, space_group) -> bool:
    """Every space-group operation (R, atom a -> image[a]) maps the kept neighbour vectors of
    each atom a onto those of image[a]: the neighbour set has the crystal's symmetry."""
    vectors = sample.positions[nl.idx_j] + nl.cell_shift @ sample.cell - sample.positions[nl.idx_i]
    for rotation, image in space_group:
        for atom in range(sample.num_atoms):
            mapped = vectors[nl.idx_i == atom] @ rotation.T
            target = vectors[nl.idx_i == image[atom]]
            if mapped.shape != target.shape:
                return False
            gap = np.linalg.norm(mapped[:, None] - target[None], axis=-1)
            if gap.min(axis=1).max() > 1e-6 or gap.min(axis=0).max() > 1e-6:
                return False
    return True


@pytest.mark.parametrize("name", sorted(CRYSTALS))
def test_capped_neighbours_keep_the_crystal_symmetry(name):
    """At every K in 1..40 the whole-shell cap keeps a neighbour set closed under the space group."""
    crystal = CRYSTALS[name]()
    for max_neighbors in range(1, 41):
        assert _closed_under_symmetry(crystal, neighbor_list(crystal, 6.0, max_neighbors), _space_group(name)), (
            f"{name}, K = {max_neighbors}"
        )


@settings(deadline=None)
@given(name=st.sampled_from(sorted(CRYSTALS)), max_neighbors=st.integers(1, 40),
       rotation=tfst.orthogonal_matrices(), data=st.data())
def test_capped_model_is_equivariant_on_degenerate_shells(name, max_neighbors, rotation, data):
    """Rock salt, wurtzite, tetragonal perovskite and bcc, with atoms in a random order and a
    random proper or improper rotation: a float64 model capped at K gives the rotated (and
    permuted) predictions to 1e-9, checked against e3nn's Wigner-D matrices."""
    crystal = CRYSTALS[name]()
    permutation = data.draw(st.permutations(range(crystal.num_atoms)))
    model = _capped_model(max_neighbors)
    assert_permutation_invariant(model, crystal, permutation, atol=1e-9, rtol=1e-9)
    assert_equivariant(model, _permuted(crystal, permutation), rotation, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", sorted(CRYSTALS))
@pytest.mark.parametrize("max_neighbors", [8, 24])
def test_capped_model_obeys_neumann(name, max_neighbors):
    assert_neumann(_capped_model(max_neighbors), CRYSTALS[name](), atol=1e-9, rtol=1e-9)


def test_capped_wurtzite_dielectric_is_uniaxial():
    """Wurtzite AlN, cap 24 (inside the 3.65 Å shell of six): eps_xx == eps_yy, also turned."""
    model = _capped_model(24)
    eps = model.predict([wurtzite()])[0]["dielectric"]
    assert eps[0, 0] == pytest.approx(eps[1, 1], rel=1e-12)
    assert np.abs(eps[[0, 0, 1, 1, 2, 2], [1, 2, 0, 2, 0, 1]]).max() < 1e-12 * np.abs(eps).max()
    improper = -_rotation((0.3, 1.1, -0.7))
    assert_neumann(model, rotate_sample(wurtzite(), improper), atol=1e-9, rtol=1e-9)


def test_old_index_tie_break_is_caught(monkeypatch):
    """The former cap (first K, ties broken by atom index) splits wurtzite's 3.65 Å shell of six
    at K = 24: its neighbour set is not closed under the crystal's symmetry and the Neumann
    check of the model fails (eps_xx != eps_yy); so these checks catch the bug that whole
    shells fix."""
    crystal = wurtzite()
    assert _closed_under_symmetry(crystal, neighbor_list(crystal, 6.0, 24), _space_group("wurtzite"))
    assert not _closed_under_symmetry(crystal, _old_rank_cap(crystal, 6.0, 24), _space_group("wurtzite"))
    model = _capped_model(24)
    assert_neumann(model, crystal, atol=1e-9, rtol=1e-9)
    monkeypatch.setattr(collate, "neighbor_list", _old_rank_cap)
    with pytest.raises(AssertionError, match="breaks Neumann's principle"):
        assert_neumann(model, crystal, atol=1e-9, rtol=1e-9)
    eps = model.predict([crystal])[0]["dielectric"]
    assert abs(eps[0, 0] - eps[1, 1]) > 1e-6 * abs(eps[0, 0])


def test_shell_tolerance_reaches_every_neighbour_list(monkeypatch, tmp_path):
    """``neighbor_shell_tolerance`` of the config reaches the neighbour lists of make_graph /
    predict, the ase calculator and the training data check, and survives a checkpoint; a
    config (or old checkpoint) without it gets the default."""
    from tensorframe.calculator import TensorframeCalculator
    from tensorframe.checkpoint import load_model, save_checkpoint
    from tensorframe.train import data as train_data
    from tensorframe.train.data import Dataset, validate_samples

    config = {"cutoff": 3.0, "max_neighbors": 1, "backbone": {"name": "reference", "hidden": 8},
              "heads": [{"name": "born", "hidden": 8}, {"name": "dielectric", "hidden": 8}]}
    assert tf.ModelConfig.model_validate(config).neighbor_shell_tolerance == DEFAULT_SHELL_TOLERANCE
    model = tf.build_model({**config, "neighbor_shell_tolerance": 0.02})
    assert model.graph_settings == tf.GraphSettings(3.0, 3.0, 1, 0.02)
    seen = []

    def spy(sample, cutoff, max_neighbors=None, shell_tolerance=DEFAULT_SHELL_TOLERANCE):
        seen.append((max_neighbors, shell_tolerance))
        return neighbor_list(sample, cutoff, max_neighbors, shell_tolerance)

    monkeypatch.setattr(collate, "neighbor_list", spy)
    monkeypatch.setattr(train_data, "neighbor_list", spy)
    # Atom 0's neighbours at 1.0 and 1.01 Å are one shell at 0.02 Å, not at the default.
    sample = Sample([1, 1, 1], [[0, 0, 0], [1.0, 0, 0], [0, 1.01, 0]],
                    targets={"born_charges": np.zeros((3, 3, 3)), "dielectric": np.eye(3)})
    assert (model.make_graph([sample]).idx_i == 0).sum() == 2
    model.predict([sample])
    atoms = ase.Atoms(numbers=sample.numbers, positions=sample.positions)
    atoms.calc = TensorframeCalculator(model)
    atoms.calc.get_property("dielectric", atoms)
    validate_samples(model, Dataset([sample], ["mine.xyz: structure 0"]), [0], ["born_charges"])
    save_checkpoint(tmp_path / "model.pt", model)
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.graph_settings.neighbor_shell_tolerance == 0.02
    assert seen == [(1, 0.02)] * 4


@pytest.mark.parametrize("tolerance", [0.0, -1e-3, float("nan"), float("inf")])
def test_bad_neighbor_shell_tolerance_is_a_config_error(tolerance):
    config = {"max_neighbors": 8, "neighbor_shell_tolerance": tolerance, "backbone": {"name": "reference"},
              "heads": [{"name": "born"}]}
    with pytest.raises(tf.ConfigError, match=r"^neighbor_shell_tolerance: "):
        tf.build_model(config)


def test_max_neighbors_on_a_known_chain():
    """Atom 0 of a 3-atom molecule with distances 1.0 and 1.5 keeps only its nearest."""
    sample = Sample([1, 1, 1], [[0, 0, 0], [1.0, 0, 0], [0, 1.5, 0]])
    graph = _graph64([sample], 3.0, max_neighbors=1)
    assert graph.idx_j[graph.idx_i == 0].tolist() == [1]
    assert graph.idx_j[graph.idx_i == 1].tolist() == [0]  # 1.0 < |r1 - r2| = 1.80
    assert graph.idx_j[graph.idx_i == 2].tolist() == [0]  # 1.5 < 1.80


def test_overlapping_atoms_name_the_structure():
    fine = Sample([1, 1], [[0, 0, 0], [1, 0, 0]])
    overlapping = Sample([1, 1, 8], [[0, 0, 0], [1, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"structure 1: .*atoms 1 and 2|structure 1: .*atoms 2 and 1"):
        build_graph([fine, overlapping], 2.0)


def test_overlapping_periodic_images_are_an_error():
    """Atom 1 sits on the image of atom 0 one cell along x."""
    sample = Sample([1, 1], [[0, 0, 0], [2.0, 0, 0]], np.diag([2.0, 3.0, 3.0]), [True, True, True])
    with pytest.raises(ValueError, match=r"structure 0: positions: atoms"):
        build_graph([sample], 2.5)


@pytest.mark.parametrize(
    "cell, pbc",
    [
        (np.diag([2.0, 2.0, 0.0]), [True, True, True]),  # zero vector in a periodic direction
        (np.array([[2.0, 0, 0], [4.0, 0, 0], [0, 0, 2.0]]), [True, True, True]),  # parallel vectors
        (np.array([[2.0, 0, 0], [0, 2.0, 0], [2.0, 2.0, 0]]), [True, True, True]),  # coplanar vectors
        (np.array([[2.0, 0, 0], [4.0, 0, 0], [0, 0, 0]]), [True, True, False]),  # slab with parallel vectors
        (np.zeros((3, 3)), [True, False, False]),  # wire without a cell
    ],
)
def test_degenerate_periodic_cell_is_an_error(cell, pbc):
    sample = Sample([1], [[0.1, 0.2, 0.3]], cell, pbc)
    with pytest.raises(ValueError, match=r"structure 0: cell: periodic directions"):
        build_graph([sample], 2.0)


def test_zero_vector_along_a_non_periodic_direction_is_fine():
    sample = Sample([1, 1], [[0, 0, 0], [0.7, 0.4, 0.1]], np.diag([2.0, 2.0, 0.0]), [True, True, False])
    graph = _graph64([sample], 2.5)
    assert graph.num_edges == _ase_list(sample, 2.5, "i").size > 0


@pytest.mark.parametrize("cutoff", [0.0, -1.0, float("nan")])
def test_non_positive_cutoff_is_an_error(cutoff):
    sample = Sample([1, 1], [[0, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="cutoff"):
        build_graph([sample], cutoff)


@pytest.mark.parametrize("triplet_cutoff", [2.5, 0.0, -1.0])
def test_triplet_cutoff_outside_the_cutoff_is_an_error(triplet_cutoff):
    sample = Sample([1, 1], [[0, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"triplet_cutoff: expected 0 < triplet_cutoff <= cutoff"):
        build_graph([sample], 2.0, triplet_cutoff=triplet_cutoff)


def test_no_structures_is_an_error():
    with pytest.raises(ValueError, match="samples"):
        build_graph([], 2.0)


def test_positions_gradient_flows_through_edge_vectors():
    """A positions tensor with requires_grad drives the geometry: gradcheck of edge_vec,
    edge_len and triplet_cos against finite differences, and the exact Jacobian of edge_vec."""
    sample = Sample(
        [11, 17, 11], [[0.1, 0.2, 0.0], [1.4, 0.3, 0.2], [0.5, 1.6, 1.1]],
        np.array([[2.8, 0, 0], [0.9, 2.6, 0], [0.3, 0.4, 2.7]]), [True, True, False],
    )
    positions = torch.tensor(sample.positions, dtype=torch.float64, requires_grad=True)
    graph = _graph64([sample], 3.0, positions=positions)
    assert graph.positions is positions and graph.edge_vec.requires_grad and graph.num_triplets > 0

    def geometry(pos):
        g = _graph64([sample], 3.0, positions=pos)
        return g.edge_vec, g.edge_len, g.triplet_cos

    assert torch.autograd.gradcheck(geometry, (positions,))
    weights = torch.randn(graph.num_edges, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (gradient,) = torch.autograd.grad((graph.edge_vec * weights).sum(), positions)
    expected = torch.zeros_like(gradient)
    expected.index_add_(0, graph.idx_i, weights)
    expected.index_add_(0, graph.idx_j, -weights)
    torch.testing.assert_close(gradient, expected)
