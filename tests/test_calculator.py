"""The ASE calculator: conservative forces -dE/dx by autograd (checked against finite
differences of the energy), forces from a force head, every tensor in ``calc.results``
rotating with the structure, and ase's dynamics and optimisers running on it."""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import pytest
import torch
from ase.calculators.calculator import PropertyNotImplementedError

import tensorframe
from tensorframe import TensorframeCalculator
from tensorframe.checkpoint import CheckpointError

ENERGY_HEADS = [
    {"name": "scalar", "field": "energy", "hidden": 8},
    {"name": "born", "hidden": 8},
    {"name": "dielectric", "positive_definite": True, "hidden": 8},
    {"name": "tensor", "field": "dipole", "hidden": 8},
    {"name": "tensor", "field": "polarizability", "hidden": 8},
]
FORCE_HEADS = [{"name": "force", "hidden": 8}, {"name": "born", "acoustic_sum_rule": True, "hidden": 8}]


def make_model(heads: list[dict], seed: int = 0) -> tensorframe.TensorModel:
    config = {"cutoff": 3.5, "triplet_cutoff": 3.0, "backbone": {"name": "reference", "hidden": 8, "num_radial": 6},
              "heads": heads, "lifting": {"hidden": 8, "out_dim": 8}}
    torch.manual_seed(seed)
    return tensorframe.build_model(config).double().eval()


@pytest.fixture(scope="module")
def energy_model() -> tensorframe.TensorModel:
    model = make_model(ENERGY_HEADS)
    model.scaling["energy"].set(2.0, shift=-1.0)
    return model


def molecule() -> ase.Atoms:
    """A bent, asymmetric 4-atom molecule: no symmetry zeroes a force component."""
    return ase.Atoms("CHOF", positions=[[0.0, 0.0, 0.0], [1.05, 0.12, -0.08], [-0.35, 1.25, 0.2], [-0.5, -0.7, 1.0]])


def crystal() -> ase.Atoms:
    atoms = ase.build.bulk("NaCl", "rocksalt", a=4.6)
    atoms.positions[1] += [0.13, -0.07, 0.21]
    return atoms


def numeric_forces(atoms: ase.Atoms, d: float = 1e-5) -> np.ndarray:
    """-dE/dx by central differences of the calculator's energy (the test's own reference)."""
    forces = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for a in range(3):
            energies = []
            for step in (d, -d):
                moved = atoms.copy()
                moved.calc = atoms.calc
                moved.positions[i, a] += step
                energies.append(moved.get_potential_energy())
            forces[i, a] = -(energies[0] - energies[1]) / (2 * d)
    return forces


def random_orthogonal(seed: int, improper: bool) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return -q if improper else q


def rotated(atoms: ase.Atoms, rotation: np.ndarray) -> ase.Atoms:
    out = atoms.copy()
    out.positions = atoms.positions @ rotation.T
    if atoms.pbc.any():
        out.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    return out


def test_properties_follow_the_heads(energy_model):
    calc = TensorframeCalculator(energy_model)
    assert {"energy", "forces", "free_energy", "born_charges", "dielectric", "dipole", "polarizability"} <= set(
        calc.implemented_properties)
    force_calc = TensorframeCalculator(make_model(FORCE_HEADS))
    assert "forces" in force_calc.implemented_properties and "energy" not in force_calc.implemented_properties
    atoms = molecule()
    atoms.calc = force_calc
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_potential_energy()


@pytest.mark.parametrize("make", [molecule, crystal], ids=["molecule", "crystal"])
def test_forces_are_minus_the_energy_gradient(energy_model, make):
    atoms = make()
    atoms.calc = TensorframeCalculator(energy_model)
    forces = atoms.get_forces()
    numeric = numeric_forces(atoms, d=1e-5)
    assert np.abs(forces).max() > 1e-3  # not trivially zero
    np.testing.assert_allclose(forces, numeric, atol=1e-7)
    # A periodic crystal: the forces of the cell sum to zero (translation invariance).
    np.testing.assert_allclose(forces.sum(0), 0, atol=1e-10)


def test_results_hold_every_field_and_agree_with_predict(energy_model):
    atoms = crystal()
    calc = TensorframeCalculator(energy_model)
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    expected = energy_model.predict([atoms])[0]
    assert isinstance(energy, float) and energy == pytest.approx(float(expected["energy"]), abs=1e-12)
    for name in ("born_charges", "dielectric", "dipole", "polarizability"):
        assert isinstance(calc.results[name], np.ndarray) and calc.results[name].dtype == np.float64
        np.testing.assert_allclose(calc.results[name], expected[name], atol=1e-12, err_msg=name)
    assert calc.results["born_charges"].shape == (2, 3, 3) and calc.results["dipole"].shape == (3,)


@pytest.mark.parametrize("improper", [False, True], ids=["proper", "improper"])
def test_results_rotate_with_the_atoms(energy_model, improper):
    rotation = random_orthogonal(11, improper)
    calc = TensorframeCalculator(energy_model)
    atoms = molecule()
    atoms.calc = calc
    before_forces = atoms.get_forces()
    before = dict(calc.results)
    turned = rotated(molecule(), rotation)
    turned.calc = calc
    after_forces = turned.get_forces()
    after = calc.results
    np.testing.assert_allclose(after_forces, before_forces @ rotation.T, atol=1e-10)
    assert after["energy"] == pytest.approx(before["energy"], abs=1e-10)
    np.testing.assert_allclose(after["born_charges"], rotation @ before["born_charges"] @ rotation.T, atol=1e-10)
    np.testing.assert_allclose(after["dielectric"], rotation @ before["dielectric"] @ rotation.T, atol=1e-10)
    np.testing.assert_allclose(after["polarizability"], rotation @ before["polarizability"] @ rotation.T, atol=1e-10)
    np.testing.assert_allclose(after["dipole"], rotation @ before["dipole"], atol=1e-10)


