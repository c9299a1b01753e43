"""Readers on the real files of ../shared/datasets, and their conventions pinned by physics.

Each check reads a few frames only. What the files hold comes from each PROVENANCE.md:

- deepmd-*: DeePMD npy systems (Å, eV, eV/Å); atomic dipoles only on O (the reformat layout
  pads H with zeros; the DPLR set has rows for O only).
- jarvis-vasp-lepsilon-AlN: VASP DFPT OUTCAR + vasprun.xml of wurtzite AlN (Born charges,
  eps electronic and ionic, piezo electronic and ionic in VASP column order).
- phonopy-vasp-born-SnO2: a compressed vasprun.xml of rutile SnO2 (Born charges, eps).
- abo3-p4mm-piezo: an ASE db of P4mm perovskites, piezo e and d in Voigt 3x6.

Physics that pins conventions: Neumann's principle under the space-group operations of the
stored structure (pins Voigt order, VASP column order and the frame), the acoustic sum rule,
d = e : S between three independently stored tensors (pins the strain-type factor 1/2),
zero net force and torque on isolated molecules (pins the force frame), and Wannier-centroid
displacements along the H-O-H bisector (pins the per-atom layout of atomic dipoles).
"""

from __future__ import annotations

import lzma
import warnings
from pathlib import Path

import ase.units
import numpy as np
import pytest

from tensorframe.io import units, voigt
from tensorframe.io.ase_reader import read_ase
from tensorframe.io.asedb import read_asedb
from tensorframe.io.deepmd import read_deepmd
from tensorframe.io.id_prop import read_id_prop
from tensorframe.io.read import guess_format, read_structures
from tensorframe.io.vasp import read_vasp
from tensorframe.registry import get_registry
from tensorframe.types import Sample

FIELDS = get_registry().fields  # the field table the readers are given (read_structures passes it)


def _datasets() -> Path:
    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    return beside_repo if beside_repo.is_dir() else Path("/work/shared/datasets")


DATASETS = _datasets()
ALN = DATASETS / "jarvis-vasp-lepsilon-AlN"
SNO2 = DATASETS / "phonopy-vasp-born-SnO2" / "vasprun.xml-born.xz"
ABO3 = DATASETS / "abo3-p4mm-piezo" / "ABO3_P4mm_piezo.db"
BECS = DATASETS / "e3nn-crystal-becs-eps" / "phonon_becs_epsilon.xyz"
WATER = DATASETS / "tensoap-water-response" / "water_monomer_coords_1000.xyz"
ABO3_KEYS = {
    "Born Effective Charge Tensor": "born_charges",
    "Static Dielectric Tensor": "dielectric",
    "Piezoelectric Stress Tensor eij": "piezo",
    "Piezoelectric Strain Tensor dij": "piezo_strain",
    "Elastic Stiffness Tensor Cij": "elastic",
}


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"data set file {path} is absent (../shared/datasets is not next to this checkout)")
    return path


