"""Train and evaluate one MACE model from extxyz files; run with the MACE venv's python.

This script never imports tensorframe (mace-torch pins e3nn 0.4.4; tensorframe needs 0.6), so
it talks to ``benchmarks/peers/mace_peer.py`` through files only:

    .bench-venvs/mace/bin/python benchmarks/peers/mace_runner.py run.json

``run.json`` and the modes are ``peer_venv.py``'s and ``runner_common.py``'s; here ``group`` is
``energy`` | ``dipole`` | ``dielectric`` | ``atomic_dipole`` and ``model`` holds ``r_max``,
``hidden_irreps``, ``max_ell``, ``num_interactions``, ``correlation``, ``num_bessel``,
``num_polynomial_cutoff``, ``radial_MLP`` and ``MLP_irreps``. ``time`` mode builds the model
exactly as ``train`` does (same z_table from every given file, avg_num_neighbors, E0s and
scale/shift from the training file, same seed, hence the same initial weights); it needs the
``train`` and ``test`` files (``valid``, when given, joins the z_table as in training). ``md``
(``energy`` group only) runs with MACE's own ASE calculator,
``mace.calculators.MACECalculator(models=<the trained module>)`` (forces = -dE/dx).

Labels (``REF_*`` keys, tensorframe's units, which MACE takes as they are): energy eV, forces
eV/Å, dipole e·Å, polarizability 9 values row-major, atomic dipoles N x 3.

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

Training: ``runner_common``'s loop (MACE's ``run_train`` CLI has no time budget and no per-atom
dipole loss) with MACE's default optimizer (Adam, amsgrad, lr 0.01 unless the budget sets one,
weight decay 5e-7, ReduceLROnPlateau factor 0.8 patience 50). Inference passes build the graphs
(neighbour lists), batch and run the forward, under ``torch.no_grad()`` except the energy
model, whose forces need autograd.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# isort: off
# mace first: its __init__ sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, without which e3nn 0.4.4 cannot
# load its own constants.pt under torch >= 2.6 (weights_only became the default).
from mace import data as mace_data
from mace import modules, tools
from mace.tools import torch_geometric
from e3nn import o3

# runner_common.py lies beside this script, which runs as a script in the MACE venv (no package).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import runner_common  # noqa: E402
# isort: on

OUTPUT_KEYS = {"energy": "energy", "forces": "forces", "dipole": "dipole",
               "polarizability": "polarizability", "atomic_dipole": "atomic_dipoles"}
GROUP_FIELDS = {"energy": {"energy", "forces"}, "dipole": {"dipole"},
                "dielectric": {"dipole", "polarizability"}, "atomic_dipole": {"atomic_dipole"}}


def read_configs(path: str, fields: list[str]) -> list[mace_data.Configuration]:
    """Configurations with the labels of ``fields`` (missing ones get weight 0)."""
    configs = []
    for atoms, labels in runner_common.read_labelled(path, fields):
        properties: dict[str, Any] = {"total_charge": 0.0}
        weights: dict[str, float] = {}
        for name, value in labels.items():
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


def batch_loss(model: torch.nn.Module, group: str, batch: Any, weights: dict[str, float],
               variances: dict[str, float], training: bool) -> torch.Tensor:
    """The weighted, variance-normalised loss (``runner_common.weighted_loss``) of one batch."""
    pred = forward(model, group, batch, training=training)
    return runner_common.weighted_loss(lambda name: pred[OUTPUT_KEYS[name]] - target(batch, name), weights, variances)


def predict(run: PreparedRun) -> dict[str, np.ndarray]:
    """Test predictions per field, rows in file order (structures, or atoms for atom fields)."""

    def outputs(batch: Any) -> dict[str, torch.Tensor]:
        pred = forward(run.model, run.group, batch, training=False)
        return {name: pred[OUTPUT_KEYS[name]] for name in run.fields}

    return runner_common.predict_fields(run.model, run.test_batches, outputs, run.fields, grad=run.group == "energy")


def time_inference(run: PreparedRun) -> list[float]:
    """Seconds per pass over the test configurations (neighbour lists, batching and forward, as a
    user's predict call does): one warm-up, then ``runner_common.INFERENCE_REPEATS`` timed passes."""
    model, group, r_max = run.model, run.group, run.spec["r_max"]
    grad = group == "energy"  # forces = -dE/dx need autograd

    def one_pass() -> None:
        graphs = [mace_data.AtomicData.from_config(c, z_table=run.z_table, cutoff=r_max) for c in run.configs["test"]]
        for batch in torch_geometric.dataloader.DataLoader(graphs, batch_size=run.eval_batch_size, shuffle=False):
            with torch.set_grad_enabled(grad):
                pred = forward(model, group, batch, training=False)
                del pred

    model.eval()
    return runner_common.time_passes(one_pass)


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
    eval_batch_size: int
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
    runner_common.setup_torch(train_cfg)

    configs = {split: read_configs(path, fields) for split, path in cfg["files"].items()}
    z_table = tools.get_atomic_number_table_from_zs(
        int(z) for split in configs.values() for c in split for z in c.atomic_numbers)
    graphs = {split: to_atomic_data(c, z_table, spec["r_max"], fields) for split, c in configs.items()}
    batch_size, eval_batch_size = int(train_cfg["batch_size"]), int(train_cfg["eval_batch_size"])
    train_loader = torch_geometric.dataloader.DataLoader(graphs["train"], batch_size=batch_size, shuffle=True, drop_last=False)
    # iterating a DataLoader draws from torch's global RNG: keep this before the model's init
    test_batches = list(torch_geometric.dataloader.DataLoader(graphs["test"], batch_size=eval_batch_size, shuffle=False))

    avg_num_neighbors = modules.compute_avg_num_neighbors(train_loader)
    model = build_model(group, spec, z_table, avg_num_neighbors, configs["train"], fields, train_loader)
    return PreparedRun(group, weights, spec, configs, graphs, z_table, train_loader, test_batches, eval_batch_size,
                       avg_num_neighbors, model)


def train(run: PreparedRun, train_cfg: dict[str, Any]) -> dict[str, Any]:
    """Train ``run.model`` in place (``runner_common.train_best_on_valid``) with MACE's optimizer."""
    model, group, weights = run.model, run.group, run.weights
    valid_loader = torch_geometric.dataloader.DataLoader(run.graphs["valid"], batch_size=run.eval_batch_size,
                                                         shuffle=False)
    variances = runner_common.field_variances({name: [target(g, name) for g in run.graphs["train"]] for name in run.fields})
    # MACE's run_train defaults: Adam with amsgrad, lr 0.01, weight decay 5e-7, plateau factor 0.8
    optimizer = torch.optim.Adam(model.parameters(), lr=float(train_cfg["lr"]), amsgrad=True, weight_decay=5e-7)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.8, patience=50)

    def valid_loss() -> float:
        return runner_common.mean_loss(model, valid_loader,
                                       lambda b: batch_loss(model, group, b, weights, variances, False),
                                       lambda b: b.num_graphs, grad=group == "energy")

    return runner_common.train_best_on_valid(
        model, optimizer, train_cfg, lambda: run.train_loader,
        lambda b: batch_loss(model, group, b, weights, variances, True), valid_loss, scheduler)


