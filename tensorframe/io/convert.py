"""Structures from ase, pymatgen or tensorframe into :class:`Sample`.

Nothing is reinterpreted: a structure periodic in a direction whose lattice vector is zero
is refused (not made non-periodic), and so is a partially occupied site (a CIF's mixed
site or vacancy, a disordered pymatgen Structure).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tensorframe.io.validation import check_ase_ordered, check_periodic_cell, check_pymatgen_ordered
from tensorframe.types import Sample


def to_sample(structure: Any, index: int | None = None) -> Sample:
    """An ``ase.Atoms``, a pymatgen ``Structure``/``Molecule`` or a ``Sample`` as a Sample.

    Raises:
        TypeError: naming the structure index and the type that was given.
        ValueError: for a zero or degenerate lattice vector in a periodic direction
            (``"field 'cell': lattice vector 2 is zero; ..."``) or a partially occupied site,
            prefixed with ``structure <index>`` when an index is given.
    """
    if isinstance(structure, Sample):
        return structure
    try:
        return _convert(structure, index)
    except ValueError as error:
        if index is None:
            raise
        message = str(error)
        joint = ", " if message.startswith("field ") else ": "
        raise ValueError(f"structure {index}{joint}{message}") from None


def _convert(structure: Any, index: int | None) -> Sample:
    try:
        import ase

        if isinstance(structure, ase.Atoms):
            cell = np.asarray(structure.cell.array, dtype=np.float64)
            pbc = np.asarray(structure.pbc, dtype=bool)
            check_periodic_cell(cell, pbc)
            check_ase_ordered(structure)
            return Sample(structure.numbers, structure.positions, cell if pbc.any() else np.zeros((3, 3)), pbc)
    except ImportError:  # pragma: no cover
        pass
    try:
        from pymatgen.core import Molecule, Structure  # lazy: heavy, kept out of `import tensorframe`

        if isinstance(structure, Structure):
            cell = np.asarray(structure.lattice.matrix, dtype=np.float64)
            pbc = np.asarray(structure.lattice.pbc, dtype=bool)
            check_periodic_cell(cell, pbc)
            check_pymatgen_ordered(structure)
            return Sample(np.array(structure.atomic_numbers), structure.cart_coords, cell, pbc)
        if isinstance(structure, Molecule):
            check_pymatgen_ordered(structure)
            return Sample(np.array(structure.atomic_numbers), structure.cart_coords)
    except ImportError:  # pragma: no cover
        pass
    where = f"structure {index}: " if index is not None else ""
    raise TypeError(
        f"{where}expected ase.Atoms, pymatgen Structure/Molecule or tensorframe.Sample, "
        f"got {type(structure).__module__}.{type(structure).__name__}"
    )
