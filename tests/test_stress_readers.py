"""Stress and virial labels from every reader, their sign, units and errors.

Convention (tensorframe.fields, tensorframe.io.stress): stress sigma = (1/V) dE/d(strain) in
eV/Å^3, ASE's sign (positive under tension), Voigt xx yy zz yz xz xy; virial W = -V sigma in
eV (DeePMD). VASP prints "in kB" the opposite sign, OUTCAR columns XX YY ZZ XY YZ ZX.

Physics that pins the sign: sigma equals a finite-difference (1/V) dE/d(strain) of an EMT
crystal; compressed EMT copper has a negative stress; DeePMD water in expanded boxes is under
tension; AlN's OUTCAR "external pressure" is -trace(sigma)/3.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import ase
import ase.db
import ase.io
import ase.units
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import voigt_6_to_full_3x3_stress

from tensorframe.io.ase_reader import read_ase
from tensorframe.io.asedb import read_asedb
from tensorframe.io.deepmd import read_deepmd
from tensorframe.io.read import read_structures
from tensorframe.io.stress import cell_volume, stress_to_virial, virial_to_stress
from tensorframe.io.vasp import read_vasp
from tensorframe.io.writers import write_predictions
from tensorframe.registry import get_registry
from tensorframe.types import Sample

FIELDS = get_registry().fields  # the field table the readers are given (read_structures passes it)


def _datasets() -> Path:
    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    return beside_repo if beside_repo.is_dir() else Path("/work/shared/datasets")


DATASETS = _datasets()
ALN = DATASETS / "jarvis-vasp-lepsilon-AlN"
DPLR = DATASETS / "deepmd-dplr-water"
KBAR = 0.1 * ase.units.GPa  # eV/Å^3 per kBar in ase's default constants (CODATA 2014), as its VASP readers use
GPA = ase.units.create_units("2018").GPa  # CODATA 2018, as tensorframe.io.units (8e-9 apart)
VOIGT = np.array([1.0, 2.0, 3.0, 0.4, 0.5, 0.6]) * 1e-3  # xx yy zz yz xz xy, all shear entries distinct
TENSOR = np.array([[1.0, 0.6, 0.5], [0.6, 2.0, 0.4], [0.5, 0.4, 3.0]]) * 1e-3  # the same stress, 3x3


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"data set file {path} is absent (../shared/datasets is not next to this checkout)")
    return path


def one_line_error(error: pytest.ExceptionInfo, *parts: str) -> str:
    """The message, checked to be one line holding every part (file, structure, field)."""
    message = str(error.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


def rock_salt(a: float = 5.64) -> ase.Atoms:
    return ase.Atoms("NaCl", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]],
                     cell=[[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]], pbc=True)


def xyz_frame(comment: str, lattice: str = 'Lattice="0 2.82 2.82 2.82 0 2.82 2.82 2.82 0" pbc="T T T"') -> str:
    return f"2\n{lattice} Properties=species:S:1:pos:R:3 {comment}\nNa 0 0 0\nCl 2.82 2.82 2.82\n"


def test_voigt_constants_describe_one_tensor():
    np.testing.assert_array_equal(voigt_6_to_full_3x3_stress(VOIGT), TENSOR)


# ---- extended XYZ / anything ase reads ----

def test_extxyz_stress_from_ases_calculator_keeps_sign_and_voigt_order(tmp_path):
    atoms = rock_salt()
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((2, 3)), stress=VOIGT)
    path = tmp_path / "calc.xyz"
    ase.io.write(path, atoms, format="extxyz")
    assert 'stress="' in path.read_text()  # ase writes its calculator's stress as 9 numbers
    (sample,) = read_ase(path, fields=FIELDS)
    assert sample.targets["stress"].dtype == np.float64
    np.testing.assert_array_equal(sample.targets["stress"], TENSOR)
    assert sample.targets["energy"] == -1.0 and "virial" not in sample.targets


def test_extxyz_stress_is_one_over_v_de_dstrain_and_negative_under_compression(tmp_path):
    """EMT copper squeezed by 3 %: the stress read back equals (1/V) dE/d(strain) by finite
    differences (ASE's sign) and is negative (compression). Reading with the sign flipped
    would fail both."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", "fcc", a=3.61 * 0.97, cubic=True)
    atoms.rattle(0.02, seed=1)
    atoms.calc = EMT()
    atoms.get_stress()
    path = tmp_path / "cu.xyz"
    ase.io.write(path, atoms, format="extxyz")
    (sample,) = read_ase(path, fields=FIELDS)
    stress = sample.targets["stress"]

    def energy(strain: np.ndarray) -> float:
        strained = atoms.copy()
        strained.set_cell(atoms.cell @ (np.eye(3) + strain), scale_atoms=True)
        strained.calc = EMT()
        return strained.get_potential_energy()

    h, volume = 1e-5, atoms.get_volume()
    for i, j in ((0, 0), (2, 2), (0, 1)):
        strain = np.zeros((3, 3))
        strain[i, j] = strain[j, i] = h
        derivative = (energy(strain) - energy(-strain)) / (2 * h) / volume  # = sigma_ij (+ sigma_ji for i != j)
        assert stress[i, j] * (1 if i == j else 2) == pytest.approx(derivative, rel=1e-4, abs=1e-7)
    assert np.all(np.diag(stress) < -0.01)  # compressed: negative, about -0.07 eV/Å^3
    assert -np.trace(stress) / 3 > 0  # a positive pressure


