"""Symmetry projectors and basis words: exact subspaces, full span, right parity.

References: e3nn's ``CartesianTensor(formula)`` (its irreps and the change of basis of its
``ReducedTensorProducts``) for the subspace of each index-symmetry formula, and the
transformation law ``T' = s R^{(x)M} T`` (s = det R for a pseudo-tensor) for parity.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
from e3nn.io import CartesianTensor
from e3nn.o3 import Irreps, ReducedTensorProducts
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorframe.fields import FieldSpec
from tensorframe.heads.tensor import CartesianTensorHead
from tensorframe.ops.basis import (
    canonical_word,
    complete_words,
    default_edge_words,
    default_triplet_words,
    isotropic_embedding,
    weighted_word_sum,
    word_parity,
    word_product,
)
from tensorframe.ops.symmetry import formula_rank, subspace_dim, symmetric_projector
from tensorframe.registry import get_registry
from tensorframe.specs import FeatureDims

SUPPORTED = (
    "i",
    "ij",
    "ij=ji",
    "ij=-ji",
    "ijk",
    "ijk=ikj",
    "ijk=jik",
    "ijk=jik=ikj",
    "ijk=jki",
    "ijk=-ikj",
    "ijk=-jik=-ikj",
    "ijkl",
    "ijkl=jikl",
    "ijkl=-jikl",
    "ijkl=jikl=ijlk",
    "ijkl=-jikl=-ijlk",
    "ijkl=jikl=ijlk=klij",
    "ijkl=jikl=ikjl",
    "ijkl=jikl=ikjl=ijlk",
)
DIMS = FeatureDims(node=4, edge=4, triplet=4)


def _random_rotation(generator: torch.Generator, improper: bool) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q = -q
    return -q if improper else q


def _tensor_power(rotation: torch.Tensor, rank: int) -> torch.Tensor:
    """R (x) ... (x) R acting on flattened rank-M tensors (row-major, like ``outer_power``)."""
    out = rotation
    for _ in range(rank - 1):
        out = torch.kron(out, rotation)
    return out


@functools.cache
def _e3nn_reduced(formula: str) -> tuple[Irreps, torch.Tensor]:
    """e3nn's irreps of the formula (as ``CartesianTensor(formula)`` builds them) and the
    change of basis of its ``ReducedTensorProducts``, rows spanning the subspace, (dim, 3**M) float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        indices = formula.split("=")[0]
        reduced = ReducedTensorProducts(formula, **{index: "1o" for index in indices})
    finally:
        torch.set_default_dtype(previous)
    basis = reduced.change_of_basis
    return reduced.irreps_out, basis.reshape(basis.shape[0], -1).to(torch.float64)


def _pseudoscalar_count(formula: str, parity: int) -> int:
    """How many scalar irreps of the formula are odd (0o) for a tensor of this parity.

    A natural tensor (parity (-1)^M) has e3nn's irreps; an opposite-parity (pseudo) tensor
    has them with every parity flipped.
    """
    flip = parity != (-1) ** formula_rank(formula)
    count = 0
    for mul, ir in _e3nn_reduced(formula)[0]:
        odd = (ir.p == -1) != flip
        if ir.l == 0 and odd:
            count += mul
    return count


