"""VASP output: linear-response tensors (LEPSILON / LCALCEPS, DFPT or finite differences)
through pymatgen, energy, forces and stress through ase; OUTCAR or vasprun.xml, plain or
compressed (.gz, .bz2, .xz).

One file gives one structure (the input structure of the run: the initial positions of
vasprun.xml, the first ionic configuration of the OUTCAR) with the labels found in it.
OUTCAR positions are taken at full precision from the header's ``direct lattice vectors``
and ``position of ions in cartesian coordinates`` blocks (8-9 decimals), checked against
the first ionic step's 5-decimal ``POSITION  TOTAL-FORCE`` block that ase reads (within
1e-4 Å); rounded to 5 decimals, a wurtzite cell is found as Cmc2_1 instead of P6_3mc at
symprec 1e-5. (The ``ase`` reader, ``index=":"``, gives every ionic step from the 5-decimal
blocks, the only positions the OUTCAR prints for later steps.)

- ``born_charges`` (N, 3, 3) in e, the per-ion blocks exactly as VASP prints them: row a is
  the electric-field (polarisation) direction, column b the displacement,
  ``Z*_{k,ab} = dP_a / du_{k,b}`` (tensorframe's convention, docs/physics.md). OUTCAR via
  ``Outcar.born`` (the last BORN EFFECTIVE CHARGES section); vasprun.xml from its
  ``born_charges`` array (pymatgen's Vasprun does not read it).
- ``dielectric`` (3, 3): option ``dielectric``: ``"electronic"`` (default; eps_inf, VASP's
  "MACROSCOPIC STATIC DIELECTRIC TENSOR (including local field effects)", vasprun
  ``epsilon``), ``"ionic"`` (the IONIC CONTRIBUTION, ``epsilon_ion``) or ``"total"``
  (eps_0 = electronic + ionic).
- ``piezo`` (3, 3, 3) in C/m^2, OUTCAR only: option ``piezo``: ``"total"`` (default;
  relaxed-ion = electronic + ionic), ``"electronic"`` (clamped-ion) or ``"ionic"``. VASP
  prints the columns as XX YY ZZ XY YZ ZX; ``PiezoTensor.from_vasp_voigt`` converts them,
  e_ijk = e_iJ (stress-type, no factor 2).
- ``energy`` (eV, ase's ``energy``: energy(sigma->0)), ``forces`` (N, 3) in eV/Å and
  ``stress`` (3, 3) in eV/Å^3 of the first ionic step, read by ase (``vasp-out``,
  ``vasp-xml``). VASP prints the stress ``in kB`` with the opposite sign (positive under
  compression) and OUTCAR's columns as XX YY ZZ XY YZ ZX; ase gives ``sigma = -0.1 GPa * kB``
  in Voigt order, tensorframe's convention (positive under tension; :mod:`tensorframe.io.stress`).
  With ``structure=``, they are kept only when that structure is the file's first
  configuration (within 1e-3 Å), else left out with a warning. For every ionic step of a
  relaxation or MD run, read the file with the ``ase`` reader (``index=":"``).

All tensors are in the Cartesian frame of the run's lattice vectors, the same frame as the
positions returned. A component that is asked for explicitly and absent is an error; with
the defaults, absent components are left out (a warning says so for a piezo tensor without
its ionic part). Units need no conversion (e, dimensionless, C/m^2, eV, eV/Å, eV/Å^3).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from tensorframe.io.ase_reader import guess_ase_format, prescan
from tensorframe.io.convert import to_sample
from tensorframe.io.labels import label_array
from tensorframe.io.stress import require_periodic
from tensorframe.io.validation import MIN_DISTANCE, describe_exception, not_found, structure_sample
from tensorframe.specs import FieldTable
from tensorframe.types import Sample

Component = Literal["electronic", "ionic", "total"]

_MARKERS = {
    "born": re.compile(r"BORN EFFECTIVE CHARGES"),
    "eps_electronic": re.compile(r"MACROSCOPIC STATIC DIELECTRIC TENSOR \("),
    "eps_ionic": re.compile(r"MACROSCOPIC STATIC DIELECTRIC TENSOR IONIC CONTRIBUTION"),
    "piezo_electronic": re.compile(r"PIEZOELECTRIC TENSOR\s+for field in x, y, z\s+\(C/m\^2\)"),
    "piezo_ionic": re.compile(r"PIEZOELECTRIC TENSOR IONIC CONTR\s+for field in x, y, z\s+\(C/m\^2\)"),
}
GROUND_STATE = ("energy", "forces", "stress")
"""Labels of the first ionic step, from ase's calculator results."""
ROUNDING = 1e-4
"""Å: the full-precision initial positions replace ase's 5-decimal ones when this close."""
SAME_CONFIGURATION = 1e-3
"""Å: a ``structure=`` file this close to the first ionic configuration keeps its energy, forces, stress."""


