"""Conservative forces and stress (``model.conservative``): derivatives of one energy,
checked against finite differences in float64; each checker catches a broken module;
configuration and reference-energy (E0s) errors; energies summed in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tensorframe as tf
from tensorframe.config import ConfigError
from tensorframe.graph import collate
from tensorframe.testing.derivatives import (
    assert_forces_match_finite_differences,
    assert_stress_matches_finite_differences,
    finite_difference_stress,
)
from tensorframe.testing.equivariance import assert_equivariant, model_outputs
from tensorframe.testing.invariance import assert_supercell_consistent, wurtzite
from tensorframe.types import Sample

BACKBONE = {"name": "reference", "hidden": 8, "num_radial": 6}


def conservative_model(heads=({"name": "energy", "hidden": 8},), seed: int = 0, dtype=torch.float64) -> tf.TensorModel:
    torch.manual_seed(seed)
    model = tf.build_model({"cutoff": 3.5, "triplet_cutoff": 3.0, "conservative": True, "backbone": BACKBONE,
                            "heads": list(heads), "lifting": {"hidden": 8, "out_dim": 8}})
    model = model.to(dtype).eval()
    model.scaling["energy"].set(30.0)
    return model


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def strained_crystal() -> Sample:
    """Wurtzite under a shear, with one atom moved: every stress component is non-zero."""
    base = wurtzite()
    deformation = np.eye(3) + np.array([[0.02, 0.03, -0.01], [0.0, -0.02, 0.015], [0.01, 0.0, 0.03]])
    positions = base.positions @ deformation
    positions[1] += [0.05, -0.04, 0.03]
    return Sample(base.numbers, positions, base.cell @ deformation, base.pbc)


def molecule() -> Sample:
    return Sample([6, 1, 8, 9], [[0.0, 0.0, 0.0], [1.05, 0.12, -0.08], [-0.35, 1.25, 0.2], [-0.5, -0.7, 1.0]])


# ---------------------------------------------------------------- the physics


def test_forces_and_stress_match_finite_differences():
    model = conservative_model()
    crystal = strained_crystal()
    outputs = model_outputs(model, [crystal])
    assert outputs["forces"].abs().max() > 1e-2 and outputs["stress"].abs().min() > 1e-6  # not trivially zero
    assert_forces_match_finite_differences(model, crystal)
    assert_forces_match_finite_differences(model, molecule())
    assert_stress_matches_finite_differences(model, crystal)
    # A periodic cell: the forces sum to zero (translation invariance of the energy).
    np.testing.assert_allclose(outputs["forces"].sum(0).numpy(), 0.0, atol=1e-12)
    # Stress symmetric, virial = -V sigma.
    stress = outputs["stress"][0].numpy()
    np.testing.assert_allclose(stress, stress.T, atol=1e-14)


def test_stress_is_nan_without_a_volume_and_predict_leaves_it_out():
    model = conservative_model()
    outputs = model_outputs(model, [molecule(), strained_crystal()])
    assert torch.isnan(outputs["stress"][0]).all() and torch.isfinite(outputs["stress"][1]).all()
    assert torch.isfinite(outputs["virial"]).all()
    rows = model.predict([molecule(), strained_crystal()])
    assert "stress" not in rows[0] and rows[0]["virial"].shape == (3, 3) and rows[0]["forces"].shape == (4, 3)
    assert rows[1]["stress"].shape == (3, 3)


@pytest.mark.parametrize("improper", [False, True], ids=["proper", "improper"])
def test_stress_rotates_and_supercell_keeps_it(improper):
    model = conservative_model()
    rotation = random_rotation(5)
    assert_equivariant(model, strained_crystal(), -rotation if improper else rotation)
    assert_supercell_consistent(model, strained_crystal(), [(2, 1, 1), (1, 2, 2)])


def test_only_the_asked_fields_are_computed_and_training_mode_keeps_the_graph():
    model = conservative_model()
    graph = model.make_graph([strained_crystal()])
    assert set(model(graph, fields=["forces"])) == {"forces"}
    model.train()
    forces = model(graph, fields=["forces"])["forces"]
    assert forces.requires_grad  # a loss on forces reaches the weights (create_graph)
    forces.square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    with pytest.raises(KeyError, match="does not predict dielectric"):
        model(graph, fields=["dielectric"])


# ---------------------------------------------------------------- the checkers catch broken modules


def test_the_stress_checker_catches_a_strain_that_misses_the_cell(monkeypatch):
    def broken(graph, positions, strain):  # deforms the positions but not the cell
        deformation = torch.eye(3, dtype=positions.dtype) + 0.5 * (strain + strain.transpose(1, 2))
        moved = torch.einsum("na,nab->nb", positions, deformation.index_select(0, graph.batch))
        edge_vec, edge_len, edge_dir = collate.edge_geometry(moved, graph.cell, graph.idx_i, graph.idx_j,
                                                             graph.cell_shift, graph.edge_batch)
        from dataclasses import replace

        return replace(graph, positions=moved, edge_vec=edge_vec, edge_len=edge_len, edge_dir=edge_dir,
                       **collate.derived_geometry(edge_len, edge_dir, graph.idx_kj, graph.idx_ji, graph.cutoff,
                                                  graph.triplet_cutoff))

    model = conservative_model()
    assert_stress_matches_finite_differences(model, strained_crystal())
    monkeypatch.setattr("tensorframe.conservative.deform_graph", broken)
    with pytest.raises(AssertionError, match="stress differs"):
        assert_stress_matches_finite_differences(model, strained_crystal())


@pytest.mark.parametrize("breakage", ["force sign", "stress without volume", "stress not rotated"])
def test_the_checkers_catch_wrong_conventions(breakage):
    model = conservative_model()

    def broken(samples):
        outputs = dict(model_outputs(model, samples))
        if breakage == "force sign":
            outputs["forces"] = -outputs["forces"]
        elif breakage == "stress without volume":
            outputs["stress"] = -outputs["virial"]
        else:
            outputs["stress"] = outputs["stress"] + torch.diag(torch.tensor([1e-3, 0.0, -1e-3], dtype=torch.float64))
        return outputs

    crystal = strained_crystal()
    with pytest.raises(AssertionError):
        if breakage == "force sign":
            assert_forces_match_finite_differences(broken, crystal)
        elif breakage == "stress without volume":
            assert_stress_matches_finite_differences(broken, crystal)
        else:
            rotation = random_rotation(5)
            assert_equivariant(broken, crystal, rotation, fields=model.fields)


def test_finite_difference_stress_sign_is_ase():
    """An ASE potential under compression gives negative stress: the checker's own convention."""
    import ase.build
    from ase.calculators.emt import EMT

    atoms = ase.build.bulk("Cu", "fcc", a=3.5, cubic=True)  # compressed (EMT a0 ~ 3.59 Å)
    atoms.calc = EMT()
    sample = Sample(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)

    def emt(samples):
        energies = []
        for s in samples:
            a = atoms.copy()
            a.positions, a.cell = s.positions, s.cell
            a.calc = EMT()
            energies.append(a.get_potential_energy())
        return {"energy": torch.tensor(energies, dtype=torch.float64)}

    from ase.stress import voigt_6_to_full_3x3_stress

    np.testing.assert_allclose(finite_difference_stress(emt, sample, 1e-5),
                               voigt_6_to_full_3x3_stress(atoms.get_stress()), atol=1e-7)
    assert np.trace(finite_difference_stress(emt, sample)) < 0


