"""Train and evaluate one MACE model from extxyz files; run with the MACE venv's python.

This script never imports tensorframe (mace-torch pins e3nn 0.4.4; tensorframe needs 0.6), so
it talks to ``benchmarks/peers/mace_peer.py`` through files only:

    .bench-venvs/mace/bin/python benchmarks/peers/mace_runner.py run.json

``run.json`` (written by the adapter)::

    {"mode": "train" | "time",                # optional, "train" when absent
     "group": "energy" | "dipole" | "dielectric" | "atomic_dipole",
     "fields": {field: loss weight},          # the task fields this model learns
     "files": {"train": xyz, "valid": xyz, "test": xyz},
     "model": {"r_max", "hidden_irreps", "max_ell", "num_interactions", "correlation",
               "num_bessel", "num_polynomial_cutoff", "radial_MLP", "MLP_irreps"},
     "train": {"epochs", "batch_size", "eval_batch_size", "lr", "seed", "max_time_s", "dtype"},
     "predictions": npz path, "result": json path}

Modes: ``train`` trains, writes the test predictions and times inference. ``time`` builds the
model exactly as ``train`` does (same z_table from every given file, avg_num_neighbors, E0s
and scale/shift from the training file, same seed, hence the same initial weights), skips
training and writes only the inference timing: speed does not depend on the weights. It needs
the ``train`` and ``test`` files (``valid``, when given, joins the z_table as in training) and
reads only ``seed``, ``batch_size``, ``eval_batch_size`` and ``dtype`` from ``train``;
``predictions`` is not written.

Labels in the extxyz (tensorframe's units, which MACE takes as they are, see below):
``REF_energy`` (info, eV), ``REF_forces`` (arrays, eV/Å), ``REF_dipole`` (info, 3, e·Å),
``REF_polarizability`` (info, 9 row-major), ``REF_atomic_dipole`` (arrays, N x 3).

Models, all MACE's own classes from ``mace.modules``:

- ``energy``: ``ScaleShiftMACE``; forces = -dE/dx (conservative). E0s by least squares on the
  training energies when energy is a target, else zero (forces only: energy weight 0).
- ``dipole``: ``AtomicDipolesMACE`` (sum of atomic dipoles; fixed-charge baseline with
  zero charges, so MACE's Debye conversion of that baseline never enters).
- ``dielectric``: ``AtomicDielectricMACE`` (MACE-mu-alpha: dipole = sum of atomic dipoles +
  sum q_i r_i with charges summing to the total charge 0, in e·Å; polarizability = sum of
  atomic 0e+2e parts, so symmetric and extensive). A polarizability-only task gives the dipole
  weight 0.
- ``atomic_dipole``: ``AtomicDipolesMACE``'s ``atomic_dipoles`` output, trained per atom.

Training is a small loop of our own (MACE's ``run_train`` CLI has no time budget and no
per-atom dipole loss) with MACE's default optimizer (Adam, amsgrad, lr 0.01 unless the budget
sets one, weight decay 5e-7, ReduceLROnPlateau factor 0.8 patience 50), loss = sum_f w_f * MSE_f / Var_train(f), fixed epochs or until
``max_time_s`` (checked after each batch), keeping the weights of the best validation loss.
Inference throughput (both modes): median of 3 timed passes over the test structures (neighbour
lists, batching, forward; batches of ``eval_batch_size``) after one warm-up pass, one torch thread;
under ``torch.no_grad()`` except the energy model, whose forces need autograd.
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

# isort: off
# mace first: its __init__ sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, without which e3nn 0.4.4 cannot
# load its own constants.pt under torch >= 2.6 (weights_only became the default).
from mace import data as mace_data
from mace import modules, tools
from mace.tools import torch_geometric
from e3nn import o3
# isort: on

LABEL_KEYS = {"energy": "REF_energy", "forces": "REF_forces", "dipole": "REF_dipole",
              "polarizability": "REF_polarizability", "atomic_dipole": "REF_atomic_dipole"}
ATOM_FIELDS = ("forces", "atomic_dipole")
OUTPUT_KEYS = {"energy": "energy", "forces": "forces", "dipole": "dipole",
               "polarizability": "polarizability", "atomic_dipole": "atomic_dipoles"}
GROUP_FIELDS = {"energy": {"energy", "forces"}, "dipole": {"dipole"},
                "dielectric": {"dipole", "polarizability"}, "atomic_dipole": {"atomic_dipole"}}
MODES = ("train", "time")
INFERENCE_REPEATS = 3  # timed passes (after one warm-up); the median is reported


def read_configs(path: str, fields: list[str]) -> list[mace_data.Configuration]:
    """Configurations with the labels of ``fields`` (missing ones get weight 0)."""
    configs = []
    for index, atoms in enumerate(ase.io.read(path, index=":", format="extxyz")):
        properties: dict[str, Any] = {"total_charge": 0.0}
        weights: dict[str, float] = {}
        for name in fields:
            key = LABEL_KEYS[name]
            source = atoms.arrays if name in ATOM_FIELDS else atoms.info
            if key not in source:
                raise ValueError(f"{path}: structure {index} has no {key!r} for field {name!r}")
            value = np.asarray(source[key], dtype=np.float64)
            properties[name] = value.reshape(3, 3) if name == "polarizability" else value
            weights[name] = 1.0
        configs.append(mace_data.Configuration(
            atomic_numbers=atoms.get_atomic_numbers(), positions=atoms.get_positions(),
            properties=properties, property_weights=weights, cell=np.asarray(atoms.get_cell()),
            pbc=tuple(bool(p) for p in atoms.get_pbc())))
    return configs


def to_atomic_data(configs: list[mace_data.Configuration], z_table: tools.AtomicNumberTable,
                   r_max: float, fields: list[str]) -> list[mace_data.AtomicData]:
    """MACE graphs; per-atom dipoles ride along as an extra ``atomic_dipole`` attribute."""
    graphs = []
    for config in configs:
        graph = mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=r_max)
        if "atomic_dipole" in fields:
            graph["atomic_dipole"] = torch.tensor(config.properties["atomic_dipole"], dtype=torch.get_default_dtype())
        graphs.append(graph)
    return graphs


def build_model(group: str, spec: dict[str, Any], z_table: tools.AtomicNumberTable, avg_num_neighbors: float,
                train_configs: list[mace_data.Configuration], fields: list[str], train_loader: Any) -> torch.nn.Module:
    common = dict(
        r_max=spec["r_max"], num_bessel=spec["num_bessel"], num_polynomial_cutoff=spec["num_polynomial_cutoff"],
        max_ell=spec["max_ell"], interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=spec["num_interactions"], num_elements=len(z_table),
        hidden_irreps=o3.Irreps(spec["hidden_irreps"]), MLP_irreps=o3.Irreps(spec["MLP_irreps"]),
        avg_num_neighbors=avg_num_neighbors, atomic_numbers=z_table.zs, correlation=spec["correlation"],
        gate=torch.nn.functional.silu, radial_MLP=spec["radial_MLP"],
    )
    if group == "energy":
        if "energy" in fields:
            e0 = mace_data.compute_average_E0s(train_configs, z_table)
            atomic_energies = np.array([e0[z] for z in z_table.zs])
        else:
            atomic_energies = np.zeros(len(z_table))
        mean, rms = modules.compute_mean_rms_energy_forces(train_loader, atomic_energies)
        shift = float(np.asarray(mean).reshape(-1)[0]) if "energy" in fields else 0.0
        return modules.ScaleShiftMACE(atomic_energies=atomic_energies, atomic_inter_scale=float(np.asarray(rms).reshape(-1)[0]),
                                      atomic_inter_shift=shift, **common)
    if group in ("dipole", "atomic_dipole"):
        return modules.AtomicDipolesMACE(atomic_energies=None, **common)
    if group == "dielectric":
        return modules.AtomicDielectricMACE(atomic_energies=None, use_polarizability=True, **common)
    raise ValueError(f"unknown group {group!r}; choose from {sorted(GROUP_FIELDS)}")


def forward(model: torch.nn.Module, group: str, batch: Any, training: bool) -> dict[str, torch.Tensor]:
    data = batch.to_dict()
    if group == "energy":
        return model(data, training=training, compute_force=True)
    return model(data, training=training)


def target(batch: Any, name: str) -> torch.Tensor:
    value = batch[name]
    return value.view(-1, 3, 3) if name == "polarizability" else value


def field_variances(graphs: list[Any], fields: list[str]) -> dict[str, float]:
    """Variance of each field's training labels (all components), floored at 1e-12."""
    out = {}
    for name in fields:
        values = torch.cat([target(g, name).reshape(-1) for g in graphs])
        out[name] = max(float(values.var()) if values.numel() > 1 else 1.0, 1e-12)
    return out


