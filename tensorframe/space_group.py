"""Space-group analysis of crystals (spglib) and the symmetrisation of Born charges and the
dielectric tensor: used by the BORN writer (:mod:`tensorframe.io.writers`) and the NMR reader
(:mod:`tensorframe.io.nmr`).

:func:`symmetrize_born_and_dielectric` averages the Born charges over the space group
(``Z_{p(i)} <- mean_g R_g Z_i R_g^T``, ``p`` the permutation of atoms by the operation ``g``),
subtracts their mean (the acoustic sum rule, sum_k Z*_k = 0), and averages the dielectric
tensor over the point group (and over its transpose). This is what ``phonopy-vasp-born`` does
to DFT output, so phonopy reads back exactly the tensors we write.

(Index symmetries of a tensor, such as ``"ij=ji"``, are :mod:`tensorframe.ops.symmetry`'s.)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from tensorframe.types import Sample


@dataclass(frozen=True)
class SymmetrizedBorn:
    """Born charges and dielectric tensor after symmetrisation, ready for a BORN file.

    Shapes: born_charges (N, 3, 3), dielectric (3, 3), independent_atoms (M,) 0-based
    """

    born_charges: np.ndarray
    dielectric: np.ndarray
    independent_atoms: np.ndarray
    international_symbol: str
    num_operations: int
    born_change: float  # max |Z_sym - Z_in| over atoms and components, in e
    asr_residual: float  # max |sum_k Z_k| of the input, in e
    dielectric_change: float  # max |eps_sym - eps_in|
    loose_symbol: str | None = None  # the space group at LOOSE_SYMPREC when it differs, else None
    note: str | None = None  # one line for the user when loose_symbol is set (see loose_symmetry_note)


def crystal_symmetry(sample: Sample, symprec: float = 1e-5) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The space group of a periodic sample, from spglib.

    Returns:
        rotations (G, 3, 3) Cartesian rotation matrices, permutations (G, N) with operation
        ``g`` moving atom ``i`` onto atom ``permutations[g, i]``, equivalent_atoms (N,)
        (spglib's orbit representative of each atom), and the international symbol.

    Raises:
        ValueError: for a structure that is not periodic in all three directions, or when
            spglib finds no symmetry at ``symprec``.
    """
    import spglib  # lazy: heavy, kept out of `import tensorframe`

    if not (np.isfinite(symprec) and symprec > 0):  # spglib segfaults on a negative or NaN tolerance
        raise ValueError(f"symprec: expected a positive, finite tolerance in Å, got {symprec}")
    if not np.all(sample.pbc):
        raise ValueError(f"a BORN file needs a crystal periodic in 3 directions, got pbc={sample.pbc.tolist()}")
    lattice = sample.cell
    frac = sample.positions @ np.linalg.inv(lattice)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # spglib 2.5+: about its old error handling
        try:
            dataset = spglib.get_symmetry_dataset((lattice, frac, sample.numbers), symprec=symprec)
        except Exception as error:  # noqa: BLE001 - spglib's own error type moved between versions
            raise ValueError(f"spglib found no space group at symprec={symprec}: {error}") from None
    if dataset is None:
        raise ValueError(f"spglib found no space group at symprec={symprec}")
    get = (lambda key: dataset[key]) if isinstance(dataset, dict) else (lambda key: getattr(dataset, key))
    frac_rot = np.asarray(get("rotations"), dtype=np.float64)
    translations = np.asarray(get("translations"), dtype=np.float64)
    # x_cart = L^T x_frac with lattice vectors as rows, so R_cart = L^T r L^-T.
    rotations = np.einsum("ab,gbc,cd->gad", lattice.T, frac_rot, np.linalg.inv(lattice.T))
    mapped = np.einsum("gab,nb->gna", frac_rot, frac) + translations[:, None, :]  # (G, N, 3)
    delta = mapped[:, :, None, :] - frac[None, None, :, :]  # (G, N, N, 3)
    delta -= np.round(delta)
    distance = np.linalg.norm(delta @ lattice, axis=-1)
    distance[:, sample.numbers[:, None] != sample.numbers[None, :]] = np.inf
    permutations = distance.argmin(axis=-1)
    broken = np.flatnonzero((np.sort(permutations, axis=1) != np.arange(sample.num_atoms)).any(axis=1))
    if broken.size:
        raise ValueError(f"symmetry operation {broken[0]} does not map the atoms onto each other at symprec={symprec}")
    return rotations, permutations, np.asarray(get("equivalent_atoms")), str(get("international"))


