"""Writers of predictions: extended XYZ, JSON, and phonopy's BORN file.

Flattening is row-major everywhere: a per-atom ``born_charges`` (N, 3, 3) becomes 9 columns
``Z_xx Z_xy Z_xz Z_yx ...`` (first index the field direction, second the displacement), a
structure-level ``dielectric`` (3, 3) becomes 9 numbers in ``info``. The ``ase`` reader
reshapes the same way, so a file written here reads back as labels. ``stress`` and
``virial`` (3, 3) go to ``info`` as 3x3 matrices under those names, which extended XYZ
treats specially: ase reads ``stress=`` back as its calculator's stress (``atoms.get_stress()``,
Voigt, tensorframe's sign) and ``virial=`` as a 3x3 ``info`` entry.

Input labels travel beside the predictions (MACE's scheme with the roles swapped): each label
of a structure (``sample.targets``) is written as ``REF_<field>`` in the same layout,
``atoms.arrays`` for atom-level fields and ``atoms.info`` for structure-level ones, always
flattened row-major (``REF_stress`` too: no ``REF_`` key is special to ase, so none is moved
into a calculator). The predictions keep the plain field names. JSON output has a
``labels`` object per structure beside ``predictions``. To evaluate against the labels of
such a file, map the ``REF_`` keys onto the fields and the plain ones away, e.g.
``--key-map REF_forces=forces,forces=pred_forces`` (a key mapped to a name that is no field
is ignored).

BORN (phonopy's non-analytical-term input)::

    default    # comment                   line 1: unit conversion factor ("default": phonopy's)
    e_xx e_xy e_xz e_yx ... e_zz           line 2: dielectric tensor, 9 numbers
    Z_xx Z_xy ... Z_zz                     one line per symmetry-independent atom, in the
    ...                                    order of the cell (first atom of each orbit)

Before writing, :func:`symmetrize_born_and_dielectric` averages the Born charges over the
space group (``Z_{p(i)} <- mean_g R_g Z_i R_g^T``, ``p`` the permutation of atoms by the
operation ``g``), subtracts their mean (the acoustic sum rule, sum_k Z*_k = 0), and averages
the dielectric tensor over the point group (and over its transpose). This is what
``phonopy-vasp-born`` does to DFT output, so phonopy reads back exactly the tensors we wrote.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tensorframe.fields import BUILTIN_FIELDS
from tensorframe.types import Sample

Prediction = Mapping[str, np.ndarray]


def sample_to_atoms(sample: Sample):
    """An ``ase.Atoms`` with the sample's species, positions, cell and periodicity."""
    import ase

    return ase.Atoms(numbers=sample.numbers, positions=sample.positions, cell=sample.cell, pbc=sample.pbc)


LABEL_PREFIX = "REF_"
"""Prefix of the input labels written beside the predictions (``REF_forces`` beside ``forces``)."""


def write_predictions_extxyz(
    path: str | Path, samples: Sequence[Sample], predictions: Sequence[Prediction], levels: Mapping[str, str] | None = None
) -> None:
    """One frame per structure; atom-level fields as flattened columns, structure-level in ``info``.

    ``levels`` gives ``"atom"`` or ``"structure"`` per field (a model's ``fields``, and those
    of the registry's field table for labels the model does not predict); fields not in it
    must be built-in (:data:`~tensorframe.fields.BUILTIN_FIELDS`). Each structure's input labels
    (``sample.targets``) are written beside the predictions as ``REF_<field>``.

    Shapes: an atom-level prediction (N, 3, ...) is written as N rows of 3**rank numbers;
    a structure-level one (3, ...) as 3**rank numbers (a scalar as one number); ``stress``
    and ``virial`` (3, 3) as 3x3 matrices (ase's own layout for these keys). Labels the same
    way, except that ``REF_stress`` and ``REF_virial`` are 9 numbers, row-major.
    """
    import ase.io  # lazy: heavy, kept out of `import tensorframe`

    frames = []
    for sample, prediction in zip(samples, predictions, strict=True):
        atoms = sample_to_atoms(sample)
        for name, value in prediction.items():
            _put(atoms, name, np.asarray(value, dtype=np.float64), _level(name, levels), sample.num_atoms)
        for name, value in sample.targets.items():
            _put(atoms, LABEL_PREFIX + name, np.asarray(value, dtype=np.float64), _level(name, levels), sample.num_atoms)
        frames.append(atoms)
    ase.io.write(str(path), frames, format="extxyz")


# info keys ase's extended XYZ reads as 3x3 matrices (``stress`` into its calculator)
_ASE_3X3 = ("stress", "virial")