def test_extxyz_voigt_six_nine_numbers_key_map_and_virial(tmp_path):
    six = " ".join(map(str, VOIGT))
    nine = " ".join(map(str, TENSOR.ravel()))
    virial = " ".join(map(str, (-TENSOR * 44.85).ravel()))
    path = tmp_path / "ref.xyz"
    path.write_text(xyz_frame(f'REF_stress="{six}" REF_virial="{virial}"') + xyz_frame(f'REF_stress="{nine}" REF_virial="{virial}"'))
    samples = read_ase(path, fields=FIELDS, key_map={"REF_stress": "stress", "REF_virial": "virial"})
    for sample in samples:
        np.testing.assert_allclose(sample.targets["stress"], TENSOR, rtol=1e-12)
        np.testing.assert_allclose(sample.targets["virial"], -TENSOR * 44.85, rtol=1e-12)
    unmapped = read_ase(path, fields=FIELDS, default_keys=False)
    assert "stress" not in unmapped[0].targets  # REF_stress is no field name
    extxyz_virial = tmp_path / "virial.xyz"
    extxyz_virial.write_text(xyz_frame(f'virial="{virial}"'))
    np.testing.assert_allclose(read_ase(extxyz_virial, fields=FIELDS)[0].targets["virial"], -TENSOR * 44.85, rtol=1e-12)


@pytest.mark.parametrize(("unit", "factor"), [("GPa", GPA), ("kBar", GPA / 10), ("kbar", GPA / 10), ("kB", GPA / 10),
                                              ("eV/Å^3", 1.0)])
def test_stress_units_convert_to_ev_per_cubic_angstrom(tmp_path, unit, factor):
    path = tmp_path / "gpa.xyz"
    path.write_text(xyz_frame('stress="1 0.6 0.5 0.6 2 0.4 0.5 0.4 3"'))
    (sample,) = read_ase(path, fields=FIELDS, units={"stress": unit})
    np.testing.assert_allclose(sample.targets["stress"], TENSOR * 1e3 * factor, rtol=1e-9)
    with pytest.raises(ValueError, match=r"field 'stress': unknown unit 'bar'; valid choices: eV/Å\^3, .*GPa, kBar"):
        read_ase(path, fields=FIELDS, units={"stress": "bar"})


