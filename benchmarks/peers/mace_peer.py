"""MACE as a benchmark peer, run in its own virtual environment and spoken to through files.

mace-torch pins e3nn 0.4.4 and tensorframe needs e3nn 0.6, so MACE lives in
``.bench-venvs/mace`` (made by ``benchmarks/peers/setup_mace_venv.sh``; env
``TENSORFRAME_MACE_VENV`` points elsewhere). :func:`run_peer` runs in tensorframe's venv:

    task splits -> extxyz files (labels under REF_* keys, tensorframe's units)
    -> ``<mace venv>/bin/python mace_runner.py run.json`` (one run per MACE model)
    -> predictions (npz) + timings (json) -> MAE/RMSE with tensorframe.evaluate.metrics

:func:`time_peer` is the same path in the runner's ``time`` mode: the same models (same
sizes, z_table, avg_num_neighbors, seed), untrained, timed on the test split only.

Which MACE model learns which field (all MACE's own classes; see mace_runner.py):

    energy, forces           ScaleShiftMACE (forces = -dE/dx)
    dipole                   AtomicDipolesMACE (with polarizability: AtomicDielectricMACE)
    polarizability           AtomicDielectricMACE (MACE-mu-alpha; symmetric 0e+2e, extensive)
    atomic_dipole            AtomicDipolesMACE's per-atom dipoles

A task with fields from two rows trains two MACE models, each with an equal share of the
task's wall-time budget; train time, parameters and inference time are summed over them.
Every other field has no MACE head (:data:`UNSUPPORTED`) and is reported, not faked.

Units: MACE regresses dipole and polarizability as given (its AtomicDielectricMACE dipole
baseline sum q_i r_i is in e·Å, which is tensorframe's dipole unit), so no conversion.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tensorframe.types import Sample

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).resolve().with_name("mace_runner.py")
DEFAULT_VENV = REPO_ROOT / ".bench-venvs" / "mace"

LABEL_KEYS = {"energy": "REF_energy", "forces": "REF_forces", "dipole": "REF_dipole",
              "polarizability": "REF_polarizability", "atomic_dipole": "REF_atomic_dipole"}
ATOM_FIELDS = ("forces", "atomic_dipole")

UNSUPPORTED: dict[str, str] = {
    "born_charges": "MACE has no Born-charge head; it only differentiates a dipole model (dmu/dr, never trained "
    "on Born charges, and undefined for periodic cells)",
    "dielectric": "MACE has no intensive dielectric-tensor output; AtomicDielectricMACE predicts an extensive "
    "polarizability (sum over atoms), and eps from alpha/V is a step outside the model",
    "piezo": "MACE has no rank-3 (piezoelectric) head",
    "piezo_strain": "MACE has no rank-3 (piezoelectric) head",
    "hyperpolarizability": "MACE has no rank-3 (hyperpolarizability) head",
    "nmr_shielding": "MACE has no per-atom rank-2 (NMR shielding) head",
    "atomic_polarizability": "MACE has no per-atom polarizability output it trains on",
}

#: A small MACE beside the suite's backbones. max_L (the ``2e`` in hidden irreps) is 2 only for
#: AtomicDielectricMACE, whose polarizability readout needs 2e features; otherwise 1.
MODEL_SIZES: dict[str, Any] = {
    "hidden_irreps": "32x0e+32x1o",
    "hidden_irreps_l2": "32x0e+32x1o+32x2e",
    "max_ell": 2,
    "num_interactions": 2,
    "correlation": 3,
    "num_bessel": 8,
    "num_polynomial_cutoff": 5,
    "radial_MLP": [64, 64, 64],
    "MLP_irreps": "16x0e",
}


def mace_python(venv: Path | None = None) -> Path:
    """The MACE venv's python (which may not exist)."""
    venv = venv or Path(os.environ.get("TENSORFRAME_MACE_VENV", DEFAULT_VENV))
    return venv / "bin" / "python"


def available(venv: Path | None = None) -> tuple[bool, str]:
    """Whether the MACE venv is there, and if not, why (and how to make it)."""
    python = mace_python(venv)
    if not python.exists():
        return False, f"MACE venv not found ({python}); run benchmarks/peers/setup_mace_venv.sh"
    return True, ""


