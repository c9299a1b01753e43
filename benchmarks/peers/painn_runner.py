"""Train and evaluate SchNetPack's PaiNN from extxyz files; run with the SchNetPack venv's python.

This script never imports tensorframe; it talks to ``benchmarks/peers/painn_peer.py`` through
files only (as ``mace_runner.py`` does):

    .bench-venvs/schnetpack/bin/python benchmarks/peers/painn_runner.py run.json

``run.json`` (written by the adapter)::

    {"mode": "train" | "time",                 # optional, "train" when absent
     "fields": {field: loss weight},           # energy, forces, dipole, polarizability
     "files": {"train": xyz, "valid": xyz, "test": xyz},
     "model": {"cutoff", "n_atom_basis", "n_interactions", "n_rbf"},
     "train": {"epochs", "batch_size", "eval_batch_size", "lr", "seed", "max_time_s", "dtype"},
     "predictions": npz path, "result": json path}

Labels in the extxyz are tensorframe's units, learned as they are: ``REF_energy`` (info),
``REF_forces`` (arrays, N x 3), ``REF_dipole`` (info, 3), ``REF_polarizability`` (info, 9
row-major).

Model (all SchNetPack's own modules): ``NeuralNetworkPotential`` with ``PairwiseDistances``
input, ``PaiNN`` representation (``GaussianRBF`` radial basis, ``CosineCutoff``) and one output
module per field, sharing the representation: ``Atomwise`` energy (sum over atoms) and
``Forces`` (-dE/dx, autograd); ``DipoleMoment`` (latent charges summing to zero times positions
plus PaiNN's vector atomic dipoles); ``Polarizability`` (PaiNN's rank factorisation). Both
tensor modules take positions as given, as SchNetPack does: the dipole is origin-independent
(charges sum to zero), SchNetPack's polarizability (isotropic part + mu_i r_i^T + r_i mu_i^T) is
not, so it suits centred molecules (as the embedded set is) better than periodic cells. Neighbour
lists come from SchNetPack's ``MatScipyNeighborList`` transform and batches from its collate
function. Energy offsets: per-element reference energies by least squares on the training
energies are removed from the labels and added back to the predictions (what SchNetPack's
``RemoveOffsets`` / ``AddOffsets`` do with atomrefs); forces-only tasks train the energy with
weight 0 and no offset.

Training is a plain torch loop (no Lightning): Adam (lr from ``train``, 5e-4 by the adapter's
default), batches of ``batch_size`` shuffled with the seed, loss = sum_f w_f * MSE_f / Var_train(f),
``epochs`` or until ``max_time_s`` (checked after each batch), keeping the best validation loss's
weights. Inference (both modes): median of 3 timed passes over the test structures (neighbour
lists, collation, forward; batches of ``eval_batch_size``) after one warm-up, one torch thread;
with autograd when forces are a field, else under ``torch.no_grad()``. ``time`` mode builds the
same model (same seed, same initial weights) and only times it.

Compatibility shim (not a fork): SchNetPack 2.0.4's ``schnetpack/data/loader.py`` does
``from torch.utils.data.dataloader import _collate_fn_t, T_co``; torch 2.13 renamed the
type variable ``T_co`` to ``_T_co``. :func:`apply_torch_shims` binds the old name to the same
``TypeVar`` (only when it is missing) before schnetpack is imported; it is a typing alias only.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
import torch
import torch.utils.data.dataloader as torch_dataloader

SHIMS_APPLIED: list[str] = []


def apply_torch_shims() -> None:
    """Restore ``torch.utils.data.dataloader.T_co`` (renamed ``_T_co`` in newer torch) for schnetpack."""
    if not hasattr(torch_dataloader, "T_co"):
        torch_dataloader.T_co = torch_dataloader._T_co  # noqa: SLF001 - the same TypeVar under its old name
        SHIMS_APPLIED.append("torch.utils.data.dataloader.T_co = _T_co")


apply_torch_shims()

# isort: off
import schnetpack as spk  # noqa: E402  (after the shim)
from schnetpack import properties as spk_props  # noqa: E402
from schnetpack.data.loader import _atoms_collate_fn  # noqa: E402  (schnetpack's own batch collation)
# isort: on

LABEL_KEYS = {"energy": "REF_energy", "forces": "REF_forces", "dipole": "REF_dipole",
              "polarizability": "REF_polarizability"}
ATOM_FIELDS = ("forces",)
SUPPORTED_FIELDS = tuple(LABEL_KEYS)
MODES = ("train", "time")
INFERENCE_REPEATS = 3  # timed passes (after one warm-up); the median is reported


@dataclass
class Structures:
    """One split: SchNetPack input dicts (without neighbour lists) and labels.

    ``inputs[k]``: ``_atomic_numbers`` (n_k,), ``_positions`` (n_k, 3), ``_cell`` (1, 3, 3),
    ``_pbc`` (3,), ``_n_atoms`` (1,), ``_idx`` (1,). ``labels[field][k]``: energy (1,),
    forces (n_k, 3), dipole (1, 3), polarizability (1, 3, 3).
    """

    inputs: list[dict[str, torch.Tensor]]
    labels: dict[str, list[torch.Tensor]]

    @property
    def num_atoms(self) -> int:
        return sum(int(x[spk_props.n_atoms]) for x in self.inputs)


def read_structures(path: str, fields: list[str]) -> Structures:
    """The structures of one extxyz file with the labels of ``fields``.

    Raises:
        ValueError: naming the structure and key when a label is missing.
    """
    dtype = torch.get_default_dtype()
    inputs, labels = [], {name: [] for name in fields}
    for index, atoms in enumerate(ase.io.read(path, index=":", format="extxyz")):
        inputs.append({
            spk_props.idx: torch.tensor([index]),
            spk_props.Z: torch.tensor(atoms.get_atomic_numbers(), dtype=torch.long),
            spk_props.R: torch.tensor(atoms.get_positions(), dtype=dtype),
            spk_props.cell: torch.tensor(np.asarray(atoms.get_cell())[None], dtype=dtype),
            spk_props.pbc: torch.tensor(atoms.get_pbc()),
            spk_props.n_atoms: torch.tensor([len(atoms)]),
        })
        for name in fields:
            source = atoms.arrays if name in ATOM_FIELDS else atoms.info
            if LABEL_KEYS[name] not in source:
                raise ValueError(f"{path}: structure {index} has no {LABEL_KEYS[name]!r} for field {name!r}")
            value = torch.tensor(np.asarray(source[LABEL_KEYS[name]], dtype=np.float64), dtype=dtype)
            shape = {"energy": (1,), "forces": (len(atoms), 3), "dipole": (1, 3), "polarizability": (1, 3, 3)}[name]
            labels[name].append(value.reshape(shape))
    return Structures(inputs, labels)


def with_neighbours(inputs: list[dict[str, torch.Tensor]], cutoff: float) -> list[dict[str, torch.Tensor]]:
    """Copies of ``inputs`` with SchNetPack's matscipy neighbour list (``_idx_i``, ``_idx_j``, ``_offsets``)."""
    neighbour_list = spk.transform.MatScipyNeighborList(cutoff=cutoff)
    return [neighbour_list(dict(x)) for x in inputs]