def inference_record(run: PreparedRun) -> dict[str, Any]:
    """Time inference on the test file (:func:`time_inference`) and describe the model and setup."""
    return {
        "group": run.group,
        "model_class": type(run.model).__name__,
        "fields": run.fields,
        "num_parameters": runner_common.num_parameters(run.model),
        "avg_num_neighbors": run.avg_num_neighbors,
        **runner_common.timing_record(time_inference(run), structures=len(run.graphs["test"]),
                                      atoms=sum(int(g.num_nodes) for g in run.graphs["test"]),
                                      grad=run.group == "energy", batch_size=run.eval_batch_size,
                                      each_pass="builds the graphs (neighbour lists), batches and runs the forward"),
        "model": run.spec,
        "versions": runner_common.versions("mace-torch", "e3nn"),
    }


def md_calculator(run: PreparedRun, md_cfg: dict[str, Any]) -> Any:
    """MACE's own ASE calculator around the trained module (in memory), in the training dtype.

    Raises:
        ValueError: for a model that is not the energy group (no forces to run MD with).
    """
    from mace.calculators import MACECalculator

    if run.group != "energy":
        raise ValueError(f"md mode needs the energy group's model, not {run.group!r}")
    run.model.eval()
    dtype = str(torch.get_default_dtype()).removeprefix("torch.")
    return MACECalculator(models=run.model, device="cpu", default_dtype=dtype)


STEPS = runner_common.RunnerSteps(prepare=prepare, train=train, predict=predict, inference_record=inference_record,
                                  md_calculator=md_calculator)

if __name__ == "__main__":
    raise SystemExit(runner_common.run_main(STEPS, __doc__.splitlines()[0]))
