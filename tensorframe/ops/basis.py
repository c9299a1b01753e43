"""Basis products of edge unit vectors: the equivariant half of every tensor head.

A *word* names one product. For a triplet ``k -> j -> i`` the letters are
``a = e_kj`` (the edge into the centre j), ``b = e_ji`` (the edge out of j) and the axial
``c = e_kj x e_ji``; an edge term uses ``a = e_kj`` alone. ``"ab"`` is ``e_kj (x) e_ji``,
``"abb"`` is ``e_kj (x) e_ji (x) e_ji`` (the paper's piezo triplet term). Every letter
``a``/``b`` is a polar vector (odd under inversion) and ``c`` an axial one (even), so a word
with ``n`` polar letters has parity ``(-1)^n``; a head uses only words of its tensor's parity.
"""

from __future__ import annotations

import itertools

import torch


def outer_power(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Flattened outer product of a list of (X, 3) tensors.

    Shapes: M tensors (X, 3) -> (X, 3**M)
    """
    out = vectors[0]
    for vector in vectors[1:]:
        out = (out.unsqueeze(-1) * vector.unsqueeze(-2)).flatten(-2)
    return out


def word_product(word: str, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """The product named by ``word`` over letters a, b, c = a x b.

    Shapes: a, b (X, 3) -> (X, 3**len(word))
    """
    letters = {"a": a}
    if b is not None:
        letters["b"] = b
        if "c" in word:
            letters["c"] = torch.linalg.cross(a, b)
    try:
        return outer_power([letters[letter] for letter in word])
    except KeyError as error:
        raise ValueError(f"word {word!r}: letter {error.args[0]!r} is not available here (edges know only 'a')") from None


def word_parity(word: str) -> int:
    """+1 for an even product (proper tensor of even rank, ...), -1 for an odd one."""
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
