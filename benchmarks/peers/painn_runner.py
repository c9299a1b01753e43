"""Train and evaluate SchNetPack's PaiNN from extxyz files; run with the SchNetPack venv's python.

This script never imports tensorframe; it talks to ``benchmarks/peers/painn_peer.py`` through
files only (as ``mace_runner.py`` does):

    .bench-venvs/schnetpack/bin/python benchmarks/peers/painn_runner.py run.json

``run.json`` and the modes are ``peer_venv.py``'s and ``runner_common.py``'s; here ``model``
holds ``cutoff``, ``n_atom_basis``, ``n_interactions`` and ``n_rbf``, ``fields`` are among
energy, forces, dipole and polarizability (``REF_*`` labels in tensorframe's units, learned as
they are), and ``md`` also names the ``model_file`` the trained module is saved to.

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

Training: ``runner_common``'s loop (no Lightning) with Adam (lr from ``train``, 5e-4 by the
adapter's default), batches shuffled with the seed. Inference passes build the neighbour lists
(matscipy), collate and run the forward, with autograd when forces are a field, else under
``torch.no_grad()``. ``md`` mode (forces a field) runs with SchNetPack's own ASE calculator,
``schnetpack.interfaces.SpkCalculator`` (eV and Å, the training dtype, the training's matscipy
neighbour list), energy and forces = -dE/dx.

Compatibility shim (not a fork): SchNetPack 2.0.4's ``schnetpack/data/loader.py`` does
``from torch.utils.data.dataloader import _collate_fn_t, T_co``; torch 2.13 renamed the
type variable ``T_co`` to ``_T_co``. :func:`apply_torch_shims` binds the old name to the same
``TypeVar`` (only when it is missing) before schnetpack is imported; it is a typing alias only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

# runner_common.py lies beside this script, which runs as a script in the SchNetPack venv (no package).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import runner_common  # noqa: E402
# isort: on

SUPPORTED_FIELDS = ("energy", "forces", "dipole", "polarizability")
STRUCTURE_LABEL_SHAPES = {"energy": (1,), "dipole": (1, 3), "polarizability": (1, 3, 3)}


def label_shape(name: str, num_atoms: int) -> tuple[int, ...]:
    """A label's shape in :class:`Structures` (forces: (num_atoms, 3); see STRUCTURE_LABEL_SHAPES)."""
    return (num_atoms, 3) if name in runner_common.ATOM_FIELDS else STRUCTURE_LABEL_SHAPES[name]


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
    for index, (atoms, values) in enumerate(runner_common.read_labelled(path, fields)):
        inputs.append({
            spk_props.idx: torch.tensor([index]),
            spk_props.Z: torch.tensor(atoms.get_atomic_numbers(), dtype=torch.long),
            spk_props.R: torch.tensor(atoms.get_positions(), dtype=dtype),
            spk_props.cell: torch.tensor(np.asarray(atoms.get_cell())[None], dtype=dtype),
            spk_props.pbc: torch.tensor(atoms.get_pbc()),
            spk_props.n_atoms: torch.tensor([len(atoms)]),
        })
        for name, value in values.items():
            labels[name].append(torch.tensor(value, dtype=dtype).reshape(label_shape(name, len(atoms))))
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
    eval_batch_size: int
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
    runner_common.setup_torch(train_cfg)

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
    return PreparedRun(weights, spec, int(train_cfg["eval_batch_size"]), splits, neighbours, energy_refs, model)


def batches(count: int, size: int, generator: torch.Generator | None = None) -> list[list[int]]:
    """Row indices in batches of ``size`` (shuffled when a generator is given)."""
    order = torch.randperm(count, generator=generator).tolist() if generator is not None else list(range(count))
    return [order[i:i + size] for i in range(0, count, size)]


def batch_loss(run: PreparedRun, split: str, rows: list[int], variances: dict[str, float]) -> torch.Tensor:
    """The weighted, variance-normalised loss (``runner_common.weighted_loss``) of rows of a split."""
    inputs, labels = collate(run.neighbours[split], run.splits[split].labels, rows)
    pred = run.model(inputs)
    return runner_common.weighted_loss(lambda name: pred[name] - labels[name], run.weights, variances)