def test_stress_on_a_molecule_or_slab_is_a_one_line_error(tmp_path):
    molecule = tmp_path / "molecule.xyz"
    molecule.write_text(xyz_frame('stress="1 0 0 0 1 0 0 0 1"') + xyz_frame('stress="1 0 0 0 1 0 0 0 1"', lattice='pbc="F F F"'))
    with pytest.raises(ValueError) as error:
        read_ase(molecule, fields=FIELDS)
    one_line_error(error, str(molecule), "structure 1", "field 'stress'", "stress needs a 3D-periodic cell",
                   "pbc=[False, False, False]")
    slab = tmp_path / "slab.xyz"
    slab.write_text(xyz_frame('REF_stress="1 2 3 0 0 0"', lattice='Lattice="5 0 0 0 5 0 0 0 20" pbc="T T F"'))
    with pytest.raises(ValueError) as error:
        read_structures(slab, key_map={"REF_stress": "stress"})
    one_line_error(error, str(slab), "structure 0", "field 'stress' (key 'REF_stress')", "3D-periodic",
                   "pbc=[True, True, False]")
    zero_cell = tmp_path / "zero_cell.xyz"  # molecules often carry Lattice="0 0 0 ..." (no pbc): not periodic
    zero_cell.write_text(xyz_frame('stress="1 0 0 0 1 0 0 0 1"', lattice='Lattice="0 0 0 0 0 0 0 0 0"'))
    with pytest.raises(ValueError, match="stress needs a 3D-periodic cell"):
        read_ase(zero_cell, fields=FIELDS)
    virial = tmp_path / "virial.xyz"
    virial.write_text(xyz_frame('virial="1 0 0 0 1 0 0 0 1"', lattice='pbc="F F F"'))
    assert "virial" in read_ase(virial, fields=FIELDS)[0].targets  # a virial is fine on a molecule


def test_stress_of_the_wrong_shape_is_a_one_line_error(tmp_path):
    path = tmp_path / "bad.xyz"
    path.write_text(xyz_frame('REF_stress="1 2 3 4 5 6"') + xyz_frame('REF_stress="1 2 3 4"'))
    with pytest.raises(ValueError) as error:
        read_ase(path, fields=FIELDS, key_map={"REF_stress": "stress"})
    one_line_error(error, str(path), "structure 1", "field 'stress' (key 'REF_stress')",
                   "expected a 3x3 tensor, 9 numbers (row-major) or a Voigt 6-vector (xx yy zz yz xz xy), got shape (4,)")
    special = tmp_path / "special.xyz"  # ase itself takes `stress=` only as 9 numbers
    special.write_text(xyz_frame('stress="1 2 3 4 5 6 7 8 9"') + xyz_frame('stress="1 2 3 4 5 6"'))
    with pytest.raises(ValueError) as error:
        read_ase(special, fields=FIELDS)
    one_line_error(error, str(special), "structure 1", "key 'stress'", "needs 9 numbers")
    wrong_virial = tmp_path / "virial.xyz"
    wrong_virial.write_text(xyz_frame('REF_virial="1 2 3 4 5 6"'))
    with pytest.raises(ValueError) as error:
        read_ase(wrong_virial, fields=FIELDS, key_map={"REF_virial": "virial"})
    one_line_error(error, str(wrong_virial), "structure 0", "field 'virial'", "expected 9 numbers for shape (3, 3)")


# ---- VASP ----

OUTCAR = """ vasp.6.4.2 (synthetic OUTCAR: only the lines ase reads)
 POTCAR:    PAW_PBE Na_pv 19Sep2006
 POTCAR:    PAW_PBE Cl 06Sep2000
 POTCAR:    PAW_PBE Na_pv 19Sep2006
 POTCAR:    PAW_PBE Cl 06Sep2000
   ions per type =               1   1
--------------------------------------- Iteration      1(   1)  ---------------------------------------
  FORCE on cell =-STRESS in cart. coord.  units (eV):
  Direction    XX          YY          ZZ          XY          YZ          ZX
  --------------------------------------------------------------------------------------
  in kB        10.00000    20.00000    30.00000     6.00000     4.00000     5.00000
  external pressure =       20.00 kB  Pullay stress =        0.00 kB

      direct lattice vectors                 reciprocal lattice vectors
     0.000000000  2.820000000  2.820000000    -0.177304965  0.177304965  0.177304965
     2.820000000  0.000000000  2.820000000     0.177304965 -0.177304965  0.177304965
     2.820000000  2.820000000  0.000000000     0.177304965  0.177304965 -0.177304965

 POSITION                                       TOTAL-FORCE (eV/Angst)
 -----------------------------------------------------------------------------------
      0.00000      0.00000      0.00000         0.100000     -0.200000      0.300000
      2.82000      2.82000      2.82000        -0.100000      0.200000     -0.300000
 -----------------------------------------------------------------------------------

  FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)
  ---------------------------------------------------
  free  energy   TOTEN  =       -10.50000000 eV

  energy  without entropy=      -10.40000000  energy(sigma->0) =      -10.45000000
"""
# VASP's "in kB" row above is +(xx yy zz, XY YZ ZX) = +(10 20 30, 6 4 5) x 1e3 of TENSOR's pattern,
# positive = compressed; tensorframe's stress is its negative, in Voigt order.