def collate(inputs: list[dict[str, torch.Tensor]], labels: dict[str, list[torch.Tensor]],
            rows: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One batch: SchNetPack's collated inputs and the labels concatenated in the same order."""
    batch = _atoms_collate_fn([inputs[i] for i in rows])
    return batch, {name: torch.cat([values[i] for i in rows]) for name, values in labels.items()}


def element_references(train: Structures, elements: list[int]) -> torch.Tensor:
    """Per-element energies (max_z + 1,) by least squares on the training energies; ``elements``
    spans every split, so an element absent from training gets 0 (the minimum-norm solution)."""
    counts = np.array([[int((x[spk_props.Z] == z).sum()) for z in elements] for x in train.inputs], dtype=np.float64)
    energies = np.array([float(e) for e in train.labels["energy"]])
    solution = np.linalg.lstsq(counts, energies, rcond=None)[0]
    refs = torch.zeros(max(elements) + 1, dtype=torch.get_default_dtype())
    refs[elements] = torch.tensor(solution, dtype=refs.dtype)
    return refs


def reference_energy(inputs: dict[str, torch.Tensor], refs: torch.Tensor) -> torch.Tensor:
    """Sum of per-element references of one structure, shape (1,)."""
    return refs[inputs[spk_props.Z]].sum().reshape(1)


def build_model(fields: list[str], spec: dict[str, Any]) -> spk.model.NeuralNetworkPotential:
    """SchNetPack's PaiNN with one output module per field (energy also for forces)."""
    cutoff, width = float(spec["cutoff"]), int(spec["n_atom_basis"])
    representation = spk.representation.PaiNN(
        n_atom_basis=width, n_interactions=int(spec["n_interactions"]),
        radial_basis=spk.nn.GaussianRBF(n_rbf=int(spec["n_rbf"]), cutoff=cutoff),
        cutoff_fn=spk.nn.CosineCutoff(cutoff))
    outputs: list[torch.nn.Module] = []
    if "energy" in fields or "forces" in fields:
        outputs.append(spk.atomistic.Atomwise(n_in=width, output_key="energy"))
    if "forces" in fields:
        outputs.append(spk.atomistic.Forces(energy_key="energy", force_key="forces"))
    if "dipole" in fields:
        outputs.append(spk.atomistic.DipoleMoment(n_in=width, dipole_key="dipole", use_vector_representation=True))
    if "polarizability" in fields:
        outputs.append(spk.atomistic.Polarizability(n_in=width, polarizability_key="polarizability"))
    dtype = str(torch.get_default_dtype()).removeprefix("torch.")
    return spk.model.NeuralNetworkPotential(
        representation=representation, input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=outputs, postprocessors=[], input_dtype_str=dtype, do_postprocessing=False)


@dataclass
class PreparedRun:
    """The model built from run.json and the data it was built from (neighbour lists attached)."""

    weights: dict[str, float]
    spec: dict[str, Any]
    splits: dict[str, Structures]
    neighbours: dict[str, list[dict[str, torch.Tensor]]]
    energy_refs: torch.Tensor | None
    model: torch.nn.Module

    @property
    def fields(self) -> list[str]:
        return list(self.weights)

    @property
    def needs_grad(self) -> bool:
        return "forces" in self.weights


def prepare(cfg: dict[str, Any]) -> PreparedRun:
    """Check the fields, fix dtype, seed and threads, read the files and build the model.

    Raises:
        ValueError: for a field this runner cannot learn.
    """
    weights = {k: float(v) for k, v in cfg["fields"].items()}
    unknown = set(weights) - set(SUPPORTED_FIELDS)
    if unknown:
        raise ValueError(f"PaiNN runner cannot learn {sorted(unknown)}; it learns {list(SUPPORTED_FIELDS)}")
    spec, train_cfg = cfg["model"], cfg["train"]
    torch.set_default_dtype(getattr(torch, train_cfg.get("dtype", "float32")))
    torch.manual_seed(int(train_cfg["seed"]))
    np.random.seed(int(train_cfg["seed"]))
    torch.set_num_threads(1)

    fields = list(weights)
    splits = {split: read_structures(path, fields) for split, path in cfg["files"].items()}
    energy_refs = None
    if "energy" in fields:
        elements = sorted({int(z) for s in splits.values() for x in s.inputs for z in x[spk_props.Z]})
        energy_refs = element_references(splits["train"], elements)
        for structures in splits.values():
            structures.labels["energy"] = [e - reference_energy(x, energy_refs)
                                           for x, e in zip(structures.inputs, structures.labels["energy"], strict=True)]
    neighbours = {split: with_neighbours(s.inputs, float(spec["cutoff"])) for split, s in splits.items()}
    model = build_model(fields, spec)
    return PreparedRun(weights, spec, splits, neighbours, energy_refs, model)


def field_variances(labels: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Variance of each field's training labels (all components), floored at 1e-12."""
    out = {}
    for name, values in labels.items():
        flat = torch.cat([v.reshape(-1) for v in values])
        out[name] = max(float(flat.var()) if flat.numel() > 1 else 1.0, 1e-12)
    return out


def loss_fn(pred: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], weights: dict[str, float],
            variances: dict[str, float]) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.get_default_dtype())
    for name, weight in weights.items():
        if weight == 0:
            continue
        total = total + weight * (pred[name] - labels[name]).square().mean() / variances[name]
    return total


