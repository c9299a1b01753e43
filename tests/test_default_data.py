"""Physics checks of the embedded default data (tensorframe/data/molecules.npz, RHF/6-31G*).

Each test states the physical law it checks; tolerances are the finite-difference errors of
the labelling script (fields F = 0.004 a.u., displacements 0.002 Å), measured and documented
in tensorframe/data/README-molecules.md.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tensorframe.datasets import (
    DEFAULT_FIELDS,
    default_dataset_metadata,
    default_dataset_path,
    load_default_arrays,
    load_default_dataset,
    samples_from_arrays,
)
from tensorframe.fields import BUILTIN_FIELDS
from tensorframe.types import Sample


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return load_default_dataset()


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    return load_default_arrays()


def stacked(samples: list[Sample], field: str) -> np.ndarray:
    return np.stack([s.targets[field] for s in samples])


def rotate(tensor: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """T'_{i1..in} = R_{i1 a1} ... R_{in an} T_{a1..an} for a polar tensor of any rank."""
    for axis in range(tensor.ndim):
        tensor = np.moveaxis(np.tensordot(rotation, tensor, axes=([1], [axis])), 0, axis)
    return tensor


def test_file_is_small_and_documented() -> None:
    path = default_dataset_path()
    assert path.stat().st_size <= 2_000_000
    assert (path.parent / "README-molecules.md").is_file()


def test_structures_fields_shapes_and_units(samples: list[Sample]) -> None:
    """A few hundred neutral closed-shell H/C/N/O/F molecules of <= 7 atoms; every label finite,
    with the registry's shape and the registry's units."""
    assert 200 <= len(samples) <= 600
    specs = {spec.name: spec for spec in BUILTIN_FIELDS}
    units = default_dataset_metadata()["units"]
    for field in DEFAULT_FIELDS:
        assert units[field] == specs[field].units, field
    for index, sample in enumerate(samples):
        assert 2 <= sample.num_atoms <= 7, index
        assert set(sample.numbers.tolist()) <= {1, 6, 7, 8, 9}, index
        assert sample.numbers.sum() % 2 == 0, index  # closed shell, neutral
        assert not sample.pbc.any() and not sample.cell.any()
        assert set(sample.targets) == set(DEFAULT_FIELDS)
        for field, value in sample.targets.items():
            spec = specs[field]
            shape = (sample.num_atoms, *spec.shape) if spec.level == "atom" else spec.shape
            assert value.shape == shape, (index, field)
            assert value.dtype == np.float64 and np.all(np.isfinite(value)), (index, field)
        distances = np.linalg.norm(sample.positions[:, None] - sample.positions[None], axis=-1)
        assert distances[np.triu_indices(sample.num_atoms, 1)].min() > 0.6, index


def test_molecules_appear_in_several_conformations(arrays: dict[str, np.ndarray]) -> None:
    names, counts = np.unique(arrays["names"], return_counts=True)
    assert len(names) >= 30 and counts.min() >= 5


def test_acoustic_sum_rule(samples: list[Sample]) -> None:
    """sum_k Z_k = 0 for a neutral molecule (a rigid translation leaves the dipole unchanged)."""
    residual = max(np.abs(s.targets["born_charges"].sum(axis=0)).max() for s in samples)
    assert residual < 1e-7
    # the tensors are not trivially zero: the largest diagonal entries are about an electron
    assert max(np.abs(s.targets["born_charges"]).max() for s in samples) > 0.5


def test_apt_equals_dipole_derivative_by_displacements(samples: list[Sample], arrays: dict[str, np.ndarray]) -> None:
    """Stored APTs (d F / d E by finite fields) = d mu / d R by finite displacements of the
    dipole, the definition; the displaced ones obey the sum rule only within their own FD error."""
    offsets = arrays["offsets"]
    displaced = arrays["apt_check.born_charges"]
    start = 0
    for index in arrays["apt_check.index"]:
        n = offsets[index + 1] - offsets[index]
        by_displacement = displaced[start:start + n]
        start += n
        stored = samples[index].targets["born_charges"]
        assert np.abs(stored - by_displacement).max() < 1e-3, index
        assert np.abs(by_displacement.sum(axis=0)).max() < 1e-4, index
        # the check discriminates: the transposed tensor (indices swapped) does not match
        assert np.abs(stored.transpose(0, 2, 1) - by_displacement).max() > 1e-2, index
    assert start == len(displaced)


def test_polarizability_symmetric_positive_definite(samples: list[Sample]) -> None:
    """alpha_ij = -d^2 W / dE_i dE_j is symmetric (stored unsymmetrised) and positive definite.
    The finite-field error, F^2 (gamma_ijjj - gamma_jiii) / 6, grows with the molecule's
    response: at most 1.2e-4 of max |alpha| in the set (acrylonitrile)."""
    alpha = stacked(samples, "polarizability")
    asymmetry = np.abs(alpha - alpha.transpose(0, 2, 1)).max(axis=(1, 2))
    assert np.all(asymmetry < 3e-4 * np.abs(alpha).max(axis=(1, 2)))
    eigenvalues = np.linalg.eigvalsh(0.5 * (alpha + alpha.transpose(0, 2, 1)))
    assert eigenvalues.min() > 0.5


