"""Basis products of edge unit vectors: the equivariant half of every tensor head.

A *word* names one product. For a triplet ``k -> j -> i`` the letters are
``a = e_kj`` (the edge into the centre j), ``b = e_ji`` (the edge out of j) and the axial
``c = e_kj x e_ji`` (normal to the plane of the two edges, length sin of their angle); an
edge term uses ``a = e_kj`` alone. ``"ab"`` is ``e_kj (x) e_ji``, ``"abb"`` is
``e_kj (x) e_ji (x) e_ji`` (the paper's piezo triplet term). Every letter ``a``/``b`` is a
polar vector (odd under inversion) and ``c`` an axial one (even), so a word with ``n`` polar
letters has parity ``(-1)^n``; a head uses only words of its tensor's parity.

Upper-case letters come in pairs and put the identity on their two positions: ``"II"`` is
``delta_ij``, ``"IIa"`` is ``delta_ij a_k``, ``"IJIJ"`` is ``delta_ik delta_jl``. These
*isotropic* words, and the normal direction ``c``, are what products of edge directions lack
on planar and linear environments (docs/physics.md, "Completeness on degenerate environments").
A word's *skeleton* is its lower-case letters in order: heads sum coefficient x skeleton
product over edges or triplets first and place the identities afterwards, per atom, with
:func:`isotropic_embedding`.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
import torch

from tensorframe.ops.symmetry import formula_rank, symmetry_group


def outer_power(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Flattened outer product of a list of (X, 3) tensors.

    Shapes: M tensors (X, 3) -> (X, 3**M)
    """
    out = vectors[0]
    for vector in vectors[1:]:
        out = (out.unsqueeze(-1) * vector.unsqueeze(-2)).flatten(-2)
    return out


def check_word(word: str) -> None:
    """Raises ValueError unless ``word`` is letters a, b, c and upper-case pairs."""
    if not word or any(not (letter in "abc" or letter.isupper()) for letter in word):
        raise ValueError(f"word {word!r}: letters must be a, b, c or upper-case identity pairs")
    for letter in set(word):
        if letter.isupper() and word.count(letter) != 2:
            raise ValueError(f"word {word!r}: identity letter {letter!r} must appear exactly twice")


def word_skeleton(word: str) -> str:
    """The vector letters of ``word`` in order (``"IaI"`` -> ``"a"``, ``"II"`` -> ``""``)."""
    return "".join(letter for letter in word if not letter.isupper())


def is_isotropic(word: str) -> bool:
    """True when ``word`` holds at least one identity pair."""
    return any(letter.isupper() for letter in word)


@functools.cache
def _embedding_numpy(word: str) -> np.ndarray:
    check_word(word)
    rank = len(word)
    vector_positions = [p for p, letter in enumerate(word) if not letter.isupper()]
    pairs = [[p for p, letter in enumerate(word) if letter == upper] for upper in sorted(set(word) - set("abc"))]
    embedding = np.zeros((3 ** len(vector_positions), 3**rank))
    for flat, index in enumerate(itertools.product(range(3), repeat=rank)):
        if all(index[p] == index[q] for p, q in pairs):
            row = 0
            for p in vector_positions:
                row = 3 * row + index[p]
            embedding[row, flat] = 1.0
    return embedding


