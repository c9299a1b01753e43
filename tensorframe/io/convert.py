"""Structures from ase, pymatgen or tensorframe into :class:`Sample`."""

from __future__ import annotations

from typing import Any

import numpy as np

from tensorframe.types import Sample


def to_sample(structure: Any, index: int | None = None) -> Sample:
    """An ``ase.Atoms``, a pymatgen ``Structure``/``Molecule`` or a ``Sample`` as a Sample.

    Raises:
        TypeError: naming the structure index and the type that was given.
    """
    where = f"structure {index}: " if index is not None else ""
    if isinstance(structure, Sample):
        return structure
    try:
        import ase

        if isinstance(structure, ase.Atoms):
            cell = np.asarray(structure.cell.array, dtype=np.float64)
            # Extended XYZ files of molecules often carry Lattice="0 0 0 ...", which ase reads
            # as periodic; a zero cell vector repeats nothing, so that direction is open.
            pbc = np.asarray(structure.pbc, dtype=bool) & (np.linalg.norm(cell, axis=1) > 0)
            cell = cell if pbc.any() else np.zeros((3, 3))
            return Sample(structure.numbers, structure.positions, cell, pbc)
    except ImportError:  # pragma: no cover
        pass
    try:
        from pymatgen.core import Molecule, Structure

        if isinstance(structure, Structure):
            return Sample(
                np.array(structure.atomic_numbers), structure.cart_coords, structure.lattice.matrix,
                np.asarray(structure.lattice.pbc, dtype=bool),
            )
        if isinstance(structure, Molecule):
            return Sample(np.array(structure.atomic_numbers), structure.cart_coords)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(
        f"{where}expected ase.Atoms, pymatgen Structure/Molecule or tensorframe.Sample, "
        f"got {type(structure).__module__}.{type(structure).__name__}"
    )