LOOSE_SYMPREC = 1e-3
"""Tolerance (Å) at which the space group is looked up again: positions rounded to 5 decimals
(a POSCAR written by hand, an OUTCAR) can hide symmetry at the default 1e-5."""


def spacegroup_symbol(sample: Sample, symprec: float) -> str | None:
    """spglib's international symbol at ``symprec``, or None where it finds none."""
    import spglib  # lazy: heavy, kept out of `import tensorframe`

    frac = sample.positions @ np.linalg.inv(sample.cell)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            dataset = spglib.get_symmetry_dataset((sample.cell, frac, sample.numbers), symprec=symprec)
        except Exception:  # noqa: BLE001 - spglib's own error type moved between versions
            return None
    if dataset is None:
        return None
    return str(dataset["international"] if isinstance(dataset, dict) else dataset.international)


def loose_symmetry_note(sample: Sample, symbol: str, symprec: float,
                        loose: float = LOOSE_SYMPREC) -> tuple[str | None, str | None]:
    """(the space group at ``loose``, a one-line note) when it differs from ``symbol`` found at
    ``symprec``; (None, None) when they agree or ``symprec`` is not tighter than ``loose``."""
    if symprec >= loose:
        return None, None
    found = spacegroup_symbol(sample, loose)
    if found is None or found == symbol:
        return None, None
    return found, (f"space group {found} at symprec {loose:g} but {symbol} at {symprec:g}: positions may be "
                   f"rounded; pass --symprec {loose:g} if the higher symmetry is real")


def symmetrize_born_and_dielectric(
    sample: Sample, born_charges: np.ndarray, dielectric: np.ndarray, symprec: float = 1e-5
) -> SymmetrizedBorn:
    """Space-group average of the Born charges, acoustic sum rule, point-group average of eps.

    The result's ``note`` says when the space group at :data:`LOOSE_SYMPREC` differs from
    the one used (rounded positions hiding symmetry); the tensors always use ``symprec``.

    Shapes: born_charges (N, 3, 3), dielectric (3, 3)
    """
    born = np.asarray(born_charges, dtype=np.float64)
    eps = np.asarray(dielectric, dtype=np.float64)
    if born.shape != (sample.num_atoms, 3, 3):
        raise ValueError(f"born_charges: expected shape ({sample.num_atoms}, 3, 3), got {born.shape}")
    if eps.shape != (3, 3):
        raise ValueError(f"dielectric: expected shape (3, 3), got {eps.shape}")
    rotations, permutations, equivalent, symbol = crystal_symmetry(sample, symprec)
    # Operation g carries atom i (charge Z_i) onto atom p_g(i) with charge R_g Z_i R_g^T.
    rotated = np.einsum("gab,ibc,gdc->giad", rotations, born, rotations)
    averaged = np.zeros_like(born)
    np.add.at(averaged, permutations.reshape(-1), rotated.reshape(-1, 3, 3))
    averaged /= len(rotations)
    averaged -= averaged.mean(axis=0)  # acoustic sum rule; the mean is itself point-group invariant
    eps_avg = np.einsum("gab,bc,gdc->ad", rotations, eps, rotations) / len(rotations)
    eps_avg = 0.5 * (eps_avg + eps_avg.T)
    _, first = np.unique(equivalent, return_index=True)
    loose_symbol, note = loose_symmetry_note(sample, symbol, symprec)
    return SymmetrizedBorn(
        born_charges=averaged,
        dielectric=eps_avg,
        independent_atoms=np.sort(first),
        international_symbol=symbol,
        num_operations=len(rotations),
        born_change=float(np.abs(averaged - born).max()),
        asr_residual=float(np.abs(born.sum(axis=0)).max()),
        dielectric_change=float(np.abs(eps_avg - eps).max()),
        loose_symbol=loose_symbol,
        note=note,
    )


__all__ = ["LOOSE_SYMPREC", "SymmetrizedBorn", "crystal_symmetry", "loose_symmetry_note", "spacegroup_symbol",
           "symmetrize_born_and_dielectric"]