def read_vasp(
    path: str | Path,
    dielectric: Component | None = None,
    piezo: Component | None = None,
    structure: str | Path | None = None,
    min_distance: float = MIN_DISTANCE,
    *,
    fields: FieldTable,
) -> list[Sample]:
    """One Sample with the Born charges, dielectric and piezo tensors, energy, forces and
    stress of a VASP run (those the file holds).

    Args:
        fields: the field table (:attr:`Registry.fields <tensorframe.registry.Registry.fields>`)
            holding the specs of the labels read.
        dielectric: which dielectric tensor goes to ``dielectric`` (default electronic).
        piezo: which piezo tensor goes to ``piezo`` (default total, where the file has it).
        structure: a POSCAR/CONTCAR to take the structure from instead of the file itself.
        min_distance: atoms closer than this (Å) are an error; 0 turns the check off.

    Shapes: born_charges (N, 3, 3), dielectric (3, 3), piezo (3, 3, 3), energy (),
    forces (N, 3), stress (3, 3).

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file and the field: unreadable or truncated file, no
            labels, a requested component absent, a wrong number of ions.
    """
    path = Path(path)
    if not path.exists():
        raise not_found(path)
    for name, value in (("dielectric", dielectric), ("piezo", piezo)):
        if value not in (None, "electronic", "ionic", "total"):
            raise ValueError(f"{name}: expected 'electronic', 'ionic' or 'total', got {value!r}")
    where = f"{path}: structure 0"
    if _is_vasprun(path):
        if piezo is not None:
            raise ValueError(f"{path}: vasprun.xml holds no piezoelectric tensor; read the OUTCAR for piezo")
        atoms, parts, step = _read_vasprun(path)
    else:
        atoms, parts = _read_outcar(path)
        step = atoms
    if structure is not None:
        atoms = _read_structure_file(Path(structure))
    sample = structure_sample(lambda: to_sample(atoms), where, min_distance)
    ground = _ground_state(step, sample, where, same=atoms is step)
    return [sample.with_targets(_labels(parts, ground, dielectric, piezo, sample, where, path, fields))]


def _read_structure_file(structure: Path) -> object:
    """The ``structure=`` file (POSCAR, CIF, ...) as ase Atoms, its layout checked first.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file and what ase complained about.
    """
    import ase.io  # lazy: heavy, kept out of `import tensorframe`

    if not structure.exists():
        raise not_found(structure)
    prescan(structure, guess_ase_format(structure))
    try:
        return ase.io.read(str(structure))
    except Exception as error:  # noqa: BLE001 - ase raises many kinds for a malformed file
        raise ValueError(f"{structure}: structure 0 cannot be read (truncated or malformed file?): "
                         f"{describe_exception(error)}") from None


def _is_vasprun(path: Path) -> bool:
    name = path.name.lower()
    if "vasprun" in name or ".xml" in name:
        return True
    if "outcar" in name:
        return False
    from monty.io import zopen  # lazy: heavy, kept out of `import tensorframe`

    with zopen(str(path), "rt") as handle:
        return handle.read(200).lstrip().startswith("<?xml")


