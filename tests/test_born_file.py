"""phonopy BORN files: symmetrisation over the space group, the acoustic sum rule, and the file
itself checked against what phonopy writes (``phonopy-vasp-born``) and reads (``parse_BORN``).

The reference is the real SnO2 DFPT run of phonopy's own test suite
(../shared/datasets/phonopy-vasp-born-SnO2): its DFT Born charges and dielectric tensor, fed
to our writer as if predicted, must give the BORN file phonopy-vasp-born writes from them.
"""

from __future__ import annotations

import lzma
import xml.etree.ElementTree as ET
from pathlib import Path

import ase
import ase.build
import numpy as np
import pytest

from tensorframe.io.convert import to_sample
from tensorframe.io.writers import write_born_file
from tensorframe.space_group import crystal_symmetry, symmetrize_born_and_dielectric

SNO2 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "phonopy-vasp-born-SnO2" / "vasprun.xml-born.xz"
if not SNO2.exists():  # the main checkout and CI clone both sit beside shared/
    SNO2 = Path("/work/shared/datasets/phonopy-vasp-born-SnO2/vasprun.xml-born.xz")

# ``phonopy-vasp-born vasprun.xml-born.xz`` (phonopy 4.10.0) on that file, lines 2-4.
PHONOPY_VASP_BORN = """\
   4.42038879    0.00000000    0.00000000    0.00000000    4.42038879    0.00000000    0.00000000    0.00000000    4.77663396
   4.09429092    0.47310041    0.00000000    0.47310041    4.09429092    0.00000000    0.00000000    0.00000000    4.48212636
  -2.04714546    0.71774951    0.00000000    0.71774951   -2.04714546    0.00000000    0.00000000    0.00000000   -2.24106318
"""


def read_sno2() -> tuple[ase.Atoms, np.ndarray, np.ndarray]:
    """The structure, the DFT Born charges (6, 3, 3) and the dielectric tensor of the fixture."""
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.vasp import Vasprun

    if not SNO2.exists():
        pytest.skip(f"fixture {SNO2} not found")
    structure = Vasprun(str(SNO2), parse_potcar_file=False).final_structure
    root = ET.fromstring(lzma.open(SNO2).read())
    born = np.array([[[float(x) for x in v.text.split()] for v in block.findall("v")]
                     for block in root.find(".//array[@name='born_charges']").findall("set")])
    eps = np.array([[float(x) for x in v.text.split()] for v in root.find(".//varray[@name='epsilon']").findall("v")])
    return AseAtomsAdaptor.get_atoms(structure), born, eps


def wurtzite() -> ase.Atoms:
    return ase.build.bulk("AlN", "wurtzite", a=3.11, c=4.98)