def symmetry_operations(sample: Sample, symprec: float = 1e-3) -> list[tuple[np.ndarray, np.ndarray]]:
    """(R, perm) for each space-group operation of the stored structure, R Cartesian and
    perm[k] the atom that atom k is sent to."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    structure = Structure(Lattice(sample.cell), sample.numbers, sample.positions, coords_are_cartesian=True)
    frac = structure.frac_coords
    result = []
    for op in SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_operations(cartesian=False):
        moved = frac @ op.rotation_matrix.T + op.translation_vector
        delta = moved[:, None, :] - frac[None, :, :]
        delta -= np.round(delta)
        perm = np.argmin(np.linalg.norm(delta @ sample.cell, axis=-1), axis=1)
        assert sorted(perm) == list(range(sample.num_atoms))
        cartesian = sample.cell.T @ op.rotation_matrix @ np.linalg.inv(sample.cell.T)
        result.append((cartesian, perm))
    assert len(result) > 1
    return result


def assert_neumann(sample: Sample, atol: float, symprec: float = 1e-3, piezo_atol: float | None = None) -> None:
    """Every label is unchanged by every operation of the crystal (atoms permuted)."""
    t = sample.targets
    piezo_atol = atol if piezo_atol is None else piezo_atol
    for r, perm in symmetry_operations(sample, symprec):
        if "dielectric" in t:
            np.testing.assert_allclose(r @ t["dielectric"] @ r.T, t["dielectric"], atol=atol)
        if "piezo" in t:
            np.testing.assert_allclose(np.einsum("ia,jb,kc,abc->ijk", r, r, r, t["piezo"]), t["piezo"], atol=piezo_atol)
        if "born_charges" in t:
            z = t["born_charges"]
            np.testing.assert_allclose(np.einsum("ia,kab,jb->kij", r, z, r), z[np.argsort(perm)], atol=atol)


# ---- voigt.py ----

def test_voigt_order_is_xx_yy_zz_yz_xz_xy():
    np.testing.assert_array_equal(voigt.voigt_to_rank2(np.arange(1.0, 7.0)), [[1, 6, 5], [6, 2, 4], [5, 4, 3]])
    np.testing.assert_array_equal(voigt.voigt_to_rank2(np.arange(1.0, 7.0), "strain"),
                                  [[1, 3, 2.5], [3, 2, 2], [2.5, 2, 3]])
    e = voigt.voigt_to_rank3(np.arange(18.0).reshape(3, 6))
    assert (e[2, 2, 2], e[2, 0, 0], e[0, 0, 2], e[0, 2, 0], e[1, 1, 2], e[0, 0, 1]) == (14, 12, 4, 4, 9, 5)
    d = voigt.voigt_to_rank3(np.arange(18.0).reshape(3, 6), "strain")
    assert (d[2, 2, 2], d[0, 0, 2], d[0, 0, 1]) == (14, 2, 2.5)  # shear pairs halved


@pytest.mark.parametrize("kind", ["stress", "strain"])
def test_rank2_and_rank3_round_trips(kind):
    rng = np.random.default_rng(0)
    v2, v3 = rng.normal(size=(4, 6)), rng.normal(size=(4, 3, 6))
    np.testing.assert_allclose(voigt.rank2_to_voigt(voigt.voigt_to_rank2(v2, kind), kind), v2, atol=1e-14)
    np.testing.assert_allclose(voigt.rank3_to_voigt(voigt.voigt_to_rank3(v3, kind), kind), v3, atol=1e-14)
    t3 = rng.normal(size=(3, 3, 3))
    t3 = (t3 + t3.transpose(0, 2, 1)) / 2
    np.testing.assert_allclose(voigt.voigt_to_rank3(voigt.rank3_to_voigt(t3, kind), kind), t3, atol=1e-14)


@pytest.mark.parametrize("kind", ["stress", "compliance"])
def test_rank4_round_trip(kind):
    rng = np.random.default_rng(1)
    v = rng.normal(size=(6, 6))
    v = v + v.T
    t = voigt.voigt_to_rank4(v, kind)
    for perm in ("jikl", "ijlk", "klij"):
        np.testing.assert_allclose(np.einsum(f"ijkl->{perm}", t), t, atol=1e-14)
    np.testing.assert_allclose(voigt.rank4_to_voigt(t, kind), v, atol=1e-14)


def test_strain_kinds_keep_work_and_hookes_law_in_voigt_form():
    """The factors are not a choice: sigma_ij eps_ij = sigma_J eps_J (work), and with
    stiffness C (stress kind) and compliance S = C^-1 (compliance kind) the Cartesian
    contractions give eps = S : sigma and d = e : S, as the Voigt products do."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 6))
    c_voigt = a @ a.T + 6 * np.eye(6)
    s_voigt = np.linalg.inv(c_voigt)
    sigma_v, e_v = rng.normal(size=6), rng.normal(size=(3, 6))
    eps_v = s_voigt @ sigma_v
    sigma, eps = voigt.voigt_to_rank2(sigma_v), voigt.voigt_to_rank2(eps_v, "strain")
    assert np.sum(sigma * eps) == pytest.approx(sigma_v @ eps_v)
    s = voigt.voigt_to_rank4(s_voigt, "compliance")
    np.testing.assert_allclose(np.einsum("ijkl,kl->ij", s, sigma), eps, atol=1e-13)
    d = np.einsum("imn,mnjk->ijk", voigt.voigt_to_rank3(e_v), s)
    np.testing.assert_allclose(d, voigt.voigt_to_rank3(e_v @ s_voigt, "strain"), atol=1e-13)
    c = voigt.voigt_to_rank4(c_voigt)
    np.testing.assert_allclose(np.einsum("ijkl,klmn->ijmn", c, s),
                               (np.einsum("ik,jl->ijkl", np.eye(3), np.eye(3))
                                + np.einsum("il,jk->ijkl", np.eye(3), np.eye(3))) / 2, atol=1e-12)


def test_vasp_column_order_agrees_with_pymatgen():
    from pymatgen.analysis.piezo import PiezoTensor

    vasp_columns = np.random.default_rng(3).normal(size=(3, 6))
    ours = voigt.voigt_to_rank3(voigt.vasp_to_voigt(vasp_columns))
    np.testing.assert_allclose(ours, np.asarray(PiezoTensor.from_vasp_voigt(vasp_columns)), atol=1e-15)
    assert not np.allclose(voigt.voigt_to_rank3(vasp_columns), ours)  # the order matters


# ---- units.py ----

def test_unit_factors_agree_with_ase_units():
    u = ase.units.create_units("2018")  # CODATA 2018, as tensorframe.io.units
    assert units.factor("energy", "Ha") == pytest.approx(u.Hartree, rel=1e-9)
    assert units.factor("forces", "Ha/bohr") == pytest.approx(u.Hartree / u.Bohr, rel=1e-9)
    assert units.factor("dipole", "e*bohr") == pytest.approx(u.Bohr, rel=1e-9)
    assert units.factor("dipole", "D") == pytest.approx(u.Debye, rel=1e-6)
    assert units.factor("polarizability", "Å^3") == pytest.approx(u.Bohr**-3, rel=1e-9)
    assert units.factor("piezo", "e/Å^2") == pytest.approx(u._e * 1e20, rel=1e-9)
    assert units.factor("elastic", "eV/Å^3") == pytest.approx(1 / u.GPa, rel=1e-6)
    with pytest.raises(ValueError, match=r"field 'energy': unknown unit 'Hartrees'; valid choices: eV, meV, Ha"):
        units.factor("energy", "Hartrees")


