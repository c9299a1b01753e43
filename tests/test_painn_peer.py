"""The PaiNN peer adapter (benchmarks/peers/painn_peer.py) and its runner in the SchNetPack venv.

The first tests need only tensorframe's venv. The last ones run SchNetPack itself and are
skipped, with the reason, where ``.bench-venvs/schnetpack`` was not built (CI does not build
it; see benchmarks/peers/setup_schnetpack_venv.sh). They check keys and finiteness only: a
1-epoch run on a few structures says nothing about accuracy or speed.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.peers import painn_peer
from benchmarks.tasks import TASKS, load_task

PAINN_OK, PAINN_REASON = painn_peer.available()
needs_painn = pytest.mark.skipif(not PAINN_OK, reason=PAINN_REASON or "SchNetPack venv present")

SUMMARY_KEYS = {"supported", "reason", "fields", "unsupported_fields", "inference_structures_per_s",
                "inference_atoms_per_s", "inference_time_s", "test_structures", "test_atoms", "num_parameters",
                "model", "device", "torch_threads", "inference_batch_size", "inference_timing", "versions", "notes",
                "models"}


def test_plan_fields_keeps_schnetpack_heads_and_names_the_rest() -> None:
    weights, unsupported = painn_peer.plan_fields(
        {"forces": 1.0, "dipole": 2.0, "polarizability": 0.5, "atomic_dipole": 1.0, "born_charges": 1.0})
    assert weights == {"forces": 1.0, "dipole": 2.0, "polarizability": 0.5}
    assert set(unsupported) == {"atomic_dipole", "born_charges"}
    assert all(reason for reason in unsupported.values())


def test_a_task_without_a_schnetpack_head_is_unsupported_and_runs_nothing(tmp_path: Path) -> None:
    task = SimpleNamespace(name="piezo-only", targets={"piezo": 1.0, "dielectric": 1.0}, cutoff=4.0, split={"seed": 0})
    empty = {"train": [], "valid": [], "test": []}
    for result in (painn_peer.run_peer(task, [], empty, {"epochs": 1}, tmp_path),
                   painn_peer.time_peer(task, [], empty, tmp_path)):
        assert result["supported"] is False
        assert "piezo" in result["reason"] and "dielectric" in result["reason"]
    assert not any(tmp_path.iterdir())


def _small_molecules() -> tuple[object, list, dict]:
    task = TASKS["default-molecules"]
    samples, split = load_task(task, reduced=True)
    return task, samples, {"train": split["train"][:8], "valid": split["valid"][:2], "test": split["test"][:2]}


@needs_painn
def test_run_peer_trains_painn_for_one_epoch_on_a_few_molecules(tmp_path: Path) -> None:
    task, samples, split = _small_molecules()
    result = painn_peer.run_peer(task, samples, split, {"epochs": 1, "max_time_s": 20.0}, tmp_path)

    assert result["supported"] is True, result["reason"]
    assert SUMMARY_KEYS | {"train_time_s", "peak_memory_mib", "peak_memory_method"} <= set(result)
    assert set(result["fields"]) == {"forces", "dipole", "polarizability"}
    for name, scores in result["fields"].items():
        assert math.isfinite(scores["mae"]) and math.isfinite(scores["rmse"]), name
    assert {"born_charges", "hyperpolarizability"} <= set(result["unsupported_fields"])
    assert result["test_structures"] == 2 and result["device"] == "cpu" and result["torch_threads"] == 1
    assert result["versions"]["schnetpack"] and result["versions"]["torch"].startswith("2.13")
    assert result["models"][0]["epochs_done"] == 1 and result["models"][0]["inference_grad"] is True


@needs_painn
def test_time_peer_times_untrained_painn(tmp_path: Path) -> None:
    task, samples, split = _small_molecules()
    result = painn_peer.time_peer(task, samples, split, tmp_path)

    assert result["supported"] is True, result["reason"]
    assert SUMMARY_KEYS <= set(result)
    assert result["fields"] == ["forces", "dipole", "polarizability"]
    model = result["models"][0]
    assert model["mode"] == "time" and "train_time_s" not in model
    assert len(model["inference_times_s"]) == 3 and min(model["inference_times_s"]) > 0
    assert not (tmp_path / "painn_predictions.npz").exists()