def test_hyperpolarizability_index_symmetry(samples: list[Sample]) -> None:
    """beta_ijk symmetric in j, k (the field's formula "ijk=ikj"); the static beta is
    -d^3 W / dE_i dE_j dE_k, so it is symmetric under every permutation within the
    finite-field error (at most 1.1e-3 of max |beta| in the set; 1e-3 a.u. floor for the
    nearly centrosymmetric rattled F2 and N2, whose beta is nearly zero)."""
    beta = stacked(samples, "hyperpolarizability")
    assert np.array_equal(beta, beta.transpose(0, 1, 3, 2))
    scale = np.abs(beta).max(axis=(1, 2, 3))
    assert np.median(scale) > 5.0
    for perm in itertools.permutations(range(3)):
        error = np.abs(beta - beta.transpose(0, *(p + 1 for p in perm))).max(axis=(1, 2, 3))
        assert np.all(error < 3e-3 * scale + 1e-3), perm


def test_dipole_units(samples: list[Sample], arrays: dict[str, np.ndarray]) -> None:
    """Stored in e·Å: water's RHF/6-31G* dipole is about 2.2 D and ammonia's about 1.9 D near
    equilibrium (the rattle moves them by a little); in e·bohr or debye they would be far off."""
    debye = 0.20819434  # e·Å
    norms = np.linalg.norm(stacked(samples, "dipole"), axis=1) / debye
    names = arrays["names"]
    for name, reference in (("H2O", 2.2), ("NH3", 1.9)):
        assert np.all(np.abs(norms[names == name] - reference) < 0.4), name


def test_labels_rotate_as_tensors(samples: list[Sample], arrays: dict[str, np.ndarray]) -> None:
    """The same structure labelled from scratch in a rotated frame (one improper rotation):
    energy invariant, every tensor T' = R...R T, within the finite-difference error."""
    rotated = samples_from_arrays(arrays, default_dataset_path(), prefix="rotated.")
    rotations = arrays["rotated.rotation"]
    assert any(np.linalg.det(r) < 0 for r in rotations) and any(np.linalg.det(r) > 0 for r in rotations)
    tolerance = {"forces": 1e-6, "dipole": 1e-7, "polarizability": 2e-3, "born_charges": 1e-3, "hyperpolarizability": 2e-2}
    for index, rotation, sample in zip(arrays["rotated.index"], rotations, rotated, strict=True):
        original = samples[index]
        np.testing.assert_allclose(sample.positions, original.positions @ rotation.T, atol=1e-12)
        assert abs(sample.targets["energy"] - original.targets["energy"]) < 1e-6
        for field, tol in tolerance.items():
            value = original.targets[field]
            expected = np.stack([rotate(v, rotation) for v in value]) if field in ("forces", "born_charges") else rotate(value, rotation)
            assert np.abs(sample.targets[field] - expected).max() < tol, (index, field)
            # the check discriminates: unrotated labels (or a wrong rule) do not match
            assert np.abs(sample.targets[field] - value).max() > 10 * tol, (index, field)


def test_forces_are_minus_energy_gradient(samples: list[Sample], arrays: dict[str, np.ndarray]) -> None:
    """(E(r + h d) - E(r - h d)) / 2h = -F . d for a random unit direction d (h = 0.0002 Å;
    the central difference is good to ~2e-6 eV/Å here)."""
    step = default_dataset_metadata()["energy_check_step_angstrom"]
    offsets = arrays["offsets"]
    directions = arrays["energy_check.direction"]
    start = 0
    for index, plus, minus in zip(arrays["energy_check.index"], arrays["energy_check.energy_plus"],
                                  arrays["energy_check.energy_minus"], strict=True):
        n = offsets[index + 1] - offsets[index]
        direction = directions[start:start + n]
        start += n
        slope = (plus - minus) / (2 * step)
        projected = np.sum(samples[index].targets["forces"] * direction)
        assert abs(projected) > 0.05, index  # a direction along which the energy changes
        assert abs(-slope - projected) < 2e-5, index


def test_loader_names_file_and_missing_field(tmp_path, arrays: dict[str, np.ndarray]) -> None:
    path = tmp_path / "broken.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if k != "dipole"})
    with pytest.raises(ValueError, match=r"broken\.npz.*'dipole'"):
        load_default_dataset(path)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_default_dataset(tmp_path / "missing.npz")


def test_structures_reproduce_from_the_script_seeds(samples: list[Sample], arrays: dict[str, np.ndarray]) -> None:
    """Every stored geometry is the labelling script's seeded rotation + rattle of the g2 molecule."""
    from scripts.make_default_data import make_structure

    seed = default_dataset_metadata()["seed"]
    for sample, name, conformation in zip(samples, arrays["names"], arrays["conformation"], strict=True):
        numbers, positions = make_structure(str(name), int(conformation), seed)
        np.testing.assert_array_equal(sample.numbers, numbers)
        np.testing.assert_allclose(sample.positions, positions, rtol=0, atol=1e-12)
