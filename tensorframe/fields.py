"""Known target fields: level, shape, index symmetry, parity, units.

Built-in fields are registered by the built-in plugin through the same hook
(``tensorframe_register_fields``) that third-party plugins use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tensorframe.ops.symmetry import formula_rank, parse_formula

Level = Literal["atom", "structure"]
Reduce = Literal["mean", "sum"]


@dataclass(frozen=True)
class FieldSpec:
    """A target quantity.

    Attributes:
        name: key in predictions and labels, e.g. ``"born_charges"``.
        level: ``"atom"`` (one tensor per atom, shape (N, 3, ...)) or ``"structure"``.
        symmetry: e3nn index-symmetry formula (``""`` for a scalar, ``"ij=ji"``, ...).
        parity: +1 if the tensor is unchanged by inversion, -1 if it flips sign.
        units: the units labels are stored in inside tensorframe.
        reduce: how atomic contributions make a structure-level tensor: ``"mean"`` for
            intensive quantities (dielectric, piezo), ``"sum"`` for extensive ones.
    """

    name: str
    level: Level
    symmetry: str
    parity: int
    units: str
    reduce: Reduce = "sum"
    description: str = ""

    def __post_init__(self) -> None:
        if self.level not in ("atom", "structure"):
            raise ValueError(f"field {self.name!r}: level must be 'atom' or 'structure', got {self.level!r}")
        if self.parity not in (1, -1):
            raise ValueError(f"field {self.name!r}: parity must be +1 or -1, got {self.parity!r}")
        if self.reduce not in ("mean", "sum"):
            raise ValueError(f"field {self.name!r}: reduce must be 'mean' or 'sum', got {self.reduce!r}")
        if self.symmetry:
            parse_formula(self.symmetry)

    @property
    def rank(self) -> int:
        return formula_rank(self.symmetry) if self.symmetry else 0

    @property
    def accumulates_in_float64(self) -> bool:
        """Scalars that carry per-element reference values (energies: rank 0, atom level or
        summed) are summed, shifted and compared with labels in float64: a float32 total of
        -29943.65 eV has steps of 2 meV."""
        return self.rank == 0 and (self.level == "atom" or self.reduce == "sum")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one tensor (per atom or per structure), e.g. (3, 3)."""
        return (3,) * self.rank


BUILTIN_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("energy", "structure", "", 1, "eV", "sum", "total energy"),
    FieldSpec("forces", "atom", "i", -1, "eV/Å", "sum", "force on each atom"),
    FieldSpec("dipole", "structure", "i", -1, "e·Å", "sum", "electric dipole moment"),
    FieldSpec(
        "born_charges", "atom", "ij", 1, "e", "sum",
        "Born effective charge / atomic polar tensor Z*_{k,ab} = dP_a/du_{k,b}: "
        "first index the field direction, second the displacement",
    ),
    FieldSpec("dielectric", "structure", "ij=ji", 1, "dimensionless", "mean", "dielectric tensor (eps_inf unless a dataset says otherwise)"),
    FieldSpec("polarizability", "structure", "ij=ji", 1, "a.u.", "sum", "polarizability alpha_ij = d mu_i / d E_j"),
    FieldSpec(
        "piezo", "structure", "ijk=ikj", -1, "C/m^2", "mean",
        "piezoelectric stress tensor e_ijk = dP_i / d strain_jk, symmetric in j, k",
    ),
    FieldSpec(
        "hyperpolarizability", "structure", "ijk=ikj", -1, "a.u.", "sum",
        "first hyperpolarizability beta_ijk = d^2 mu_i / dE_j dE_k, symmetric in j, k",
    ),
    FieldSpec(
        "piezo_strain", "structure", "ijk=ikj", -1, "pC/N", "mean",
        "piezoelectric strain tensor d_ijk = d strain_jk / dE_i, symmetric in j, k (Voigt d_iJ = 2 d_ijk for shear J)",
    ),
    FieldSpec("elastic", "structure", "ijkl=jikl=ijlk=klij", 1, "GPa", "mean", "elastic stiffness tensor C_ijkl"),
    FieldSpec(
        "stress", "structure", "ij=ji", 1, "eV/Å³", "mean",
        "stress tensor sigma = (1/V) dE/d(strain), ASE's sign: positive when the cell pulls inwards (tension), "
        "negative under compression (pressure p = -trace/3); Voigt order xx yy zz yz xz xy",
    ),
    FieldSpec(
        "virial", "structure", "ij=ji", 1, "eV", "sum",
        "virial tensor W = -dE/d(strain) = -V sigma (DeePMD's virial.npy convention)",
    ),
    FieldSpec(
        "atomic_dipole", "atom", "i", -1, "e·Å", "sum",
        "dipole attributed to an atom (DeePMD atomic_dipole: for DPLR data the Wannier-centroid displacement "
        "from the atom, in Å, as stored); zero on atoms of unlabelled types",
    ),
    FieldSpec(
        "atomic_polarizability", "atom", "ij", 1, "a.u.", "sum",
        "polarizability attributed to an atom (DeePMD atomic_polarizability, units as stored; not always "
        "symmetric); zero on atoms of unlabelled types",
    ),
    FieldSpec("nmr_shielding", "atom", "ij", 1, "ppm", "sum", "NMR chemical shielding tensor of each atom (not symmetric)"),
)


DERIVED_FIELDS: tuple[str, ...] = ("forces", "stress", "virial")
"""Fields a conservative model derives from its energy (``ModelConfig.conservative``)."""


def builtin_field(name: str) -> FieldSpec:
    """The built-in :class:`FieldSpec` called ``name``."""
    for spec in BUILTIN_FIELDS:
        if spec.name == name:
            return spec
    raise KeyError(name)