def _environment_span(formula: str, edge_words, triplet_words, seed: int, neighbours: int = 8) -> int:
    """Rank of the projected products of all edges and all triplets (ordered pairs of
    distinct neighbours) around one atom with ``neighbours`` random neighbours."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(neighbours, 3, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    pairs = [(p, q) for p in range(neighbours) for q in range(neighbours) if p != q]
    # Triplet k -> j -> i: a = e_kj (from neighbour k into j), b = e_ji (from j out to i).
    a = -directions[[p for p, _ in pairs]]
    b = directions[[q for _, q in pairs]]
    rows = [word_product(w, -directions) for w in edge_words]
    rows += [word_product(w, a, b) for w in triplet_words]
    stacked = torch.cat(rows) @ symmetric_projector(formula)
    return int(torch.linalg.matrix_rank(stacked, atol=1e-9).item())


def _field(formula: str, parity: int) -> FieldSpec:
    return FieldSpec("t", "atom", formula, parity, "")


# ---------------------------------------------------------------- projectors


@pytest.mark.parametrize("formula", SUPPORTED)
def test_projector_is_the_orthogonal_projector_onto_e3nn_subspace(formula: str):
    projector = symmetric_projector(formula)
    rank = formula_rank(formula)
    assert projector.shape == (3**rank, 3**rank) and projector.dtype == torch.float64
    torch.testing.assert_close(projector, projector.T, rtol=0, atol=1e-15)
    torch.testing.assert_close(projector @ projector, projector, rtol=0, atol=1e-14)
    irreps, basis = _e3nn_reduced(formula)
    assert subspace_dim(formula) == irreps.dim == basis.shape[0]
    assert torch.trace(projector).item() == pytest.approx(basis.shape[0], abs=1e-12)
    # Same subspace: P fixes e3nn's basis, and both have the same dimension.
    torch.testing.assert_close(basis @ projector, basis, rtol=0, atol=1e-10)
    assert torch.linalg.matrix_rank(basis).item() == basis.shape[0]


@pytest.mark.parametrize("formula", SUPPORTED)
def test_projected_tensors_obey_the_formula(formula: str):
    """Every index relation of the formula holds for P x (x random), and P x is not zero."""
    generator = torch.Generator().manual_seed(3)
    rank = formula_rank(formula)
    projected = (torch.randn(3**rank, generator=generator, dtype=torch.float64) @ symmetric_projector(formula))
    tensor = projected.reshape((3,) * rank)
    base, *terms = formula.split("=")
    for term in terms:
        sign = -1.0 if term.startswith("-") else 1.0
        permuted = torch.einsum(f"{base}->{term.lstrip('-')}", tensor)
        torch.testing.assert_close(permuted, sign * tensor, rtol=0, atol=1e-14)
    assert projected.norm() > 0.1


@settings(deadline=None)
@given(seed=st.integers(0, 2**31 - 1), improper=st.booleans())
def test_projectors_commute_with_rotations(seed: int, improper: bool):
    generator = torch.Generator().manual_seed(seed)
    rotation = _random_rotation(generator, improper)
    for formula in SUPPORTED:
        projector = symmetric_projector(formula)
        power = _tensor_power(rotation, formula_rank(formula))
        torch.testing.assert_close(power @ projector, projector @ power, rtol=0, atol=1e-12)


def test_contradictory_formula_is_an_error():
    with pytest.raises(ValueError, match="leave no non-zero tensor"):
        symmetric_projector("ij=-ij")


# ---------------------------------------------------------------- span of the default words


@pytest.mark.parametrize("parity", [1, -1], ids=["even", "odd"])
@pytest.mark.parametrize("formula", SUPPORTED)
def test_default_words_span_all_but_pseudoscalars(formula: str, parity: int):
    """The default words reach every component of the formula's subspace that a product
    of two vectors can reach: all but its pseudoscalars (irreps 0o), which need three
    independent directions (``a . (b x c)``). Where pseudoscalars exist the head refuses
    to build; elsewhere it builds."""
    rank = formula_rank(formula)
    edge_words = default_edge_words(rank, parity)
    triplet_words = default_triplet_words(rank, parity)
    assert all(word_parity(w) == parity and len(w) == rank for w in (*edge_words, *triplet_words))
    dim = subspace_dim(formula)
    reachable = dim - _pseudoscalar_count(formula, parity)
    spans = {_environment_span(formula, edge_words, triplet_words, seed) for seed in (7, 8)}
    assert spans == {reachable}
    if reachable == dim:
        head = CartesianTensorHead(_field(formula, parity), DIMS, edge_words, triplet_words, hidden=4)
        assert head.rank == rank
    else:
        with pytest.raises(ValueError, match=rf"span only {reachable} of the {dim} dimensions of '{formula}'"):
            CartesianTensorHead(_field(formula, parity), DIMS, edge_words, triplet_words, hidden=4)


def test_unreachable_combinations_are_the_expected_ones():
    """The explicit list of formula/parity pairs no two-vector product can fill."""
    unreachable = {
        (formula, parity)
        for formula in SUPPORTED
        for parity in (1, -1)
        if _pseudoscalar_count(formula, parity)
    }
    assert unreachable == {
        ("ij", -1), ("ij=ji", -1),  # pseudo rank 2: the trace
        ("ijk", -1), ("ijk=jki", -1), ("ijk=-ikj", -1), ("ijk=-jik=-ikj", -1),  # polar rank 3: eps_ijk
        ("ijkl", -1), ("ijkl=jikl", -1), ("ijkl=-jikl", -1), ("ijkl=jikl=ijlk", -1),  # pseudo rank 4: delta delta
        ("ijkl=-jikl=-ijlk", -1), ("ijkl=jikl=ijlk=klij", -1), ("ijkl=jikl=ikjl", -1),
        ("ijkl=jikl=ikjl=ijlk", -1),
    }


def test_levi_civita_pseudoscalar_head_is_refused():
    """A polar fully antisymmetric rank-3 tensor is eps_ijk times a pseudoscalar; from two
    vectors a . (a x b) = 0, so no word can produce it, and the head says so."""
    with pytest.raises(ValueError, match=r"span only 0 of the 1 dimensions of 'ijk=-jik=-ikj' with parity -1"):
        CartesianTensorHead(_field("ijk=-jik=-ikj", -1), DIMS, (), default_triplet_words(3, -1), hidden=4)
    # The axial version (eps_ijk itself, invariant under inversion) is reachable: c (x) a (x) b.
    head = CartesianTensorHead(_field("ijk=-jik=-ikj", 1), DIMS, (), default_triplet_words(3, 1), hidden=4)
    assert head.triplet_words


def test_rank_four_needs_words_with_two_axial_letters():
    """Coplanar a, b alone miss the 3 x 1e components eps_ijk u_l of a general rank-4
    tensor; the default words add "abcc"-type words to reach them."""
    plain = tuple(w for w in default_triplet_words(4, 1) if "c" not in w)
    assert _environment_span("ijkl", ("aaaa",), plain, seed=7) == 72
    assert _environment_span("ijkl", ("aaaa",), default_triplet_words(4, 1), seed=7) == 81


PAPER = {"force": ((), ("a",), ()), "born": ((), ("aa",), ("ab",)), "dielectric": ((), ("aa",), ()),
         "piezo": ((), ("aaa",), ("abb",))}
COMPLETE = {"force": ((), ("a",), ()), "born": (("II",), ("aa",), ("ab", "cc")), "dielectric": (("II",), ("aa",), ()),
            "piezo": ((), ("aaa", "IIa", "aII"), ("abb", "cca", "acc"))}


@pytest.mark.parametrize("basis, expected", [("paper", PAPER), ("complete", COMPLETE)])
@pytest.mark.parametrize(
    "head, formula, dim",
    [("force", "i", 3), ("born", "ij", 9), ("dielectric", "ij=ji", 6), ("piezo", "ijk=ikj", 18)],
)
def test_named_heads_span_their_fields(head: str, formula: str, dim: int, basis: str, expected: dict):
    """``basis: paper`` is exactly Eqs. 3-8; the complete default adds identity words per atom
    (rank 2) and per edge (rank 3) and normal-direction triplet words."""
    spec = get_registry().get("head", head)
    built = spec.build(spec.config(basis=basis), DIMS, get_registry().fields)
    assert built.field.symmetry == formula and subspace_dim(formula) == dim
    assert (built.atom_words, built.edge_words, built.triplet_words) == expected[head]
    assert _environment_span(formula, built.atom_words + built.edge_words, built.triplet_words, seed=11) == dim


def test_span_check_can_fail():
    """e (x) e is symmetric: the dielectric words reach 6 of the 9 dimensions of a general
    rank-2 tensor, so a Born-charge head with edge words only is refused."""
    assert _environment_span("ij", ("aa",), (), seed=7) == 6
    with pytest.raises(ValueError, match=r"span only 6 of the 9 dimensions of 'ij'"):
        CartesianTensorHead(_field("ij", 1), DIMS, ("aa",), (), hidden=4)
    # Edge words alone for piezo: a (x) a (x) a is fully symmetric, 10 of 18.
    assert _environment_span("ijk=ikj", ("aaa",), (), seed=7, neighbours=12) == 10
    with pytest.raises(ValueError, match=r"span only \d+ of the 18 dimensions of 'ijk=ikj'"):
        CartesianTensorHead(_field("ijk=ikj", -1), DIMS, ("aaa",), (), hidden=4)


def test_e3nn_irreps_match_cartesian_tensor():
    """The irreps used above are those of e3nn's public ``CartesianTensor``."""
    for formula in ("ij", "ijk=jki", "ijkl=jikl=ijlk=klij"):
        assert _e3nn_reduced(formula)[0] == CartesianTensor(formula)