def isotropic_embedding(word: str, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Places a flattened skeleton product into the full word: ``word = skeleton @ E``.

    Shapes: -> (3**len(skeleton), 3**len(word)); ``"II"`` gives (1, 9), the flattened identity.
    """
    return torch.as_tensor(_embedding_numpy(word), dtype=dtype, device=device)


def word_product(word: str, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """The product named by ``word`` over letters a, b, c = a x b and identity pairs.

    Shapes: a, b (X, 3) -> (X, 3**len(word))
    """
    check_word(word)
    letters = {"a": a}
    if b is not None:
        letters["b"] = b
        if "c" in word:
            letters["c"] = torch.linalg.cross(a, b)
    skeleton = word_skeleton(word)
    try:
        vectors = [letters[letter] for letter in skeleton]
    except KeyError as error:
        raise ValueError(f"word {word!r}: letter {error.args[0]!r} is not available here (edges know only 'a')") from None
    product = outer_power(vectors) if vectors else a.new_ones((a.shape[0], 1))
    if not is_isotropic(word):
        return product
    return product @ isotropic_embedding(word, dtype=a.dtype, device=a.device)


def word_parity(word: str) -> int:
    """+1 for an even product (proper tensor of even rank, ...), -1 for an odd one; the
    identity and the axial ``c`` are even, ``a`` and ``b`` odd."""
    polar = sum(letter in "ab" for letter in word)
    return -1 if polar % 2 else 1


def default_edge_words(rank: int, parity: int) -> tuple[str, ...]:
    """``a^M`` when its parity fits, else none (an axial tensor needs two edges)."""
    word = "a" * rank
    return (word,) if word_parity(word) == parity else ()


def default_triplet_words(rank: int, parity: int) -> tuple[str, ...]:
    """Triplet words of length M and the right parity.

    Natural parity ``(-1)^M``: words over {a, b} that start with ``a`` and contain ``b``
    (both orders of every pair are triplets, so swapping a and b adds nothing); at rank 4
    also the words with two ``c`` and ``a``, ``b`` once each in that order (``"abcc"``,
    ``"acbc"``, ...): coplanar a, b alone miss the components ``eps_ijk u_l`` (three
    copies of 1e in ``"ijkl"``), which need three independent directions.
    Opposite parity: words with exactly one ``c`` and the rest over {a, b}.

    Together with ``a^M`` these span every formula's subspace except its pseudoscalar
    components, which no product of two vectors can reach.
    """
    if parity == (-1) ** rank:
        words = ["".join(w) for w in itertools.product("ab", repeat=rank) if w[0] == "a" and "b" in w]
        if rank == 4:
            words += [
                "".join(w) for w in itertools.product("abc", repeat=rank)
                if w.count("c") == 2 and "".join(w).replace("c", "") == "ab"
            ]
        return tuple(words)
    words = []
    for position in range(rank):
        for rest in itertools.product("ab", repeat=rank - 1):
            w = list(rest)
            w.insert(position, "c")
            words.append("".join(w))
    return tuple(words)


# ---------------------------------------------------------------- word sets


@dataclass(frozen=True)
class WordSet:
    """The basis words of a head, by where their coefficients live.

    Attributes:
        atom: identity-only words (``"II"``, ``"IJIJ"``) with a coefficient per atom (from node
            features, plus a sum of per-edge coefficients): the isotropic part of each atom.
        edge: words over ``a`` and identity pairs, one coefficient per edge.
        triplet: words over ``a``, ``b``, ``c`` and identity pairs, one coefficient per triplet.
    """

    atom: tuple[str, ...] = ()
    edge: tuple[str, ...] = ()
    triplet: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return self.atom + self.edge + self.triplet


def _rename_pairs(word: str) -> str:
    """Identity letters renamed I, J, K, ... in order of first appearance."""
    names: dict[str, str] = {}
    out = []
    for letter in word:
        if letter.isupper():
            letter = names.setdefault(letter, "IJKLMN"[len(names)])
        out.append(letter)
    return "".join(out)


def canonical_word(word: str, formula: str) -> str:
    """The representative of ``word`` under the formula's index permutations.

    Two words with one representative give the same tensor after projection onto the
    formula's subspace (up to sign), so a head needs only one of them.
    """
    return min(_rename_pairs("".join(word[p] for p in perm)) for perm, _ in symmetry_group(formula))


def distinct_words(words: tuple[str, ...], formula: str) -> tuple[str, ...]:
    """``words`` without those equal to an earlier one after projection (order kept)."""
    seen: set[str] = set()
    kept = []
    for word in words:
        key = canonical_word(word, formula)
        if key not in seen:
            seen.add(key)
            kept.append(word)
    return tuple(kept)


def _placements(rank: int, skeleton: str) -> tuple[str, ...]:
    """Every word of length ``rank`` with the letters of ``skeleton`` in order and identity
    pairs on the other positions (each pairing once)."""
    pairs = (rank - len(skeleton)) // 2
    words: set[str] = set()
    for positions in itertools.combinations(range(rank), len(skeleton)):
        free = [p for p in range(rank) if p not in positions]
        for matching in _perfect_matchings(tuple(free)):
            word = [""] * rank
            for p, letter in zip(positions, skeleton, strict=True):
                word[p] = letter
            for name, (p, q) in zip("IJKLMN", matching, strict=False):
                word[p] = word[q] = name
            words.add(_rename_pairs("".join(word)))
    assert all(len(w) == rank for w in words) and pairs >= 0
    return tuple(sorted(words))


def _perfect_matchings(items: tuple[int, ...]) -> list[tuple[tuple[int, int], ...]]:
    if not items:
        return [()]
    first, rest = items[0], items[1:]
    out = []
    for index, partner in enumerate(rest):
        for matching in _perfect_matchings(rest[:index] + rest[index + 1 :]):
            out.append(((first, partner), *matching))
    return out


def paper_words(rank: int, parity: int) -> WordSet:
    """Products of edge directions only (the seed paper's kind of basis): ``a^M`` on edges and
    :func:`default_triplet_words` on triplets. Complete on generic environments, not on planar
    or linear ones."""
    return WordSet(edge=default_edge_words(rank, parity), triplet=default_triplet_words(rank, parity))


def isotropic_words(rank: int, parity: int) -> WordSet:
    """Words with identity pairs: identity-only words per atom (even rank, even parity) and,
    per edge, the placements of identity pairs around ``a^m`` (``"IIa"``, ``"IaI"``, ``"aII"``
    at rank 3; ``"IIaa"``, ... at rank 4)."""
    atom = _placements(rank, "") if rank % 2 == 0 and parity == 1 else ()
    edge: tuple[str, ...] = ()
    for m in range(rank - 2, 0, -2):
        if (-1) ** m == parity:
            edge += _placements(rank, "a" * m)
    return WordSet(atom=atom, edge=edge)


def normal_words(rank: int, parity: int) -> tuple[str, ...]:
    """Triplet words with the normal direction ``c`` twice: ``"cc"`` at rank 2, ``"cc"`` placed
    around one ``a`` at rank 3 (natural parity). They reach out-of-plane components of planar
    environments with coefficients of their own; at rank 4 :func:`default_triplet_words`
    already hold words with two ``c``."""
    if rank == 2 and parity == 1:
        return ("cc",)
    if rank == 3 and parity == -1:
        return ("cca", "cac", "acc")
    return ()


def complete_words(formula: str, parity: int, base: WordSet | None = None, use_triplets: bool = True) -> WordSet:
    """``base`` (default :func:`paper_words`) plus the isotropic and normal-direction words,
    without words that the formula's projection makes equal.

    ``use_triplets=False`` keeps a head edge-only (no normal words; triplet words of ``base``
    are kept as given).
    """
    rank = formula_rank(formula)
    base = base if base is not None else paper_words(rank, parity)
    iso = isotropic_words(rank, parity)
    triplet = base.triplet + (normal_words(rank, parity) if use_triplets else ())
    return WordSet(
        atom=distinct_words(base.atom + iso.atom, formula),
        edge=distinct_words(base.edge + iso.edge, formula),
        triplet=distinct_words(triplet, formula),
    )


def weighted_word_sum(
    words: tuple[str, ...],
    coefficients: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor | None = None,
    columns: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """``sum_w coefficients[columns[w]] * words[w](a, b)`` for words of vector letters, in
    component-major layout (components first, items last: outer products are then contiguous
    row multiplications, several times faster on CPU than item-major broadcasting).

    Factored by leading letter (``a(x)(t1 bb + t2 cc) + c(x)(t3 ca)``), so each rank-M outer
    product is formed once per distinct first letter, not once per word. ``columns`` default
    0, 1, ...

    Shapes: coefficients (>= W, X), a, b (3, X) -> (3**M, X), rows in the row-major order of
        the flattened tensor (the transpose of ``word_product``'s layout)
    """
    letters = {"a": a}
    if b is not None:
        letters["b"] = b
        if any("c" in word for word in words):
            letters["c"] = torch.linalg.cross(a, b, dim=0)
    for word in words:
        missing = set(word) - set(letters)
        if missing:
            raise ValueError(f"word {word!r}: letter {sorted(missing)[0]!r} is not available here (edges know only 'a')")
    columns = tuple(range(len(words))) if columns is None else tuple(columns)
    return _factored_sum(tuple(words), coefficients, letters, columns)


def _factored_sum(words: tuple[str, ...], coefficients: torch.Tensor, letters: dict[str, torch.Tensor],
                  columns: tuple[int, ...]) -> torch.Tensor:
    if not words[0]:
        if len(columns) == 1:  # a view, no gather
            return coefficients[columns[0] : columns[0] + 1]
        return coefficients[list(columns)].sum(0, keepdim=True)
    out = None
    for first in dict.fromkeys(word[0] for word in words):
        chosen = [k for k, word in enumerate(words) if word[0] == first]
        rest = _factored_sum(tuple(words[k][1:] for k in chosen), coefficients, letters,
                             tuple(columns[k] for k in chosen))
        term = outer_rows(letters[first], rest)
        out = term if out is None else out + term
    return out


def outer_rows(vectors: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """Component-major outer product: ``out[i * R + r] = vectors[i] * rest[r]``.

    Shapes: vectors (3, X), rest (R, X) -> (3 R, X)
    """
    return (vectors.unsqueeze(1) * rest.unsqueeze(0)).reshape(vectors.shape[0] * rest.shape[0], rest.shape[-1])
