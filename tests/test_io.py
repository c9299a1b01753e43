"""The ase reader on real data sets and on broken files.

Real files come from ../shared/datasets (read-only, never copied here); each check reads
only the first few frames. What each file holds is taken from its PROVENANCE.md:

- e3nn-crystal-becs-eps/phonon_becs_epsilon.xyz: per-atom ``becs`` (9 numbers, a 3x3 Born
  tensor in e, sum rule enforced to 6e-8) and per-structure ``eps`` (9 numbers, eps_inf,
  symmetric to 3e-13), periodic crystals.
- tensoap-water-response/water_{monomer,dimer,zundel}_coords_1000.xyz: molecules written
  with ``Lattice="0 ... 0"``; ``potential`` (Hartree), ``mu`` (3), ``alpha`` (9), ``beta``
  (27, row-major); water_bulk_coords_1000.xyz: periodic, ``mu``, ``alpha``, ``epsilon``.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest

from tensorframe import build_model
from tensorframe.io.ase_reader import read_ase
from tensorframe.io.read import read_structures
from tensorframe.registry import get_registry

FIELDS = get_registry().fields  # the field table the readers are given (read_structures passes it)


def _datasets() -> Path:
    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    return beside_repo if beside_repo.is_dir() else Path("/work/shared/datasets")


DATASETS = _datasets()
BECS = DATASETS / "e3nn-crystal-becs-eps" / "phonon_becs_epsilon.xyz"
WATER = DATASETS / "tensoap-water-response"
BECS_KEYS = {"becs": "born_charges", "eps": "dielectric"}
WATER_KEYS = {"potential": "energy", "mu": "dipole", "alpha": "polarizability", "beta": "hyperpolarizability",
              "epsilon": "dielectric"}


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"data set file {path} is absent (../shared/datasets is not next to this checkout)")
    return path


# ---- Born charges and dielectric tensors of crystals ----

@pytest.fixture(scope="module")
def crystals():
    return read_ase(need(BECS), fields=FIELDS, key_map=BECS_KEYS, index=":5")


def test_becs_file_gives_born_charges_and_dielectric_per_crystal(crystals):
    reference = ase.io.read(BECS, index=":5")
    assert len(crystals) == 5
    for sample, atoms in zip(crystals, reference, strict=True):
        n = len(atoms)
        assert set(sample.targets) == {"born_charges", "dielectric"}
        assert sample.targets["born_charges"].shape == (n, 3, 3)
        assert sample.targets["dielectric"].shape == (3, 3)
        assert sample.pbc.all()
        np.testing.assert_array_equal(sample.numbers, atoms.numbers)
        np.testing.assert_array_equal(sample.positions, atoms.positions)
        np.testing.assert_array_equal(sample.cell, atoms.cell.array)


def test_becs_are_read_row_major(crystals):
    """Pinned against the file's text: frame 0, Li: row 0 = (1.73988244, 0, 0.09126204);
    frame 1, the first Zr is not symmetric: (1, 2) = 0.22819515 but (2, 1) = -0.28991234."""
    li = crystals[0].targets["born_charges"][0]
    np.testing.assert_allclose(li[0], [1.73988244, 0.0, 0.09126204])
    np.testing.assert_allclose(np.diag(li), [1.73988244, 1.25906357, 1.27638560])
    zr = crystals[1].targets["born_charges"][2]
    assert crystals[1].numbers[2] == 40
    assert zr[1, 2] == pytest.approx(0.22819515) and zr[2, 1] == pytest.approx(-0.28991234)
    assert crystals[0].targets["dielectric"][0, 2] == pytest.approx(-0.7963417644043346)


def test_becs_nearly_obey_the_acoustic_sum_rule(crystals):
    for index, sample in enumerate(crystals):
        born = sample.targets["born_charges"]
        assert np.abs(born.sum(axis=0)).max() < 1e-6, f"structure {index}"
        assert np.abs(born).max() > 0.5  # and they are not all zero


def test_dielectric_is_symmetric_and_at_least_one(crystals):
    for index, sample in enumerate(crystals):
        eps = sample.targets["dielectric"]
        np.testing.assert_allclose(eps, eps.T, atol=1e-10, err_msg=f"structure {index}")
        assert np.linalg.eigvalsh(eps).min() >= 1.0, f"structure {index}: eps_inf below 1"


def test_common_keys_are_read_without_key_map_unless_turned_off():
    """``becs``/``eps`` are in the default key map (units fixed: e, dimensionless)."""
    default = read_ase(need(BECS), fields=FIELDS, index=":2")
    mapped = read_ase(BECS, fields=FIELDS, key_map=BECS_KEYS, index=":2")
    for a, b in zip(default, mapped, strict=True):
        assert set(a.targets) == {"born_charges", "dielectric"}
        np.testing.assert_array_equal(a.targets["born_charges"], b.targets["born_charges"])
    assert all(sample.targets == {} for sample in read_ase(BECS, fields=FIELDS, index=":2", default_keys=False))


def test_read_structures_picks_the_ase_reader_for_xyz_and_passes_options():
    (sample,) = read_structures(need(BECS), key_map=BECS_KEYS, index="1")
    assert sample.num_atoms == 12 and sample.targets["born_charges"].shape == (12, 3, 3)


# ---- water: dipoles, polarizabilities, hyperpolarizabilities, dielectric ----

@pytest.mark.parametrize(("name", "atoms", "energy"), [
    ("monomer", 3, -76.35), ("dimer", 6, -152.69), ("zundel", 7, -153.02),
])
def test_water_molecules_give_dipole_polarizability_hyperpolarizability(name, atoms, energy):
    samples = read_ase(need(WATER / f"water_{name}_coords_1000.xyz"), fields=FIELDS, key_map=WATER_KEYS, index=":3")
    assert len(samples) == 3
    for index, sample in enumerate(samples):
        where = f"{name} structure {index}"
        assert sample.num_atoms == atoms
        # Lattice="0 ... 0" in the file: ase calls it periodic, but zero vectors repeat nothing.
        assert not sample.pbc.any(), where
        targets = sample.targets
        assert set(targets) == {"energy", "dipole", "polarizability", "hyperpolarizability"}, where
        assert targets["energy"].shape == () and targets["energy"] == pytest.approx(energy, abs=0.05)
        assert targets["dipole"].shape == (3,)
        alpha, beta = targets["polarizability"], targets["hyperpolarizability"]
        assert alpha.shape == (3, 3) and beta.shape == (3, 3, 3)
        np.testing.assert_allclose(alpha, alpha.T, atol=1e-6, err_msg=where)
        assert np.linalg.eigvalsh(alpha).min() > 0, where
        np.testing.assert_allclose(beta, beta.transpose(0, 2, 1), atol=1e-6, err_msg=where)  # beta_ijk = beta_ikj


def test_monomer_labels_obey_the_mirror_symmetry_of_the_molecular_plane():
    """Neumann's principle on real labels: the plane of a triatomic molecule is a mirror of
    its geometry, so mu, alpha and beta are unchanged by that reflection (components along
    the normal vanish in odd number). The frames are rotated water molecules, so this shows
    the labels are in the frame of the stored positions and beta is read in index order."""
    samples = read_ase(need(WATER / "water_monomer_coords_1000.xyz"), fields=FIELDS, key_map=WATER_KEYS, index=":20")
    for index, sample in enumerate(samples):
        o, h1, h2 = sample.positions
        normal = np.cross(h1 - o, h2 - o)
        normal /= np.linalg.norm(normal)
        m = np.eye(3) - 2 * np.outer(normal, normal)
        t = sample.targets
        where = f"structure {index}"
        assert np.abs(t["dipole"] @ normal).max() < 1e-5, where
        np.testing.assert_allclose(m @ t["dipole"], t["dipole"], atol=1e-5, err_msg=where)
        np.testing.assert_allclose(m @ t["polarizability"] @ m, t["polarizability"], atol=1e-5, err_msg=where)
        beta = np.einsum("ia,jb,kc,abc->ijk", m, m, m, t["hyperpolarizability"])
        np.testing.assert_allclose(beta, t["hyperpolarizability"], atol=1e-5, err_msg=where)
        # Not trivially true: beta does change under a reflection through another plane.
        other = np.eye(3) - 2 * np.outer(h1 - o, h1 - o) / np.dot(h1 - o, h1 - o)
        assert np.abs(np.einsum("ia,jb,kc,abc->ijk", other, other, other, t["hyperpolarizability"])
                      - t["hyperpolarizability"]).max() > 1e-2, where


def test_bulk_water_gives_a_periodic_cell_and_a_dielectric_tensor():
    samples = read_ase(need(WATER / "water_bulk_coords_1000.xyz"), fields=FIELDS, key_map=WATER_KEYS, index=":2")
    for index, sample in enumerate(samples):
        assert sample.num_atoms == 96 and sample.pbc.all()
        assert np.bincount(sample.numbers, minlength=9)[[1, 8]].tolist() == [64, 32]
        np.testing.assert_allclose(sample.cell, sample.cell[0, 0] * np.eye(3))  # cubic box
        assert 9.6 < sample.cell[0, 0] < 10.5
        eps = sample.targets["dielectric"]
        assert set(sample.targets) == {"dipole", "polarizability", "dielectric"}
        assert np.abs(eps - eps.T).max() < 1e-3, f"structure {index}"  # PROVENANCE: max asymmetry 7.5e-4
        assert np.linalg.eigvalsh((eps + eps.T) / 2).min() > 1.0


def test_read_molecules_go_through_a_model_with_label_shaped_predictions():
    samples = read_ase(need(WATER / "water_dimer_coords_1000.xyz"), fields=FIELDS, key_map=WATER_KEYS, index=":2")
    model = build_model({
        "cutoff": 3.0,
        "backbone": {"name": "reference", "hidden": 8},
        "heads": [{"name": "tensor", "field": f, "hidden": 8} for f in ("dipole", "polarizability", "hyperpolarizability")]
        + [{"name": "scalar", "field": "energy", "hidden": 8}],
    })
    for sample, prediction in zip(samples, model.predict(samples), strict=True):
        for field, label in sample.targets.items():
            assert prediction[field].shape == label.shape, field


# ---- bad input ----

FRAME = """2
Lattice="4.0 0.0 0.0 0.0 4.0 0.0 0.0 0.0 4.0" Properties=species:S:1:pos:R:3:becs:R:9 eps="{eps}" pbc="T T T"
Na 0.0 0.0 0.0 1.1 0.0 0.0 0.0 1.1 0.0 0.0 0.0 1.1
Cl 2.0 2.0 2.0 -1.1 0.0 0.0 0.0 -1.1 0.0 0.0 0.0 -1.1
"""
EPS = "2.0 0.0 0.0 0.0 2.0 0.0 0.0 0.0 2.0"


def test_good_synthetic_file_reads(tmp_path):
    path = tmp_path / "good.xyz"
    path.write_text(FRAME.format(eps=EPS) * 2)
    samples = read_ase(path, fields=FIELDS, key_map=BECS_KEYS)
    assert len(samples) == 2
    np.testing.assert_array_equal(samples[1].targets["born_charges"][1], -1.1 * np.eye(3))


def test_truncated_file_names_the_file_and_the_structure(tmp_path):
    path = tmp_path / "truncated.xyz"
    text = FRAME.format(eps=EPS) * 3
    path.write_text(text[: text.rindex("Cl")])  # the third frame loses its last atom
    with pytest.raises(ValueError) as info:
        read_ase(path, fields=FIELDS, key_map=BECS_KEYS)
    message = str(info.value)
    assert message.startswith(f"{path}: structure 2 cannot be read")
    assert "truncated" in message


def test_wrong_shaped_structure_label_names_file_structure_and_field(tmp_path):
    path = tmp_path / "short_eps.xyz"
    path.write_text(FRAME.format(eps=EPS) + FRAME.format(eps="2.0 2.0 2.0 0.0 0.0 0.0"))
    with pytest.raises(ValueError) as info:
        read_ase(path, fields=FIELDS, key_map=BECS_KEYS)
    assert str(info.value) == (
        f"{path}: structure 1, field 'dielectric' (key 'eps'): expected 9 numbers for shape (3, 3), got shape (6,)"
    )


def test_wrong_shaped_atom_label_names_file_structure_and_field(tmp_path):
    path = tmp_path / "short_becs.xyz"
    frame = FRAME.format(eps=EPS)
    broken = frame.replace("becs:R:9", "becs:R:6").replace(" 0.0 0.0 1.1\n", "\n").replace(" 0.0 0.0 -1.1\n", "\n")
    assert broken.splitlines()[2].split()[4:] == ["1.1", "0.0", "0.0", "0.0", "1.1", "0.0"]
    path.write_text(frame * 2 + broken)
    with pytest.raises(ValueError, match=r"structure 2, field 'born_charges' \(key 'becs'\): expected 18 numbers") as info:
        read_ase(path, fields=FIELDS, key_map=BECS_KEYS)
    assert str(path) in str(info.value)


def test_frame_numbers_in_errors_count_from_the_start_of_the_file(tmp_path):
    path = tmp_path / "late.xyz"
    path.write_text(FRAME.format(eps=EPS) * 3 + FRAME.format(eps="1.0"))
    with pytest.raises(ValueError, match=r"structure 3, field 'dielectric'"):
        read_ase(path, fields=FIELDS, key_map=BECS_KEYS, index="2:")
    with pytest.raises(ValueError, match=r"structure 3, field 'dielectric'"):
        read_ase(path, fields=FIELDS, key_map=BECS_KEYS, index="3")
    assert len(read_ase(path, fields=FIELDS, key_map=BECS_KEYS, index=":3")) == 3


def test_missing_file_and_non_structure_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_ase(tmp_path / "absent.xyz", fields=FIELDS)
    path = tmp_path / "notes.xyz"
    path.write_text("these are not atoms\n")
    with pytest.raises(ValueError, match=rf"^{path}: structure 0 cannot be read"):
        read_ase(path, fields=FIELDS)
