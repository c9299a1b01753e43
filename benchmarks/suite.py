"""The benchmark suite: every backbone (and peer) on every task, same split, budget and machine.

For each task x backbone: train with :func:`tensorframe.train.train` (a :class:`TrainConfig`
built here; the task's samples are written once to ``<runs>/<task>/data.extxyz`` with a split
file, so the trainer reads exactly the suite's structures), then evaluate the best model on the
test split:

- per-field test MAE / RMSE (atom-level fields with ``Task.metric_elements`` counted on those
  elements only);
- training throughput: structures seen / training wall time (validation passes included);
- inference throughput: ``model.predict`` over the test set (graph building included,
  ``torch.no_grad``, batch 16), median of 3 passes after one warm-up pass;
- peak memory: growth of the peak RSS during training and during one inference pass
  (:func:`benchmarks.toolkit.peak_memory_mb`, method recorded);
- parameter count, device, versions.

Peers (``benchmarks/peers/<name>_peer.py``) get the same samples, split and budget.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.peers import load_peer
from benchmarks.tasks import TASKS, Task, budget, load_task
from benchmarks.toolkit import (
    REPO_ROOT,
    RESULTS,
    cpu_memory_method,
    environment,
    median_seconds,
    num_parameters,
    peak_memory_mb,
    throughput,
    write_json,
)
from tensorframe.types import Sample

RUNS_DIR = RESULTS / "runs"

# Benchmark sizes per backbone (ETGNN narrowed from its defaults: hidden 128 -> 64, 4 -> 2 blocks;
# "etgnn-lean" narrows only the triplet-sized work further: triplet messages 32 wide, per-triplet
# work 16 wide, no residual layer in the triplet update: the triplets are most of ETGNN's cost).
BACKBONES: dict[str, dict[str, Any]] = {
    "reference": {"name": "reference"},
    "etgnn": {"name": "etgnn", "hidden": 64, "triplet_dim": 64, "out_emb_size": 64, "int_emb_size": 32,
              "num_blocks": 2},
    "etgnn-lean": {"name": "etgnn", "hidden": 64, "triplet_dim": 32, "out_emb_size": 64, "int_emb_size": 16,
                   "num_blocks": 2, "num_triplet_residual": 0},
    "schnet": {"name": "schnet"},
    "cgcnn": {"name": "cgcnn"},
}
REDUCED_BACKBONES: dict[str, dict[str, Any]] = {
    "reference": {"name": "reference", "hidden": 16, "num_radial": 8, "num_interactions": 1},
}
# "<backbone>-conservative" (e.g. "schnet-conservative"): the same backbone with
# model.conservative: the task's force head becomes an energy head, forces are -dE/dr.
CONSERVATIVE_SUFFIX = "-conservative"
INFERENCE_BATCH = 16
INFERENCE_REPEATS = 3


# ----------------------------------------------------------------- metrics
def field_errors(task: Task, fields: dict[str, Any], samples: list[Sample],
                 predictions: list[dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Per-field MAE / RMSE over every component of every counted row, with the rows kept for plots.

    Shapes: predictions[i][field] (N_i, 3, ...) or (3, ...); rows (M, 3**rank)
    """
    out: dict[str, dict[str, Any]] = {}
    for name in task.targets:
        spec = fields[name]
        pred_rows, true_rows = [], []
        for sample, prediction in zip(samples, predictions, strict=True):
            per_row = sample.num_atoms if spec.level == "atom" else 1
            p = np.asarray(prediction[name], dtype=np.float64).reshape(per_row, -1)
            t = np.asarray(sample.targets[name], dtype=np.float64).reshape(per_row, -1)
            if spec.level == "atom" and name in task.metric_elements:
                keep = np.isin(sample.numbers, task.metric_elements[name])
                p, t = p[keep], t[keep]
            pred_rows.append(p)
            true_rows.append(t)
        p, t = np.concatenate(pred_rows), np.concatenate(true_rows)
        error = p - t
        out[name] = {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt((error**2).mean())),
                     "label_mean_abs": float(np.abs(t).mean()), "count": int(t.shape[0]), "level": spec.level,
                     "units": spec.units, "_rows": (p, t)}
    return out