def _put(atoms, key: str, value: np.ndarray, level: str, num_atoms: int) -> None:
    """``value`` under ``key``: N flattened rows in ``atoms.arrays`` for an atom-level field,
    else in ``atoms.info`` (a 3x3 matrix for ase's special keys, a float or flat numbers otherwise).

    Shapes: value (N, 3, ...) at atom level, (3, ...) or () at structure level
    """
    if level == "atom":
        atoms.arrays[key] = value.reshape(num_atoms, -1)
    elif key in _ASE_3X3 and value.size == 9:
        atoms.info[key] = value.reshape(3, 3)
    else:
        atoms.info[key] = float(value) if value.ndim == 0 else value.reshape(-1)


_BUILTIN_LEVELS = {spec.name: spec.level for spec in BUILTIN_FIELDS}


def _level(name: str, levels: Mapping[str, str] | None) -> str:
    """``levels[name]``, else the built-in field's level; a ValueError naming the field otherwise."""
    if levels is not None and name in levels:
        return levels[name]
    if name not in _BUILTIN_LEVELS:
        raise ValueError(f"field {name!r}: not a built-in field; pass its level ('atom' or 'structure') in levels")
    return _BUILTIN_LEVELS[name]


def write_predictions_json(
    path: str | Path, samples: Sequence[Sample], predictions: Sequence[Prediction], sources: Sequence[str] | None = None
) -> None:
    """A list of ``{"index", "source", "numbers", "positions", "cell", "pbc", "predictions", "labels"}``,
    tensors as nested lists (unflattened: ``born_charges`` is N x 3 x 3); ``labels`` holds the
    structure's input labels (``sample.targets``, ``{}`` when it has none) in the same layout."""
    rows = []
    for index, (sample, prediction) in enumerate(zip(samples, predictions, strict=True)):
        rows.append({
            "index": index,
            "source": sources[index] if sources is not None else None,
            "numbers": sample.numbers.tolist(),
            "positions": sample.positions.tolist(),
            "cell": sample.cell.tolist(),
            "pbc": sample.pbc.tolist(),
            "predictions": {name: np.asarray(value, dtype=np.float64).tolist() for name, value in prediction.items()},
            "labels": {name: np.asarray(value, dtype=np.float64).tolist() for name, value in sample.targets.items()},
        })
    Path(path).write_text(json.dumps(rows, indent=1) + "\n")


def write_predictions(path: str | Path, samples: Sequence[Sample], predictions: Sequence[Prediction],
                      levels: Mapping[str, str] | None = None, sources: Sequence[str] | None = None) -> str:
    """Extended XYZ for ``.xyz``/``.extxyz`` paths, JSON otherwise; returns the format written."""
    if str(path).lower().endswith((".xyz", ".extxyz")):
        write_predictions_extxyz(path, samples, predictions, levels)
        return "extxyz"
    write_predictions_json(path, samples, predictions, sources)
    return "json"


# --- phonopy BORN -----------------------------------------------------------------------------


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


def born_file_text(result: SymmetrizedBorn, factor: float | None = None) -> str:
    """The BORN file's text for already symmetrised tensors (phonopy's number format)."""
    atoms = " ".join(str(i + 1) for i in result.independent_atoms)
    first = "default" if factor is None else f"{factor:.8f}"
    lines = [f"{first}    # tensorframe: epsilon and Z* of atoms {atoms} (space group {result.international_symbol})"]
    row = "%13.8f " * 9

    def clean(values: np.ndarray) -> tuple[float, ...]:
        return tuple(np.round(values.reshape(-1), 8) + 0.0)  # no "-0.00000000" for round-off

    lines.append(row % clean(result.dielectric))
    for index in result.independent_atoms:
        lines.append(row % clean(result.born_charges[index]))
    return "\n".join(line.rstrip() for line in lines) + "\n"


def write_born_file(
    path: str | Path,
    sample: Sample,
    born_charges: np.ndarray,
    dielectric: np.ndarray,
    symprec: float = 1e-5,
    factor: float | None = None,
) -> SymmetrizedBorn:
    """Symmetrise and write a phonopy BORN file for ``sample``; returns what was written.

    Shapes: born_charges (N, 3, 3) in e, dielectric (3, 3)
    """
    result = symmetrize_born_and_dielectric(sample, born_charges, dielectric, symprec)
    Path(path).write_text(born_file_text(result, factor))
    return result


__all__ = [
    "LABEL_PREFIX", "LOOSE_SYMPREC", "SymmetrizedBorn", "born_file_text", "crystal_symmetry", "loose_symmetry_note",
    "sample_to_atoms", "spacegroup_symbol", "symmetrize_born_and_dielectric", "write_born_file", "write_predictions",
    "write_predictions_extxyz", "write_predictions_json",
]
