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

import importlib.metadata
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import cpu_memory_method, peak_memory_mb
from benchmarks.peers.e3nn_model import E3nnConfig, E3nnTensorModel
from benchmarks.peers.train_loop import (
    GraphPredictor,
    TrainSettings,
    inference_throughput,
    label_normalization,
    label_shim,
    train_peer,
)
from tensorframe.evaluate import collect_pairs
from tensorframe.fields import FieldSpec
from tensorframe.graph import build_graph, neighbor_list
from tensorframe.graph.neighbors import DEFAULT_SHELL_TOLERANCE
from tensorframe.registry import get_registry
from tensorframe.train.data import fit_element_shifts
from tensorframe.train.state import seed_everything
from tensorframe.types import Graph, Sample

NAME = "e3nn"
EDGE_ONLY_TRIPLET_CUTOFF = 1e-6  # Å: no edge is this short, so build_graph makes no triplets
HEAD_FIELDS = {"force": "forces", "born": "born_charges", "dielectric": "dielectric", "piezo": "piezo"}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("e3nn", "torch", "tensorframe", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


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
    """Per field MAE / RMSE over all components (as :func:`tensorframe.evaluate.metrics`), atom-level
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
        out[name] = {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt((error**2).mean())),
                     "count": int(error.shape[0]), "units": p.units, "target_std": float(target.std())}
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
    speed = inference_throughput(predictor, test, batch_size=16, repeats=3, warmup=1)
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
        "memory_method": cpu_memory_method() if device.type == "cpu" else "torch.cuda.max_memory_allocated",
        "num_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "device": str(device),
        "torch_num_threads": torch.get_num_threads(),
        "settings": {**settings.__dict__, "cutoff": task.cutoff, "acoustic_sum_rule": asr,
                     "positive_definite_mirrored": False},
        "versions": _versions(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{NAME}_history.json").write_text(json.dumps(result.history, indent=1) + "\n")
    return report


__all__ = ["build_peer", "field_metrics", "make_graph_fn", "mean_neighbors", "run_peer"]


def compare_inference(num_structures: int = 50, batch_size: int = 16, repeats: int = 3) -> dict[str, Any]:
    """Inference speed of the e3nn peer and of tensorframe's ETGNN (hidden 64, the
    ``configs/default_molecules.yaml`` sizes) on the first ``num_structures`` molecules of the
    embedded set, with the heads of the ``default-molecules`` task; float32, ``no_grad``, untrained
    weights (speed does not depend on them). ``predict`` includes graph building; ``forward`` runs on
    graphs built beforehand (each model's own: the peer's has no triplets)."""
    from benchmarks.common import environment, time_call
    from benchmarks.tasks import TASKS
    from tensorframe.datasets import load_default_dataset
    from tensorframe.model import build_model

    task = TASKS["default-molecules"]
    samples = list(load_default_dataset())[:num_structures]
    device = torch.device("cpu")
    torch.manual_seed(0)
    etgnn = build_model({
        "cutoff": task.cutoff, "triplet_cutoff": task.triplet_cutoff,
        "backbone": {"name": "etgnn", "hidden": 64, "triplet_dim": 64, "num_blocks": 3, "int_emb_size": 32,
                     "out_emb_size": 64},
        "heads": [dict(head, hidden=64) for head in task.heads],
    }).eval()
    fields = {name: get_registry().items["field"][name] for name in task.targets}
    peer = build_peer(fields, samples, range(len(samples)), task.cutoff).eval()
    peer_graph = make_graph_fn(task.cutoff, torch.float32, device)
    predictors = {"etgnn": etgnn, "e3nn": GraphPredictor(peer, fields, peer_graph)}
    graphs = {
        "etgnn": [etgnn.make_graph(samples[s : s + batch_size]) for s in range(0, len(samples), batch_size)],
        "e3nn": [peer_graph(samples[s : s + batch_size]) for s in range(0, len(samples), batch_size)],
    }
    modules = {"etgnn": etgnn, "e3nn": peer}
    atoms = sum(s.num_atoms for s in samples)
    rows: dict[str, Any] = {}
    for name in ("etgnn", "e3nn"):
        with torch.no_grad():
            full = time_call(lambda n=name: predictors[n].predict(samples, batch_size), device, repeats, warmup=1)
            forward = time_call(lambda n=name: [modules[n](g) for g in graphs[n]], device, repeats, warmup=1)
        rows[name] = {
            "predict_s": full.median_ms / 1e3, "forward_s": forward.median_ms / 1e3,
            "predict_structures_per_s": len(samples) / (full.median_ms / 1e3),
            "forward_structures_per_s": len(samples) / (forward.median_ms / 1e3),
            "predict_atoms_per_s": atoms / (full.median_ms / 1e3),
            "num_parameters": sum(p.numel() for p in modules[name].parameters() if p.requires_grad),
            "edges": sum(g.num_edges for g in graphs[name]), "triplets": sum(g.num_triplets for g in graphs[name]),
        }
    return {
        "num_structures": len(samples), "atoms": atoms, "batch_size": batch_size, "repeats": repeats,
        "fields": list(fields), "models": rows,
        "etgnn_speedup_predict": rows["e3nn"]["predict_s"] / rows["etgnn"]["predict_s"],
        "etgnn_speedup_forward": rows["e3nn"]["forward_s"] / rows["etgnn"]["forward_s"],
        "e3nn_model": f"hidden {peer.irreps_hidden}, sh {peer.irreps_sh}, {peer.config.num_layers} layers",
        "environment": environment(),
    }


if __name__ == "__main__":
    print(json.dumps(compare_inference(), indent=1))