def test_ase_reader_converts_atomic_units():
    raw = read_ase(need(WATER), fields=FIELDS, key_map={"potential": "energy", "mu": "dipole"}, index=":2")
    converted = read_ase(WATER, fields=FIELDS, key_map={"potential": "energy", "mu": "dipole"}, index=":2",
                         units={"energy": "Ha", "dipole": "e*bohr"})
    for a, b in zip(raw, converted, strict=True):
        assert b.targets["energy"] == pytest.approx(a.targets["energy"] * ase.units.Hartree)
        np.testing.assert_allclose(b.targets["dipole"], a.targets["dipole"] * ase.units.Bohr)
    assert -2078 < converted[0].targets["energy"] < -2077  # -76.35 Ha


# ---- DeePMD ----

def test_deepmd_energies_forces_cells_of_periodic_water():
    system = need(DATASETS / "deepmd-water-forces" / "data_0")
    samples = read_deepmd(system, fields=FIELDS)
    coord = np.load(system / "set.000" / "coord.npy")
    force = np.load(system / "set.000" / "force.npy")
    assert len(samples) == 80
    s = samples[7]
    assert s.num_atoms == 192 and s.pbc.all()
    assert np.bincount(s.numbers)[[1, 8]].tolist() == [128, 64]
    np.testing.assert_array_equal(s.numbers, np.where(np.loadtxt(system / "type.raw") == 0, 8, 1))  # type_map "O H"
    np.testing.assert_allclose(s.cell, 12.444661 * np.eye(3), atol=1e-5)
    np.testing.assert_array_equal(s.positions, coord[7].reshape(192, 3).astype(np.float64))
    np.testing.assert_array_equal(s.targets["forces"], force[7].reshape(192, 3).astype(np.float64))
    assert s.targets["energy"] / 192 == pytest.approx(-155.956, abs=0.01)
    assert np.sqrt(np.mean([(x.targets["forces"] ** 2).mean() for x in samples])) == pytest.approx(0.81, abs=0.03)


def test_deepmd_reads_every_set_in_order():
    system = need(DATASETS / "deepmd-water-forces" / "data_1")
    samples = read_deepmd(system, fields=FIELDS)
    assert len(samples) == 160
    second = np.load(system / "set.001" / "coord.npy")[0].reshape(-1, 3)
    np.testing.assert_array_equal(samples[80].positions, second.astype(np.float64))


def test_deepmd_nopbc_molecules_have_zero_net_force_and_torque():
    """Isolated molecules: sum F = 0 and sum r x F = 0. The torque vanishes only when the
    forces are in the frame of the positions (a 90 degree rotation of F breaks it)."""
    root = need(DATASETS / "deepmd-nopbc-combustion")
    samples = read_deepmd(root, fields=FIELDS)
    assert len(samples) == 1562 + 485 + 15  # three systems, sorted: C1H4O2, C3H3O4, C4H3O1
    assert [s.num_atoms for s in (samples[0], samples[1562], samples[-1])] == [7, 10, 8]
    assert sorted(samples[0].numbers.tolist()) == [1, 1, 1, 1, 6, 8, 8]
    rotate = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    for s in samples[:40]:
        assert not s.pbc.any() and not s.cell.any()
        f, r = s.targets["forces"], s.positions - s.positions.mean(axis=0)
        assert np.abs(f.sum(axis=0)).max() < 1e-4
        assert np.abs(np.cross(r, f).sum(axis=0)).max() < 0.02
    wrong = max(np.abs(np.cross(s.positions, s.targets["forces"] @ rotate.T).sum(axis=0)).max() for s in samples[:40])
    assert wrong > 1.0


def _bisector_cosines(sample: Sample) -> np.ndarray:
    """cos between each O's atomic dipole and its H-O-H bisector (nearest two H, minimum image)."""
    o, h = np.flatnonzero(sample.numbers == 8), np.flatnonzero(sample.numbers == 1)
    d = sample.positions[h][None] - sample.positions[o][:, None]
    if sample.pbc.all():
        box = np.diag(sample.cell)
        d -= box * np.round(d / box)
    nearest = np.argsort(np.linalg.norm(d, axis=-1), axis=1)[:, :2]
    bisector = np.take_along_axis(d, nearest[:, :, None], axis=1).sum(axis=1)
    mu = sample.targets["atomic_dipole"][o]
    return (bisector * mu).sum(1) / np.linalg.norm(bisector, axis=1) / np.linalg.norm(mu, axis=1)


def test_deepmd_old_layout_atomic_dipoles_go_to_the_oxygens():
    """DPLR data: rows for the 128 O only. Each O's Wannier-centroid displacement points
    along its H-O-H bisector, which pins both the atom assignment and the frame."""
    system = need(DATASETS / "deepmd-dplr-water")
    samples = read_deepmd(system, fields=FIELDS)
    raw = np.load(system / "set.000" / "atomic_dipole.npy")
    assert len(samples) == 30 and {"energy", "forces", "virial", "atomic_dipole"} == set(samples[0].targets)
    for index in (0, 29):
        s = samples[index]
        dipoles, oxygen = s.targets["atomic_dipole"], s.numbers == 8
        np.testing.assert_array_equal(dipoles[oxygen], raw[index].reshape(128, 3))
        assert not dipoles[~oxygen].any()
        cosines = _bisector_cosines(s)
        assert cosines.mean() > 0.98 and cosines.min() > 0.9
    np.testing.assert_array_equal(read_deepmd(system, fields=FIELDS, sel_type=["O"])[3].targets["atomic_dipole"],
                                  samples[3].targets["atomic_dipole"])
    with pytest.raises(ValueError, match=r"atomic_dipole.npy: 128 labelled atoms per frame, but sel_type \['H'\] selects 256"):
        read_deepmd(system, fields=FIELDS, sel_type=["H"])


