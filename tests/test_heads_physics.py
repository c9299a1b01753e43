"""Physics of every head on hypothesis-drawn crystals, molecules and slabs (float64):
O(3) equivariance (proper and improper), permutation and translation invariance,
periodic-image and supercell consistency, batch == one by one, Neumann's principle on rock
salt, wurtzite and P4mm perovskite, the acoustic sum rule and a positive-definite dielectric.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from tensorframe import Sample
from tensorframe.testing import (
    assert_batch_consistent,
    assert_equivariant,
    assert_neumann,
    assert_periodic_images_consistent,
    assert_permutation_invariant,
    assert_supercell_consistent,
    assert_translation_invariant,
    model_outputs,
    rock_salt,
    rotate_sample,
    tetragonal_perovskite,
    wurtzite,
)
from tensorframe.testing import strategies as tfst

STRUCTURES = {"crystal": tfst.crystals(), "molecule": tfst.molecules(), "slab": tfst.slabs()}
PERIODIC = {"crystal": tfst.crystals(), "slab": tfst.slabs(), "wire": tfst.mixed_pbc_structures(pbc=(False, False, True))}


def test_every_field_is_nonzero_on_a_generic_crystal(model) -> None:
    """Guards the checks below from being vacuous: each head gives a non-trivial tensor."""
    rng = np.random.default_rng(0)
    cell = np.array([[4.1, 0.0, 0.0], [1.3, 3.9, 0.0], [0.4, -0.8, 4.4]])
    sample = Sample([8, 14, 14, 8, 56], rng.random((5, 3)) @ cell, cell, [True, True, True])
    for name, value in model_outputs(model, [sample]).items():
        assert value.abs().max() > 1e-6, f"field {name!r} is zero on a generic crystal"


@pytest.mark.parametrize("kind", STRUCTURES)
@given(data=st.data(), rotation=tfst.orthogonal_matrices(proper=True))
def test_equivariant_proper_and_improper(model, kind, data, rotation) -> None:
    sample = data.draw(STRUCTURES[kind], label=kind)
    assert_equivariant(model, sample, rotation)
    assert_equivariant(model, sample, -rotation)


@pytest.mark.parametrize("kind", STRUCTURES)
@given(data=st.data())
def test_permutation_invariant(model, kind, data) -> None:
    sample = data.draw(STRUCTURES[kind], label=kind)
    permutation = data.draw(st.permutations(range(sample.num_atoms)), label="permutation")
    assert_permutation_invariant(model, sample, permutation)


@pytest.mark.parametrize("kind", STRUCTURES)
@given(data=st.data(), shift=st.lists(st.floats(-20.0, 20.0), min_size=3, max_size=3))
def test_translation_invariant(model, kind, data, shift) -> None:
    assert_translation_invariant(model, data.draw(STRUCTURES[kind], label=kind), shift)


@pytest.mark.parametrize("kind", PERIODIC)
@given(data=st.data())
def test_periodic_images_consistent(model, kind, data) -> None:
    sample = data.draw(PERIODIC[kind], label=kind)
    shifts = np.array(data.draw(st.lists(
        st.lists(st.integers(-3, 3), min_size=3, max_size=3), min_size=sample.num_atoms, max_size=sample.num_atoms,
    ), label="shifts"))
    shifts[:, ~sample.pbc] = 0
    assume(shifts.any())
    assert_periodic_images_consistent(model, sample, shifts)


@given(sample=tfst.crystals(max_atoms=4))
def test_supercell_consistent_crystal(model, sample) -> None:
    assert_supercell_consistent(model, sample, repeats=[(2, 1, 1), (1, 2, 2)])


@given(sample=tfst.slabs(max_atoms=4))
def test_supercell_consistent_slab(model, sample) -> None:
    assert_supercell_consistent(model, sample, repeats=[(2, 1, 1), (2, 2, 1)])


@given(samples=st.lists(st.one_of(*STRUCTURES.values()), min_size=2, max_size=4))
def test_batch_equals_one_by_one(model, samples) -> None:
    assert_batch_consistent(model, samples)


# ---------------------------------------------------------------- Neumann's principle

CRYSTALS = {"rock_salt": (rock_salt, 48), "wurtzite": (wurtzite, 12), "perovskite_p4mm": (tetragonal_perovskite, 8)}


@pytest.mark.parametrize("crystal", CRYSTALS)
def test_neumann_on_reference_crystals(model, crystal) -> None:
    build, order = CRYSTALS[crystal]
    assert assert_neumann(model, build()) == order


@pytest.mark.parametrize("crystal", CRYSTALS)
@given(rotation=tfst.orthogonal_matrices())
def test_neumann_in_a_rotated_frame(model, crystal, rotation) -> None:
    """The operations are taken in the frame of the structure as given, whatever it is."""
    build, order = CRYSTALS[crystal]
    assert assert_neumann(model, rotate_sample(build(), rotation)) == order


def _predict(model, sample) -> dict[str, torch.Tensor]:
    return {name: value[0] for name, value in model_outputs(model, [sample]).items() if model.heads[name].field.level == "structure"}


def test_rock_salt_dielectric_isotropic_piezo_zero(physics_model) -> None:
    out = _predict(physics_model, rock_salt())
    eps = out["dielectric"]
    assert torch.allclose(eps, eps[0, 0] * torch.eye(3, dtype=eps.dtype), atol=1e-12, rtol=0)
    assert eps[0, 0] > 1.0
    assert out["piezo"].abs().max() < 1e-12
    assert out["hyperpolarizability"].abs().max() < 1e-12


def _assert_polar_uniaxial_pattern(out: dict[str, torch.Tensor]) -> None:
    """Point groups 6mm and 4mm: eps_xx = eps_yy != eps_zz; piezo only e_33, e_31, e_15."""
    eps = out["dielectric"]
    off_diagonal = eps - torch.diag(torch.diagonal(eps))
    assert off_diagonal.abs().max() < 1e-12
    assert abs(eps[0, 0] - eps[1, 1]) < 1e-12
    assert abs(eps[0, 0] - eps[2, 2]) > 1e-6, "eps_zz should differ from eps_xx (the check must not be vacuous)"
    e = out["piezo"]
    allowed = torch.zeros(3, 3, 3, dtype=torch.bool)
    for index in [(2, 2, 2), (2, 0, 0), (2, 1, 1), (0, 0, 2), (0, 2, 0), (1, 1, 2), (1, 2, 1)]:
        allowed[index] = True
    assert e[~allowed].abs().max() < 1e-12
    e33, e31, e32, e15, e24 = e[2, 2, 2], e[2, 0, 0], e[2, 1, 1], e[0, 0, 2], e[1, 1, 2]
    assert abs(e31 - e32) < 1e-12 and abs(e15 - e24) < 1e-12
    assert min(abs(e33), abs(e31), abs(e15)) > 1e-8, "e_33, e_31 and e_15 should all be non-zero"


@pytest.mark.parametrize("build", [wurtzite, tetragonal_perovskite], ids=["wurtzite", "perovskite_p4mm"])
def test_polar_crystals_dielectric_and_piezo_pattern(physics_model, build) -> None:
    _assert_polar_uniaxial_pattern(_predict(physics_model, build()))


# ---------------------------------------------------------------- physics options


@given(samples=st.lists(st.one_of(*STRUCTURES.values()), min_size=1, max_size=3))
def test_acoustic_sum_rule_exact(physics_model, samples) -> None:
    born = model_outputs(physics_model, samples)["born_charges"]
    counts = np.cumsum([0] + [s.num_atoms for s in samples])
    for b in range(len(samples)):
        total = born[counts[b] : counts[b + 1]].sum(0)
        assert total.abs().max() < 1e-12, f"structure {b}: sum_k Z*_k = {total.tolist()}"


def test_acoustic_sum_rule_off_by_default(general_model) -> None:
    """Without the option the sum is not zero: the test above is not vacuous."""
    born = model_outputs(general_model, [wurtzite()])["born_charges"]
    assert born.sum(0).abs().max() > 1e-6


@given(samples=st.lists(st.one_of(*STRUCTURES.values()), min_size=1, max_size=3))
def test_positive_definite_dielectric(physics_model, samples) -> None:
    eps = model_outputs(physics_model, samples)["dielectric"]
    assert torch.allclose(eps, eps.transpose(1, 2), atol=1e-14, rtol=0)
    eigenvalues = torch.linalg.eigvalsh(eps)
    assert eigenvalues.min() >= 1.0 - 1e-12, f"eigenvalues {eigenvalues.tolist()}"


def test_plain_dielectric_can_go_below_one(general_model) -> None:
    """Without ``positive_definite`` nothing bounds the eigenvalues (they sit near zero)."""
    eps = model_outputs(general_model, [wurtzite(), rock_salt()])["dielectric"]
    assert torch.linalg.eigvalsh(eps).min() < 1.0
