"""Reference environments with exact geometries (float64 :class:`~tensorframe.types.Sample`):
generic, planar (water, ethylene, benzene, HOF, an hBN monolayer) and linear (CO2, HCN)
molecules and cubic crystals, for :mod:`tensorframe.testing.completeness`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from tensorframe.testing.invariance import rock_salt
from tensorframe.types import Sample


def _molecule(numbers: Sequence[int], positions: Sequence[Sequence[float]]) -> Sample:
    return Sample(np.asarray(numbers), np.asarray(positions, dtype=np.float64))


def generic_molecule() -> Sample:
    """Five atoms (C, N, O, F, H) at fixed generic positions: point group C1."""
    positions = [
        [0.000, 0.000, 0.000],
        [1.412, 0.183, -0.097],
        [-0.371, 1.326, 0.244],
        [0.286, -0.517, 1.291],
        [-0.903, -0.642, -0.718],
    ]
    return _molecule([6, 7, 8, 9, 1], positions)


def water() -> Sample:
    """H2O in the xy plane, C2 axis along y (r = 0.9572 Å, angle 104.52 deg): C2v, planar."""
    half = math.radians(104.52) / 2
    r = 0.9572
    return _molecule([8, 1, 1], [[0.0, 0.0, 0.0], [r * math.sin(half), r * math.cos(half), 0.0],
                                 [-r * math.sin(half), r * math.cos(half), 0.0]])


def ethylene() -> Sample:
    """C2H4 in the xy plane, C=C along x: D2h, planar."""
    c, hx, hy = 0.6695, 1.2321, 0.9289
    return _molecule([6, 6, 1, 1, 1, 1], [[c, 0, 0], [-c, 0, 0], [hx, hy, 0], [hx, -hy, 0], [-hx, hy, 0], [-hx, -hy, 0]])


def benzene() -> Sample:
    """C6H6 in the xy plane (C-C 1.397 Å, C-H 1.084 Å): D6h, planar ring."""
    angles = [k * math.pi / 3 for k in range(6)]
    ring = [[1.397 * math.cos(t), 1.397 * math.sin(t), 0.0] for t in angles]
    hydrogens = [[2.481 * math.cos(t), 2.481 * math.sin(t), 0.0] for t in angles]
    return _molecule([6] * 6 + [1] * 6, ring + hydrogens)


def hypofluorous_acid() -> Sample:
    """HOF in the xy plane (O-H 0.966 Å, O-F 1.442 Å, angle 97.2 deg): Cs, planar."""
    angle = math.radians(97.2)
    return _molecule([8, 1, 9], [[0.0, 0.0, 0.0], [0.966, 0.0, 0.0], [1.442 * math.cos(angle), 1.442 * math.sin(angle), 0.0]])


def carbon_dioxide() -> Sample:
    """CO2 along z (C=O 1.16 Å): D_inf_h, linear."""
    return _molecule([6, 8, 8], [[0.0, 0.0, 0.0], [0.0, 0.0, 1.16], [0.0, 0.0, -1.16]])


def hydrogen_cyanide() -> Sample:
    """HCN along z (C-H 1.064 Å, C-N 1.156 Å): C_inf_v, linear."""
    return _molecule([1, 6, 7], [[0.0, 0.0, -1.064], [0.0, 0.0, 0.0], [0.0, 0.0, 1.156]])


def hbn_monolayer(a: float = 2.504, vacuum: float = 20.0) -> Sample:
    """Hexagonal BN monolayer in the xy plane, c = ``vacuum`` Å, pbc all True: D3h (-6m2)."""
    cell = np.array([[a, 0.0, 0.0], [-a / 2, a * math.sqrt(3.0) / 2, 0.0], [0.0, 0.0, vacuum]])
    fractional = np.array([[1.0 / 3.0, 2.0 / 3.0, 0.5], [2.0 / 3.0, 1.0 / 3.0, 0.5]])
    return Sample(np.array([5, 7]), fractional @ cell, cell, np.ones(3, dtype=bool))


def bcc(a: float = 2.87, number: int = 26) -> Sample:
    """Body-centred cubic (Fe), conventional cubic cell with 2 atoms: Oh (m-3m) on every atom."""
    cell = a * np.eye(3)
    return Sample(np.array([number, number]), np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]) @ cell, cell,
                  np.ones(3, dtype=bool))


STANDARD_ENVIRONMENTS: dict[str, Callable[[], Sample]] = {
    "generic": generic_molecule,
    "water": water,
    "ethylene": ethylene,
    "benzene": benzene,
    "hof": hypofluorous_acid,
    "co2": carbon_dioxide,
    "hcn": hydrogen_cyanide,
    "rock_salt": rock_salt,
    "hbn": hbn_monolayer,
    "bcc": bcc,
}
"""Name -> function returning the environment's Sample (exact geometry)."""

PLANAR_ENVIRONMENTS = ("water", "ethylene", "benzene", "hof", "hbn")
LINEAR_ENVIRONMENTS = ("co2", "hcn")