def test_deepmd_reformat_atomic_dipoles_and_nopbc_marker():
    system = need(DATASETS / "deepmd-water-tensor" / "dipole" / "training_data_reformat" / "atomic_system")
    samples = read_deepmd(system, fields=FIELDS)
    raw = np.load(system / "set.000" / "atomic_dipole.npy")
    s = samples[5]
    assert not s.pbc.any()  # the `nopbc` marker wins over box.npy
    np.testing.assert_array_equal(s.targets["atomic_dipole"], raw[5].reshape(192, 3).astype(np.float64))
    assert not s.targets["atomic_dipole"][s.numbers == 1].any()
    assert _bisector_cosines(s).mean() > 0.97
    periodic = read_deepmd(system, fields=FIELDS, pbc=True)[5]
    assert periodic.pbc.all() and 12.0 < periodic.cell[0, 0] < 13.0


def test_deepmd_global_polarizability_per_molecule():
    system = need(DATASETS / "deepmd-water-tensor" / "polar" / "training_data_reformat" / "global_system")
    samples = read_deepmd(system, fields=FIELDS)
    assert samples[0].pbc.all() and set(samples[0].targets) == {"polarizability"}
    per_molecule = np.mean([np.trace(s.targets["polarizability"]) / 3 / 64 for s in samples[:20]])
    assert per_molecule == pytest.approx(1.94, abs=0.05)  # PROVENANCE: 123.9 / 64


def test_deepmd_directory_of_systems_with_different_labels_is_an_error():
    with pytest.raises(ValueError, match=r"field 'dipole': missing, but given for .*global_system"):
        read_deepmd(need(DATASETS / "deepmd-water-tensor" / "dipole" / "training_data_reformat"), fields=FIELDS)


# ---- VASP ----

@pytest.fixture(scope="module")
def aln_outcar() -> Sample:
    (sample,) = read_vasp(need(ALN / "OUTCAR.JVASP-39"), fields=FIELDS)
    return sample


def test_aln_outcar_born_charges_dielectric_piezo(aln_outcar):
    s = aln_outcar
    assert s.numbers.tolist() == [13, 13, 7, 7] and s.pbc.all()
    z = s.targets["born_charges"]
    np.testing.assert_allclose(z[0, 0], [2.51993, 0.00002, 0.0], atol=1e-6)  # OUTCAR, ion 1, row 1
    np.testing.assert_allclose(np.diag(z[0]), [2.51993, 2.51991, 2.67381], atol=1e-6)
    assert z[0, 2, 2] == pytest.approx(2.7, abs=0.05) and z[2, 2, 2] == pytest.approx(-2.674, abs=1e-3)
    assert np.abs(z.sum(axis=0)).max() < 1e-3  # acoustic sum rule
    eps = s.targets["dielectric"]  # electronic (eps_inf)
    np.testing.assert_allclose(np.diag(eps), [4.37235, 4.37235, 4.57297], atol=1e-5)
    np.testing.assert_allclose(eps, eps.T, atol=1e-6)
    e = s.targets["piezo"]  # total = electronic + ionic, C/m^2
    assert e[2, 2, 2] == pytest.approx(0.41906 - 1.81324, abs=1e-4)
    assert e[2, 0, 0] == pytest.approx(-0.26756 + 0.82050, abs=1e-4)
    assert e[0, 0, 2] == e[0, 2, 0] == pytest.approx(-0.33748 + 0.61506, abs=1e-4)
    np.testing.assert_allclose(e, e.transpose(0, 2, 1))


def test_aln_piezo_sign_follows_the_polarity_of_the_stored_structure(aln_outcar):
    """Wurtzite with the vertical Al -> N bond along +c (metal polar) has e33 ~ +1.5 C/m^2
    and e31 < 0; this cell is N-polar (that bond points along -z), so both flip. A tensor
    read in another frame than the positions would not follow."""
    s = aln_outcar
    images = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]) @ s.cell
    al, n = s.positions[s.numbers == 13][0], s.positions[s.numbers == 7]
    bonds = (n[:, None] + images[None] - al).reshape(-1, 3)
    bonds = bonds[np.linalg.norm(bonds, axis=1) < 2.1]  # the four Al-N bonds
    (vertical,) = bonds[np.linalg.norm(bonds[:, :2], axis=1) < 1e-3]
    assert 1.8 < abs(vertical[2]) < 2.0
    e33, e31 = s.targets["piezo"][2, 2, 2], s.targets["piezo"][2, 0, 0]
    assert 1.2 < abs(e33) < 1.7 and np.sign(e33) == np.sign(vertical[2]) == -np.sign(e31)


