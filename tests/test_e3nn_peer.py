"""The e3nn peer of the benchmarks: its outputs are O(3)-equivariant and translation invariant,
its training loop keeps the best model on validation, and ``run_peer`` reports a task's metrics.

Physics checks run in float64 on a molecule and a small periodic crystal; the equivariance
check is shown to catch a model fed a direction-distorted geometry.
"""

from __future__ import annotations

import math
import string
from dataclasses import replace

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from e3nn import o3
from e3nn.io import CartesianTensor

import tensorframe as tf
from benchmarks.peers.e3nn_model import E3nnConfig, E3nnTensorModel, field_irreps
from benchmarks.peers.e3nn_peer import build_peer, field_metrics, make_graph_fn, run_peer
from benchmarks.peers.train_loop import GraphPredictor, TrainSettings, _evaluate_loss, label_normalization, train_peer
from benchmarks.tasks import Task
from tensorframe.fields import FieldSpec
from tensorframe.graph import build_graph
from tensorframe.io.convert import to_sample
from tensorframe.types import Sample

CUTOFF = 4.0
REGISTRY = tf.get_registry().items["field"]
# A pseudovector (parity +1, rank 1) exercises the parity flip of field_irreps.
AXIAL = FieldSpec("axial", "atom", "i", 1, "", "sum")
FIELDS = {
    **{name: REGISTRY[name] for name in ("forces", "born_charges", "polarizability", "hyperpolarizability", "piezo",
                                         "dielectric", "energy")},
    "axial": AXIAL,
}


def _structures() -> dict[str, Sample]:
    rng = np.random.default_rng(3)
    water_ammonia = molecule("H2O") + molecule("NH3")
    water_ammonia.positions[3:] += [2.6, 0.3, 0.2]
    crystal = bulk("NaCl", "rocksalt", a=5.0) * (2, 1, 1)  # 4 atoms, triclinic (fcc primitive) cell
    crystal.positions += rng.normal(scale=0.1, size=crystal.positions.shape)
    return {"molecule": to_sample(water_ammonia, 0), "crystal": to_sample(crystal, 1)}


STRUCTURES = _structures()


@pytest.fixture(scope="module")
def model() -> E3nnTensorModel:
    torch.manual_seed(0)
    config = E3nnConfig(cutoff=CUTOFF, species=(1, 7, 8, 11, 17))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn's Wigner-3j constants are made in the default dtype
    try:
        peer = E3nnTensorModel(config, FIELDS, subtract_structure_mean=["born_charges"]).double().eval()
    finally:
        torch.set_default_dtype(default)
    peer.avg_num_neighbors.fill_(6.0)
    return peer


def _predict(model: E3nnTensorModel, sample: Sample, distort: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    graph = build_graph([sample], CUTOFF, 1e-6, dtype=torch.float64)
    if distort is not None:  # a broken geometry: edge directions squashed along one axis
        bent = graph.edge_dir * distort
        graph = replace(graph, edge_dir=bent / bent.norm(dim=-1, keepdim=True))
    with torch.no_grad():
        return model(graph)


def _rotate(sample: Sample, rotation: np.ndarray) -> Sample:
    return replace(sample, positions=sample.positions @ rotation.T, cell=sample.cell @ rotation.T)


def _rotate_tensor(value: torch.Tensor, rotation: torch.Tensor, rank: int, parity: int) -> torch.Tensor:
    """R applied to every Cartesian index, times det(R) for a field whose parity is not (-1)**rank.

    Shapes: value (N or B, 3, ...) -> same
    """
    if rank == 0:
        return value
    letters = string.ascii_lowercase[:rank]
    subscripts = ",".join(f"{c.upper()}{c}" for c in letters) + f",z{letters}->z{letters.upper()}"
    out = torch.einsum(subscripts, *([rotation] * rank), value)
    if parity != (-1) ** rank:
        out = out * torch.linalg.det(rotation)
    return out


def _rotations() -> list[np.ndarray]:
    torch.manual_seed(11)
    proper = [o3.rand_matrix(dtype=torch.float64).numpy() for _ in range(2)]
    return proper + [-r for r in proper]  # improper: rotation times inversion


def _equivariance_error(model: E3nnTensorModel, sample: Sample, rotation: np.ndarray,
                        distort: torch.Tensor | None = None) -> dict[str, float]:
    before = _predict(model, sample, distort)
    after = _predict(model, _rotate(sample, rotation), distort)
    r = torch.from_numpy(rotation)
    errors = {}
    for name, spec in model.fields.items():
        expected = _rotate_tensor(before[name], r, spec.rank, spec.parity)
        scale = expected.abs().max().clamp(min=1e-12)
        errors[name] = float((after[name] - expected).abs().max() / scale)
    return errors


@pytest.mark.parametrize("rotation_index", range(4), ids=["proper-0", "proper-1", "improper-0", "improper-1"])
@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_outputs_rotate_with_the_structure(model, structure, rotation_index):
    """Every field (rank 0 to 3, atom and structure level, the pseudovector included) transforms as
    R T R^T ..., under proper and improper rotations of a molecule and of a periodic crystal."""
    errors = _equivariance_error(model, STRUCTURES[structure], _rotations()[rotation_index])
    assert max(errors.values()) < 1e-10, errors


def test_equivariance_check_catches_a_broken_geometry(model):
    """The same check fails when the edge directions are distorted along an axis (not equivariant)."""
    distort = torch.tensor([1.0, 1.0, 1.6], dtype=torch.float64)
    errors = _equivariance_error(model, STRUCTURES["molecule"], _rotations()[0], distort)
    assert errors["born_charges"] > 1e-3 and errors["hyperpolarizability"] > 1e-3, errors


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_outputs_are_translation_invariant(model, structure):
    sample = STRUCTURES[structure]
    before = _predict(model, sample)
    after = _predict(model, replace(sample, positions=sample.positions + np.array([0.7, -1.3, 2.1])))
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-10, atol=1e-10)