def test_vasp_outcar_in_kb_line_becomes_ase_signed_stress(tmp_path):
    path = tmp_path / "OUTCAR"
    path.write_text(OUTCAR)
    (sample,) = read_vasp(path, fields=FIELDS)
    assert set(sample.targets) == {"energy", "forces", "stress"}
    np.testing.assert_allclose(sample.targets["stress"], -TENSOR * 1e4 * KBAR, rtol=1e-12)
    assert -np.trace(sample.targets["stress"]) / 3 / KBAR == pytest.approx(20.0)  # VASP's "external pressure"
    assert sample.targets["energy"] == -10.45  # energy(sigma->0), as ase's get_potential_energy()
    np.testing.assert_array_equal(sample.targets["forces"], [[0.1, -0.2, 0.3], [-0.1, 0.2, -0.3]])
    zipped = tmp_path / "OUTCAR.gz"
    zipped.write_bytes(gzip.compress(OUTCAR.encode()))
    np.testing.assert_array_equal(read_structures(zipped)[0].targets["stress"], sample.targets["stress"])
    every_step = read_structures(path, format="ase", index=":")  # the ase reader reads the same labels
    np.testing.assert_array_equal(every_step[0].targets["stress"], sample.targets["stress"])


def test_vasp_structure_option_keeps_ground_state_labels_only_for_the_same_configuration(tmp_path):
    path = tmp_path / "OUTCAR"
    path.write_text(OUTCAR)
    same, moved = tmp_path / "POSCAR", tmp_path / "POSCAR_moved"
    atoms = read_vasp(path, fields=FIELDS)[0]
    crystal = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
    ase.io.write(same, crystal, format="vasp")
    (kept,) = read_vasp(path, fields=FIELDS, structure=same)
    np.testing.assert_array_equal(kept.targets["stress"], atoms.targets["stress"])
    crystal.positions[1] += 0.1
    ase.io.write(moved, crystal, format="vasp")
    with pytest.warns(UserWarning, match=r"not the file's first ionic configuration \(off by 0.1"):
        with pytest.raises(ValueError, match=r"no Born charges, dielectric or piezoelectric tensor, energy, forces or stress"):
            read_vasp(path, fields=FIELDS, structure=moved)


def test_vasp_aln_outcar_and_vasprun_stress_signs():
    """Real DFPT output: "in kB -14.79 -14.79 -11.99" and "external pressure = -13.86 kB" (the
    cell pulls inwards: tension), so sigma_xx = +1.479 GPa. vasprun.xml's stress varray has
    VASP's sign too; both files give the same labels."""
    (outcar,) = read_vasp(need(ALN / "OUTCAR.JVASP-39"), fields=FIELDS)
    stress = outcar.targets["stress"]
    np.testing.assert_allclose(np.diag(stress), np.array([14.79381, 14.79382, 11.98776]) * KBAR, rtol=1e-6)
    assert -np.trace(stress) / 3 / KBAR == pytest.approx(-13.86, abs=0.005)
    assert stress[0, 0] == pytest.approx(stress[1, 1], abs=1e-7)  # Neumann: 6mm leaves xx = yy, zz
    assert np.abs(stress - np.diag(np.diag(stress))).max() < 1e-8
    total_ev = -0.39338  # the OUTCAR's "Total" row (eV) of FORCE on cell = the virial W = -V sigma
    assert stress_to_virial(stress, outcar.cell)[0, 0] == pytest.approx(total_ev, abs=2e-5)
    assert outcar.targets["energy"] == pytest.approx(-24.86360178)
    (run,) = read_vasp(need(ALN / "vasprun.xml.JVASP-39"), fields=FIELDS)
    assert set(run.targets) == {"born_charges", "dielectric", "energy", "forces", "stress"}
    np.testing.assert_allclose(run.targets["stress"], stress, atol=1e-8)
    np.testing.assert_allclose(run.targets["forces"], outcar.targets["forces"], atol=1e-6)
    assert run.targets["energy"] == pytest.approx(outcar.targets["energy"], abs=1e-6)