def batches(count: int, size: int, generator: torch.Generator | None = None) -> list[list[int]]:
    """Row indices in batches of ``size`` (shuffled when a generator is given)."""
    order = torch.randperm(count, generator=generator).tolist() if generator is not None else list(range(count))
    return [order[i:i + size] for i in range(0, count, size)]


def evaluate_loss(run: PreparedRun, split: str, batch_size: int, variances: dict[str, float]) -> float:
    run.model.eval()
    total, count = 0.0, 0
    for rows in batches(len(run.neighbours[split]), batch_size):
        inputs, labels = collate(run.neighbours[split], run.splits[split].labels, rows)
        with torch.set_grad_enabled(run.needs_grad):
            pred = run.model(inputs)
        total += float(loss_fn(pred, labels, run.weights, variances).detach()) * len(rows)
        count += len(rows)
    return total / max(count, 1)


def train(run: PreparedRun, train_cfg: dict[str, Any]) -> dict[str, Any]:
    """Train ``run.model`` in place (ending with the best validation weights); what happened."""
    variances = field_variances(run.splits["train"].labels)
    optimizer = torch.optim.Adam(run.model.parameters(), lr=float(train_cfg["lr"]))
    generator = torch.Generator().manual_seed(int(train_cfg["seed"]))
    batch_size, eval_batch_size = int(train_cfg["batch_size"]), int(train_cfg["eval_batch_size"])
    max_time = float(train_cfg["max_time_s"]) if train_cfg.get("max_time_s") else float("inf")
    best_loss, best_state, epochs_done, stopped_by = float("inf"), None, 0, "epochs"
    start = time.perf_counter()
    for _ in range(int(train_cfg["epochs"])):
        run.model.train()
        for rows in batches(len(run.neighbours["train"]), batch_size, generator):
            inputs, labels = collate(run.neighbours["train"], run.splits["train"].labels, rows)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(run.model(inputs), labels, run.weights, variances)
            loss.backward()
            optimizer.step()
            if time.perf_counter() - start > max_time:
                stopped_by = "max_time_s"
                break
        epochs_done += 1
        valid_loss = evaluate_loss(run, "valid", eval_batch_size, variances)
        if valid_loss < best_loss:
            best_loss = valid_loss
            best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        if stopped_by == "max_time_s":
            break
    train_time = time.perf_counter() - start
    if best_state is not None:
        run.model.load_state_dict(best_state)
    return {"train_time_s": train_time, "epochs_done": epochs_done, "stopped_by": stopped_by,
            "best_valid_loss": best_loss}