def test_acoustic_sum_rule_and_nonzero_outputs(model):
    """Born charges sum to zero over each structure; every field is non-trivial (so the checks above bite)."""
    out = _predict(model, STRUCTURES["molecule"])
    torch.testing.assert_close(out["born_charges"].sum(0), torch.zeros(3, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    for name, value in out.items():
        assert value.abs().max() > 1e-6, name


@pytest.mark.parametrize("formula", ["ij", "ij=ji", "ijk=ikj"])
def test_change_of_basis_is_cartesian_tensors(formula):
    """field_irreps' map equals e3nn's CartesianTensor(formula).to_cartesian, and is its inverse's inverse."""
    spec = FieldSpec("x", "structure", formula, (-1) ** len(formula.split("=")[0]), "", "sum")
    irreps, q = field_irreps(spec)
    tensor = CartesianTensor(formula)
    assert irreps == o3.Irreps(tensor)
    data = torch.randn(5, irreps.dim, dtype=torch.float64)
    cartesian = (data @ q.reshape(irreps.dim, -1)).reshape(5, *spec.shape)
    torch.testing.assert_close(cartesian, tensor.to_cartesian(data))
    torch.testing.assert_close(tensor.from_cartesian(cartesian), data)


# ---------------------------------------------------------------------------------- training
def _labelled_molecules() -> list[Sample]:
    """Small molecules labelled by a random tensorframe model (born with ASR, polarizability,
    hyperpolarizability, forces)."""
    torch.manual_seed(1)
    teacher = tf.build_model({
        "cutoff": CUTOFF, "triplet_cutoff": 3.0,
        "backbone": {"name": "reference", "hidden": 16, "num_radial": 8},
        "heads": [{"name": "born", "hidden": 16, "acoustic_sum_rule": True}, {"name": "force", "hidden": 16},
                  {"name": "tensor", "field": "polarizability", "hidden": 16},
                  {"name": "tensor", "field": "hyperpolarizability", "hidden": 16}],
    })
    structures = [molecule(name) for name in ("H2O", "NH3", "CH4", "CO2", "C2H4", "HCN", "CH3OH", "H2CO", "C2H2", "N2O")]
    samples = [to_sample(atoms, i) for i, atoms in enumerate(structures)]
    predictions = teacher.predict(samples)
    return [s.with_targets({k: v.astype(np.float64) for k, v in p.items()}) for s, p in zip(samples, predictions, strict=True)]


MOLECULES = _labelled_molecules()
SPLIT = {"train": [0, 1, 2, 3, 4, 5], "valid": [6, 7], "test": [8, 9]}


def test_train_peer_keeps_the_best_validation_model():
    fields = {name: REGISTRY[name] for name in ("born_charges", "polarizability")}
    torch.manual_seed(0)
    peer = build_peer(fields, MOLECULES, SPLIT["train"], CUTOFF, ["born_charges"], num_layers=1,
                      hidden_irreps="8x0e+4x1o+2x2e", extra_multiplicity=2)
    train = [MOLECULES[i] for i in SPLIT["train"]]
    scales = {}
    for name, (scale, shift) in label_normalization(train, fields, list(fields), ["born_charges"]).items():
        peer.scaling[name].set(scale, shift)
        scales[name] = scale
    make_graph = make_graph_fn(CUTOFF, torch.float32, torch.device("cpu"))
    weights = {"born_charges": 1.0, "polarizability": 1.0}
    # A large learning rate makes the validation loss jump about, so "best" is not simply "last".
    settings = TrainSettings(epochs=6, batch_size=2, lr=0.05, seed=0)
    outcome = train_peer(peer, MOLECULES, SPLIT, fields, weights, scales, make_graph, settings, log=None)
    losses = [row["valid_loss"] for row in outcome.history]
    assert outcome.epochs == 6 and len(losses) == 6
    assert outcome.best_epoch == int(np.argmin(losses)) + 1
    assert math.isclose(outcome.best_valid_loss, min(losses))
    valid = [MOLECULES[i] for i in SPLIT["valid"]]
    again = _evaluate_loss(peer, valid, make_graph, fields, weights, scales, settings, torch.float32, torch.device("cpu"))
    assert math.isclose(again["loss"], min(losses), rel_tol=1e-5)


def test_field_metrics_count_only_the_named_elements():
    fields = {"born_charges": REGISTRY["born_charges"]}
    torch.manual_seed(0)
    peer = build_peer(fields, MOLECULES, SPLIT["train"], CUTOFF, num_layers=1, hidden_irreps="8x0e+4x1o+2x2e",
                      extra_multiplicity=2).eval()
    predictor = GraphPredictor(peer, fields, make_graph_fn(CUTOFF, torch.float32, torch.device("cpu")))
    test = [MOLECULES[i] for i in SPLIT["valid"] + SPLIT["test"]]
    metrics = field_metrics(predictor, test, {"born_charges": [1]})["born_charges"]
    errors = [np.abs(p["born_charges"][s.numbers == 1] - s.targets["born_charges"][s.numbers == 1])
              for s, p in zip(test, predictor.predict(test), strict=True)]
    assert metrics["count"] == sum(int((s.numbers == 1).sum()) for s in test)
    assert math.isclose(metrics["mae"], float(np.concatenate(errors).mean()), rel_tol=1e-9)


def _task(**changes) -> Task:
    task = Task(
        name="tiny", description="", caveats="", dataset="embedded", reader={"format": "default", "paths": []},
        targets={"born_charges": 1.0, "polarizability": 1.0, "hyperpolarizability": 1.0, "forces": 1.0},
        heads=[{"name": "born", "acoustic_sum_rule": True}, {"name": "tensor", "field": "polarizability"},
               {"name": "tensor", "field": "hyperpolarizability"}, {"name": "force"}],
        cutoff=CUTOFF, triplet_cutoff=3.0, split={"train": 0.6, "valid": 0.2, "test": 0.2, "seed": 0},
    )
    return replace(task, **changes)


def test_run_peer_reports_every_field(tmp_path):
    result = run_peer(_task(), MOLECULES, SPLIT, {"epochs": 1, "max_time_s": 60.0}, tmp_path)
    assert result["supported"] is True
    assert set(result["fields"]) == {"born_charges", "polarizability", "hyperpolarizability", "forces"}
    for name, m in result["fields"].items():
        assert np.isfinite(m["mae"]) and m["rmse"] >= m["mae"] > 0, name
    assert result["fields"]["born_charges"]["count"] == sum(MOLECULES[i].num_atoms for i in SPLIT["test"])
    assert result["epochs"] == 1 and result["settings"]["acoustic_sum_rule"] == ["born_charges"]
    assert result["inference_structures_per_s"] > 0 and result["inference_atoms_per_s"] > result["inference_structures_per_s"]
    assert result["num_parameters"] > 10_000 and result["device"] == "cpu"
    assert result["versions"]["e3nn"] is not None
    assert (tmp_path / "e3nn_history.json").exists()


def test_run_peer_refuses_an_unknown_field(tmp_path):
    result = run_peer(_task(targets={"no_such_field": 1.0}), MOLECULES, SPLIT, {"epochs": 1}, tmp_path)
    assert result["supported"] is False and "no_such_field" in result["reason"]
