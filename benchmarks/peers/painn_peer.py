"""PaiNN (SchNetPack) as a benchmark peer, run in its own virtual environment through files.

SchNetPack brings pytorch-lightning, hydra and matscipy, so it lives in
``.bench-venvs/schnetpack`` (made by ``benchmarks/peers/setup_schnetpack_venv.sh``; env
``TENSORFRAME_SCHNETPACK_VENV`` points elsewhere). As the MACE peer, :func:`run_peer` runs in
tensorframe's venv:

    task splits -> extxyz files (labels under REF_* keys, tensorframe's units)
    -> ``<schnetpack venv>/bin/python painn_runner.py run.json``
    -> predictions (npz) + timings (json) -> MAE/RMSE with tensorframe.evaluate.metrics

:func:`time_peer` is the same path in the runner's ``time`` mode (same model and seed,
untrained, timed on the test split only).

One PaiNN learns every supported field of a task, with SchNetPack's output modules sharing the
representation (see painn_runner.py): ``Atomwise`` energy + ``Forces`` (-dE/dx), ``DipoleMoment``
(latent charges + PaiNN's vector atomic dipoles), ``Polarizability``. Every other field has no
SchNetPack output module (:data:`UNSUPPORTED`) and is reported, never faked.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peers.mace_peer import field_metrics, write_extxyz
from tensorframe.types import Sample

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).resolve().with_name("painn_runner.py")
DEFAULT_VENV = REPO_ROOT / ".bench-venvs" / "schnetpack"
SUPPORTED_FIELDS = ("energy", "forces", "dipole", "polarizability")

UNSUPPORTED: dict[str, str] = {
    "atomic_dipole": "SchNetPack's DipoleMoment forms per-atom dipoles internally but outputs only their sum "
    "(and charges); it has no per-atom dipole output to train",
    "born_charges": "SchNetPack has no Born-charge output module",
    "dielectric": "SchNetPack has no intensive dielectric-tensor output (its Polarizability is extensive)",
    "piezo": "SchNetPack has no rank-3 (piezoelectric) output module",
    "piezo_strain": "SchNetPack has no rank-3 (piezoelectric) output module",
    "hyperpolarizability": "SchNetPack has no rank-3 (hyperpolarizability) output module",
    "nmr_shielding": "SchNetPack 2.0 has no per-atom rank-2 (NMR shielding) output module",
    "atomic_polarizability": "SchNetPack has no per-atom polarizability output module",
}

#: PaiNN as the brief sets it: 64 features, 3 interactions, 20 Gaussians; cutoff = the task's.
MODEL_SIZES: dict[str, Any] = {"n_atom_basis": 64, "n_interactions": 3, "n_rbf": 20}


def painn_python(venv: Path | None = None) -> Path:
    """The SchNetPack venv's python (which may not exist)."""
    venv = venv or Path(os.environ.get("TENSORFRAME_SCHNETPACK_VENV", DEFAULT_VENV))
    return venv / "bin" / "python"


def available(venv: Path | None = None) -> tuple[bool, str]:
    """Whether the SchNetPack venv is there, and if not, why (and how to make it)."""
    python = painn_python(venv)
    if not python.exists():
        return False, f"SchNetPack venv not found ({python}); run benchmarks/peers/setup_schnetpack_venv.sh"
    return True, ""