def relative_error(fields: dict[str, dict[str, Any]]) -> float:
    """Mean over fields of MAE / mean |label|: one number to rank models on a multi-field task."""
    return float(np.mean([f["mae"] / max(f["label_mean_abs"], 1e-12) for f in fields.values()]))


def inference_throughput(model: Any, samples: list[Sample]) -> dict[str, float]:
    """Structures/s and atoms/s of ``model.predict`` over ``samples`` (median of 3 after warm-up)."""
    t = median_seconds(lambda: model.predict(samples, batch_size=INFERENCE_BATCH), INFERENCE_REPEATS)
    return {"inference_time_s": t, **throughput(t, samples, "inference_")}


# ----------------------------------------------------------------- data for the trainer
def write_task_data(task: Task, samples: list[Sample], split: dict[str, list[int]], folder: Path) -> Path:
    """``folder/data.extxyz`` (target fields only, as the ase reader reads them) and ``split.json``."""
    import ase.io

    from tensorframe.io.writers import sample_to_atoms
    from tensorframe.registry import get_registry

    fields = get_registry().items["field"]
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for sample in samples:
        atoms = sample_to_atoms(sample)
        for name in task.targets:
            value = np.asarray(sample.targets[name], dtype=np.float64)
            if fields[name].level == "atom":
                atoms.arrays[name] = value.reshape(sample.num_atoms, -1)
            else:
                atoms.info[name] = value.reshape(-1)
        frames.append(atoms)
    path = folder / "data.extxyz"
    ase.io.write(str(path), frames, format="extxyz")
    (folder / "split.json").write_text(json.dumps(split) + "\n")
    return path


def split_model_name(name: str) -> tuple[str, bool]:
    """``"schnet-conservative"`` -> ``("schnet", True)``; ``"schnet"`` -> ``("schnet", False)``."""
    if name.endswith(CONSERVATIVE_SUFFIX):
        return name[: -len(CONSERVATIVE_SUFFIX)], True
    return name, False