def random_born(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    eps = rng.normal(size=(3, 3))
    return rng.normal(size=(n, 3, 3)), eps @ eps.T + 3 * np.eye(3)


def numbers_of(text: str) -> np.ndarray:
    return np.array([[float(x) for x in line.split()] for line in text.strip().splitlines()])


def test_born_file_from_sno2_dft_tensors_matches_phonopy_vasp_born(tmp_path):
    atoms, born, eps = read_sno2()
    assert np.abs(born.sum(0)).max() < 1e-6  # the DFT charges obey the sum rule; their symmetry is broken by 2e-4
    path = tmp_path / "BORN"
    result = write_born_file(path, to_sample(atoms), born, eps)
    lines = path.read_text().splitlines()
    assert lines[0].split()[0] == "default"
    assert "atoms 1 3 " in lines[0]  # Sn (atoms 1, 2) and O (atoms 3-6): two orbits, first atoms 1 and 3
    assert len(lines) == 4
    np.testing.assert_allclose(numbers_of("\n".join(lines[1:])), numbers_of(PHONOPY_VASP_BORN), atol=1e-8, rtol=0)
    assert result.international_symbol == "P4_2/mnm" and result.num_operations == 16
    assert result.born_change == pytest.approx(2.1885e-4, rel=1e-3)  # the z-x, z-y noise of the O charges


def test_born_file_matches_phonopy_run_live_on_the_same_vasprun(tmp_path):
    """The same comparison against phonopy's own code path (skipped where phonopy is not installed)."""
    pytest.importorskip("phonopy")
    from phonopy.interface.vasp import get_born_vasprunxml

    atoms, born, eps = read_sno2()
    borns, epsilon, atom_indices = get_born_vasprunxml(
        str(SNO2), primitive_matrix=np.eye(3), supercell_matrix=np.eye(3, dtype="int64"), symmetrize_tensors=True
    )
    result = symmetrize_born_and_dielectric(to_sample(atoms), born, eps)
    np.testing.assert_array_equal(result.independent_atoms, atom_indices)
    np.testing.assert_allclose(result.born_charges[result.independent_atoms], borns, atol=1e-12)
    np.testing.assert_allclose(result.dielectric, epsilon, atol=1e-12)


@pytest.mark.parametrize("make", [wurtzite, lambda: read_sno2()[0]], ids=["AlN-wurtzite", "SnO2-rutile"])
def test_phonopy_reads_our_born_file_back_as_the_symmetrised_tensors(make, tmp_path):
    """phonopy's ``parse_BORN`` takes the independent atoms' lines in its own order and expands
    them to every atom with its own symmetry: it must give back exactly our symmetrised charges."""
    pytest.importorskip("phonopy")
    from phonopy.file_IO import parse_BORN
    from phonopy.interface.calculator import read_crystal_structure

    atoms = make()
    atoms.write(tmp_path / "POSCAR", format="vasp", direct=True)
    unitcell, _ = read_crystal_structure(str(tmp_path / "POSCAR"), interface_mode="vasp")
    born, eps = random_born(len(atoms), seed=3)
    result = write_born_file(tmp_path / "BORN", to_sample(atoms), born, eps)
    nac = parse_BORN(unitcell, filename=str(tmp_path / "BORN"))
    assert "factor" not in nac  # "default": phonopy's own unit conversion
    np.testing.assert_allclose(nac["born"], result.born_charges, atol=2e-8)  # 8 decimals in the file
    np.testing.assert_allclose(nac["dielectric"], result.dielectric, atol=2e-8)


def test_symmetrisation_agrees_with_phonopy_for_arbitrary_tensors():
    pytest.importorskip("phonopy")
    from phonopy.structure.atoms import PhonopyAtoms
    from phonopy.structure.symmetry import symmetrize_borns_and_epsilon

    atoms, _, _ = read_sno2()
    born, eps = random_born(len(atoms), seed=4)
    cell = PhonopyAtoms(numbers=atoms.numbers, cell=atoms.cell.array, scaled_positions=atoms.get_scaled_positions())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random charges are "largely broken", as intended
        borns_ref, eps_ref = symmetrize_borns_and_epsilon(born, eps, cell)
    result = symmetrize_born_and_dielectric(to_sample(atoms), born, eps)
    np.testing.assert_allclose(result.born_charges, borns_ref, atol=1e-12)
    np.testing.assert_allclose(result.dielectric, 0.5 * (eps_ref + eps_ref.T), atol=1e-12)


def site_symmetry_violation(atoms: ase.Atoms, born: np.ndarray, eps: np.ndarray) -> float:
    """max over operations g and atoms i of |Z_{p_g(i)} - R_g Z_i R_g^T| and |eps - R eps R^T|
    (a loop per operation: the test's own reference, independent of the vectorised code)."""
    rotations, permutations, _, _ = crystal_symmetry(to_sample(atoms))
    worst = 0.0
    for rotation, perm in zip(rotations, permutations, strict=True):
        for i in range(len(atoms)):
            worst = max(worst, np.abs(born[perm[i]] - rotation @ born[i] @ rotation.T).max())
        worst = max(worst, np.abs(eps - rotation @ eps @ rotation.T).max())
    return worst


@pytest.mark.parametrize("make", [wurtzite, lambda: read_sno2()[0]], ids=["AlN-wurtzite", "SnO2-rutile"])
def test_symmetrised_tensors_obey_neumann_and_the_sum_rule_and_are_a_projection(make):
    atoms = make()
    born, eps = random_born(len(atoms), seed=5)
    assert site_symmetry_violation(atoms, born, eps) > 0.1  # the input is far from symmetric
    result = symmetrize_born_and_dielectric(to_sample(atoms), born, eps)
    assert site_symmetry_violation(atoms, result.born_charges, result.dielectric) < 1e-12
    np.testing.assert_allclose(result.born_charges.sum(0), 0, atol=1e-12)
    np.testing.assert_allclose(result.dielectric, result.dielectric.T, atol=1e-14)
    again = symmetrize_born_and_dielectric(to_sample(atoms), result.born_charges, result.dielectric)
    np.testing.assert_allclose(again.born_charges, result.born_charges, atol=1e-12)
    np.testing.assert_allclose(again.dielectric, result.dielectric, atol=1e-12)
    assert again.born_change < 1e-12 and again.asr_residual < 1e-12


def test_the_site_symmetry_check_catches_an_average_that_forgets_to_move_the_atoms():
    """Averaging R Z_i R^T onto atom i itself, rather than onto its image p(i), must be caught."""
    atoms, _, _ = read_sno2()
    born, eps = random_born(len(atoms), seed=6)
    rotations, _, _, _ = crystal_symmetry(to_sample(atoms))
    wrong = np.einsum("gab,ibc,gdc->iad", rotations, born, rotations) / len(rotations)
    assert site_symmetry_violation(atoms, wrong, np.eye(3)) > 1e-2


def test_wurtzite_keeps_the_uniaxial_form_with_z_star_zz_free():
    """6mm site symmetry: Z* = diag(a, a, c) on each site and eps = diag(e1, e1, e3)."""
    atoms = wurtzite()
    born, eps = random_born(len(atoms), seed=7)
    result = symmetrize_born_and_dielectric(to_sample(atoms), born, eps)
    for z in result.born_charges:
        np.testing.assert_allclose(z - np.diag(np.diag(z)), 0, atol=1e-12)
        assert z[0, 0] == pytest.approx(z[1, 1], abs=1e-12)
    assert result.dielectric[0, 0] == pytest.approx(result.dielectric[1, 1], abs=1e-12)
    np.testing.assert_array_equal(result.independent_atoms, [0, 1])  # Al then N (ase orders Al, N, Al, N)


def test_molecules_and_wrong_shapes_are_refused_with_a_clear_message(tmp_path):
    water = ase.Atoms("H2O", positions=[[0, 0.76, -0.47], [0, -0.76, -0.47], [0, 0, 0.12]])
    with pytest.raises(ValueError, match=r"BORN file needs a crystal periodic in 3 directions"):
        write_born_file(tmp_path / "BORN", to_sample(water), np.zeros((3, 3, 3)), np.eye(3))
    with pytest.raises(ValueError, match=r"born_charges: expected shape \(4, 3, 3\), got \(3, 3, 3\)"):
        write_born_file(tmp_path / "BORN", to_sample(wurtzite()), np.zeros((3, 3, 3)), np.eye(3))
    assert not (tmp_path / "BORN").exists()