# ---------------------------------------------------------------- configuration


def test_conservative_needs_an_energy_head_and_no_force_head():
    base = {"conservative": True, "backbone": BACKBONE}
    with pytest.raises(ConfigError, match=r"no head predicts 'energy'.*add \{name: energy\}"):
        tf.build_model({**base, "heads": [{"name": "born"}]})
    with pytest.raises(ConfigError, match="forces come from the energy's derivatives"):
        tf.build_model({**base, "heads": [{"name": "energy"}, {"name": "force"}]})
    direct = tf.build_model({"backbone": BACKBONE, "heads": [{"name": "energy"}, {"name": "force"}]})
    assert "stress" not in direct.fields and not direct.conservative


def test_a_forces_target_without_a_force_head_suggests_conservative():
    from tensorframe.train.data import check_targets_predicted

    model = tf.build_model({"backbone": BACKBONE, "heads": [{"name": "energy"}]})
    with pytest.raises(ConfigError, match="set model.conservative: true"):
        check_targets_predicted(model, ["energy", "forces"])
    check_targets_predicted(conservative_model(), ["energy", "forces", "stress", "virial"])


def test_reference_energies_given_fitted_or_none():
    from tensorframe.train.data import reference_energies

    samples = [Sample([8, 1, 1], np.eye(3), targets={"energy": np.array(-10.0)}),
               Sample([8, 1], np.eye(3)[:2], targets={"energy": np.array(-9.0)}),
               Sample([8, 8, 1], np.eye(3), targets={"energy": np.array(-17.0)})]
    model = conservative_model()
    fitted = reference_energies(model, samples, ["energy"], "fit")["energy"]
    assert fitted == pytest.approx({8: -8.0, 1: -1.0})
    assert reference_energies(model, samples, ["energy"], "average") == reference_energies(model, samples, ["energy"])
    assert reference_energies(model, samples, ["energy"], "none") == {}
    assert reference_energies(model, samples, ["energy"], {"H": -0.4, "O": -8.0}) == {"energy": {1: -0.4, 8: -8.0}}
    with pytest.raises(ConfigError, match="no reference energy for O"):
        reference_energies(model, samples, ["energy"], {"H": -0.4})
    with pytest.raises(ConfigError, match="'Xx' is not an element symbol"):
        reference_energies(model, samples, ["energy"], {"H": -0.4, "O": 1.0, "Xx": 1.0})