def test_vasp_vasprun_stress_varray_sign_and_order(tmp_path):
    """The AlN vasprun.xml with its stress varray replaced by a known, fully anisotropic one
    (kB, VASP's sign, a 3x3 matrix)."""
    text = need(ALN / "vasprun.xml.JVASP-39").read_text()
    start = text.index('<varray name="stress" >')
    end = text.index("</varray>", start) + len("</varray>")
    rows = "".join(f"   <v> {' '.join(f'{x:.8f}' for x in row)} </v>\n" for row in TENSOR * 1e4)
    path = tmp_path / "vasprun.xml"
    path.write_text(text[:start] + f'<varray name="stress" >\n{rows}  </varray>' + text[end:])
    (sample,) = read_vasp(path, fields=FIELDS)
    np.testing.assert_allclose(sample.targets["stress"], -TENSOR * 1e4 * KBAR, rtol=1e-9)


# ---- DeePMD ----

def test_deepmd_dplr_water_stress_is_minus_virial_over_volume():
    system = need(DPLR)
    samples = read_deepmd(system, fields=FIELDS, stress=True)
    virial = np.load(system / "set.000" / "virial.npy").astype(np.float64).reshape(-1, 3, 3)
    box = np.load(system / "set.000" / "box.npy").astype(np.float64).reshape(-1, 3, 3)
    assert len(samples) == 30 and {"virial", "stress", "energy", "forces", "atomic_dipole"} == set(samples[0].targets)
    for index in (0, 7, 29):
        s = samples[index]
        assert s.num_atoms == 384 and s.pbc.all()
        np.testing.assert_array_equal(s.targets["virial"], virial[index])
        np.testing.assert_allclose(s.targets["stress"], -virial[index] / abs(np.linalg.det(box[index])), rtol=1e-12)
        np.testing.assert_allclose(virial_to_stress(s.targets["virial"], s.cell), s.targets["stress"], rtol=1e-12)
    only = read_deepmd(system, fields=FIELDS, key_map={"virial": "stress"})
    assert "virial" not in only[0].targets
    np.testing.assert_array_equal(only[5].targets["stress"], samples[5].targets["stress"])
    assert "stress" not in read_deepmd(system, fields=FIELDS)[0].targets  # only when asked for


def test_deepmd_dplr_water_in_expanded_boxes_is_under_tension():
    """128 waters at 1 g/cm^3 fill a 15.64 Å cube. The frames in boxes above 16 Å are
    stretched: their pressure -trace(sigma)/3 is negative in every frame; stress = +virial/V
    (the wrong sign) would put all of them under compression."""
    samples = read_deepmd(need(DPLR), fields=FIELDS, stress=True)
    side = np.cbrt(cell_volume(np.array([s.cell for s in samples])))
    pressure = np.array([-np.trace(s.targets["stress"]) / 3 for s in samples]) / GPA
    assert (side > 16).sum() >= 15
    assert np.all(pressure[side > 16] < 0) and pressure[side > 16].mean() < pressure[side < 15.7].mean()
    flipped = -pressure
    assert not np.all(flipped[side > 16] < 0)


def _nopbc_system(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "type.raw").write_text("0\n1\n1\n")
    (root / "type_map.raw").write_text("O\nH\n")
    (root / "nopbc").write_text("")
    (root / "set.000").mkdir()
    positions = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    np.save(root / "set.000" / "coord.npy", np.tile(positions.ravel(), (2, 1)))
    np.save(root / "set.000" / "energy.npy", np.zeros(2))
    np.save(root / "set.000" / "virial.npy", np.tile(np.eye(3).ravel(), (2, 1)))
    return root


