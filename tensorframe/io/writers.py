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

Before writing, :func:`tensorframe.space_group.symmetrize_born_and_dielectric` averages the
Born charges over the space group, imposes the acoustic sum rule and averages the dielectric
tensor over the point group, as ``phonopy-vasp-born`` does to DFT output, so phonopy reads back
exactly the tensors we wrote.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tensorframe.fields import BUILTIN_FIELDS
from tensorframe.space_group import SymmetrizedBorn, symmetrize_born_and_dielectric
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
    "LABEL_PREFIX", "born_file_text", "sample_to_atoms", "write_born_file", "write_predictions",
    "write_predictions_extxyz", "write_predictions_json",
]