def test_aln_outcar_tensors_obey_the_crystal_symmetry(aln_outcar):
    """Neumann's principle with the 12 operations of P6_3mc found from the stored positions:
    pins VASP's column order (XX YY ZZ XY YZ ZX) and that tensors share the positions' frame.
    The ionic piezo part itself breaks the symmetry by 0.011 C/m^2 (e15 0.6151 vs e24
    0.6037 in the OUTCAR), hence its tolerance; a column-order mix-up is off by 0.28."""
    assert_neumann(aln_outcar, atol=2e-4, piezo_atol=0.015)
    vasp_columns = voigt.rank3_to_voigt(aln_outcar.targets["piezo"])[:, [0, 1, 2, 5, 3, 4]]
    misread = aln_outcar.with_targets({"piezo": voigt.voigt_to_rank3(vasp_columns)})
    with pytest.raises(AssertionError):  # VASP's columns taken as standard Voigt break it
        assert_neumann(misread, atol=2e-4, piezo_atol=0.015)


def test_aln_dielectric_components_and_vasprun_agree(aln_outcar):
    total = read_vasp(ALN / "OUTCAR.JVASP-39", fields=FIELDS, dielectric="total", piezo="electronic")[0].targets
    np.testing.assert_allclose(np.diag(total["dielectric"]), [4.37235 + 3.73054, 4.37235 + 3.73052, 4.57297 + 4.97582], atol=1e-4)
    assert total["piezo"][2, 2, 2] == pytest.approx(0.41906, abs=1e-5)
    (run,) = read_vasp(need(ALN / "vasprun.xml.JVASP-39"), fields=FIELDS)
    assert set(run.targets) == {"born_charges", "dielectric", "energy", "forces", "stress"}  # ase reads the last three
    np.testing.assert_allclose(run.positions, aln_outcar.positions, atol=1e-5)  # OUTCAR prints 5 decimals
    np.testing.assert_allclose(run.targets["born_charges"], aln_outcar.targets["born_charges"], atol=1e-4)
    np.testing.assert_allclose(run.targets["dielectric"], aln_outcar.targets["dielectric"], atol=1e-4)
    ionic = read_vasp(ALN / "vasprun.xml.JVASP-39", fields=FIELDS, dielectric="ionic")[0].targets["dielectric"]
    assert ionic[2, 2] == pytest.approx(4.976, abs=1e-3)


def test_sno2_compressed_vasprun_keeps_rows_as_field_direction():
    (s,) = read_vasp(need(SNO2), fields=FIELDS)
    assert s.numbers.tolist() == [50, 50, 8, 8, 8, 8]
    z = s.targets["born_charges"]
    assert (z[0, 0, 1], z[0, 1, 0]) == (pytest.approx(0.47310022), pytest.approx(0.47310060))  # <v> rows as in the file
    assert np.abs(z.sum(axis=0)).max() < 0.02
    np.testing.assert_allclose(np.diag(s.targets["dielectric"]), [4.42039, 4.42039, 4.77663], atol=1e-5)
    assert_neumann(s, atol=1e-3)
    with pytest.raises(ValueError, match=r"vasprun.xml holds no piezoelectric tensor"):
        read_vasp(SNO2, fields=FIELDS, piezo="total")
    with pytest.raises(ValueError, match=r"field 'dielectric': the total tensor needs parts .*present: electronic"):
        read_vasp(SNO2, fields=FIELDS, dielectric="total")


def test_truncated_or_label_free_vasp_files(tmp_path):
    text = lzma.open(need(SNO2), "rt").read()
    truncated = tmp_path / "vasprun.xml"
    truncated.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=rf"^{truncated}: cannot be read as a VASP vasprun.xml"):
        read_vasp(truncated, fields=FIELDS)
    head = tmp_path / "OUTCAR"
    with open(need(ALN / "OUTCAR.JVASP-39")) as source:
        head.write_text("".join(next(source) for _ in range(1300)))
    with pytest.raises(ValueError, match=rf"^{head}: cannot be read as a VASP OUTCAR \(truncated\?\)"):
        read_vasp(head, fields=FIELDS)


# ---- ASE database ----

@pytest.fixture(scope="module")
def perovskites() -> list[Sample]:
    return read_asedb(need(ABO3), fields=FIELDS, key_map=ABO3_KEYS, limit=4)


def test_abo3_db_labels_and_voigt_conversion(perovskites):
    import ase.db

    row = ase.db.connect(ABO3).get(id=1)
    s = perovskites[0]
    assert s.numbers.tolist() == [47, 41, 8, 8, 8] and s.pbc.all()
    e_voigt = np.asarray(row.data["Piezoelectric Stress Tensor eij"])
    e = s.targets["piezo"]
    assert (e[2, 2, 2], e[2, 0, 0], e[0, 0, 2], e[0, 2, 0], e[1, 1, 2]) == (
        e_voigt[2, 2], e_voigt[2, 0], e_voigt[0, 4], e_voigt[0, 4], e_voigt[1, 3])
    d = s.targets["piezo_strain"]
    assert d[0, 0, 2] == pytest.approx(np.asarray(row.data["Piezoelectric Strain Tensor dij"])[0, 4] / 2)
    for index, sample in enumerate(perovskites):
        t = sample.targets
        assert np.abs(t["born_charges"].sum(axis=0)).max() < 1e-4, index
        np.testing.assert_allclose(t["dielectric"], t["dielectric"].T, atol=1e-6)
        assert np.linalg.eigvalsh(t["dielectric"]).min() > 1.0
        np.testing.assert_allclose(t["elastic"], t["elastic"].transpose(2, 3, 0, 1), atol=1e-9)