def predict(run: PreparedRun, batch_size: int) -> dict[str, np.ndarray]:
    """Test predictions per field in file order: structures (energy: (S,), dipole: (S, 3),
    polarizability: (S, 3, 3)) or atoms (forces: (N, 3)); energies with their references added back."""
    run.model.eval()
    test = run.splits["test"]
    out: dict[str, list[np.ndarray]] = {name: [] for name in run.fields}
    for rows in batches(len(test.inputs), batch_size):
        inputs, _ = collate(run.neighbours["test"], test.labels, rows)
        with torch.set_grad_enabled(run.needs_grad):
            pred = run.model(inputs)
        for name in run.fields:
            value = pred[name].detach()
            if name == "energy" and run.energy_refs is not None:
                value = value + torch.cat([reference_energy(test.inputs[i], run.energy_refs) for i in rows])
            out[name].append(value.numpy().astype(np.float64))
    return {name: np.concatenate(values) for name, values in out.items()}


def time_inference(run: PreparedRun, batch_size: int, repeats: int = INFERENCE_REPEATS) -> list[float]:
    """Seconds per pass over the test structures (neighbour lists, collation and forward, as a
    user's predict call does): one warm-up, then ``repeats`` timed passes."""
    run.model.eval()
    test = run.splits["test"]
    times = []
    for rep in range(repeats + 1):
        start = time.perf_counter()
        structures = with_neighbours(test.inputs, float(run.spec["cutoff"]))
        for rows in batches(len(structures), batch_size):
            with torch.set_grad_enabled(run.needs_grad):
                pred = run.model(_atoms_collate_fn([structures[i] for i in rows]))
                del pred
        if rep > 0:
            times.append(time.perf_counter() - start)
    return times


def inference_record(run: PreparedRun, eval_batch_size: int) -> dict[str, Any]:
    """Time inference on the test file and describe the model and setup."""
    times = time_inference(run, eval_batch_size)
    test = run.splits["test"]
    median = statistics.median(times)
    heads = [type(m).__name__ for m in run.model.output_modules]
    return {
        "model_class": f"NeuralNetworkPotential(PaiNN; {', '.join(heads)})",
        "fields": run.fields,
        "num_parameters": int(sum(p.numel() for p in run.model.parameters())),
        "inference_times_s": times,
        "inference_structures_per_s": len(test.inputs) / median,
        "inference_atoms_per_s": test.num_atoms / median,
        "inference_grad": run.needs_grad,
        "inference_batch_size": eval_batch_size,
        "inference_timing": f"median of {INFERENCE_REPEATS} passes after 1 warm-up; each pass builds the "
        "neighbour lists (matscipy), collates and runs the forward",
        "torch_threads": torch.get_num_threads(),
        "dtype": str(torch.get_default_dtype()).removeprefix("torch."),
        "device": "cpu",
        "test_structures": len(test.inputs),
        "test_atoms": test.num_atoms,
        "peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "model": run.spec,
        "shims": list(SHIMS_APPLIED),
        "versions": {"schnetpack": importlib.metadata.version("schnetpack"), "torch": torch.__version__,
                     "ase": importlib.metadata.version("ase"), "python": sys.version.split()[0]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    cfg = json.loads(args.config.read_text())
    mode = cfg.get("mode", "train")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {list(MODES)}")
    run = prepare(cfg)
    result: dict[str, Any] = {"mode": mode}
    eval_batch_size = int(cfg["train"]["eval_batch_size"])
    if mode == "train":
        result.update(train(run, cfg["train"]))
        np.savez(cfg["predictions"], **predict(run, eval_batch_size))
    result.update(inference_record(run, eval_batch_size))
    Path(cfg["result"]).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