def conservative_heads(heads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task's heads with the force head replaced by an energy head (forces = -dE/dr)."""
    out = [head for head in heads if head["name"] not in ("force", "energy")]
    return [{"name": "energy"}, *out]


def train_config(task: Task, backbone: dict[str, Any], data: Path, run_budget: dict[str, Any], reduced: bool,
                 output_dir: Path, conservative: bool = False) -> Any:
    from tensorframe.train import TrainConfig

    return TrainConfig.model_validate({
        "model": {"cutoff": task.cutoff, "triplet_cutoff": min(task.triplet_cutoff, task.cutoff),
                  "conservative": conservative, "backbone": backbone,
                  "heads": conservative_heads(task.heads) if conservative else task.heads},
        "data": {"path": str(data), "format": "ase", "options": {"default_keys": False}},
        "split": {"file": str(data.parent / "split.json")},
        "targets": task.targets,
        "epochs": int(run_budget["epochs"]),
        "max_time_s": float(run_budget["max_time_s"]),
        "batch_size": 8,
        "seed": int(task.split.get("seed", 0)),
        "device": "cpu",
        "progress": False,
        "early_stopping": {"patience": 30},
        "output_dir": str(output_dir),
    })


def run_backbone(task: Task, name: str, backbone: dict[str, Any], samples: list[Sample],
                 split: dict[str, list[int]], data: Path, run_budget: dict[str, Any], reduced: bool,
                 runs_dir: Path, conservative: bool = False) -> dict[str, Any]:
    """Train and evaluate one backbone on one task; the record of :mod:`benchmarks.suite`."""
    from tensorframe.checkpoint import load_model
    from tensorframe.train import train

    out = runs_dir / task.name / name
    shutil.rmtree(out, ignore_errors=True)
    config = train_config(task, backbone, data, run_budget, reduced, out, conservative)
    holder: dict[str, Any] = {}

    def fit() -> None:
        holder["result"] = train(config, output_dir=out)

    train_peak = peak_memory_mb(fit, torch.device("cpu"))
    metrics = holder["result"].metrics
    best = out / "best.pt"
    model = load_model(best if best.exists() else out / "last.pt")
    test = [samples[i] for i in split["test"]]
    predictions = model.predict(test, batch_size=INFERENCE_BATCH)
    fields = field_errors(task, model.fields, test, predictions)
    speed = inference_throughput(model, test)
    infer_peak = peak_memory_mb(lambda: model.predict(test[:INFERENCE_BATCH], batch_size=INFERENCE_BATCH),
                                torch.device("cpu"))
    n_train = len(split["train"])
    batches_per_epoch = -(-n_train // config.batch_size)
    epochs_done, steps = int(metrics["epochs"]), int(metrics["steps"])
    seen = epochs_done * n_train + max(0, steps - epochs_done * batches_per_epoch) * config.batch_size
    train_atoms = float(np.mean([samples[i].num_atoms for i in split["train"]]))
    train_time = float(metrics["train_time_s"])
    return {
        "kind": "backbone",
        "config": backbone,
        "forces": "conservative (-dE/dr of an energy head)" if conservative else "direct (force head)",
        "fields": fields,
        "relative_error": relative_error(fields),
        "epochs": epochs_done,
        "steps": steps,
        "stopped": metrics["stopped"],
        "best_epoch": metrics.get("best_epoch"),
        "evaluated_checkpoint": "best.pt" if best.exists() else "last.pt (no epoch finished within the budget)",
        "train_time_s": train_time,
        "train_structures_per_s": seen / train_time if train_time > 0 else None,
        "train_atoms_per_s": seen * train_atoms / train_time if train_time > 0 else None,
        **speed,
        "train_peak_memory_mib": train_peak,
        "inference_peak_memory_mib": infer_peak,
        "num_parameters": num_parameters(model),
        "device": "cpu",
    }


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """The record without the rows kept for plots."""
    fields = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in record.get("fields", {}).items()}
    return {**record, "fields": fields} if "fields" in record else dict(record)


# ----------------------------------------------------------------- the suite
def run_task(task: Task, backbones: list[str], peers: list[str], reduced: bool, runs_dir: Path,
             plots_dir: Path | None, log: Any = print) -> dict[str, Any]:
    """One task: every backbone, then every peer; with the best backbone's parity plots."""
    record: dict[str, Any] = {"description": task.description, "caveats": task.caveats, "dataset": task.dataset,
                              "targets": dict(task.targets), "cutoff": task.cutoff,
                              "triplet_cutoff": task.triplet_cutoff, "split_fractions": dict(task.split)}
    ok, reason = task.available()
    if not ok:
        record["skipped"] = reason
        log(f"[{task.name}] skipped: {reason}")
        return record
    started = time.perf_counter()
    samples, split = load_task(task, reduced)
    run_budget = budget(task, reduced)
    record.update({"num_structures": len(samples), "split_sizes": {k: len(v) for k, v in split.items()},
                   "num_atoms_mean": float(np.mean([s.num_atoms for s in samples])),
                   "budget": run_budget, "reduced": reduced,
                   "subset_of_at_most": task.max_structures_reduced if reduced else task.max_structures_full, "load_time_s": time.perf_counter() - started})
    data = write_task_data(task, samples, split, runs_dir / task.name)
    table = REDUCED_BACKBONES if reduced else BACKBONES
    results: dict[str, Any] = {}
    for name in backbones:
        base, conservative = split_model_name(name)
        config = table.get(base, BACKBONES.get(base, {"name": base}))
        log(f"[{task.name}] backbone {name} ...")
        try:
            results[name] = run_backbone(task, name, config, samples, split, data, run_budget, reduced, runs_dir,
                                         conservative)
            log(f"[{task.name}] backbone {name}: " + ", ".join(
                f"{f} MAE {v['mae']:.4g}" for f, v in results[name]["fields"].items()))
        except Exception as error:  # noqa: BLE001 - one failing backbone must not hide the others
            results[name] = {"kind": "backbone", "error": f"{type(error).__name__}: {error}",
                             "traceback": traceback.format_exc(limit=4)}
            log(f"[{task.name}] backbone {name} FAILED: {error}")
    ranked = [n for n in results if "fields" in results[n]]
    best = min(ranked, key=lambda n: results[n]["relative_error"]) if ranked else None
    record["best_backbone"] = best
    if best is not None and plots_dir is not None:
        record["plots"] = parity_plots(task, best, results[best], plots_dir)
    record["backbones"] = {n: _public(r) for n, r in results.items()}
    peer_records: dict[str, Any] = {}
    for name in peers:
        run_peer, why = load_peer(name)
        if run_peer is None:
            peer_records[name] = {"supported": False, "reason": f"not available: {why}"}
            log(f"[{task.name}] peer {name}: not available: {why}")
            continue
        log(f"[{task.name}] peer {name} ...")
        out = runs_dir / task.name / f"peer-{name}"
        out.mkdir(parents=True, exist_ok=True)
        try:
            peer_records[name] = dict(run_peer(task, samples, split, dict(run_budget), out))
        except Exception as error:  # noqa: BLE001
            peer_records[name] = {"supported": False, "reason": f"failed: {type(error).__name__}: {error}",
                                  "traceback": traceback.format_exc(limit=4)}
        log(f"[{task.name}] peer {name}: {json.dumps({k: v for k, v in peer_records[name].items() if k != 'traceback'})[:300]}")
    record["peers"] = peer_records
    record["bar"] = bar(task, record)
    record["wall_time_s"] = time.perf_counter() - started
    return record


def parity_plots(task: Task, backbone: str, result: dict[str, Any], plots_dir: Path) -> list[str]:
    """One parity PNG per target field of the best backbone; paths relative to the repo."""
    from tensorframe.registry import get_registry
    from tensorframe.scoring import FieldPairs, parity_plot

    registry = get_registry()
    plots_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, f in result["fields"].items():
        # the plot's title is not a field name: give the field's symmetry for its panels
        symmetry = registry.items["field"][name].symmetry if name in registry.items["field"] else None
        p, t = f["_rows"]
        rank = int(round(np.log(p.shape[1]) / np.log(3))) if p.shape[1] > 1 else 0
        pairs = FieldPairs(f"{name} ({task.name}, {backbone})", f["level"], f["units"], rank, p, t, 0)
        path = plots_dir / f"suite_{task.name}_{name}.png"
        parity_plot(pairs, path, symmetry)
        paths.append(str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path))
    return paths