def train(run: PreparedRun, train_cfg: dict[str, Any]) -> dict[str, Any]:
    """Train ``run.model`` in place (``runner_common.train_best_on_valid``) with Adam, batches
    shuffled by a generator seeded with ``seed``."""
    variances = runner_common.field_variances(run.splits["train"].labels)
    optimizer = torch.optim.Adam(run.model.parameters(), lr=float(train_cfg["lr"]))
    generator = torch.Generator().manual_seed(int(train_cfg["seed"]))
    batch_size = int(train_cfg["batch_size"])

    def valid_loss() -> float:
        return runner_common.mean_loss(run.model, batches(len(run.neighbours["valid"]), run.eval_batch_size),
                                       lambda rows: batch_loss(run, "valid", rows, variances), len,
                                       grad=run.needs_grad)

    return runner_common.train_best_on_valid(
        run.model, optimizer, train_cfg, lambda: batches(len(run.neighbours["train"]), batch_size, generator),
        lambda rows: batch_loss(run, "train", rows, variances), valid_loss)


def predict(run: PreparedRun) -> dict[str, np.ndarray]:
    """Test predictions per field in file order: structures (energy: (S,), dipole: (S, 3),
    polarizability: (S, 3, 3)) or atoms (forces: (N, 3)); energies with their references added back."""
    test = run.splits["test"]

    def outputs(rows: list[int]) -> dict[str, torch.Tensor]:
        pred = dict(run.model(collate(run.neighbours["test"], test.labels, rows)[0]))
        if "energy" in pred and run.energy_refs is not None:
            pred["energy"] = pred["energy"].detach() + torch.cat([reference_energy(test.inputs[i], run.energy_refs)
                                                                  for i in rows])
        return pred

    return runner_common.predict_fields(run.model, batches(len(test.inputs), run.eval_batch_size), outputs,
                                        run.fields, grad=run.needs_grad)


def time_inference(run: PreparedRun) -> list[float]:
    """Seconds per pass over the test structures (neighbour lists, collation and forward, as a
    user's predict call does): one warm-up, then ``runner_common.INFERENCE_REPEATS`` timed passes."""
    test = run.splits["test"]

    def one_pass() -> None:
        structures = with_neighbours(test.inputs, float(run.spec["cutoff"]))
        for rows in batches(len(structures), run.eval_batch_size):
            with torch.set_grad_enabled(run.needs_grad):
                pred = run.model(_atoms_collate_fn([structures[i] for i in rows]))
                del pred

    run.model.eval()
    return runner_common.time_passes(one_pass)


def inference_record(run: PreparedRun) -> dict[str, Any]:
    """Time inference on the test file and describe the model and setup."""
    test = run.splits["test"]
    heads = [type(m).__name__ for m in run.model.output_modules]
    return {
        "model_class": f"NeuralNetworkPotential(PaiNN; {', '.join(heads)})",
        "fields": run.fields,
        "num_parameters": runner_common.num_parameters(run.model),
        **runner_common.timing_record(time_inference(run), structures=len(test.inputs), atoms=test.num_atoms,
                                      grad=run.needs_grad, batch_size=run.eval_batch_size,
                                      each_pass="builds the neighbour lists (matscipy), collates and runs the forward"),
        "model": run.spec,
        "shims": list(SHIMS_APPLIED),
        "versions": runner_common.versions("schnetpack", "ase"),
    }


def md_calculator(run: PreparedRun, md_cfg: dict[str, Any]) -> Any:
    """SchNetPack's ``SpkCalculator`` on the trained module, saved to ``md_cfg["model_file"]``.

    SpkCalculator loads the file with a bare ``torch.load``, which torch >= 2.6 restricts to
    weights; ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` lets it load the module this runner just saved.

    Raises:
        ValueError: when forces are not among the fields (no energy model to run MD with).
    """
    import os

    from schnetpack.interfaces import SpkCalculator

    if not run.needs_grad:
        raise ValueError("md mode needs a model trained on forces (energy + Forces output modules)")
    run.model.eval()
    torch.save(run.model, md_cfg["model_file"])
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    return SpkCalculator(md_cfg["model_file"], neighbor_list=spk.transform.MatScipyNeighborList(cutoff=float(run.spec["cutoff"])),
                         energy_key="energy", force_key="forces", energy_unit="eV", position_unit="Ang",
                         device="cpu", dtype=torch.get_default_dtype())


STEPS = runner_common.RunnerSteps(prepare=prepare, train=train, predict=predict, inference_record=inference_record,
                                  md_calculator=md_calculator)

if __name__ == "__main__":
    raise SystemExit(runner_common.run_main(STEPS, __doc__.splitlines()[0]))