def test_deepmd_nopbc_virial_is_never_turned_into_a_stress(tmp_path):
    system = _nopbc_system(tmp_path / "molecule")
    (first, _) = read_deepmd(system, fields=FIELDS)
    assert "virial" in first.targets and "stress" not in first.targets
    for options in ({"stress": True}, {"key_map": {"virial": "stress"}}):
        with pytest.raises(ValueError) as error:
            read_deepmd(system, fields=FIELDS, **options)
        one_line_error(error, str(system / "set.000" / "virial.npy"), "structure 0", "field 'stress'",
                       "stress needs a 3D-periodic cell", "not periodic")
    (system / "set.000" / "virial.npy").unlink()
    np.save(system / "set.000" / "box.npy", np.tile(10 * np.eye(3).ravel(), (2, 1)))
    with pytest.raises(ValueError) as error:
        read_deepmd(system, fields=FIELDS, stress=True, pbc=True)
    one_line_error(error, str(system / "set.000"), "structure 0", "field 'stress'", "lacks")
    with pytest.raises(ValueError, match=r"units: 'stress' is derived from virial.npy"):
        read_deepmd(system, fields=FIELDS, stress=True, units={"stress": "GPa"})


# ---- ASE database ----

def test_asedb_stress_column_and_virial_data_round_trip(tmp_path):
    path = tmp_path / "stress.db"
    with ase.db.connect(path) as database:
        for k in range(2):
            atoms = rock_salt()
            atoms.calc = SinglePointCalculator(atoms, energy=-1.0 - k, stress=VOIGT * (k + 1))
            database.write(atoms, data={"W": stress_to_virial(TENSOR * (k + 1), atoms.cell)})
    samples = read_asedb(path, fields=FIELDS, key_map={"W": "virial"})
    for k, sample in enumerate(samples):
        np.testing.assert_allclose(sample.targets["stress"], TENSOR * (k + 1), rtol=1e-12)
        np.testing.assert_allclose(virial_to_stress(sample.targets["virial"], sample.cell), TENSOR * (k + 1), rtol=1e-12)
    scaled = read_asedb(path, fields=FIELDS, units={"stress": "GPa"})
    np.testing.assert_allclose(scaled[0].targets["stress"], TENSOR * GPA, rtol=1e-12)


def test_asedb_stress_on_a_molecule_row_is_a_one_line_error(tmp_path):
    path = tmp_path / "molecule.db"
    with ase.db.connect(path) as database:
        for pbc in (True, False):
            atoms = rock_salt()
            atoms.pbc = pbc
            atoms.calc = SinglePointCalculator(atoms, stress=VOIGT)
            database.write(atoms)
    with pytest.raises(ValueError) as error:
        read_asedb(path, fields=FIELDS)
    one_line_error(error, str(path), "structure 1 (row id 2)", "field 'stress'", "stress needs a 3D-periodic cell")


# ---- writers ----

def test_extxyz_predictions_write_stress_as_ases_calculator_property(tmp_path):
    crystal = Sample([11, 17], rock_salt().positions, rock_salt().cell.array, np.ones(3, dtype=bool))
    virial = stress_to_virial(TENSOR, crystal.cell)
    path = tmp_path / "predictions.xyz"
    write_predictions(path, [crystal], [{"stress": TENSOR, "virial": virial, "energy": np.array(-2.0)}])
    atoms = ase.io.read(path)
    np.testing.assert_allclose(atoms.get_stress(), VOIGT, rtol=1e-12)  # ase reads it as its stress
    np.testing.assert_allclose(atoms.info["virial"], virial, rtol=1e-12)
    (back,) = read_ase(path, fields=FIELDS)
    np.testing.assert_allclose(back.targets["stress"], TENSOR, rtol=1e-12)
    np.testing.assert_allclose(back.targets["virial"], virial, rtol=1e-12)
    assert back.targets["energy"] == -2.0


def test_virial_and_stress_conversions_are_inverse_and_batched():
    cells = np.stack([rock_salt().cell.array, rock_salt(6.0).cell.array])
    stress = np.stack([TENSOR, 2 * TENSOR])
    virial = stress_to_virial(stress, cells)
    np.testing.assert_allclose(virial[1], -2 * TENSOR * 6.0**3 / 4)
    np.testing.assert_allclose(virial_to_stress(virial, cells), stress)