def plan_models(targets: Mapping[str, float]) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Group a task's fields into MACE models; the rest with the reason MACE cannot do them.

    Returns ({group: {field: weight}}, {unsupported field: reason}).
    """
    groups: dict[str, dict[str, float]] = {}
    unsupported: dict[str, str] = {}
    for name, weight in targets.items():
        if name in ("energy", "forces"):
            groups.setdefault("energy", {})[name] = weight
        elif name in ("dipole", "polarizability"):
            groups.setdefault("dielectric", {})[name] = weight
        elif name == "atomic_dipole":
            groups.setdefault("atomic_dipole", {})[name] = weight
        else:
            unsupported[name] = UNSUPPORTED.get(name, "MACE has no head for this field")
    if set(groups.get("dielectric", {})) == {"dipole"}:
        groups["dipole"] = groups.pop("dielectric")  # MACE's dipole-only model
    return groups, unsupported


def model_spec(group: str, cutoff: float) -> dict[str, Any]:
    """MACE sizes for one model; r_max is the task's cutoff."""
    spec = {k: v for k, v in MODEL_SIZES.items() if k != "hidden_irreps_l2"}
    if group == "dielectric":
        spec["hidden_irreps"] = MODEL_SIZES["hidden_irreps_l2"]
    spec["r_max"] = float(cutoff)
    return spec


def write_extxyz(samples: Sequence[Sample], fields: Sequence[str], path: Path) -> None:
    """Samples as extxyz, with each field's label under its REF_* key (tensorframe's units).

    Raises:
        ValueError: naming the structure and field when a label is missing.
    """
    import ase
    import ase.io

    frames = []
    for index, sample in enumerate(samples):
        atoms = ase.Atoms(numbers=sample.numbers, positions=sample.positions, cell=sample.cell, pbc=sample.pbc)
        for name in fields:
            if name not in sample.targets:
                raise ValueError(f"structure {index}: no label for field {name!r} (MACE needs every label)")
            value = np.asarray(sample.targets[name], dtype=np.float64)
            if name in ATOM_FIELDS:
                atoms.arrays[LABEL_KEYS[name]] = value.reshape(len(sample.numbers), 3)
            elif name == "energy":
                atoms.info[LABEL_KEYS[name]] = float(value)
            else:
                atoms.info[LABEL_KEYS[name]] = value.reshape(-1)  # polarizability: 9, row-major
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")


def field_metrics(name: str, predicted: np.ndarray, samples: Sequence[Sample],
                  elements: Sequence[int] | None = None) -> dict[str, Any]:
    """tensorframe's metrics for one field (rows: atoms or structures; ``elements`` filters atoms)."""
    from tensorframe.evaluate import FieldPairs, metrics
    from tensorframe.registry import get_registry

    spec = get_registry().items["field"][name]
    per_row = 3 ** spec.rank
    target = np.concatenate([np.asarray(s.targets[name], dtype=np.float64).reshape(-1, per_row) for s in samples])
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, per_row)
    if predicted.shape != target.shape:
        raise ValueError(f"field {name!r}: MACE returned {predicted.shape[0]} rows, the test set has {target.shape[0]}")
    if spec.level == "atom" and elements:
        keep = np.isin(np.concatenate([s.numbers for s in samples]), list(elements))
        predicted, target = predicted[keep], target[keep]
    return metrics(FieldPairs(name, spec.level, spec.units, spec.rank, predicted, target, len(samples)))


def _blocked(groups: Mapping[str, Any], unsupported: Mapping[str, str], venv: Path | None) -> dict[str, Any] | None:
    """The record of a task MACE cannot run (no supported field, or no MACE venv); None if it can."""
    if not groups:
        return {"supported": False, "reason": "; ".join(f"{f}: {r}" for f, r in unsupported.items()),
                "unsupported_fields": dict(unsupported)}
    ok, reason = available(venv)
    if not ok:
        return {"supported": False, "reason": reason}
    return None


