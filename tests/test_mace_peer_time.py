"""MACE's time-only path (``mace_peer.time_peer``, the runner's ``time`` mode).

The MACE test runs MACE in its own venv and is skipped, with the reason, where
``.bench-venvs/mace`` was not built (as in tests/test_mace_peer.py). It checks keys and signs
only: a smoke run on a few structures says nothing about speed.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.peers import mace_peer
from benchmarks.tasks import TASKS, load_task

MACE_OK, MACE_REASON = mace_peer.available()
needs_mace = pytest.mark.skipif(not MACE_OK, reason=MACE_REASON or "MACE venv present")

SUMMARY_KEYS = {"supported", "reason", "fields", "unsupported_fields", "inference_structures_per_s", "inference_atoms_per_s",
                "inference_time_s", "test_structures", "test_atoms", "num_parameters", "model", "device",
                "torch_threads", "inference_batch_size", "inference_timing", "versions", "notes", "models"}


def test_time_peer_reports_a_task_without_a_mace_head_as_unsupported(tmp_path: Path) -> None:
    task = SimpleNamespace(name="piezo-only", targets={"piezo": 1.0}, cutoff=4.0, split={"seed": 0})
    result = mace_peer.time_peer(task, [], {"train": [], "valid": [], "test": []}, tmp_path)
    assert result["supported"] is False and "piezo" in result["reason"]
    assert not any(tmp_path.iterdir())  # nothing was written or run


@needs_mace
def test_time_peer_times_untrained_mace_on_a_few_test_structures(tmp_path: Path) -> None:
    task = TASKS["default-molecules"]
    samples, split = load_task(task, reduced=True)
    # a small training split (z_table, avg_num_neighbors) and four structures to time
    split = {"train": split["train"][:8], "valid": split["valid"], "test": split["test"] + split["valid"]}
    result = mace_peer.time_peer(task, samples, split, tmp_path)

    assert result["supported"] is True, result["reason"]
    assert SUMMARY_KEYS <= set(result)
    assert result["fields"] == ["forces", "dipole", "polarizability"]
    assert {"born_charges", "hyperpolarizability"} <= set(result["unsupported_fields"])
    assert result["test_structures"] == 4
    assert result["test_atoms"] == sum(samples[i].num_atoms for i in split["test"])
    for key in ("inference_structures_per_s", "inference_atoms_per_s", "inference_time_s", "num_parameters"):
        assert result[key] > 0, key
    assert result["device"] == "cpu" and result["torch_threads"] == 1 and result["inference_batch_size"] == 16
    assert result["versions"]["e3nn"].startswith("0.4") and result["versions"]["mace-torch"]

    # forces and dipole + polarizability: MACE's energy model and its dielectric model, as run_peer groups them
    models = {m["group"]: m for m in result["models"]}
    assert set(models) == {"energy", "dielectric"}
    assert models["energy"]["model_class"] == "ScaleShiftMACE" and models["energy"]["inference_grad"] is True
    assert models["dielectric"]["model_class"] == "AtomicDielectricMACE"
    assert models["dielectric"]["inference_grad"] is False
    for model in models.values():
        assert model["mode"] == "time" and "train_time_s" not in model
        assert len(model["inference_times_s"]) == 3 and min(model["inference_times_s"]) > 0
        assert model["num_parameters"] > 0
    assert result["num_parameters"] == sum(m["num_parameters"] for m in models.values())
    assert not list(tmp_path.glob("*_predictions.npz"))  # time mode predicts nothing to keep