def test_abo3_piezo_strain_equals_stress_tensor_times_compliance(perovskites):
    """d = e : S (pC/N = 1000 C/m^2 / GPa) between three tensors stored separately: pins the
    strain-type halving of d and the compliance factors."""
    import ase.db

    database = ase.db.connect(ABO3)
    for index, sample in enumerate(perovskites):
        s_voigt = np.asarray(database.get(id=index + 1).data["Elastic Compliance Tensor Sij"])
        compliance = voigt.voigt_to_rank4(s_voigt, "compliance")
        d = 1000 * np.einsum("imn,mnjk->ijk", sample.targets["piezo"], compliance)
        np.testing.assert_allclose(d, sample.targets["piezo_strain"], atol=1e-3 * np.abs(d).max(), err_msg=str(index))


def test_abo3_tensors_obey_p4mm(perovskites):
    """Neumann's principle with the operations of the stored structures: pins Voigt order
    (a yz/xz swap puts e15 where 4mm forbids it) and the frame. The source's sign flips of
    whole piezo tensors (PROVENANCE) do not change this test."""
    for sample in perovskites[:2]:
        assert_neumann(sample, atol=1e-3, symprec=1e-2)
    columns = voigt.rank3_to_voigt(perovskites[0].targets["piezo"])
    swapped = voigt.voigt_to_rank3(columns[:, [0, 1, 2, 4, 3, 5]])  # the yz and xz columns exchanged
    with pytest.raises(AssertionError):
        assert_neumann(perovskites[0].with_targets({"piezo": swapped}), atol=1e-3, symprec=1e-2)


def test_asedb_selection_and_bad_rows(tmp_path):
    import ase
    import ase.db

    assert {s.num_atoms for s in read_asedb(need(ABO3), fields=FIELDS, selection="natoms=10", limit=2)} == {10}
    path = tmp_path / "bad.db"
    with ase.db.connect(path) as database:
        for k in range(3):
            data = {"eps": np.eye(3) * 2} if k != 1 else {"eps": np.array([[2.0, 0, 0], [0, np.nan, 0], [0, 0, 2]])}
            database.write(ase.Atoms("NaCl", positions=[[0, 0, 0], [2, 2, 2]], cell=4 * np.eye(3), pbc=True), data=data)
    with pytest.raises(ValueError, match=rf"^{path}: structure 1 \(row id 2\), field 'dielectric' \(key 'eps'\): NaN or inf"):
        read_asedb(path, fields=FIELDS, key_map={"eps": "dielectric"})
    garbage = tmp_path / "garbage.db"
    garbage.write_text("not a database")
    with pytest.raises(ValueError, match=rf"^{garbage}: cannot be read as an ASE database"):
        read_asedb(garbage, fields=FIELDS)


# ---- ETGNN layout: id_prop.csv + structure files ----

def _id_prop_folder(tmp_path: Path, crystals: list[Sample], suffix: str = ".vasp") -> Path:
    from pymatgen.core import Lattice, Structure

    rows = []
    for index, sample in enumerate(crystals):
        structure = Structure(Lattice(sample.cell), sample.numbers, sample.positions, coords_are_cartesian=True)
        structure.to(filename=str(tmp_path / f"crystal-{index}{suffix}"), fmt="cif" if suffix == ".cif" else "poscar")
        rows.append(",".join([f"crystal-{index}", *(f"{x:.10f}" for x in sample.targets["born_charges"].ravel())]))
    (tmp_path / "id_prop.csv").write_text("\n".join(rows) + "\n\n")
    return tmp_path


@pytest.mark.parametrize("suffix", [".vasp", ".cif"])
def test_id_prop_folder_reads_born_charges_in_atom_order(tmp_path, suffix):
    crystals = read_ase(need(BECS), fields=FIELDS, index=":3")
    folder = _id_prop_folder(tmp_path, crystals, suffix)
    assert guess_format(folder) == "id_prop"
    samples = read_structures(folder, field="born_charges")
    assert len(samples) == 3
    for original, sample in zip(crystals, samples, strict=True):
        np.testing.assert_array_equal(sample.numbers, original.numbers)
        np.testing.assert_allclose(sample.targets["born_charges"], original.targets["born_charges"], atol=1e-9)
        # A POSCAR keeps the Cartesian frame; a CIF keeps only lattice parameters and
        # fractional coordinates, and pymatgen puts a along x (documented trap).
        frac = np.linalg.solve(sample.cell.T, sample.positions.T).T
        expected = np.linalg.solve(original.cell.T, original.positions.T).T
        delta = frac - expected
        np.testing.assert_allclose(delta - np.round(delta), 0, atol=1e-6)
        if suffix == ".vasp":
            np.testing.assert_allclose(sample.positions, original.positions, atol=1e-5)


