"""PaiNN (SchNetPack) as a benchmark peer, run in its own virtual environment through files.

SchNetPack brings pytorch-lightning, hydra and matscipy, so it lives in
``.bench-venvs/schnetpack`` (made by ``benchmarks/peers/setup_schnetpack_venv.sh``; env
``TENSORFRAME_SCHNETPACK_VENV`` points elsewhere). As the MACE peer, :func:`run_peer` runs in
tensorframe's venv through ``peer_venv.VenvPeer`` (``<schnetpack venv>/bin/python
painn_runner.py run.json``); :func:`time_peer` is the same path in the runner's ``time`` mode
(same model and seed, untrained, timed on the test split only).

One PaiNN learns every supported field of a task, SchNetPack's output modules sharing the
representation (see painn_runner.py); every other field has no SchNetPack output module
(:data:`UNSUPPORTED`) and is reported, never faked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.peers.peer_venv import ModelDescription, RunnerModel, VenvPeer
from benchmarks.toolkit import REPO_ROOT

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

#: The prefix of the PaiNN runner's files in ``out_dir`` (``painn_run.json``, ``painn_predictions.npz``, ...).
FILE_PREFIX = "painn"


def _describe(results: Sequence[Mapping[str, Any]]) -> ModelDescription:
    """The one PaiNN model (its runner's result json) as the record names it."""
    result = results[0]
    notes = [f"SchNetPack {result['model_class']}, one model for {', '.join(result['fields'])}"]
    if result["inference_grad"]:
        notes.append("forces are -dE/dx, so inference runs with autograd (no torch.no_grad)")
    if result.get("shims"):
        notes.append("import shim for torch 2.13: " + "; ".join(result["shims"]))
    return ModelDescription(model="PaiNN (SchNetPack): " + result["model_class"], notes=notes,
                            inference_timing=result["inference_timing"])


def plan_fields(targets: Mapping[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """({field: weight} PaiNN learns, {unsupported field: reason})."""
    supported = {name: float(w) for name, w in targets.items() if name in SUPPORTED_FIELDS}
    unsupported = {name: UNSUPPORTED.get(name, "SchNetPack has no output module for this field")
                   for name in targets if name not in SUPPORTED_FIELDS}
    return supported, unsupported


def _runner_models(task: Any) -> tuple[list[RunnerModel], dict[str, str]]:
    """The task's one PaiNN model (none when no field is supported) and its unsupported fields."""
    weights, unsupported = plan_fields(task.targets)
    spec = {**MODEL_SIZES, "cutoff": float(task.cutoff)}
    models = [RunnerModel(prefix=FILE_PREFIX, fields=weights, spec=spec)] if weights else []
    return models, unsupported


#: The SchNetPack venv, the PaiNN runner and how its model is named (Adam lr 5e-4 by default); an
#: MD run trains the PaiNN when it learns forces, saves it and runs SchNetPack's ``SpkCalculator``.
PEER = VenvPeer(name="PaiNN", venv_name="SchNetPack", runner=RUNNER, default_venv=DEFAULT_VENV,
                venv_env_var="TENSORFRAME_SCHNETPACK_VENV", setup_script="benchmarks/peers/setup_schnetpack_venv.sh",
                default_lr=5e-4, describe=_describe, plan=_runner_models,
                md_model=lambda models: models[0] if models and "forces" in models[0].fields else None,
                md_model_file=f"{FILE_PREFIX}_model.pt")

# The peer's entry points are the VenvPeer's methods (see there).
painn_python, available, run_peer, time_peer, md_peer = (PEER.python, PEER.available, PEER.run_peer, PEER.time_peer,
                                                         PEER.md_peer)
