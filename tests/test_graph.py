"""The periodic multigraph and its triplets, checked against independent references.

Neighbour lists are compared with ``ase.neighborlist.neighbor_list`` (a different
implementation from vesin) as multisets of ``(i, j, shift)``; triplets with a brute-force
enumeration of ordered pairs of distinct neighbour images built from the ase list. The
edge convention under test is the one of :class:`tensorframe.types.Graph`: edge ``j -> i``
has ``edge_vec = r_i - (r_j + shift @ cell)``, while ase's ``D`` is ``r_j + S @ cell - r_i``.
"""

from __future__ import annotations

from collections import Counter

import ase
import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list as ase_neighbor_list
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tensorframe.graph import build_graph
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


@settings(deadline=None)
@given(sample=structures(), cutoff=st.floats(1.5, 4.0), max_neighbors=st.integers(1, 8))
def test_max_neighbors_keeps_the_nearest(sample: Sample, cutoff: float, max_neighbors: int):
    full = _graph64([sample], cutoff, triplet_cutoff=0.1)
    capped = _graph64([sample], cutoff, triplet_cutoff=0.1, max_neighbors=max_neighbors)
    all_keys = _edge_keys(full.idx_i, full.idx_j, full.cell_shift)
    kept_keys = _edge_keys(capped.idx_i, capped.idx_j, capped.cell_shift)
    assert set(kept_keys) <= set(all_keys)
    full_len = dict(zip(all_keys, full.edge_len.tolist(), strict=True))
    for centre in range(sample.num_atoms):
        around = [k for k in all_keys if k[0] == centre]
        kept = [k for k in kept_keys if k[0] == centre]
        assert len(kept) == min(max_neighbors, len(around))
        dropped = set(around) - set(kept)
        if kept and dropped:
            assert max(full_len[k] for k in kept) <= min(full_len[k] for k in dropped)


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