def _read_outcar(path: Path) -> tuple[object, dict[str, np.ndarray]]:
    import ase.io  # lazy: heavy, kept out of `import tensorframe`
    from monty.io import zopen  # lazy: heavy, kept out of `import tensorframe`
    from pymatgen.analysis.piezo import PiezoTensor  # lazy: heavy, kept out of `import tensorframe`
    from pymatgen.io.vasp.outputs import Outcar  # lazy: heavy, kept out of `import tensorframe`

    try:
        with zopen(str(path), "rt") as handle:
            text = handle.read()
        found = {key: bool(pattern.search(text)) for key, pattern in _MARKERS.items()}
        atoms = ase.io.read(str(path), index=0, format="vasp-out")
        _use_full_precision(atoms, text)
        if any(found.values()):  # pymatgen only for linear response (it needs a complete header)
            outcar = Outcar(str(path))
            if not getattr(outcar, "lepsilon", False) and (found["born"] or found["eps_electronic"]):
                outcar.read_lepsilon()  # LCALCEPS runs, which pymatgen reads only for LEPSILON = T
            if (found["eps_ionic"] or found["piezo_ionic"]) and not hasattr(outcar, "dielectric_ionic_tensor"):
                outcar.read_lepsilon_ionic()  # finite-difference runs (IBRION = 5, 6)
    except Exception as error:  # noqa: BLE001 - pymatgen/ase raise many kinds for a broken file
        raise ValueError(f"{path}: cannot be read as a VASP OUTCAR (truncated?): {describe_exception(error)}") from None
    parts: dict[str, np.ndarray] = {}
    if not any(found.values()):
        return atoms, parts
    born = np.asarray(getattr(outcar, "born", []), dtype=np.float64)
    if found["born"] and born.size:
        parts["born"] = born
    if found["eps_electronic"]:
        parts["eps_electronic"] = np.asarray(outcar.dielectric_tensor, dtype=np.float64)
    if found["eps_ionic"]:
        parts["eps_ionic"] = np.asarray(outcar.dielectric_ionic_tensor, dtype=np.float64)
    if found["piezo_electronic"]:
        parts["piezo_electronic"] = np.asarray(PiezoTensor.from_vasp_voigt(outcar.piezo_tensor))
    if found["piezo_ionic"]:
        parts["piezo_ionic"] = np.asarray(PiezoTensor.from_vasp_voigt(outcar.piezo_ionic_tensor))
    return atoms, parts


_FLOAT = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?")


def _use_full_precision(atoms: object, text: str) -> None:
    """Replace the cell and positions of ``atoms`` (ase's first ionic step, 5 decimals) with
    the OUTCAR header's initial lattice and Cartesian positions, where the header has them
    and they agree within :data:`ROUNDING`; calculator results are left as they are."""
    initial = _initial_configuration(text, len(atoms))
    if initial is None:
        return
    cell, positions = initial
    if np.abs(cell - atoms.cell.array).max() <= ROUNDING and np.abs(positions - atoms.positions).max() <= ROUNDING:
        atoms.set_cell(cell, scale_atoms=False)
        atoms.positions = positions


