"""The benchmark suite in reduced (CI) mode: every task x the reference backbone, no peers.

Tasks whose dataset folder is absent are recorded as skipped with the reason. No timing asserts.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.__main__ import main
from benchmarks.suite import field_errors
from benchmarks.tasks import TASKS, Task, fix_abo3_piezo_sign, load_task, polar_sign
from tensorframe.types import Sample


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    assert main(["run", "--reduced", "--backbones", "reference", "--tasks", *TASKS, "--peers", "none",
                 "--out", str(out), "--no-docs"]) == 0
    return json.loads((out / "suite-reduced.json").read_text())


def test_reduced_suite_records_every_task(reduced_run):
    assert reduced_run["mode"] == "reduced"
    assert set(reduced_run["tasks"]) == set(TASKS)
    for name, task in reduced_run["tasks"].items():
        ok, reason = TASKS[name].available()
        if not ok:
            assert task["skipped"] == reason
            continue
        sizes = task["split_sizes"]
        assert sizes["train"] + sizes["valid"] + sizes["test"] == task["num_structures"]
        assert task["num_structures"] <= TASKS[name].max_structures_reduced
        record = task["backbones"]["reference"]
        assert "error" not in record, (name, record.get("error"))
        assert set(record["fields"]) == set(TASKS[name].targets)
        for field, values in record["fields"].items():
            assert math.isfinite(values["mae"]) and values["mae"] >= 0, (name, field)
            assert values["rmse"] >= values["mae"] - 1e-12, (name, field)  # RMSE >= MAE always
            assert values["count"] > 0
        assert record["num_parameters"] > 0
        assert record["inference_structures_per_s"] > 0 and record["inference_atoms_per_s"] > 0
        assert record["epochs"] >= 1
        assert task["best_backbone"] == "reference"
        assert task["peers"] == {}
        assert task["bar"]["accuracy"]["holds"] is None  # no peer: the bar is not claimed


def test_split_is_a_partition_and_seeded():
    task = TASKS["default-molecules"]
    samples, split = load_task(task, reduced=True)
    again, split_again = load_task(task, reduced=True)
    indices = sorted(i for part in split.values() for i in part)
    assert indices == list(range(len(samples)))
    assert split == split_again
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(samples, again, strict=True))


def test_metric_elements_count_only_labelled_atoms():
    """Errors on atoms outside ``metric_elements`` (placeholder labels) must not enter the MAE."""
    task = Task("t", "", "", "embedded", {}, {"nmr_shielding": 1.0}, [], 5.0, 4.0,
                metric_elements={"nmr_shielding": [14]})
    numbers = np.array([14, 8, 8])
    label = np.zeros((3, 3, 3))
    label[0] = np.diag([1.0, 2.0, 3.0])
    sample = Sample(numbers, np.eye(3) * 1.6, targets={"nmr_shielding": label})
    prediction = label.copy()
    prediction[1:] = 100.0  # wrong only on O
    spec = type("F", (), {"level": "atom", "units": "ppm"})()
    exact = field_errors(task, {"nmr_shielding": spec}, [sample], [{"nmr_shielding": prediction}])
    assert exact["nmr_shielding"]["mae"] == 0.0 and exact["nmr_shielding"]["count"] == 1
    prediction[0, 0, 0] += 0.9
    off = field_errors(task, {"nmr_shielding": spec}, [sample], [{"nmr_shielding": prediction}])
    assert off["nmr_shielding"]["mae"] == pytest.approx(0.1)


def _perovskite(dz: float) -> Sample:
    """Cubic BaTiO3-like cell (a = 4 Å) with Ti shifted by ``dz`` along z."""
    a = 4.0
    positions = np.array([[0, 0, 0], [a / 2, a / 2, a / 2 + dz], [a / 2, a / 2, 0], [a / 2, 0, a / 2], [0, a / 2, a / 2]])
    piezo = np.zeros((3, 3, 3))
    piezo[2, 2, 2] = 3.0  # the source's convention: e33 forced positive
    return Sample(np.array([56, 22, 8, 8, 8]), positions.astype(float), np.eye(3) * a, np.ones(3, bool),
                  {"piezo": piezo})


def test_polar_sign_follows_the_b_cation_and_fixes_the_piezo_sign():
    up, down, centred = _perovskite(0.1), _perovskite(-0.1), _perovskite(0.0)
    assert polar_sign(up) == 1.0 and polar_sign(down) == -1.0 and polar_sign(centred) == 0.0
    fixed_up, fixed_down = fix_abo3_piezo_sign([up, down])
    assert fixed_up.targets["piezo"][2, 2, 2] == 3.0
    # mirror z -> -z maps ``up`` onto ``down``; e_zzz is odd under it, so the fixed labels must be opposite
    assert fixed_down.targets["piezo"][2, 2, 2] == -3.0


@pytest.mark.skipif(not TASKS["si-nmr"].available()[0], reason="matten-si-nmr dataset absent")
def test_nmr_reader_fills_equivalent_si_with_rotated_tensors():
    """Filled tensors of symmetry-equivalent Si share the labelled site's rotation invariants
    (the eigenvalues of the symmetric part and the norm of the antisymmetric part)."""
    from tensorframe.io.nmr import read_matten_nmr

    samples = read_matten_nmr(TASKS["si-nmr"].folder / "si_nmr_data.json", limit=6)
    assert samples
    for sample in samples:
        t = sample.targets["nmr_shielding"][sample.numbers == 14]
        assert np.all(np.abs(np.trace(t, axis1=1, axis2=2)) > 0)  # every Si labelled
        sym = np.linalg.eigvalsh((t + t.transpose(0, 2, 1)) / 2)
        anti = np.linalg.norm(t - t.transpose(0, 2, 1), axis=(1, 2))
        iso = np.round(np.trace(t, axis1=1, axis2=2), 6)
        for value in np.unique(iso):
            same = iso == value
            np.testing.assert_allclose(sym[same], sym[same][:1].repeat(same.sum(), 0), atol=1e-6)
            np.testing.assert_allclose(anti[same], anti[same][0], atol=1e-6)