def loss_fn(pred: dict[str, torch.Tensor], batch: Any, weights: dict[str, float], variances: dict[str, float]) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.get_default_dtype())
    for name, weight in weights.items():
        if weight == 0:
            continue
        error = pred[OUTPUT_KEYS[name]] - target(batch, name)
        total = total + weight * error.square().mean() / variances[name]
    return total


def evaluate_loss(model: torch.nn.Module, group: str, loader: Any, weights: dict[str, float],
                  variances: dict[str, float]) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        with torch.set_grad_enabled(group == "energy"):
            pred = forward(model, group, batch, training=False)
        total += float(loss_fn(pred, batch, weights, variances).detach()) * batch.num_graphs
        count += batch.num_graphs
    return total / max(count, 1)


def predict(model: torch.nn.Module, group: str, batches: list[Any], fields: list[str]) -> dict[str, np.ndarray]:
    """Test predictions per field, rows in file order (structures, or atoms for atom fields)."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {name: [] for name in fields}
    for batch in batches:
        with torch.set_grad_enabled(group == "energy"):
            pred = forward(model, group, batch, training=False)
        for name in fields:
            out[name].append(pred[OUTPUT_KEYS[name]].detach().numpy().astype(np.float64))
    return {name: np.concatenate(values) for name, values in out.items()}


def time_inference(model: torch.nn.Module, group: str, configs: list[mace_data.Configuration],
                   z_table: tools.AtomicNumberTable, r_max: float, batch_size: int, repeats: int = 3) -> list[float]:
    """Seconds per pass over ``configs`` (neighbour lists, batching and forward, as a user's
    predict call does): one warm-up, then ``repeats`` timed passes."""
    model.eval()
    grad = group == "energy"  # forces = -dE/dx need autograd
    times = []
    for rep in range(repeats + 1):
        start = time.perf_counter()
        graphs = [mace_data.AtomicData.from_config(c, z_table=z_table, cutoff=r_max) for c in configs]
        for batch in torch_geometric.dataloader.DataLoader(graphs, batch_size=batch_size, shuffle=False):
            with torch.set_grad_enabled(grad):
                pred = forward(model, group, batch, training=False)
                del pred
        if rep > 0:
            times.append(time.perf_counter() - start)
    return times


@dataclass
class PreparedRun:
    """One MACE model as built from run.json, with the data it was built from.

    ``configs`` / ``graphs``: {split: list over the structures of that file};
    ``test_batches``: the test graphs in batches of ``eval_batch_size``, file order.
    """

    group: str
    weights: dict[str, float]
    spec: dict[str, Any]
    configs: dict[str, list[mace_data.Configuration]]
    graphs: dict[str, list[mace_data.AtomicData]]
    z_table: tools.AtomicNumberTable
    train_loader: Any
    test_batches: list[Any]
    avg_num_neighbors: float
    model: torch.nn.Module

    @property
    def fields(self) -> list[str]:
        return list(self.weights)


def prepare(cfg: dict[str, Any]) -> PreparedRun:
    """Check the fields, fix dtype, seed and threads, read the files and build the model.

    The order of random draws (data loaders, model init) is the same in both modes, so a
    ``time`` run times the very model a ``train`` run starts from.

    Raises:
        ValueError: when the group cannot learn one of the fields.
    """
    group, weights = cfg["group"], {k: float(v) for k, v in cfg["fields"].items()}
    fields = list(weights)
    unknown = set(fields) - GROUP_FIELDS[group]
    if unknown:
        raise ValueError(f"group {group!r} cannot learn {sorted(unknown)}; it learns {sorted(GROUP_FIELDS[group])}")
    spec, train_cfg = cfg["model"], cfg["train"]
    torch.set_default_dtype(getattr(torch, train_cfg.get("dtype", "float32")))
    tools.set_seeds(int(train_cfg["seed"]))
    torch.set_num_threads(1)

    configs = {split: read_configs(path, fields) for split, path in cfg["files"].items()}
    z_table = tools.get_atomic_number_table_from_zs(
        int(z) for split in configs.values() for c in split for z in c.atomic_numbers)
    graphs = {split: to_atomic_data(c, z_table, spec["r_max"], fields) for split, c in configs.items()}
    batch_size, eval_batch_size = int(train_cfg["batch_size"]), int(train_cfg["eval_batch_size"])
    train_loader = torch_geometric.dataloader.DataLoader(graphs["train"], batch_size=batch_size, shuffle=True, drop_last=False)
    test_batches = list(torch_geometric.dataloader.DataLoader(graphs["test"], batch_size=eval_batch_size, shuffle=False))

    avg_num_neighbors = modules.compute_avg_num_neighbors(train_loader)
    model = build_model(group, spec, z_table, avg_num_neighbors, configs["train"], fields, train_loader)
    return PreparedRun(group, weights, spec, configs, graphs, z_table, train_loader, test_batches,
                       avg_num_neighbors, model)


def train(run: PreparedRun, train_cfg: dict[str, Any]) -> dict[str, Any]:
    """Train ``run.model`` in place (ending with the best validation weights); what happened."""
    model, group, weights = run.model, run.group, run.weights
    valid_loader = torch_geometric.dataloader.DataLoader(run.graphs["valid"], batch_size=int(train_cfg["eval_batch_size"]),
                                                         shuffle=False)
    variances = field_variances(run.graphs["train"], run.fields)
    # MACE's run_train defaults: Adam with amsgrad, lr 0.01, weight decay 5e-7, plateau factor 0.8
    optimizer = torch.optim.Adam(model.parameters(), lr=float(train_cfg["lr"]), amsgrad=True, weight_decay=5e-7)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.8, patience=50)

    max_time = float(train_cfg["max_time_s"]) if train_cfg.get("max_time_s") else float("inf")
    best_loss, best_state, epochs_done, stopped_by = float("inf"), None, 0, "epochs"
    start = time.perf_counter()
    for _ in range(int(train_cfg["epochs"])):
        model.train()
        for batch in run.train_loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(forward(model, group, batch, training=True), batch, weights, variances)
            loss.backward()
            optimizer.step()
            if time.perf_counter() - start > max_time:
                stopped_by = "max_time_s"
                break
        epochs_done += 1
        valid_loss = evaluate_loss(model, group, valid_loader, weights, variances)
        scheduler.step(valid_loss)
        if valid_loss < best_loss:
            best_loss = valid_loss
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if stopped_by == "max_time_s":
            break
    train_time = time.perf_counter() - start
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"train_time_s": train_time, "epochs_done": epochs_done, "stopped_by": stopped_by,
            "best_valid_loss": best_loss}


def inference_record(run: PreparedRun, eval_batch_size: int) -> dict[str, Any]:
    """Time inference on the test file (:func:`time_inference`) and describe the model and setup."""
    times = time_inference(run.model, run.group, run.configs["test"], run.z_table, run.spec["r_max"], eval_batch_size,
                           repeats=INFERENCE_REPEATS)
    num_structures = len(run.graphs["test"])
    num_atoms = sum(int(g.num_nodes) for g in run.graphs["test"])
    median = statistics.median(times)
    return {
        "group": run.group,
        "model_class": type(run.model).__name__,
        "fields": run.fields,
        "num_parameters": int(sum(p.numel() for p in run.model.parameters())),
        "avg_num_neighbors": run.avg_num_neighbors,
        "inference_times_s": times,
        "inference_structures_per_s": num_structures / median,
        "inference_atoms_per_s": num_atoms / median,
        "inference_grad": run.group == "energy",
        "inference_batch_size": eval_batch_size,
        "inference_timing": f"median of {INFERENCE_REPEATS} passes after 1 warm-up; each pass builds the graphs "
        "(neighbour lists), batches and runs the forward",
        "torch_threads": torch.get_num_threads(),
        "dtype": str(torch.get_default_dtype()).removeprefix("torch."),
        "device": "cpu",
        "test_structures": num_structures,
        "test_atoms": num_atoms,
        "peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "model": run.spec,
        "versions": {"mace-torch": importlib.metadata.version("mace-torch"), "torch": torch.__version__,
                     "e3nn": importlib.metadata.version("e3nn"), "python": sys.version.split()[0]},
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
    if mode == "train":
        result.update(train(run, cfg["train"]))
        np.savez(cfg["predictions"], **predict(run.model, run.group, run.test_batches, run.fields))
    result.update(inference_record(run, int(cfg["train"]["eval_batch_size"])))
    Path(cfg["result"]).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
