"""Output scaling: equivariant scale and shifts, and per-element reference energies."""

from __future__ import annotations

import ase.build
import numpy as np
import pytest
import torch

import tensorframe as tf
from tensorframe.io.convert import to_sample
from tensorframe.train.data import fit_element_shifts, fit_normalization

E0 = {1: -13.6, 6: -1027.0, 8: -2040.5}


def _molecules():
    names = ["H2O", "CH4", "CO2", "CH3OH", "H2CO", "C2H6", "H2O2", "CO"]
    samples = []
    for name in names:
        sample = to_sample(ase.build.molecule(name))
        energy = sum(E0[int(z)] for z in sample.numbers) + 0.01 * len(name)
        samples.append(sample.with_targets({"energy": np.array(energy), "charges": np.array(
            [E0[int(z)] / 100 for z in sample.numbers])}))
    return samples


def _model():
    torch.manual_seed(0)
    return tf.build_model({"cutoff": 4.0, "backbone": {"name": "reference", "hidden": 8},
                           "heads": [{"name": "scalar", "field": "energy"},
                                     {"name": "scalar", "field": "charges", "level": "atom"},
                                     {"name": "dielectric"}]}).double()


def test_element_shifts_recover_reference_energies_by_least_squares():
    shifts = fit_element_shifts(_model(), _molecules(), ["energy", "charges", "dielectric"])
    assert set(shifts) == {"energy", "charges"}  # rank-2 fields take no element shift
    for z, value in E0.items():
        assert shifts["energy"][z] == pytest.approx(value, abs=0.05)
        assert shifts["charges"][z] == pytest.approx(value / 100, abs=1e-12)


def test_element_shifts_enter_the_prediction_and_the_checkpoint(tmp_path):
    model, samples = _model(), _molecules()
    before = model.predict(samples)
    shifts = fit_element_shifts(model, samples, ["energy", "charges"])
    for name, values in shifts.items():
        model.scaling[name].set_element_shift(values)
    after = model.predict(samples)
    for sample, old, new in zip(samples, before, after, strict=True):
        expected = sum(shifts["energy"][int(z)] for z in sample.numbers)
        assert new["energy"] - old["energy"] == pytest.approx(expected, rel=1e-12)
        np.testing.assert_allclose(new["charges"] - old["charges"], [shifts["charges"][int(z)] for z in sample.numbers])
        np.testing.assert_array_equal(new["dielectric"], old["dielectric"])
    tf.save_checkpoint(tmp_path / "m.pt", model)
    reloaded = tf.load_model(tmp_path / "m.pt").predict(samples)
    assert reloaded[0]["energy"] == pytest.approx(after[0]["energy"], rel=1e-12)


def test_scale_is_fitted_on_what_the_element_shifts_leave():
    model, samples = _model(), _molecules()
    without = fit_normalization(model, samples, ["energy"])["energy"][0]
    model.scaling["energy"].set_element_shift(fit_element_shifts(model, samples, ["energy"])["energy"])
    with_shift = fit_normalization(model, samples, ["energy"])["energy"][0]
    assert with_shift < without / 100  # the residual per atom is small once E0s are removed


def test_element_shift_is_refused_where_it_would_break_symmetry():
    model = _model()
    with pytest.raises(ValueError, match="element shifts need"):
        model.scaling["dielectric"].set_element_shift({1: 1.0})
