"""Unit conversions into the units tensorframe stores labels in (``FieldSpec.units``).

Inside tensorframe: positions and cells in Å, energies in eV, forces in eV/Å, dipoles in
e·Å, Born charges in e, dielectric tensors dimensionless, piezoelectric stress tensors in
C/m^2, piezoelectric strain tensors in pC/N, elastic tensors in GPa, (hyper)polarizabilities
in atomic units. A reader's ``units={field: unit}`` option names the unit a file uses; the
label is multiplied by ``factor(field, unit)``. The table lists every unit a field accepts.

Constants: CODATA 2018 (as in ase.units / scipy.constants).
"""

from __future__ import annotations

import numpy as np

BOHR = 0.529177210903  # Å
HARTREE = 27.211386245988  # eV
RYDBERG = HARTREE / 2  # eV
ELEMENTARY_CHARGE = 1.602176634e-19  # C
DEBYE = 0.20819434  # e·Å (1 D = 3.33564e-30 C m)
KCAL_PER_MOL = 0.0433641043  # eV
KJ_PER_MOL = 0.0103642723  # eV
E_PER_A2 = ELEMENTARY_CHARGE / 1e-20  # C/m^2 per e/Å^2 = 16.02176634
EV_PER_A3 = ELEMENTARY_CHARGE / 1e-30 / 1e9  # GPa per eV/Å^3 = 160.21766...

_ENERGY = {"eV": 1.0, "meV": 1e-3, "Ha": HARTREE, "hartree": HARTREE, "Ry": RYDBERG, "kcal/mol": KCAL_PER_MOL,
           "kJ/mol": KJ_PER_MOL}
_DIPOLE = {"e·Å": 1.0, "e*A": 1.0, "eA": 1.0, "e·bohr": BOHR, "e*bohr": BOHR, "a.u.": BOHR, "D": DEBYE, "debye": DEBYE}

# field -> {unit a file may use: factor to the field's own unit}
UNITS: dict[str, dict[str, float]] = {
    "energy": _ENERGY,
    "forces": {"eV/Å": 1.0, "eV/A": 1.0, "Ha/bohr": HARTREE / BOHR, "a.u.": HARTREE / BOHR, "Ry/bohr": RYDBERG / BOHR,
               "kcal/mol/Å": KCAL_PER_MOL, "kcal/mol/A": KCAL_PER_MOL},
    "virial": _ENERGY,
    "stress": {"eV/Å^3": 1.0, "eV/A^3": 1.0, "eV/Å³": 1.0, "GPa": 1 / EV_PER_A3, "kBar": 0.1 / EV_PER_A3,
               "kbar": 0.1 / EV_PER_A3, "kB": 0.1 / EV_PER_A3},
    "dipole": _DIPOLE,
    "atomic_dipole": {**_DIPOLE, "Å": 1.0, "A": 1.0, "bohr": BOHR},
    "born_charges": {"e": 1.0},
    "dielectric": {"dimensionless": 1.0, "1": 1.0},
    "polarizability": {"a.u.": 1.0, "bohr^3": 1.0, "Å^3": 1 / BOHR**3, "A^3": 1 / BOHR**3},
    "atomic_polarizability": {"a.u.": 1.0, "bohr^3": 1.0, "Å^3": 1 / BOHR**3, "A^3": 1 / BOHR**3},
    "hyperpolarizability": {"a.u.": 1.0},
    "piezo": {"C/m^2": 1.0, "e/Å^2": E_PER_A2, "e/A^2": E_PER_A2, "mC/m^2": 1e-3},
    "piezo_strain": {"pC/N": 1.0, "pm/V": 1.0, "C/N": 1e12},
    "elastic": {"GPa": 1.0, "kBar": 0.1, "kbar": 0.1, "eV/Å^3": EV_PER_A3, "eV/A^3": EV_PER_A3},
    "nmr_shielding": {"ppm": 1.0},
}


def factor(field: str, unit: str) -> float:
    """The number a label of ``field`` given in ``unit`` is multiplied by.

    Raises:
        ValueError: naming the field and the units it accepts.
    """
    table = UNITS.get(field)
    if table is None:
        raise ValueError(f"field {field!r}: no unit conversions are known; omit it from `units` and store it as is")
    try:
        return table[unit]
    except KeyError:
        raise ValueError(f"field {field!r}: unknown unit {unit!r}; valid choices: {', '.join(table)}") from None


def convert(value: np.ndarray, field: str, unit: str) -> np.ndarray:
    """``value`` (in ``unit``) in the units tensorframe stores ``field`` in."""
    return np.asarray(value, dtype=np.float64) * factor(field, unit)