COMPARABLE = 1.10  # "comparable accuracy": ETGNN's relative error at most 10 % above the e3nn peer's


def bar(task: Task, record: dict[str, Any], speeds: dict[str, float] | None = None) -> dict[str, Any]:
    """Whether the issue's two bars hold on this task, with the numbers behind them.

    ``speeds`` ({model: inference structures/s}, from :mod:`benchmarks.speed`, measured side by
    side in one process) replaces the inference speeds recorded during training runs."""
    backbones = {n: r for n, r in record.get("backbones", {}).items() if "fields" in r}
    peers = {n: r for n, r in record.get("peers", {}).items() if r.get("supported") and r.get("fields")}
    out: dict[str, Any] = {}
    if not backbones:
        out["accuracy"] = {"holds": None, "text": "no backbone finished"}
    elif not peers:
        out["accuracy"] = {"holds": None, "text": "not evaluated: no peer ran on this task"}
    else:
        per_field = {}
        for field in task.targets:
            ours = min(r["fields"][field]["mae"] for r in backbones.values())
            theirs = [r["fields"][field]["mae"] for r in peers.values() if field in r["fields"]]
            if theirs:
                per_field[field] = {"tensorframe_best_mae": ours, "peer_best_mae": min(theirs),
                                    "holds": ours <= min(theirs)}
        holds = all(v["holds"] for v in per_field.values()) if per_field else None
        out["accuracy"] = {"holds": holds, "per_field": per_field,
                           "text": "no peer predicted these fields" if holds is None else
                           ("holds" if holds else "does NOT hold for " + ", ".join(
                               f for f, v in per_field.items() if not v["holds"]))}
    out["speed"] = speed_bar(record, speeds)
    return out


