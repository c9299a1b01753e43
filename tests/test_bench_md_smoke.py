"""The MD stability benchmark (benchmarks/bench_md.py, protocol in benchmarks/peers/md_protocol.py).

Physics first: with ASE's EMT (a conservative potential), the total energy does not drift,
whether the potential is EMT's or minus the work of its forces, and that work matches EMT's
energy change. Deliberately broken force fields: forces 1.2 x -dE/dx reported with EMT's
energy must drift; a rotational (curl) force added to EMT's must heat the system and make the
force Jacobian asymmetric, while its work-based energy stays flat (velocity Verlet conserves
KE - W for any force, up to a bounded term, which is checked exactly). Then the breakdown
checks on made-up water geometries, and the tensorframe side on 20 steps with tiny untrained
models. No dataset, no peer venv.
"""

from __future__ import annotations

import ase
import ase.md.verlet
import ase.units
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

import tensorframe
from benchmarks.bench_md import render, save_model_record, tensorframe_md
from benchmarks.peers.md_protocol import (
    MDProtocol,
    energy_drift,
    force_asymmetry,
    geometry_check,
    oh_pairs,
    run_md,
    shadow_term,
    start_velocities,
    step_work,
)

EMT_PROTOCOL = MDProtocol(steps=250, timestep_fs=2.0)  # 0.5 ps of 32 Cu atoms: about a second