@pytest.mark.parametrize("formula, parity, word", [("ijk=jik=ikj", -1, "aaa"), ("ijkl=jikl=ikjl=ijlk", 1, "aaaa")])
def test_edge_words_alone_reach_fully_symmetric_tensors(formula: str, parity: int, word: str):
    assert _environment_span(formula, (word,), (), seed=7, neighbours=16) == subspace_dim(formula)
    CartesianTensorHead(_field(formula, parity), DIMS, (word,), (), hidden=4)


def test_words_of_the_wrong_parity_are_refused():
    with pytest.raises(ValueError, match="does not give a rank-1 tensor of parity"):
        CartesianTensorHead(_field("i", 1), DIMS, ("a",), (), hidden=4)
    with pytest.raises(ValueError, match="does not give a rank-2 tensor of parity"):
        CartesianTensorHead(_field("ij", 1), DIMS, (), ("ac",), hidden=4)


# ---------------------------------------------------------------- parity of each word


def _all_default_words() -> list[str]:
    words = set()
    for rank, parity in itertools.product(range(1, 5), (1, -1)):
        words |= set(default_edge_words(rank, parity)) | set(default_triplet_words(rank, parity))
        formula = "ijkl"[:rank]
        words |= set(complete_words(formula, parity).all)
    return sorted(words)


