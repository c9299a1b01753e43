"""Finite-difference checks of a conservative model's forces and stress (run in float64).

    assert_forces_match_finite_differences(model, sample)   F = -dE/dr   by central differences of E
    assert_stress_matches_finite_differences(model, sample) sigma = (1/V) dE/d strain, symmetric strains

Both evaluate the energy with the model itself on displaced copies of ``sample``, so they
test the whole chain: graph geometry, backbone, energy head, autograd and the sign and
volume conventions.
"""

from __future__ import annotations

import numpy as np
import torch

from tensorframe.testing.equivariance import model_outputs
from tensorframe.types import Sample


def _energy(model, sample: Sample) -> float:
    return float(model_outputs(model, [sample])["energy"][0])


def _check_float64(model) -> None:
    if hasattr(model, "parameters") and next(model.parameters()).dtype != torch.float64:
        raise ValueError("finite-difference checks need a float64 model (call model.double())")


def finite_difference_forces(model, sample: Sample, step: float = 1e-5) -> np.ndarray:
    """``-dE/dr`` by central differences of the energy of ``model`` (a float64 TensorModel, or a
    callable ``list[Sample] -> {field: tensor}``).

    Shapes: -> (N, 3) eV/Å
    """
    _check_float64(model)
    forces = np.zeros((sample.num_atoms, 3))
    for atom in range(sample.num_atoms):
        for axis in range(3):
            energies = []
            for sign in (1.0, -1.0):
                positions = sample.positions.copy()
                positions[atom, axis] += sign * step
                energies.append(_energy(model, Sample(sample.numbers, positions, sample.cell, sample.pbc)))
            forces[atom, axis] = -(energies[0] - energies[1]) / (2 * step)
    return forces


def finite_difference_stress(model, sample: Sample, step: float = 1e-5) -> np.ndarray:
    """``(1/V) dE/d eps`` by central differences over symmetric strains ``x -> x (I + eps)``
    of positions and cell (ASE's sign: positive in tension).

    Shapes: -> (3, 3) eV/Å^3
    """
    _check_float64(model)
    if not sample.pbc.all():
        raise ValueError("stress needs a cell periodic in all three directions")
    volume = abs(np.linalg.det(sample.cell))
    stress = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            strain = np.zeros((3, 3))
            strain[a, b] += 0.5 * step
            strain[b, a] += 0.5 * step
            energies = []
            for sign in (1.0, -1.0):
                deformation = np.eye(3) + sign * strain
                energies.append(_energy(model, Sample(sample.numbers, sample.positions @ deformation,
                                                      sample.cell @ deformation, sample.pbc)))
            stress[a, b] = stress[b, a] = (energies[0] - energies[1]) / (2 * step) / volume
    return stress


def assert_forces_match_finite_differences(model, sample: Sample, step: float = 1e-5, atol: float = 1e-6,
                                           rtol: float = 1e-6) -> None:
    """The model's ``forces`` equal ``-dE/dr`` by central differences (float64 model)."""
    __tracebackhide__ = True
    predicted = model_outputs(model, [sample])["forces"].numpy()
    numeric = finite_difference_forces(model, sample, step)
    error = float(np.abs(predicted - numeric).max())
    tolerance = atol + rtol * float(np.abs(numeric).max())
    if not error <= tolerance:
        raise AssertionError(f"forces differ from -dE/dr (central differences, step {step} Å) by {error:.3e} > "
                             f"{tolerance:.3e}")


def assert_stress_matches_finite_differences(model, sample: Sample, step: float = 1e-5, atol: float = 1e-7,
                                             rtol: float = 1e-6) -> None:
    """The model's ``stress`` equals ``(1/V) dE/d eps`` by central differences (float64 model),
    and its ``virial`` is ``-V stress``."""
    __tracebackhide__ = True
    outputs = model_outputs(model, [sample])
    predicted = outputs["stress"][0].numpy()
    numeric = finite_difference_stress(model, sample, step)
    error = float(np.abs(predicted - numeric).max())
    tolerance = atol + rtol * float(np.abs(numeric).max())
    if not error <= tolerance:
        raise AssertionError(f"stress differs from (1/V) dE/d(strain) (central differences, step {step}) by "
                             f"{error:.3e} > {tolerance:.3e} eV/Å^3")
    volume = abs(np.linalg.det(sample.cell))
    virial = outputs["virial"][0].numpy()
    if not np.allclose(virial, -volume * predicted, atol=atol * volume, rtol=1e-10):
        raise AssertionError("virial differs from -V * stress")


__all__ = [
    "assert_forces_match_finite_differences",
    "assert_stress_matches_finite_differences",
    "finite_difference_forces",
    "finite_difference_stress",
]