def test_force_head_forces_come_from_the_head_and_rotate(tmp_path):
    model = make_model(FORCE_HEADS, seed=2)
    path = tmp_path / "force.pt"
    tensorframe.save_checkpoint(path, model)
    calc = TensorframeCalculator(path, device="cpu")  # from a checkpoint file
    atoms = crystal()
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_forces(), model.predict([crystal()])[0]["forces"], atol=1e-12)
    np.testing.assert_allclose(calc.results["born_charges"].sum(0), 0, atol=1e-12)  # the ASR head
    rotation = random_orthogonal(3, improper=True)
    turned = rotated(crystal(), rotation)
    turned.calc = calc
    np.testing.assert_allclose(turned.get_forces(), atoms.get_forces() @ rotation.T, atol=1e-10)


def test_velocity_verlet_conserves_the_energy_of_autograd_forces(energy_model):
    """NVE with conservative forces: the total energy drifts far less than the kinetic energy moves."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = molecule()
    atoms.calc = TensorframeCalculator(energy_model)
    kt = units.kB * 300
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(np.random.default_rng(0).normal(size=(len(atoms), 3)) * np.sqrt(masses * kt))
    totals, kinetic = [], []

    def record() -> None:
        totals.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
        kinetic.append(atoms.get_kinetic_energy())

    dynamics = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    dynamics.attach(record, interval=1)
    dynamics.run(40)
    assert len(totals) == 41
    swing = max(kinetic) - min(kinetic)
    assert swing > 1e-3  # the atoms do move in the potential
    assert max(totals) - min(totals) < 1e-3 * swing  # measured 1.6e-5 * swing


def test_an_optimiser_lowers_the_energy(energy_model):
    from ase.optimize import BFGS

    atoms = molecule()
    atoms.calc = TensorframeCalculator(energy_model)
    start = atoms.get_potential_energy()
    start_fmax = np.linalg.norm(atoms.get_forces(), axis=1).max()
    BFGS(atoms, logfile=None, maxstep=0.05).run(fmax=1e-4, steps=5)
    assert atoms.get_potential_energy() < start - 1e-4
    assert np.linalg.norm(atoms.get_forces(), axis=1).max() < start_fmax


def test_a_bad_checkpoint_path_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such checkpoint file"):
        TensorframeCalculator(tmp_path / "nope.pt")
    with pytest.raises(TypeError, match="expected a TensorModel or a checkpoint path"):
        TensorframeCalculator(object())


CONSERVATIVE_HEADS = [{"name": "energy", "hidden": 8}, {"name": "born", "hidden": 8}]


def conservative_model(seed: int = 4) -> tensorframe.TensorModel:
    config = {"cutoff": 3.5, "triplet_cutoff": 3.0, "conservative": True,
              "backbone": {"name": "reference", "hidden": 8, "num_radial": 6},
              "heads": CONSERVATIVE_HEADS, "lifting": {"hidden": 8, "out_dim": 8}}
    torch.manual_seed(seed)
    model = tensorframe.build_model(config).double().eval()
    model.scaling["energy"].set(20.0)
    return model


def test_conservative_calculator_gives_energy_forces_stress_and_every_field():
    model = conservative_model()
    calc = TensorframeCalculator(model)
    atoms = crystal()
    atoms.calc = calc
    stress = atoms.get_stress()  # one forward + backward fills every result
    assert stress.shape == (6,) and np.abs(stress).max() > 1e-6
    assert {"energy", "forces", "stress", "virial", "born_charges"} <= set(calc.results)
    expected = model.predict([crystal()])[0]
    from ase.stress import full_3x3_to_voigt_6_stress

    np.testing.assert_allclose(stress, full_3x3_to_voigt_6_stress(expected["stress"]), atol=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), expected["forces"], atol=1e-12)
    np.testing.assert_allclose(calc.get_property("born_charges", atoms), expected["born_charges"], atol=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), numeric_forces(atoms), atol=1e-7)
    # Stress: the energy's strain derivative, by central differences through the calculator.
    volume, step, numeric = atoms.get_volume(), 1e-5, np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * step / 2
                strain[b, a] += sign * step / 2
                moved = atoms.copy()
                moved.set_cell(atoms.cell.array @ strain, scale_atoms=True)
                moved.calc = calc
                energies.append(moved.get_potential_energy())
            numeric[a, b] = (energies[0] - energies[1]) / (2 * step) / volume
    np.testing.assert_allclose(full_3x3_to_voigt_6_stress(numeric), stress, atol=1e-9)


def test_a_molecule_has_forces_but_no_stress():
    atoms = molecule()
    atoms.calc = TensorframeCalculator(conservative_model())
    assert atoms.get_forces().shape == (4, 3)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_a_tensor_only_model_serves_its_tensors_and_refuses_forces_cleanly():
    model = make_model([{"name": "born", "hidden": 8}, {"name": "dielectric", "hidden": 8}])
    calc = TensorframeCalculator(model)
    atoms = crystal()
    atoms.calc = calc
    assert calc.get_property("born_charges", atoms).shape == (2, 3, 3)
    assert calc.get_property("dielectric", atoms).shape == (3, 3)
    for call in (atoms.get_forces, atoms.get_potential_energy, atoms.get_stress):
        with pytest.raises(PropertyNotImplementedError):
            call()