@settings(deadline=None)
@given(seed=st.integers(0, 2**31 - 1), improper=st.booleans())
def test_word_products_transform_with_their_parity(seed: int, improper: bool):
    """w(R a, R b) = s R^{(x)M} w(a, b), with s = 1 for a proper rotation and, for an
    improper one, s = word_parity(w) (-1)^M: polar letters a, b flip under inversion,
    the axial c = a x b does not."""
    generator = torch.Generator().manual_seed(seed)
    rotation = _random_rotation(generator, improper)
    a = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    b = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    for word in _all_default_words():
        rank = len(word)
        sign = word_parity(word) * (-1) ** rank if improper else 1
        rotated = word_product(word, a @ rotation.T, b @ rotation.T)
        expected = sign * word_product(word, a, b) @ _tensor_power(rotation, rank).T
        torch.testing.assert_close(rotated, expected, rtol=1e-12, atol=1e-12)
        # Under inversion alone the product picks up exactly word_parity(word).
        torch.testing.assert_close(word_product(word, -a, -b), word_parity(word) * word_product(word, a, b))


def test_word_parity_counts_polar_letters():
    assert [word_parity(w) for w in ("a", "aa", "ab", "c", "ca", "abb", "cab", "abcc")] == [-1, 1, 1, 1, -1, -1, 1, 1]