def etgnn_variants(record: dict[str, Any]) -> list[str]:
    """The task's finished backbones that are ETGNN (any size) with direct forces (bar 2 is about
    the paper's model; conservative variants are compared in the accuracy tables)."""
    return [n for n, r in record.get("backbones", {}).items()
            if "fields" in r and r.get("config", {}).get("name") == "etgnn" and not split_model_name(n)[1]]


def speed_bar(record: dict[str, Any], speeds: dict[str, float] | None = None) -> dict[str, Any]:
    """Bar 2: an ETGNN variant's inference at least 3x the e3nn peer's at comparable accuracy
    (relative error at most ``COMPARABLE`` x the peer's). Reports the variant that holds, else
    the fastest variant of comparable accuracy, else the fastest."""
    backbones, e3nn = record.get("backbones", {}), record.get("peers", {}).get("e3nn", {})
    variants = etgnn_variants(record)
    if not (e3nn.get("supported") and e3nn.get("fields")) or not variants:
        return {"holds": None, "text": "not evaluated: " + ("ETGNN did not run" if not variants
                                                            else "the e3nn peer did not run")}

    def rate(name: str, r: dict[str, Any]) -> float:
        return float(speeds[name]) if speeds and name in speeds else float(r["inference_structures_per_s"])

    rows = []
    for name in variants:
        etgnn = backbones[name]
        speedup = rate(name, etgnn) / rate("e3nn", e3nn)
        e3nn_rel = relative_error({f: {"mae": v["mae"], "label_mean_abs": etgnn["fields"][f]["label_mean_abs"]}
                                   for f, v in e3nn["fields"].items() if f in etgnn["fields"]})
        comparable = etgnn["relative_error"] <= COMPARABLE * e3nn_rel
        rows.append({"variant": name, "holds": bool(speedup >= 3.0 and comparable), "speedup": speedup,
                     "etgnn_relative_error": etgnn["relative_error"], "e3nn_relative_error": e3nn_rel,
                     "comparable_accuracy": comparable})
    pick = max(rows, key=lambda r: (r["holds"], r["comparable_accuracy"], r["speedup"]))
    source = "side-by-side speed pass" if speeds else "training-run inference timing"
    text = (f"{'holds' if pick['holds'] else 'does NOT hold'}: {pick['variant']} inference {pick['speedup']:.2g}x "
            f"the e3nn peer's, relative error {pick['etgnn_relative_error']:.3g} vs {pick['e3nn_relative_error']:.3g}"
            + ("" if pick["comparable_accuracy"] else " (not comparable)"))
    return {**pick, "variants": rows, "source": source, "text": text}


def run_suite(task_names: list[str], backbones: list[str], peers: list[str], reduced: bool, json_path: Path,
              runs_dir: Path = RUNS_DIR, plots_dir: Path | None = None, log: Any = print) -> dict[str, Any]:
    """Run the tasks in order, rewriting ``json_path`` after each task (partial results survive)."""
    unknown = [t for t in task_names if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid choices: {', '.join(TASKS)}")
    result: dict[str, Any] = {
        "mode": "reduced" if reduced else "full",
        "environment": environment(),
        "memory_method": cpu_memory_method(),
        "inference": f"model.predict over the test split (graph building included), torch.no_grad, batch "
                     f"{INFERENCE_BATCH}, median of {INFERENCE_REPEATS} passes after 1 warm-up pass",
        "training_throughput": "structures seen / training wall time (validation passes included)",
        "backbone_configs": {b: (REDUCED_BACKBONES if reduced else BACKBONES).get(split_model_name(b)[0],
                                                                                  {"name": split_model_name(b)[0]})
                             for b in backbones},
        "tasks": {},
    }
    for name in task_names:
        result["tasks"][name] = run_task(TASKS[name], backbones, peers, reduced, runs_dir, plots_dir, log)
        write_json(json_path, result)
    write_json(json_path, result)
    return result