def _runner_train_config(task: Any, budget: Mapping[str, Any], num_models: int) -> dict[str, Any]:
    """run.json's ``train`` block: the budget's settings, the time budget shared by the models."""
    max_time = budget.get("max_time_s")
    return {
        "epochs": int(budget["epochs"]), "batch_size": int(budget.get("batch_size", 8)),
        "eval_batch_size": int(budget.get("eval_batch_size", 16)), "lr": float(budget.get("lr", 0.01)),
        "seed": int(budget.get("seed", task.split.get("seed", 0))),
        "max_time_s": None if max_time is None else float(max_time) / num_models,
        "dtype": str(budget.get("dtype", "float32")),
    }


def _predictions_path(out_dir: Path, group: str) -> Path:
    """Where the runner writes one model's test predictions (train mode)."""
    return out_dir / f"{group}_predictions.npz"


def _run_model(task: Any, mode: str, group: str, weights: Mapping[str, float], parts: Mapping[str, Sequence[Sample]],
               train_cfg: Mapping[str, Any], out_dir: Path, timeout: float, venv: Path | None) -> dict[str, Any]:
    """Write one MACE model's extxyz files and run.json, run mace_runner.py on them; its result json.

    Raises:
        RuntimeError: with the log's tail when the runner fails.
    """
    fields = list(weights)
    files = {}
    for part, part_samples in parts.items():
        files[part] = str(out_dir / f"{group}_{part}.xyz")
        write_extxyz(part_samples, fields, Path(files[part]))
    run = {"mode": mode, "group": group, "fields": dict(weights), "files": files, "model": model_spec(group, task.cutoff),
           "train": dict(train_cfg), "predictions": str(_predictions_path(out_dir, group)),
           "result": str(out_dir / f"{group}_result.json")}
    config_path = out_dir / f"{group}_run.json"
    config_path.write_text(json.dumps(run, indent=2))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([str(mace_python(venv)), str(RUNNER), str(config_path)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    (out_dir / f"{group}_log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise RuntimeError(f"MACE runner failed for task {task.name!r}, model {group!r} "
                           f"(rc {proc.returncode}); see {out_dir / f'{group}_log.txt'}: " + " | ".join(tail))
    return json.loads(Path(run["result"]).read_text())


def _inference_summary(results: Sequence[Mapping[str, Any]], test: Sequence[Sample]) -> dict[str, Any]:
    """Inference speed, size and setup of a task's MACE models together (times and parameters summed)."""
    inference_s = sum(float(np.median(r["inference_times_s"])) for r in results)
    test_atoms = sum(len(s.numbers) for s in test)
    described = [f"{r['model_class']} for {', '.join(r['fields'])}" for r in results]
    notes = list(described)
    if any(r["inference_grad"] for r in results):
        notes.append("forces are -dE/dx, so that model's inference runs with autograd (no torch.no_grad)")
    return {
        "inference_structures_per_s": len(test) / inference_s,
        "inference_atoms_per_s": test_atoms / inference_s,
        "inference_time_s": inference_s,
        "test_structures": len(test),
        "test_atoms": test_atoms,
        "num_parameters": sum(r["num_parameters"] for r in results),
        "model": "MACE: " + "; ".join(described),
        "device": "cpu",
        "torch_threads": results[0]["torch_threads"],
        "inference_batch_size": results[0]["inference_batch_size"],
        "inference_timing": results[0]["inference_timing"] + "; models run one after another, times summed",
        "versions": results[0]["versions"],
        "notes": notes,
        "models": list(results),
    }


def run_peer(task: Any, samples: Sequence[Sample], split: Mapping[str, Sequence[int]], budget: Mapping[str, Any],
             out_dir: Path, venv: Path | None = None) -> dict[str, Any]:
    """Train and test MACE on a task's splits within its budget (see the module docstring).

    ``budget``: ``epochs``, ``max_time_s`` and optional ``batch_size`` (8, as the suite),
    ``eval_batch_size`` (16, the suite's inference batch), ``lr`` (0.01, MACE's default),
    ``seed`` (the split's seed), ``timeout_s`` (per model),
    ``dtype`` ("float32", MACE's training default; "float64" for exact checks).
    """
    groups, unsupported = plan_models(task.targets)
    blocked = _blocked(groups, unsupported, venv)
    if blocked is not None:
        return blocked
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = {name: [samples[i] for i in split[name]] for name in ("train", "valid", "test")}
    train_cfg = _runner_train_config(task, budget, len(groups))
    timeout = budget.get("timeout_s") or 3 * (train_cfg["max_time_s"] or 600) + 300
    results, field_results = [], {}
    for group, weights in groups.items():
        result = _run_model(task, "train", group, weights, parts, train_cfg, out_dir, timeout, venv)
        with np.load(_predictions_path(out_dir, group)) as predictions:
            for name in weights:
                elements = getattr(task, "metric_elements", {}).get(name)
                field_results[name] = field_metrics(name, predictions[name], parts["test"], elements)
        results.append(result)
    summary = _inference_summary(results, parts["test"])
    if len(results) > 1:
        summary["notes"].append(f"{len(results)} MACE models, each with 1/{len(results)} of the time budget; "
                                "train time, parameters and inference time are their sums")
    return {
        "supported": True,
        "reason": "; ".join(f"{f}: {r}" for f, r in unsupported.items()),
        "unsupported_fields": unsupported,
        "fields": field_results,
        "train_time_s": sum(r["train_time_s"] for r in results),
        "peak_memory_mib": max(r["peak_memory_mib"] for r in results),
        "peak_memory_method": "ru_maxrss of the MACE runner process (whole process, not a delta)",
        **summary,
    }


def time_peer(task: Any, samples: Sequence[Sample], split: Mapping[str, Sequence[int]], out_dir: Path,
              venv: Path | None = None, *, eval_batch_size: int = 16, dtype: str = "float32",
              timeout_s: float = 900.0) -> dict[str, Any]:
    """Time MACE's inference on a task's test split, without training (the runner's ``time`` mode).

    The models are those :func:`run_peer` would train for the task's fields (same grouping,
    sizes, z_table over all splits, avg_num_neighbors and E0s from the training split, seed),
    with their untrained initial weights. Inference as in :func:`run_peer`: batches of
    ``eval_batch_size``, graphs built in every pass, median of 3 passes after 1 warm-up, one
    torch thread; the energy model runs with autograd (forces = -dE/dx), the others without.
    ``timeout_s`` bounds each model's runner process.

    Returns:
        ``supported``, ``reason``, ``unsupported_fields`` and, when supported, ``fields`` (the
        fields whose models were timed), ``inference_structures_per_s``, ``inference_atoms_per_s``, ``inference_time_s`` (summed
        over models), ``test_structures``, ``test_atoms``, ``num_parameters``, ``model``,
        ``device``, ``torch_threads``, ``inference_batch_size``, ``inference_timing``,
        ``versions``, ``notes``, ``models`` (each runner's result: per-model
        ``inference_times_s``, ``num_parameters``, ``model_class``, ...).
    """
    groups, unsupported = plan_models(task.targets)
    blocked = _blocked(groups, unsupported, venv)
    if blocked is not None:
        return blocked
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = {name: [samples[i] for i in split[name]] for name in ("train", "valid", "test")}
    train_cfg = _runner_train_config(task, {"epochs": 0, "eval_batch_size": eval_batch_size, "dtype": dtype},
                                     len(groups))
    results = [_run_model(task, "time", group, weights, parts, train_cfg, out_dir, timeout_s, venv)
               for group, weights in groups.items()]
    summary = _inference_summary(results, parts["test"])
    summary["notes"].append(f"untrained MACE (seed {train_cfg['seed']}): inference speed does not depend on the weights")
    if len(results) > 1:
        summary["notes"].append(f"{len(results)} MACE models; parameters and inference time are their sums")
    return {"supported": True, "reason": "; ".join(f"{f}: {r}" for f, r in unsupported.items()),
            "fields": [name for weights in groups.values() for name in weights],
            "unsupported_fields": unsupported, **summary}


__all__ = ["MODEL_SIZES", "UNSUPPORTED", "available", "field_metrics", "mace_python", "model_spec", "plan_models",
           "run_peer", "time_peer", "write_extxyz"]
