"""MACE as a benchmark peer, run in its own virtual environment and spoken to through files.

mace-torch pins e3nn 0.4.4 and tensorframe needs e3nn 0.6, so MACE lives in
``.bench-venvs/mace`` (made by ``benchmarks/peers/setup_mace_venv.sh``; env
``TENSORFRAME_MACE_VENV`` points elsewhere). :func:`run_peer` runs in tensorframe's venv
through ``peer_venv.VenvPeer`` (shared with the PaiNN peer; its docstring describes the files),
one ``<mace venv>/bin/python mace_runner.py run.json`` per MACE model. :func:`time_peer` is the
same path in the runner's ``time`` mode: the same models (same sizes, z_table,
avg_num_neighbors, seed), untrained, timed on the test split only.

:func:`plan_models` groups a task's fields into MACE models (energy and forces:
``ScaleShiftMACE``; dipole and polarizability: ``AtomicDielectricMACE``, dipole alone
``AtomicDipolesMACE``; atomic dipoles: ``AtomicDipolesMACE``'s per-atom output; see
mace_runner.py). A task with fields from two groups trains two MACE models, each with an equal
share of the task's wall-time budget; train time, parameters and inference time are summed over
them. Every other field has no MACE head (:data:`UNSUPPORTED`) and is reported, not faked.

Units: MACE regresses dipole and polarizability as given (its AtomicDielectricMACE dipole
baseline sum q_i r_i is in e·Å, which is tensorframe's dipole unit), so no conversion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.peers.peer_venv import ModelDescription, RunnerModel, VenvPeer
from benchmarks.toolkit import REPO_ROOT

RUNNER = Path(__file__).resolve().with_name("mace_runner.py")
DEFAULT_VENV = REPO_ROOT / ".bench-venvs" / "mace"

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


def _describe(results: Sequence[Mapping[str, Any]]) -> ModelDescription:
    """A task's MACE models (one runner result json each) as the record names them."""
    described = [f"{r['model_class']} for {', '.join(r['fields'])}" for r in results]
    notes = list(described)
    if any(r["inference_grad"] for r in results):
        notes.append("forces are -dE/dx, so that model's inference runs with autograd (no torch.no_grad)")
    return ModelDescription(model="MACE: " + "; ".join(described), notes=notes,
                            inference_timing=results[0]["inference_timing"]
                            + "; models run one after another, times summed")


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


def _runner_models(task: Any) -> tuple[list[RunnerModel], dict[str, str]]:
    """The task's MACE models (one runner each, files and run.json ``group`` named by the group)
    and its unsupported fields with the reasons."""
    groups, unsupported = plan_models(task.targets)
    models = [RunnerModel(prefix=group, fields=weights, spec=model_spec(group, task.cutoff), group=group)
              for group, weights in groups.items()]
    return models, unsupported


#: The MACE venv, its runner and how its models are named (lr 0.01 is MACE's default); an MD run
#: trains the energy/forces model (``ScaleShiftMACE``) and runs MACE's ``MACECalculator``.
PEER = VenvPeer(name="MACE", venv_name="MACE", runner=RUNNER, default_venv=DEFAULT_VENV,
                venv_env_var="TENSORFRAME_MACE_VENV", setup_script="benchmarks/peers/setup_mace_venv.sh",
                default_lr=0.01, describe=_describe, plan=_runner_models,
                md_model=lambda models: next((m for m in models if m.group == "energy"), None))

# The peer's entry points are the VenvPeer's methods (see there).
mace_python, available, write_extxyz, field_metrics = PEER.python, PEER.available, PEER.write_extxyz, PEER.field_metrics
run_peer, time_peer, md_peer = PEER.run_peer, PEER.time_peer, PEER.md_peer