def _initial_configuration(text: str, num_atoms: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The first ``direct lattice vectors`` block (3, 3) and the ``position of ions in
    cartesian coordinates`` block (N, 3) of an OUTCAR, in Å, or None where either is absent
    or malformed."""
    lattice = text.find("direct lattice vectors")
    start = text.find("position of ions in cartesian coordinates")
    if lattice < 0 or start < 0:
        return None
    rows = text[lattice:].split("\n", 4)[1:4]
    lines = text[start:].split("\n", num_atoms + 1)[1 : num_atoms + 1]
    try:
        cell = np.array([[float(v) for v in _FLOAT.findall(row)[:3]] for row in rows], dtype=np.float64)
        positions = np.array([[float(v) for v in _FLOAT.findall(line)[:3]] for line in lines], dtype=np.float64)
    except ValueError:
        return None
    if cell.shape != (3, 3) or positions.shape != (num_atoms, 3):
        return None
    return cell, positions


def _read_vasprun(path: Path) -> tuple[object, dict[str, np.ndarray], object]:
    """The initial structure (pymatgen), the linear-response parts, and ase's Atoms of the
    first ionic step (with its calculator results)."""
    import ase.io  # lazy: heavy, kept out of `import tensorframe`
    from pymatgen.io.vasp.outputs import Vasprun  # lazy: heavy, kept out of `import tensorframe`

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # POTCAR / convergence warnings are not ours to show
            run = Vasprun(str(path), parse_dos=False, parse_eigen=False, parse_projected_eigen=False,
                          parse_potcar_file=False, exception_on_bad_xml=True)
        born = _vasprun_born_charges(path)
        step = ase.io.read(str(path), index=0, format="vasp-xml")
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"{path}: cannot be read as a VASP vasprun.xml (truncated?): {describe_exception(error)}") from None
    parts: dict[str, np.ndarray] = {}
    if born is not None:
        parts["born"] = born
    if len(run.epsilon_static):
        parts["eps_electronic"] = np.asarray(run.epsilon_static, dtype=np.float64)
    if len(run.epsilon_ionic):
        parts["eps_ionic"] = np.asarray(run.epsilon_ionic, dtype=np.float64)
    return run.initial_structure, parts, step


def _vasprun_born_charges(path: Path) -> np.ndarray | None:
    """The ``<array name="born_charges">`` block: one ``<set>`` of three ``<v>`` rows per ion."""
    import xml.etree.ElementTree as ElementTree

    from monty.io import zopen  # lazy: heavy, kept out of `import tensorframe`

    with zopen(str(path), "rb") as handle:
        for _, element in ElementTree.iterparse(handle, events=("end",)):
            if element.tag == "array" and element.get("name") == "born_charges":
                rows = [[v.text.split() for v in ion.findall("v")] for ion in element.findall("set")]
                return np.array(rows, dtype=np.float64)
    return None


def _ground_state(step: object, sample: Sample, where: str, same: bool) -> dict[str, np.ndarray]:
    """Energy, forces and Voigt stress of the first ionic step (``step``: ase Atoms with
    calculator results), when ``sample`` is that configuration (always, when ``same``)."""
    results = getattr(getattr(step, "calc", None), "results", {})
    found = {name: np.asarray(results[name]) for name in GROUND_STATE if results.get(name) is not None}
    if not found or same:
        return found
    shift = _distance(sample, to_sample(step))
    if shift > SAME_CONFIGURATION:
        warnings.warn(
            f"{where}: the structure read is not the file's first ionic configuration (off by {shift:.3g} Å); "
            f"its {', '.join(found)} are left out",
            stacklevel=4,
        )
        return {}
    return found


def _distance(a: Sample, b: Sample) -> float:
    """Largest distance (Å) between corresponding atoms (minimum image) or cell vectors; inf
    for different species."""
    if a.num_atoms != b.num_atoms or not np.array_equal(a.numbers, b.numbers):
        return float("inf")
    delta = a.positions - b.positions
    if a.pbc.all():
        frac = delta @ np.linalg.inv(a.cell)
        delta = (frac - np.round(frac)) @ a.cell
    return float(max(np.linalg.norm(delta, axis=1).max(), np.abs(a.cell - b.cell).max()))


def _labels(parts: dict[str, np.ndarray], ground: dict[str, np.ndarray], dielectric: str | None, piezo: str | None,
            sample: Sample, where: str, path: Path, fields: FieldTable) -> dict[str, np.ndarray]:
    num_atoms = sample.num_atoms
    labels: dict[str, np.ndarray] = {}
    if "born" in parts:
        born = parts["born"]
        if born.shape[0] > num_atoms and born.shape[0] % num_atoms == 0:
            born = born[-num_atoms:]  # several BORN sections: the last one
        labels["born_charges"] = label_array(born, fields["born_charges"], num_atoms, where, "BORN EFFECTIVE CHARGES")
    eps = _component(parts, "eps", dielectric or "electronic", explicit=dielectric is not None, path=path, field="dielectric")
    if eps is not None:
        labels["dielectric"] = label_array(eps, fields["dielectric"], num_atoms, where)
    piezo_tensor = _component(parts, "piezo", piezo or "total", explicit=piezo is not None, path=path, field="piezo")
    if piezo_tensor is not None:
        labels["piezo"] = label_array(piezo_tensor, fields["piezo"], num_atoms, where)
    for name, value in ground.items():
        labels[name] = label_array(value, fields[name], num_atoms, where)
    if "stress" in labels:
        require_periodic(sample.pbc, where)
    if not labels:
        raise ValueError(
            f"{where}: no Born charges, dielectric or piezoelectric tensor, energy, forces or stress found; "
            f"expected the output of a LEPSILON or LCALCEPS run, or of an ionic step"
        )
    return labels


def _component(parts: dict[str, np.ndarray], prefix: str, which: str, explicit: bool, path: Path,
               field: str) -> np.ndarray | None:
    electronic, ionic = parts.get(f"{prefix}_electronic"), parts.get(f"{prefix}_ionic")
    value = {"electronic": electronic, "ionic": ionic,
             "total": None if electronic is None or ionic is None else electronic + ionic}[which]
    if value is None and explicit:
        present = [name for name, part in (("electronic", electronic), ("ionic", ionic)) if part is not None]
        raise ValueError(
            f"{path}: structure 0, field {field!r}: the {which} tensor needs parts that the file lacks "
            f"(present: {', '.join(present) or 'none'})"
        )
    if value is None and prefix == "piezo" and electronic is not None:
        warnings.warn(
            f"{path}: piezo: only the clamped-ion (electronic) tensor is present, so no 'piezo' label was "
            f"read; pass piezo='electronic' to use it",
            stacklevel=4,
        )
    return value