class BrokenEMT(Calculator):
    """EMT's energy with forces ``scale`` x EMT's, plus ``curl`` (eV/Å^2) x z-cross-(x - x0):
    a rotation about each atom's start site, which does net work around a closed loop."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, scale: float = 1.0, curl: float = 0.0, origin: np.ndarray | None = None) -> None:
        super().__init__()
        self.scale, self.curl, self.origin, self.emt = scale, curl, origin, EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        copy = self.atoms.copy()
        copy.calc = self.emt
        forces = self.scale * copy.get_forces()
        if self.curl:
            d = self.atoms.positions - self.origin
            forces = forces + self.curl * np.stack([-d[:, 1], d[:, 0], np.zeros(len(d))], axis=1)
        self.results = {"energy": copy.get_potential_energy(), "forces": forces}


class ScriptedForces(Calculator):
    """Forces only (no energy): a constant ``pull`` on atom ``atom``; nan after ``nan_after`` calls
    with moving atoms (the MD's calls: the start and one per step)."""

    implemented_properties = ["forces"]

    def __init__(self, atom: int = 0, pull: np.ndarray | None = None, nan_after: int | None = None) -> None:
        super().__init__()
        self.atom, self.pull, self.nan_after, self.calls = atom, pull, nan_after, 0

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        self.calls += bool(self.atoms.get_momenta().any())
        forces = np.zeros((len(self.atoms), 3))
        if self.pull is not None:
            forces[self.atom] = self.pull
        if self.nan_after is not None and self.calls > self.nan_after:
            forces[:] = np.nan
        self.results = {"forces": forces}


def copper() -> ase.Atoms:
    return bulk("Cu", cubic=True).repeat(2)


def waters() -> ase.Atoms:
    """Two waters in a periodic 6 Å cube; H 0 sits across the boundary from its O (index 4)."""
    positions = [[5.24, 3.0, 3.0], [0.44, 3.93, 3.0], [3.96, 0.5, 1.0], [2.76, 1.43, 1.0],
                 [0.2, 3.0, 3.0], [3.0, 0.5, 1.0]]
    return ase.Atoms("H4O2", positions=positions, cell=[6.0, 6.0, 6.0], pbc=True)


def md(calc: Calculator, has_energy: bool, atoms: ase.Atoms | None = None,
       protocol: MDProtocol = EMT_PROTOCOL) -> dict:
    atoms = copper() if atoms is None else atoms
    atoms.calc = calc
    return run_md(atoms, protocol, has_energy)


# ----------------------------------------------------------------- drift
@pytest.fixture(scope="module")
def emt_runs() -> dict[str, dict]:
    return {"energy": md(EMT(), True), "work": md(EMT(), False)}


def test_a_conservative_potential_does_not_drift_and_its_work_is_its_energy_change(emt_runs) -> None:
    energy, work = emt_runs["energy"], emt_runs["work"]
    for run in (energy, work):
        assert run["stable"] and run["steps_run"] == EMT_PROTOCOL.steps
        assert abs(run["drift_meV_per_atom_per_ps"]) < 0.05
        assert run["max_deviation_meV_per_atom"] < 0.1
    assert energy["energy_source"] == "model energy" and work["energy_source"].startswith("minus the work")
    # -W(t) = E(t) - E(0) up to the integrator's error (the potential itself moves by ~1 meV/atom)
    assert energy["work_vs_energy_max_meV_per_atom"] < 0.01
    assert np.ptp(np.array(energy["series"]["potential_eV"]) / 32) > 1e-3
    # same seed, same trajectory: the work-based potential of both runs is the same
    np.testing.assert_allclose(energy["series"]["work_potential_eV"], work["series"]["work_potential_eV"], atol=1e-9)


def test_forces_that_are_not_the_energys_gradient_show_up_as_drift(emt_runs) -> None:
    """Broken on purpose: forces 1.2 x -dE/dx reported beside EMT's energy."""
    scaled = md(BrokenEMT(scale=1.2), True)
    assert scaled["max_deviation_meV_per_atom"] > 30 * emt_runs["energy"]["max_deviation_meV_per_atom"]
    assert scaled["work_vs_energy_max_meV_per_atom"] > 1.0


def curl_emt() -> BrokenEMT:
    return BrokenEMT(curl=2.0, origin=copper().positions.copy())


def test_a_rotational_force_heats_the_system_and_has_an_asymmetric_jacobian(emt_runs) -> None:
    """Broken on purpose: a curl force has no potential. It pumps energy in (heating), and its
    force Jacobian is not a Hessian; EMT's is symmetric to round-off."""
    curl = md(curl_emt(), False)
    assert curl["temperature_slope_K_per_ps"] > 20 * abs(emt_runs["work"]["temperature_slope_K_per_ps"])
    assert curl["temperature_slope_K_per_ps"] > 300
    assert curl["force_asymmetry"]["relative_asymmetry"] > 0.05
    assert emt_runs["energy"]["force_asymmetry"]["relative_asymmetry"] < 1e-6
    assert emt_runs["energy"]["force_asymmetry"]["num_coordinates"] == 3 * 13  # Cu 0 and its 12 neighbours


def test_forces_scaled_from_a_gradient_are_still_a_gradient() -> None:
    atoms = copper()
    atoms.rattle(0.05, seed=1)
    atoms.calc = BrokenEMT(scale=1.2)
    assert force_asymmetry(atoms, radius=3.0, delta=0.01)["relative_asymmetry"] < 1e-4  # O(delta^2) differences


def test_velocity_verlet_keeps_kinetic_energy_minus_work_for_any_force_field() -> None:
    """Why the work-based energy cannot catch a non-conservative force: per step
    dKE - dW = sum dt^2/(8m) (|F_new|^2 - |F_old|^2), which telescopes, curl or not."""
    atoms = copper()
    atoms.calc = curl_emt()
    start_velocities(atoms, MDProtocol())
    dt = 2.0 * ase.units.fs
    dyn = ase.md.verlet.VelocityVerlet(atoms, timestep=dt)
    forces, kinetic0, work = atoms.get_forces(), atoms.get_kinetic_energy(), 0.0
    shadow0 = shadow_term(forces, atoms.get_masses(), dt)
    for _ in range(250):
        before = atoms.get_positions()
        new = dyn.step(forces)
        work += step_work(forces, new, atoms.get_positions() - before)
        forces = new
    gained = atoms.get_kinetic_energy() - kinetic0
    assert gained > 5.0  # eV: the curl heated 32 atoms by well over 1000 K ...
    # ... yet KE - W moved only by the bounded term
    assert gained - work == pytest.approx(shadow_term(forces, atoms.get_masses(), dt) - shadow0, abs=1e-9)


def test_energy_drift_is_the_slope_in_meV_per_atom_per_ps() -> None:
    time_ps = np.linspace(0.0, 2.0, 201)
    energy = -5.0 + 0.003 * time_ps + 1e-5 * np.sin(40 * time_ps)
    drift = energy_drift(time_ps, energy)
    assert drift["drift_meV_per_atom_per_ps"] == pytest.approx(3.0, rel=1e-2)
    assert drift["max_deviation_meV_per_atom"] == pytest.approx(6.0, rel=1e-2)
    assert energy_drift(time_ps[:1], energy[:1])["drift_meV_per_atom_per_ps"] is None


# ----------------------------------------------------------------- breakdown
def test_each_h_pairs_with_its_nearest_o_across_the_cell_boundary() -> None:
    assert oh_pairs(waters()).tolist() == [[0, 4], [1, 4], [2, 5], [3, 5]]
    assert oh_pairs(copper()).shape == (0, 2)


def test_geometry_check_names_stretched_and_compressed_bonds_and_close_contacts() -> None:
    protocol, atoms = MDProtocol(), waters()
    pairs = oh_pairs(atoms)
    reason, values = geometry_check(atoms, pairs, protocol)
    assert reason is None and 0.9 < values["oh_min_A"] <= values["oh_max_A"] < 1.0
    stretched = atoms.copy()
    stretched.positions[0, 0] -= 0.6  # 1.56 Å from its O through the boundary
    assert "stretched" in geometry_check(stretched, pairs, protocol)[0]
    compressed = atoms.copy()
    compressed.positions[0, 0] += 0.6  # 0.36 Å
    assert "compressed" in geometry_check(compressed, pairs, protocol)[0]
    crowded = atoms + ase.Atoms("C", positions=[[3.0, 0.5, 1.5]])  # 0.5 Å from O 5, O-H bonds intact
    assert "apart" in geometry_check(crowded, pairs, protocol)[0]


def test_the_run_stops_at_the_first_recorded_breakdown() -> None:
    protocol = MDProtocol(steps=400, record_every=10)
    pulled = md(ScriptedForces(atom=0, pull=np.array([-5.0, 0.0, 0.0])), False, waters(), protocol)
    assert not pulled["stable"] and "O-H bond 4-0 stretched" in pulled["breakdown_reason"]
    assert pulled["steps_run"] < protocol.steps and pulled["steps_run"] % protocol.record_every == 0
    assert pulled["breakdown_time_ps"] == pytest.approx(pulled["steps_run"] * protocol.timestep_fs / 1000)
    assert len(pulled["series"]["time_ps"]) == pulled["steps_run"] // protocol.record_every + 1
    assert pulled["series"]["oh_max_A"][-1] > protocol.oh_max >= pulled["series"]["oh_max_A"][-2]
    assert pulled["drift_rows"] == len(pulled["series"]["time_ps"]) - 1

    broken = md(ScriptedForces(nan_after=7), False, waters(), protocol)  # 1 start call + 6 steps
    assert broken["breakdown_reason"] == "non-finite forces or energy" and broken["steps_run"] == 7


# ----------------------------------------------------------------- tensorframe side
def tiny_model(heads: list[dict], conservative: bool) -> tensorframe.TensorModel:
    torch.manual_seed(0)
    config = {"cutoff": 3.5, "triplet_cutoff": 3.0, "conservative": conservative,
              "backbone": {"name": "reference", "hidden": 8, "num_radial": 6}, "heads": heads}
    return tensorframe.build_model(config).double().eval()


@pytest.mark.parametrize(("heads", "conservative", "kind"),
                         [([{"name": "energy"}], True, "conservative"), ([{"name": "force"}], False, "direct")])
def test_tensorframe_models_run_the_protocol(heads, conservative, kind) -> None:
    protocol = MDProtocol(steps=20)
    record = tensorframe_md(tiny_model(heads, conservative), waters(), protocol)
    assert record["kind"] == kind and record["dtype"] == "float64"
    assert record["steps_run"] >= protocol.record_every or record["breakdown_time_ps"] is not None
    assert record["s_per_step"] > 0 and record["num_atoms"] == 6
    if kind == "conservative":
        assert record["energy_source"] == "model energy"
        assert record["work_vs_energy_max_meV_per_atom"] < 0.01  # forces are the energy's gradient
        assert record["force_asymmetry"]["relative_asymmetry"] < 1e-3
    else:
        assert record["energy_source"].startswith("minus the work")
        assert record["force_asymmetry"]["relative_asymmetry"] > 1e-2  # a force head is no gradient
        assert record["series"]["potential_eV"][0] is None


def test_records_merge_into_one_json_and_render_as_a_table(tmp_path) -> None:
    protocol = MDProtocol(steps=20)
    record = {"framework": "tensorframe", "test_force_mae": 0.2,
              **tensorframe_md(tiny_model([{"name": "force"}], False), waters(), protocol)}
    path, series = tmp_path / "md.json", tmp_path / "series"
    env, start = {"date": "today", "cpu": "test"}, {"num_atoms": 6, "cell_lengths_A": [6.0, 6.0, 6.0]}
    save_model_record(path, "schnet", record, series, protocol, env, start)
    result = save_model_record(path, "mace", {"framework": "MACE", "error": "venv missing"}, series, protocol, env,
                               start)
    assert set(result["models"]) == {"schnet", "mace"}
    assert "series" not in result["models"]["schnet"] and (series / "schnet.json").exists()
    text = render(result)
    assert "## MD stability (NVE, liquid water)" in text
    assert "| schnet | direct | – | 0.2 |" in text and "| MACE | – |" in text and "did not run: venv missing" in text


def test_a_given_checkpoint_runs_with_its_own_test_error(tmp_path) -> None:
    import json

    from benchmarks.bench_md import run_given_checkpoint

    path = tmp_path / "run" / "best.pt"
    path.parent.mkdir()
    tensorframe.save_checkpoint(path, tiny_model([{"name": "energy"}], True))
    (path.parent / "metrics.json").write_text(json.dumps({"epochs": 3, "test": {"mae_forces": 0.07}}))
    (path.parent / "train_log.csv").write_text("epoch,epoch_time_s\n1,60\n2,90\n")
    record = run_given_checkpoint("long", path, waters(), MDProtocol(steps=20))
    assert record["kind"] == "conservative" and record["test_force_mae"] == 0.07 and record["epochs"] == 3
    assert record["backbone"] == "reference" and "given" in record["checkpoint_source"]
    assert record["training_minutes"] == pytest.approx(2.5)