def plan_fields(targets: Mapping[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """({field: weight} PaiNN learns, {unsupported field: reason})."""
    supported = {name: float(w) for name, w in targets.items() if name in SUPPORTED_FIELDS}
    unsupported = {name: UNSUPPORTED.get(name, "SchNetPack has no output module for this field")
                   for name in targets if name not in SUPPORTED_FIELDS}
    return supported, unsupported


def _blocked(weights: Mapping[str, float], unsupported: Mapping[str, str], venv: Path | None) -> dict[str, Any] | None:
    """The record of a task PaiNN cannot run (no supported field, or no venv); None if it can."""
    if not weights:
        return {"supported": False, "reason": "; ".join(f"{f}: {r}" for f, r in unsupported.items()),
                "unsupported_fields": dict(unsupported)}
    ok, reason = available(venv)
    if not ok:
        return {"supported": False, "reason": reason}
    return None


def _run_runner(task: Any, mode: str, weights: Mapping[str, float], parts: Mapping[str, Sequence[Sample]],
                train_cfg: Mapping[str, Any], out_dir: Path, timeout: float, venv: Path | None) -> dict[str, Any]:
    """Write the extxyz files and run.json, run painn_runner.py on them; its result json.

    Raises:
        RuntimeError: with the log's tail when the runner fails.
    """
    files = {}
    for part, part_samples in parts.items():
        files[part] = str(out_dir / f"painn_{part}.xyz")
        write_extxyz(part_samples, list(weights), Path(files[part]))
    run = {"mode": mode, "fields": dict(weights), "files": files,
           "model": {**MODEL_SIZES, "cutoff": float(task.cutoff)}, "train": dict(train_cfg),
           "predictions": str(out_dir / "painn_predictions.npz"), "result": str(out_dir / "painn_result.json")}
    config_path = out_dir / "painn_run.json"
    config_path.write_text(json.dumps(run, indent=2))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([str(painn_python(venv)), str(RUNNER), str(config_path)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    (out_dir / "painn_log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise RuntimeError(f"PaiNN runner failed for task {task.name!r} (rc {proc.returncode}); "
                           f"see {out_dir / 'painn_log.txt'}: " + " | ".join(tail))
    return json.loads(Path(run["result"]).read_text())


def _train_config(task: Any, budget: Mapping[str, Any]) -> dict[str, Any]:
    """run.json's ``train`` block from the budget (batch 8, Adam lr 5e-4 unless it says otherwise)."""
    max_time = budget.get("max_time_s")
    return {"epochs": int(budget["epochs"]), "batch_size": int(budget.get("batch_size", 8)),
            "eval_batch_size": int(budget.get("eval_batch_size", 16)), "lr": float(budget.get("lr", 5e-4)),
            "seed": int(budget.get("seed", task.split.get("seed", 0))),
            "max_time_s": None if max_time is None else float(max_time),
            "dtype": str(budget.get("dtype", "float32"))}


def _summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The runner's inference record in the peer record's keys."""
    notes = [f"SchNetPack {result['model_class']}, one model for {', '.join(result['fields'])}"]
    if result["inference_grad"]:
        notes.append("forces are -dE/dx, so inference runs with autograd (no torch.no_grad)")
    if result.get("shims"):
        notes.append("import shim for torch 2.13: " + "; ".join(result["shims"]))
    inference_s = float(np.median(result["inference_times_s"]))
    return {
        "inference_structures_per_s": result["test_structures"] / inference_s,
        "inference_atoms_per_s": result["test_atoms"] / inference_s,
        "inference_time_s": inference_s,
        "test_structures": result["test_structures"],
        "test_atoms": result["test_atoms"],
        "num_parameters": result["num_parameters"],
        "model": "PaiNN (SchNetPack): " + result["model_class"],
        "device": "cpu",
        "torch_threads": result["torch_threads"],
        "inference_batch_size": result["inference_batch_size"],
        "inference_timing": result["inference_timing"],
        "versions": result["versions"],
        "notes": notes,
        "models": [dict(result)],
    }


def run_peer(task: Any, samples: Sequence[Sample], split: Mapping[str, Sequence[int]], budget: Mapping[str, Any],
             out_dir: Path, venv: Path | None = None) -> dict[str, Any]:
    """Train and test PaiNN on a task's splits within its budget (see the module docstring).

    ``budget``: ``epochs``, ``max_time_s`` and optional ``batch_size`` (8), ``eval_batch_size``
    (16), ``lr`` (5e-4), ``seed`` (the split's), ``timeout_s``, ``dtype`` ("float32").
    Returns the keys of ``mace_peer.run_peer``.
    """
    weights, unsupported = plan_fields(task.targets)
    blocked = _blocked(weights, unsupported, venv)
    if blocked is not None:
        return blocked
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = {name: [samples[i] for i in split[name]] for name in ("train", "valid", "test")}
    train_cfg = _train_config(task, budget)
    timeout = budget.get("timeout_s") or 3 * (train_cfg["max_time_s"] or 600) + 300
    result = _run_runner(task, "train", weights, parts, train_cfg, out_dir, timeout, venv)
    field_results = {}
    with np.load(out_dir / "painn_predictions.npz") as predictions:
        for name in weights:
            elements = getattr(task, "metric_elements", {}).get(name)
            field_results[name] = field_metrics(name, predictions[name], parts["test"], elements)
    return {
        "supported": True,
        "reason": "; ".join(f"{f}: {r}" for f, r in unsupported.items()),
        "unsupported_fields": unsupported,
        "fields": field_results,
        "train_time_s": result["train_time_s"],
        "peak_memory_mib": result["peak_memory_mib"],
        "peak_memory_method": "ru_maxrss of the PaiNN runner process (whole process, not a delta)",
        **_summary(result),
    }


def time_peer(task: Any, samples: Sequence[Sample], split: Mapping[str, Sequence[int]], out_dir: Path,
              venv: Path | None = None, *, eval_batch_size: int = 16, dtype: str = "float32",
              timeout_s: float = 900.0) -> dict[str, Any]:
    """Time PaiNN's inference on a task's test split, without training (the runner's ``time`` mode).

    Same model as :func:`run_peer` (sizes, seed, hence initial weights), untrained; inference as
    there. Returns the keys of ``mace_peer.time_peer``.
    """
    weights, unsupported = plan_fields(task.targets)
    blocked = _blocked(weights, unsupported, venv)
    if blocked is not None:
        return blocked
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = {name: [samples[i] for i in split[name]] for name in ("train", "valid", "test")}
    train_cfg = _train_config(task, {"epochs": 0, "eval_batch_size": eval_batch_size, "dtype": dtype})
    result = _run_runner(task, "time", weights, parts, train_cfg, out_dir, timeout_s, venv)
    summary = _summary(result)
    summary["notes"].append(f"untrained PaiNN (seed {train_cfg['seed']}): inference speed does not depend on the weights")
    return {"supported": True, "reason": "; ".join(f"{f}: {r}" for f, r in unsupported.items()),
            "fields": list(weights), "unsupported_fields": unsupported, **summary}


__all__ = ["MODEL_SIZES", "UNSUPPORTED", "available", "painn_python", "plan_fields", "run_peer", "time_peer"]