# ---------------------------------------------------------------- float64 energies


def test_energies_are_summed_in_float64_in_a_float32_model():
    """192-atom water at -155.96 eV/atom: a float32 total (-29943.65) has 2 meV steps; ours keeps
    the float32 atomic energies' sum exact to float64 round-off."""
    model = conservative_model(dtype=torch.float32)
    model.scaling["energy"].set_element_shift({8: -432.7, 1: -17.6})
    assert model.scaling["energy"].element_shift.dtype == torch.float64  # kept through .to(float32)
    rng = np.random.default_rng(0)
    cell = np.eye(3) * 12.44
    sample = Sample([8] * 64 + [1] * 128, rng.uniform(0, 12.44, (192, 3)), cell, [True] * 3)
    graph = model.make_graph([sample])
    with torch.no_grad():
        energy = model(graph, fields=["energy"])["energy"]
        atomic = model.heads["energy"].mlp(model.features(graph).node).squeeze(-1)
    assert energy.dtype == torch.float64
    reference = 30.0 * atomic.double().sum() + (64 * -432.7 + 128 * -17.6)
    assert abs(float(energy[0] - reference)) < 1e-9
    float32_total = float(torch.tensor(float(reference), dtype=torch.float32))
    assert abs(float32_total - float(reference)) > 1e-5  # what a float32 energy would lose


# ---------------------------------------------------------------- ZBL pair repulsion


def test_pair_repulsion_is_zbl_at_close_contact_and_stays_conservative():
    from tensorframe.ops.repulsion import zbl_edge_energy

    heads = ({"name": "energy", "hidden": 8},)
    torch.manual_seed(0)
    config = {"cutoff": 3.5, "triplet_cutoff": 3.0, "conservative": True, "pair_repulsion": True,
              "backbone": BACKBONE, "heads": list(heads), "lifting": {"hidden": 8, "out_dim": 8}}
    model = tf.build_model(config).double().eval()
    plain = conservative_model(heads)
    plain.scaling["energy"].set(1.0)
    # Two oxygens 0.6 Å apart: ZBL gives ~116 eV, ours is the learned energy plus exactly that.
    pair = Sample([8, 8], [[0.0, 0.0, 0.0], [0.6, 0.0, 0.0]])
    zbl = 2 * float(zbl_edge_energy(torch.tensor([0.6], dtype=torch.float64), torch.tensor([8]), torch.tensor([8]), 3.5)[0])
    assert 100 < zbl < 130
    difference = model_outputs(model, [pair])["energy"] - model_outputs(plain, [pair])["energy"]
    assert float(difference[0]) == pytest.approx(zbl, rel=1e-12)
    assert float(model_outputs(model, [pair])["forces"][1, 0]) > 100  # pushed apart
    # Zero beyond the covalent-radius sum (1.32 Å for O-O), smooth, and F = -dE/dr still holds.
    far = Sample([8, 8], [[0.0, 0.0, 0.0], [1.4, 0.0, 0.0]])
    assert float((model_outputs(model, [far])["energy"] - model_outputs(plain, [far])["energy"])[0]) == 0.0
    assert_forces_match_finite_differences(model, Sample([8, 8, 1], [[0, 0, 0], [0.9, 0.1, 0], [0.2, 0.8, 0.1]]))
    assert_stress_matches_finite_differences(model, Sample([8, 1], [[0, 0, 0], [0.7, 0.3, 0.1]], np.eye(3) * 2.5,
                                                           [True] * 3))


def test_pair_repulsion_needs_conservative():
    with pytest.raises(ConfigError, match="pair_repulsion: .*set conservative: true"):
        tf.build_model({"pair_repulsion": True, "backbone": BACKBONE, "heads": [{"name": "energy"}]})
