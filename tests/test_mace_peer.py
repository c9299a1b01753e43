"""The MACE peer adapter (benchmarks/peers/mace_peer.py) and its runner in the MACE venv.

The first tests need only tensorframe's venv. The last ones run MACE itself and are skipped,
with the reason, where ``.bench-venvs/mace`` was not built (CI does not build it; see
benchmarks/peers/setup_mace_venv.sh).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from benchmarks.peers import mace_peer
from tensorframe.types import Sample

MACE_OK, MACE_REASON = mace_peer.available()
needs_mace = pytest.mark.skipif(not MACE_OK, reason=MACE_REASON or "MACE venv present")


def _water(seed: int) -> Sample:
    rng = np.random.default_rng(seed)
    positions = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]) + 0.05 * rng.normal(size=(3, 3))
    targets = {
        "forces": rng.normal(size=(3, 3)),
        "dipole": rng.normal(size=3),
        "polarizability": (lambda a: a + a.T)(rng.normal(size=(3, 3))),
        "atomic_dipole": rng.normal(size=(3, 3)),
    }
    return Sample(np.array([8, 1, 1]), positions, targets=targets)


def test_plan_models_groups_fields_by_mace_model_and_names_what_mace_cannot_do() -> None:
    groups, unsupported = mace_peer.plan_models(
        {"forces": 1.0, "dipole": 2.0, "polarizability": 0.5, "born_charges": 1.0, "hyperpolarizability": 1.0})
    assert groups == {"energy": {"forces": 1.0}, "dielectric": {"dipole": 2.0, "polarizability": 0.5}}
    assert set(unsupported) == {"born_charges", "hyperpolarizability"}
    # a dipole alone goes to MACE's dipole-only model, a polarizability alone to the dielectric one
    assert mace_peer.plan_models({"dipole": 1.0})[0] == {"dipole": {"dipole": 1.0}}
    assert mace_peer.plan_models({"polarizability": 1.0})[0] == {"dielectric": {"polarizability": 1.0}}


def test_run_peer_reports_a_task_without_a_mace_head_as_unsupported(tmp_path: Path) -> None:
    task = SimpleNamespace(name="piezo-only", targets={"piezo": 1.0, "dielectric": 1.0}, cutoff=4.0, split={"seed": 0})
    result = mace_peer.run_peer(task, [], {"train": [], "valid": [], "test": []}, {"epochs": 1}, tmp_path)
    assert result["supported"] is False
    assert "piezo" in result["reason"] and "dielectric" in result["reason"]
    assert not any(tmp_path.iterdir())  # nothing was written or run


def test_extxyz_carries_every_label_unchanged_under_mace_keys(tmp_path: Path) -> None:
    import ase.io

    samples = [_water(0), _water(1)]
    path = tmp_path / "x.xyz"
    fields = ["forces", "dipole", "polarizability", "atomic_dipole"]
    mace_peer.write_extxyz(samples, fields, path)
    frames = ase.io.read(path, index=":")
    for sample, atoms in zip(samples, frames, strict=True):
        np.testing.assert_array_equal(atoms.numbers, sample.numbers)
        np.testing.assert_allclose(atoms.positions, sample.positions, atol=1e-8)
        np.testing.assert_allclose(atoms.arrays["REF_forces"], sample.targets["forces"], atol=1e-8)
        np.testing.assert_allclose(atoms.arrays["REF_atomic_dipole"], sample.targets["atomic_dipole"], atol=1e-8)
        np.testing.assert_allclose(atoms.info["REF_dipole"], sample.targets["dipole"], atol=1e-8)
        # row-major 9 values: a non-symmetric matrix must come back untransposed
        np.testing.assert_allclose(atoms.info["REF_polarizability"].reshape(3, 3), sample.targets["polarizability"],
                                   atol=1e-8)
    with pytest.raises(ValueError, match="structure 0: no label for field 'energy'"):
        mace_peer.write_extxyz(samples, ["energy"], path)


def test_field_metrics_count_only_the_chosen_elements() -> None:
    samples = [_water(0), _water(1)]
    target = np.concatenate([s.targets["atomic_dipole"] for s in samples])
    predicted = target.copy()
    predicted[[1, 2, 4, 5]] += 1.0  # wrong on every H only
    on_oxygen = mace_peer.field_metrics("atomic_dipole", predicted, samples, elements=[8])
    assert on_oxygen["mae"] == 0.0 and on_oxygen["count"] == 2
    everywhere = mace_peer.field_metrics("atomic_dipole", predicted, samples)
    assert everywhere["mae"] == pytest.approx(4 / 6) and everywhere["rmse"] == pytest.approx(np.sqrt(4 / 6))


def _rotated(sample: Sample, rotation: np.ndarray) -> Sample:
    t = sample.targets
    targets = {"forces": t["forces"] @ rotation.T, "dipole": rotation @ t["dipole"],
               "polarizability": rotation @ t["polarizability"] @ rotation.T}
    return Sample(sample.numbers, sample.positions @ rotation.T, targets=targets)


@needs_mace
def test_mace_predictions_through_files_are_o3_equivariant(tmp_path: Path) -> None:
    """MACE, trained for one epoch in its own venv, predicts R F, R mu, R alpha R^T for a
    structure rotated by an improper R (float64): the files, keys and row order are right."""
    from tensorframe.datasets import load_default_dataset

    samples = load_default_dataset()[:8]
    rotation = -Rotation.random(random_state=3).as_matrix()  # improper: det = -1
    test = samples[7]
    samples = samples[:7] + [test, _rotated(test, rotation)]
    task = SimpleNamespace(name="tiny", targets={"forces": 1.0, "dipole": 1.0, "polarizability": 1.0},
                           cutoff=4.0, split={"seed": 0}, metric_elements={})
    split = {"train": [0, 1, 2, 3, 4], "valid": [5, 6], "test": [7, 8]}
    result = mace_peer.run_peer(task, samples, split, {"epochs": 1, "max_time_s": 60, "dtype": "float64",
                                                       "batch_size": 4}, tmp_path)
    assert result["supported"] is True and set(result["fields"]) == {"forces", "dipole", "polarizability"}
    with np.load(tmp_path / "energy_predictions.npz") as p:
        forces = p["forces"].reshape(2, -1, 3)
    with np.load(tmp_path / "dielectric_predictions.npz") as p:
        dipole, polar = p["dipole"], p["polarizability"]
    # not a trivial model: the predictions are non-zero and do change under the rotation (and
    # under the inversion in it: the proper part alone would predict the wrong dipole sign)
    assert np.abs(dipole[1] - dipole[0]).max() > 1e-3 and np.abs(forces[1] - forces[0]).max() > 1e-3
    assert np.abs(dipole[1] + rotation @ dipole[0]).max() > 1e-3
    # extxyz stores positions with 8 decimals (|dr| <= 5e-9 Å), which bounds the agreement
    tol = 1e-7
    np.testing.assert_allclose(forces[1], forces[0] @ rotation.T, rtol=0, atol=tol)
    np.testing.assert_allclose(dipole[1], rotation @ dipole[0], rtol=0, atol=tol)
    np.testing.assert_allclose(polar[1], rotation @ polar[0] @ rotation.T, rtol=0, atol=tol)
    assert result["versions"]["e3nn"].startswith("0.4") and result["num_parameters"] > 0


@needs_mace
def test_runner_refuses_a_field_its_model_cannot_learn(tmp_path: Path) -> None:
    config = {"group": "dipole", "fields": {"polarizability": 1.0}, "files": {}, "model": {}, "train": {}}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run([str(mace_peer.mace_python()), str(mace_peer.RUNNER), str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "group 'dipole' cannot learn ['polarizability']" in proc.stderr
