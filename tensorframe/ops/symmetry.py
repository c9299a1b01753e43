"""Index-symmetry formulas in e3nn's notation and their exact projectors.

A formula such as ``"ijk=ikj"`` or ``"ij=-ji"`` names a subspace of rank-M Cartesian
tensors: the first term lists the indices, every further term an index permutation
(optionally with a minus sign) that leaves the tensor unchanged. The projector onto that
subspace is the average over the group the permutations generate, built from integer
permutations so it is exact in every dtype (e3nn's ``ReducedTensorProducts`` gives the same
dimension; the tests compare them).
"""

from __future__ import annotations

import functools

import numpy as np
import torch


@functools.cache
def parse_formula(formula: str) -> tuple[str, tuple[tuple[tuple[int, ...], int], ...]]:
    """``"ijk=ikj"`` -> (``"ijk"``, ((permutation, sign), ...)).

    Raises:
        ValueError: for repeated or mismatched indices, naming the formula.
    """
    terms = [term.strip() for term in formula.replace(" ", "").split("=")]
    base = terms[0]
    if base.startswith("-"):
        raise ValueError(f"formula {formula!r}: the first term must not carry a sign")
    if len(set(base)) != len(base) or not base.isalpha():
        raise ValueError(f"formula {formula!r}: the first term must be distinct letters, like 'ijk'")
    relations = []
    for term in terms[1:]:
        sign = -1 if term.startswith("-") else 1
        letters = term.lstrip("-")
        if sorted(letters) != sorted(base):
            raise ValueError(f"formula {formula!r}: term {term!r} must permute the indices of {base!r}")
        relations.append((tuple(base.index(c) for c in letters), sign))
    return base, tuple(relations)


def formula_rank(formula: str) -> int:
    return len(parse_formula(formula)[0])


@functools.cache
def symmetry_group(formula: str) -> tuple[tuple[tuple[int, ...], int], ...]:
    """Every (index permutation, sign) that the formula's relations generate, identity included."""
    base, generators = parse_formula(formula)
    identity = (tuple(range(len(base))), 1)
    group = {identity}
    frontier = [identity]
    while frontier:
        perm, sign = frontier.pop()
        for gen_perm, gen_sign in generators:
            composed = (tuple(perm[g] for g in gen_perm), sign * gen_sign)
            if composed not in group:
                group.add(composed)
                frontier.append(composed)
    return tuple(sorted(group))


@functools.cache
def _projector_numpy(formula: str) -> np.ndarray:
    rank = formula_rank(formula)
    size = 3**rank
    grid = np.arange(size).reshape((3,) * rank)
    projector = np.zeros((size, size))
    group = symmetry_group(formula)
    for perm, sign in group:
        # (P_g T)[idx] = sign * T[idx permuted]: a signed permutation matrix.
        permuted = np.transpose(grid, perm).reshape(-1)
        projector[np.arange(size), permuted] += sign
    projector /= len(group)
    return projector


def symmetric_projector(formula: str, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Orthogonal projector onto the formula's subspace of flattened rank-M tensors.

    Shapes: -> (3**M, 3**M), symmetric and idempotent.

    Raises:
        ValueError: when the relations contradict each other (an empty subspace).
    """
    projector = _projector_numpy(formula)
    if np.trace(projector) < 0.5:
        raise ValueError(f"formula {formula!r}: its relations leave no non-zero tensor")
    return torch.as_tensor(projector, dtype=dtype, device=device)


def subspace_dim(formula: str) -> int:
    """Dimension of the formula's subspace (e.g. 6 for "ij=ji", 18 for "ijk=ikj")."""
    return int(round(np.trace(_projector_numpy(formula))))