def test_id_prop_structure_level_labels_header_and_errors(tmp_path):
    crystals = read_ase(need(BECS), fields=FIELDS, index=":2")
    folder = _id_prop_folder(tmp_path, crystals)
    eps = [c.targets["dielectric"] for c in crystals]
    lines = ["id,e_xx,e_xy,e_xz,e_yx,e_yy,e_yz,e_zx,e_zy,e_zz"]
    lines += [",".join([f"crystal-{k}", *map(str, e.ravel())]) for k, e in enumerate(eps)]
    (folder / "eps.csv").write_text("\n".join(lines) + "\n")
    samples = read_id_prop(folder / "eps.csv", fields=FIELDS, field="dielectric", file_type="poscar")
    np.testing.assert_allclose(samples[1].targets["dielectric"], eps[1])
    table = folder / "id_prop.csv"
    n = crystals[1].num_atoms
    table.write_text(table.read_text().splitlines()[0] + "\n" + "crystal-1," + ",".join(["1.0"] * (9 * n - 1)) + "\n")
    with pytest.raises(ValueError, match=rf"{table}: structure 1 \(row 2, ID 'crystal-1'\), field 'born_charges': "
                                         rf"expected {9 * n} numbers for shape \({n}, 3, 3\), got shape \({9 * n - 1},\)"):
        read_id_prop(folder, fields=FIELDS, field="born_charges")
    table.write_text("crystal-0," + ",".join(["nan"] * (9 * crystals[0].num_atoms)) + "\n")
    with pytest.raises(ValueError, match=r"structure 0 \(row 1, ID 'crystal-0'\), field 'born_charges': NaN or inf at atom 0"):
        read_id_prop(folder, fields=FIELDS, field="born_charges")
    with pytest.raises(ValueError, match=r"the id_prop reader needs field="):
        read_structures(table)
    table.write_text("missing-id,1,2,3\n")
    with pytest.raises(FileNotFoundError, match=r"ID 'missing-id'\): no structure file; expected .*missing-id.vasp or"):
        read_id_prop(folder, fields=FIELDS, field="dipole")



def test_format_etgnn_is_the_renamed_id_prop_reader_and_warns_once(tmp_path, monkeypatch):
    """Users' configs say ``format: etgnn``: it reads with ``id_prop`` and warns the first time only."""
    crystals = read_ase(need(BECS), fields=FIELDS, index=":2")
    folder = _id_prop_folder(tmp_path, crystals)
    monkeypatch.setattr("tensorframe.io.read._WARNED", set())
    with pytest.warns(FutureWarning, match=r"^format 'etgnn': renamed to 'id_prop' \('etgnn' names a backbone\); "
                                           r"write format='id_prop' \(format: id_prop in a training config\)$"):
        old = read_structures(folder, format="etgnn", field="born_charges")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = read_structures(folder, format="etgnn", field="born_charges")
    new = read_structures(folder, format="id_prop", field="born_charges")
    for a, b, c in zip(old, again, new, strict=True):
        np.testing.assert_array_equal(a.targets["born_charges"], c.targets["born_charges"])
        np.testing.assert_array_equal(b.targets["born_charges"], c.targets["born_charges"])

# ---- bad input shared by every reader ----

def _deepmd_system(root: Path, frames: int = 2) -> Path:
    root.mkdir(parents=True)
    (root / "type.raw").write_text("0\n1\n1\n")
    (root / "type_map.raw").write_text("O\nH\n")
    (root / "set.000").mkdir()
    positions = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    np.save(root / "set.000" / "coord.npy", np.tile(positions.ravel(), (frames, 1)))
    np.save(root / "set.000" / "box.npy", np.tile(10 * np.eye(3).ravel(), (frames, 1)))
    np.save(root / "set.000" / "energy.npy", -np.arange(frames, dtype=float))
    np.save(root / "set.000" / "force.npy", np.zeros((frames, 9)))
    return root


def test_deepmd_bad_input_names_file_structure_and_field(tmp_path):
    system = _deepmd_system(tmp_path / "sys")
    assert [float(s.targets["energy"]) for s in read_deepmd(system, fields=FIELDS)] == [0.0, -1.0]
    force = np.zeros((2, 9))
    force[1, 4] = np.nan
    np.save(system / "set.000" / "force.npy", force)
    with pytest.raises(ValueError, match=rf"^{system / 'set.000' / 'force.npy'}: structure 1 \(frame 1 of this set\), "
                                         r"field 'forces': NaN or inf at atom 1"):
        read_deepmd(system, fields=FIELDS)
    np.save(system / "set.000" / "force.npy", np.zeros((2, 6)))
    with pytest.raises(ValueError, match=r"force.npy: structure 0 .*field 'forces': expected 9 numbers for shape \(3, 3\)"):
        read_deepmd(system, fields=FIELDS)
    np.save(system / "set.000" / "force.npy", np.zeros((2, 9)))
    coord = system / "set.000" / "coord.npy"
    coord.write_bytes(coord.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"^{coord}: cannot be read \(truncated"):
        read_deepmd(system, fields=FIELDS)
    np.save(coord, np.zeros((2, 6)))
    with pytest.raises(ValueError, match=rf"^{coord}: expected shape \(2, 9\) \(frames, values\), got \(2, 6\)"):
        read_deepmd(system, fields=FIELDS)
    np.save(coord, np.zeros((2, 9)))  # three atoms on one spot
    with pytest.raises(ValueError, match=r"set.000: structure 0 \(frame 0 of this set\): atoms 0 and 1 overlap, 0.000 Å"):
        read_deepmd(system, fields=FIELDS)
    (system / "type_map.raw").write_text("O\nQq\n")
    with pytest.raises(ValueError, match=r"type_map.raw: unknown element 'Qq'"):
        read_deepmd(system, fields=FIELDS)
    (system / "type_map.raw").write_text("O\n")
    with pytest.raises(ValueError, match=r"type.raw: types 0..1 but .*type_map.raw names 1 types"):
        read_deepmd(system, fields=FIELDS)
    with pytest.raises(ValueError, match=r"no DeePMD system found"):
        read_deepmd(tmp_path / "sys" / "set.000", fields=FIELDS)