def test_word_product_is_the_outer_product():
    a = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    b = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    c = torch.linalg.cross(a, b)
    expected = torch.einsum("i,j,k->ijk", a[0], c[0], b[0]).reshape(1, -1)
    torch.testing.assert_close(word_product("acb", a, b), expected)
    with pytest.raises(ValueError, match="letter 'b' is not available"):
        word_product("ab", a)
    assert np.isclose(float(word_product("cc", a, b).reshape(3, 3).trace()), float(c.norm() ** 2))


# ---------------------------------------------------------------- identity words and word sets


def test_identity_words_are_delta_products():
    """``"IaI"`` is delta_ik a_j, ``"IJIJ"`` is delta_ik delta_jl, ``"II"`` the identity."""
    a = torch.tensor([[0.3, -1.2, 0.7]], dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(word_product("II", a), eye.reshape(1, 9))
    torch.testing.assert_close(word_product("IaI", a), torch.einsum("ik,j->ijk", eye, a[0]).reshape(1, -1))
    torch.testing.assert_close(word_product("aII", a), torch.einsum("jk,i->ijk", eye, a[0]).reshape(1, -1))
    torch.testing.assert_close(word_product("IJIJ", a), torch.einsum("ik,jl->ijkl", eye, eye).reshape(1, -1))
    torch.testing.assert_close(word_product("IaaI", a), torch.einsum("il,j,k->ijkl", eye, a[0], a[0]).reshape(1, -1))
    assert isotropic_embedding("IIa").shape == (3, 27)
    with pytest.raises(ValueError, match="must appear exactly twice"):
        word_product("IIIa", a)


def test_canonical_words_follow_the_formula():
    assert canonical_word("aab", "ijk=ikj") == canonical_word("aba", "ijk=ikj")
    assert canonical_word("aab", "ijk") != canonical_word("aba", "ijk")
    assert canonical_word("IaI", "ijk=ikj") == canonical_word("IIa", "ijk=ikj")
    assert canonical_word("IJJI", "ijkl=jikl=ijlk=klij") == canonical_word("IJIJ", "ijkl=jikl=ijlk=klij")


@pytest.mark.parametrize("parity", [1, -1], ids=["even", "odd"])
@pytest.mark.parametrize("formula", SUPPORTED)
def test_complete_words_keep_the_generic_span_and_drop_duplicates(formula: str, parity: int):
    """The complete words reach what the paper's words reach on a generic environment (never
    less), and no two of them coincide after projection onto the formula."""
    words = complete_words(formula, parity)
    paper_span = _environment_span(formula, default_edge_words(formula_rank(formula), parity),
                                   default_triplet_words(formula_rank(formula), parity), seed=7)
    assert _environment_span(formula, words.atom + words.edge, words.triplet, seed=7) == paper_span
    for group in (words.atom, words.edge, words.triplet):
        keys = [canonical_word(w, formula) for w in group]
        assert len(keys) == len(set(keys))
    assert all(word_parity(w) == parity for w in words.all)


def test_factored_word_sum_equals_the_sum_of_products():
    """The head's factored evaluation (by leading letter, component-major) is the plain sum of
    coefficient x word."""
    generator = torch.Generator().manual_seed(5)
    a = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    b = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    for words in (("ab", "cc"), ("aab", "abb", "cca", "acc", "aba", "cac"), complete_words("ijkl", 1).triplet, ("a",)):
        coefficients = torch.randn(7, len(words), generator=generator, dtype=torch.float64)
        expected = sum(coefficients[:, w : w + 1] * word_product(word, a, b) for w, word in enumerate(words))
        actual = weighted_word_sum(words, coefficients.t().contiguous(), a.t().contiguous(), b.t().contiguous())
        torch.testing.assert_close(actual, expected.t(), rtol=1e-12, atol=1e-12)
