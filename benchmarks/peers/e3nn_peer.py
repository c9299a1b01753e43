"""The e3nn tensor-product peer: a NequIP-style network (:mod:`benchmarks.peers.e3nn_model`)
trained and scored on a benchmark task exactly as tensorframe's backbones are.

    run_peer(task, samples, split, budget, out_dir) -> {"supported", "fields", "train_time_s", ...}

Same as tensorframe: the graph (tensorframe's ``build_graph`` at the task's cutoff, so the same
neighbours; no triplets, the model does not use them), the split, the seed, the loss and its
per-field scales (:mod:`benchmarks.peers.train_loop`), the budget, the acoustic sum rule where the
task's Born head enforces it, and the test metrics (MAE / RMSE over all components, on the task's
``metric_elements`` only where it names them). Differences, said plainly: forces come from a
direct ``1o`` head (not ``-dE/dx``); a "positive_definite" dielectric head is not mirrored (the
peer predicts an unconstrained symmetric tensor; the loss scale is still tensorframe's).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.peers.e3nn_model import E3nnConfig, E3nnTensorModel
from benchmarks.peers.train_loop import GraphPredictor, TrainSettings, label_normalization, label_shim, train_peer
from benchmarks.toolkit import (
    distribution_version,
    median_seconds,
    memory_method,
    num_parameters,
    peak_memory_mb,
    throughput,
)
from tensorframe.fields import FieldSpec
from tensorframe.graph import build_graph, neighbor_list
from tensorframe.graph.neighbors import DEFAULT_SHELL_TOLERANCE
from tensorframe.registry import get_registry
from tensorframe.scoring import collect_pairs, error_metrics
from tensorframe.train.data import fit_element_shifts
from tensorframe.train.state import seed_everything
from tensorframe.types import Graph, Sample

NAME = "e3nn"
EDGE_ONLY_TRIPLET_CUTOFF = 1e-6  # Å: no edge is this short, so build_graph makes no triplets
HEAD_FIELDS = {"force": "forces", "born": "born_charges", "dielectric": "dielectric", "piezo": "piezo"}


def _head_options(heads: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """{field: head config} for the task's tensorframe heads."""
    out = {}
    for head in heads:
        name = head.get("field", HEAD_FIELDS.get(head["name"]))
        if name is not None:
            out[name] = head
    return out


def make_graph_fn(cutoff: float, dtype: torch.dtype, device: torch.device, max_neighbors: int | None = None,
                  shell_tolerance: float = DEFAULT_SHELL_TOLERANCE):
    """A ``make_graph(samples)`` with tensorframe's neighbour list at ``cutoff`` (and its
    whole-shell ``max_neighbors`` cap) and no triplets."""

    def make_graph(samples: Sequence[Sample]) -> Graph:
        return build_graph(samples, cutoff, EDGE_ONLY_TRIPLET_CUTOFF, max_neighbors, dtype=dtype, device=device,
                           shell_tolerance=shell_tolerance)

    return make_graph


def mean_neighbors(samples: Sequence[Sample], cutoff: float, max_neighbors: int | None = None,
                   shell_tolerance: float = DEFAULT_SHELL_TOLERANCE) -> float:
    """Edges per atom over ``samples`` (NequIP's ``avg_num_neighbors``)."""
    edges = sum(neighbor_list(s, cutoff, max_neighbors, shell_tolerance).idx_i.shape[0] for s in samples)
    return max(edges / max(sum(s.num_atoms for s in samples), 1), 1.0)


def build_peer(fields: Mapping[str, FieldSpec], samples: Sequence[Sample], train: Sequence[int], cutoff: float,
               subtract_structure_mean: Sequence[str] = (), **options: Any) -> E3nnTensorModel:
    """The peer for ``fields`` with the species of ``samples`` and ``avg_num_neighbors`` from ``train``."""
    species = tuple(sorted({int(z) for s in samples for z in np.unique(s.numbers)}))
    model = E3nnTensorModel(E3nnConfig(cutoff=cutoff, species=species, **options), fields, subtract_structure_mean)
    model.avg_num_neighbors.fill_(mean_neighbors([samples[i] for i in train], cutoff))
    return model


def field_metrics(predictor: GraphPredictor, samples: Sequence[Sample], metric_elements: Mapping[str, Sequence[int]],
                  batch_size: int = 16) -> dict[str, dict[str, Any]]:
    """Per field MAE / RMSE over all components (as :func:`tensorframe.scoring.metrics`), atom-level
    fields on the atoms of ``metric_elements[field]`` only where given."""
    pairs = collect_pairs(predictor, samples, batch_size)
    out = {}
    for name, p in pairs.items():
        predicted, target = p.predicted, p.target
        elements = metric_elements.get(name)
        if elements is not None and p.level == "atom":
            numbers = np.concatenate([s.numbers for s in samples if name in s.targets])
            keep = np.isin(numbers, list(elements))
            predicted, target = predicted[keep], target[keep]
        error = predicted - target
        scores = error_metrics(error, target)
        out[name] = {"mae": scores["mae"], "rmse": scores["rmse"], "count": int(error.shape[0]), "units": p.units,
                     "target_std": scores["target_std"]}
    return out