def test_deepmd_label_missing_in_one_system(tmp_path):
    _deepmd_system(tmp_path / "a")
    second = _deepmd_system(tmp_path / "b")
    (second / "set.000" / "force.npy").unlink()
    with pytest.raises(ValueError, match=r"b/set.000: structure 2 \(frame 0 of this set\), field 'forces': missing, but given for"):
        read_structures(tmp_path)


XYZ = """3
Lattice="6 0 0 0 6 0 0 0 6" Properties=species:S:1:pos:R:3:becs:R:9 pbc="T T T"
{a} 0.0 0.0 0.0 1 0 0 0 1 0 0 0 1
H 1.0 0.0 0.0 {z} 0 0 0 -0.5 0 0 0 -0.5
H {x} {y} 0.0 -0.5 0 0 0 -0.5 0 0 0 -0.5
"""


def _xyz(a: str = "O", z: str = "-0.5", x: str = "0.0", y: str = "1.0") -> str:
    return XYZ.format(a=a, z=z, x=x, y=y)


@pytest.mark.parametrize(("frames", "message"), [
    ([_xyz(), _xyz(z="nan")], r"structure 1, field 'born_charges' \(key 'becs'\): NaN or inf at atom 1"),
    ([_xyz(), _xyz(x="1.05", y="0.0")], r"structure 1: atoms 1 and 2 overlap, 0.050 Å apart; expected at least min_distance=0.3 Å"),
    ([_xyz(a="X"), _xyz()], r"structure 0: atom 0 has unknown element \(atomic number 0\)"),
    ([_xyz(), _xyz().replace(":becs:R:9", "").replace(" 1 0 0 0 1 0 0 0 1", "").replace(" -0.5 0 0 0 -0.5 0 0 0 -0.5", "")],
     r"structure 1, field 'born_charges': missing, but given for .*structure 0"),
])
def test_ase_reader_bad_labels_and_structures(tmp_path, frames, message):
    path = tmp_path / "bad.xyz"
    path.write_text("".join(frames))
    with pytest.raises(ValueError, match=message) as info:
        read_structures(path)
    assert str(info.value).startswith(str(path))


def test_ase_errors_inside_a_frame_are_reported_as_unreadable_frames(tmp_path):
    path = tmp_path / "garbled.xyz"
    path.write_text(_xyz() + _xyz().replace("H 1.0 0.0 0.0", "H 1.0 abc 0.0"))
    with pytest.raises(ValueError, match=rf"^{path}: structure 1 cannot be read \(truncated or malformed file\?\)"):
        read_structures(path)


def test_flat_voigt_lists_are_converted_only_when_asked(tmp_path):
    path = tmp_path / "voigt.xyz"
    frame = _xyz().replace('pbc="T T T"', 'pbc="T T T" eps="1 2 3 4 5 6" e="{}"'.format(" ".join(map(str, range(18)))))
    path.write_text(frame)
    (sample,) = read_ase(path, fields=FIELDS, voigt=["dielectric", "piezo"], key_map={"e": "piezo"})
    np.testing.assert_array_equal(sample.targets["dielectric"], [[1, 6, 5], [6, 2, 4], [5, 4, 3]])
    assert sample.targets["piezo"][0, 0, 2] == 4 and sample.targets["piezo"][2, 0, 1] == 17
    (strain,) = read_ase(path, fields=FIELDS, voigt={"piezo": "strain"}, key_map={"e": "piezo"}, default_keys=False)
    assert strain.targets["piezo"][2, 0, 1] == 8.5
    with pytest.raises(ValueError, match=r"field 'dielectric' \(key 'eps'\): expected 9 numbers for shape \(3, 3\)"):
        read_ase(path, fields=FIELDS)


def test_read_structures_dispatch(tmp_path):
    assert guess_format(need(ALN / "OUTCAR.JVASP-39")) == "vasp"
    assert guess_format(SNO2) == "vasp"
    assert guess_format(ABO3) == "asedb"
    assert guess_format(DATASETS / "deepmd-dplr-water") == "deepmd"
    assert guess_format(tmp_path / "structures.xyz.gz") == "ase"
    assert len(read_structures(DATASETS / "deepmd-dplr-water")) == 30
    with pytest.raises(ValueError, match=r"neither a DeePMD system \(type.raw\) nor an id_prop folder"):
        read_structures(tmp_path)
    with pytest.raises(LookupError, match=r"unknown reader 'npy'; valid choices: ase, asedb, deepmd, id_prop, matten-nmr, vasp"):
        read_structures(tmp_path, format="npy")
