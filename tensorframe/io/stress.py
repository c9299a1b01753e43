"""Stress and virial labels: the conventions, the conversion between them and the check that
a stress belongs to a 3D-periodic cell, shared by every reader.

Conventions (the ``stress`` and ``virial`` fields of :mod:`tensorframe.fields`):

- ``stress`` sigma, (3, 3) symmetric, eV/Å^3, ASE's sign: ``sigma = (1/V) dE/d(strain)``,
  positive under tension, negative under compression; the pressure is ``p = -trace(sigma)/3``.
  A 6-vector is Voigt in ASE's order xx yy zz yz xz xy (:mod:`tensorframe.io.voigt`).
- ``virial`` W, (3, 3), eV, DeePMD's convention: ``W = -dE/d(strain) = -V sigma``.
- VASP prints the stress ``in kB`` (OUTCAR; the ``stress`` varray of vasprun.xml) with the
  opposite sign, positive under compression, and OUTCAR's columns in the order
  XX YY ZZ XY YZ ZX. ASE's OUTCAR and vasprun.xml readers convert both
  (``sigma = -0.1 GPa * kB``, reordered); the VASP reader takes the stress from them.

A stress needs a volume, so it is defined for a cell periodic in all three directions only;
a molecule or a slab may carry a virial, not a stress.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tensorframe.io.labels import LabelError


def cell_volume(cell: np.ndarray) -> np.ndarray:
    """|det(cell)| in Å^3. Shapes: (..., 3, 3) lattice vectors as rows -> (...)."""
    return np.abs(np.linalg.det(np.asarray(cell, dtype=np.float64)))


def virial_to_stress(virial: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """``sigma = -W / V`` (eV -> eV/Å^3). Shapes: virial (..., 3, 3), cell (..., 3, 3) -> (..., 3, 3)."""
    return -np.asarray(virial, dtype=np.float64) / cell_volume(cell)[..., None, None]


def stress_to_virial(stress: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """``W = -V sigma`` (eV/Å^3 -> eV). Shapes: stress (..., 3, 3), cell (..., 3, 3) -> (..., 3, 3)."""
    return -np.asarray(stress, dtype=np.float64) * cell_volume(cell)[..., None, None]


def require_periodic(pbc: np.ndarray, where: str, key: str | None = None, hint: str = "") -> None:
    """A stress label needs ``pbc`` all True.

    Raises:
        LabelError: one line naming ``where`` (file and structure), the field, the key it came
            from and why (:func:`not_periodic`).
    """
    if not np.all(pbc):
        raise not_periodic(pbc, where, key, hint)


def not_periodic(pbc: np.ndarray, where: str, key: str | None = None, hint: str = "") -> LabelError:
    """The error for a stress on a structure with periodic directions ``pbc`` (3,); ``hint``
    replaces the default advice at the end."""
    origin = f" (key {key!r})" if key is not None and key != "stress" else ""
    return LabelError(
        f"{where}, field 'stress'{origin}: stress needs a 3D-periodic cell, got pbc={np.asarray(pbc).tolist()}"
        f"{hint or '; a molecule or slab has no volume to divide by (drop the label, or give the structure a 3D cell)'}"
    )


def check_stress_cell(labels: Mapping[str, Any], pbc: np.ndarray, where: str, sources: Mapping[str, Any] | None = None,
                      key_map: Mapping[str, str] | None = None) -> None:
    """:func:`require_periodic` when ``labels`` hold a stress; the key it came from is looked
    up in ``sources`` ({file key: value}) renamed by ``key_map``."""
    if "stress" not in labels:
        return
    key_map = key_map or {}
    key = next((k for k in sources or {} if key_map.get(k, k) == "stress"), None)
    require_periodic(pbc, where, key)


__all__ = ["cell_volume", "check_stress_cell", "not_periodic", "require_periodic", "stress_to_virial", "virial_to_stress"]