def run_peer(task: Any, samples: Sequence[Sample], split: Mapping[str, Sequence[int]], budget: Mapping[str, Any],
             out_dir: Path) -> dict[str, Any]:
    """Train the e3nn peer on ``split["train"]`` within ``budget``, keep the best on ``split["valid"]``,
    and report its test errors, inference speed, memory and size."""
    registry = get_registry().items["field"]
    unknown = [name for name in task.targets if name not in registry]
    if unknown:
        return {"supported": False, "reason": f"fields {unknown} are not in tensorframe's field registry"}
    fields = {name: registry[name] for name in task.targets}
    heads = _head_options(task.heads)
    asr = [name for name, head in heads.items() if head.get("acoustic_sum_rule") and name in fields]
    keep_identity = [name for name, head in heads.items() if head.get("positive_definite") and name in fields]
    device = torch.device(budget.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed = int(task.split.get("seed", 0))
    settings = TrainSettings.from_budget(budget, seed=seed)
    max_neighbors = getattr(task, "max_neighbors", None)

    seed_everything(seed)
    model = build_peer(fields, samples, split["train"], task.cutoff, asr).to(device)
    train_samples = [samples[i] for i in split["train"]]
    # Reference energies per element (E0s), fitted exactly as tensorframe's trainer fits them.
    element_shifts = fit_element_shifts(label_shim(fields, list(fields)), train_samples, list(fields))
    for name, shifts in element_shifts.items():
        model.scaling[name].set_element_shift(shifts)
    for name, (scale, shift) in label_normalization(train_samples, fields, list(fields), asr,
                                                    element_shifts=element_shifts).items():
        model.scaling[name].set(scale, shift)
    # The loss scales are tensorframe's for this task's heads (RMS of eps - I for a positive-definite dielectric).
    loss_scales = {name: scale for name, (scale, _) in
                   label_normalization(train_samples, fields, list(fields), asr, keep_identity=keep_identity,
                                       element_shifts=element_shifts).items()}
    make_graph = make_graph_fn(task.cutoff, torch.float32, device, max_neighbors,
                               getattr(task, "neighbor_shell_tolerance", DEFAULT_SHELL_TOLERANCE))

    outcome: dict[str, Any] = {}

    def fit() -> None:
        outcome["train"] = train_peer(model, samples, split, fields, dict(task.targets), loss_scales, make_graph,
                                      settings, log=None)

    train_peak = peak_memory_mb(fit, device)
    result = outcome["train"]
    predictor = GraphPredictor(model, fields, make_graph)
    test = [samples[i] for i in split["test"]]
    metrics = field_metrics(predictor, test, getattr(task, "metric_elements", {}) or {})
    speed = throughput(median_seconds(lambda: predictor.predict(test, 16), repeats=3, warmup=1, device=device), test)
    inference_peak = peak_memory_mb(lambda: predictor.predict(test, 16), device)
    report = {
        "supported": True,
        "reason": "",
        "peer": NAME,
        "model": (f"NequIP-style e3nn: {model.config.num_layers} interaction layers, hidden {model.irreps_hidden}, "
                  f"spherical harmonics {model.irreps_sh}, Bessel({model.config.num_basis}) x cosine envelope radial "
                  f"MLP {[model.config.radial_hidden] * model.config.radial_layers}, 'uvu' tensor products, gate "
                  f"nonlinearity; forces by a direct 1o head"),
        "fields": metrics,
        "train_time_s": result.train_time_s,
        "train_structures_per_s": result.structures_seen / result.train_time_s if result.train_time_s > 0 else None,
        "train_note": "train_time_s includes graph building and validation after each epoch",
        "epochs": result.epochs,
        "steps": result.steps,
        "stopped": result.stopped,
        "best_epoch": result.best_epoch,
        "inference_structures_per_s": speed["structures_per_s"],
        "inference_atoms_per_s": speed["atoms_per_s"],
        "inference_note": "predict() on the test split, batch 16, no_grad, graph building included, median of 3 after 1 warm-up",
        "peak_memory_mib": train_peak,
        "inference_peak_memory_mib": inference_peak,
        "memory_method": memory_method(device),
        "num_parameters": num_parameters(model, trainable=True),
        "device": str(device),
        "torch_num_threads": torch.get_num_threads(),
        "settings": {**settings.__dict__, "cutoff": task.cutoff, "acoustic_sum_rule": asr,
                     "positive_definite_mirrored": False},
        "versions": {name: distribution_version(name) for name in ("e3nn", "torch", "tensorframe", "numpy")},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{NAME}_history.json").write_text(json.dumps(result.history, indent=1) + "\n")
    return report
