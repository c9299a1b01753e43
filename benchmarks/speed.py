"""Inference speed of every backbone and peer on each task's test split, measured side by side.

    python -m benchmarks speed [--tasks ...] [--backbones ...] [--peers ...] [--repeats 5]

Why a separate pass: the suite trains models in parallel processes on a shared machine, so the
inference times it records during training runs share the CPU with whatever else runs. Here all
models of a task are timed in one process, in interleaved rounds (round r times model 1, 2, ...
then round r + 1), so drifts in machine load hit every model alike; the median round is kept.

Protocol per task: the test split of the full task, ``predict`` with batch 16 under
``torch.no_grad`` (graph building included, as a user calls it), float32, one warm-up pass per
model, then ``repeats`` interleaved rounds. ``--device cuda`` runs the in-process models on the
GPU (graphs are built there; ``predict`` returns numpy arrays, so every timed call ends
synchronised), and ``--precision`` (:mod:`benchmarks.precision`) times them with TF32 products
(CUDA) or bfloat16 autocast instead of plain float32; the subprocess peers run on the CPU only.
Before its warm-up each model predicts one batch: a model that fails so (e3nn under bfloat16
autocast) is recorded with its error instead of a time. Weights are freshly initialised
(seed 0): the cost of a forward pass does not depend on the weights' values, and the
architectures, graphs and heads are those of the suite's trained models. MACE runs in its own virtual environment, so it is timed by
its runner in a subprocess right after the in-process models (same machine, same split, same
batch size); their numbers say so.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.peers import load_peer
from benchmarks.precision import check_precision, matmul_precision, peer_call, tensorframe_call
from benchmarks.suite import split_model_name
from benchmarks.tasks import TASKS, Task, load_task
from benchmarks.toolkit import RESULTS, environment, interleaved_rounds, num_parameters, seeded_model, write_json
from tensorframe.types import Sample

BATCH = 16
CPU = torch.device("cpu")
PROTOCOL = (f"predict() over the full test split, batch {BATCH}, torch.no_grad, float32 tensors (products: see precision), "
            "graph building included; "
            "freshly initialised weights (seed 0); one warm-up pass per model, then interleaved rounds "
            "(every model once per round), median round reported")


def tensorframe_predictor(task: Task, config: dict[str, Any], conservative: bool = False,
                          device: torch.device = CPU, precision: str = "float32"
                          ) -> tuple[Callable[[list[Sample]], Any], int]:
    """A suite backbone with the task's heads and cutoffs (``conservative``: the force head
    replaced by an energy head, forces = -dE/dr by one backward pass) on ``device`` under
    ``precision``, and its parameter count."""
    from benchmarks.suite import conservative_heads

    model = seeded_model(task.cutoff, min(task.triplet_cutoff, task.cutoff), config,
                         conservative_heads(task.heads) if conservative else task.heads,
                         conservative=conservative).to(device).eval()

    def predict(samples: list[Sample]) -> Any:
        return tensorframe_call(model, lambda: model.predict(samples, batch_size=BATCH), precision)()

    return predict, num_parameters(model)


def e3nn_predictor(task: Task, samples: Sequence[Sample], split: dict[str, list[int]],
                   device: torch.device = CPU, precision: str = "float32"
                   ) -> tuple[Callable[[list[Sample]], Any], int]:
    """The e3nn peer as the suite builds it for ``task`` (untrained) on ``device`` under
    ``precision``, and its parameter count."""
    from benchmarks.peers.e3nn_peer import _head_options, build_peer, make_graph_fn
    from benchmarks.peers.train_loop import GraphPredictor
    from tensorframe.registry import get_registry

    registry = get_registry().items["field"]
    fields = {name: registry[name] for name in task.targets}
    asr = [name for name, head in _head_options(task.heads).items() if head.get("acoustic_sum_rule") and name in fields]
    torch.manual_seed(0)
    model = build_peer(fields, samples, split["train"], task.cutoff, asr).to(device).eval()
    from tensorframe.graph.neighbors import DEFAULT_SHELL_TOLERANCE

    make_graph = make_graph_fn(task.cutoff, torch.float32, device, getattr(task, "max_neighbors", None),
                               getattr(task, "neighbor_shell_tolerance", DEFAULT_SHELL_TOLERANCE))
    predictor = GraphPredictor(model, fields, make_graph)

    def predict(batch: list[Sample]) -> Any:
        return peer_call(device, lambda: predictor.predict(batch, BATCH), precision)()

    return predict, num_parameters(model, trainable=True)


def time_task(task: Task, backbones: dict[str, dict[str, Any]], peers: Sequence[str], repeats: int,
              log: Callable[[str], Any] = print, reduced: bool = False, device: torch.device = CPU,
              precision: str = "float32") -> dict[str, Any]:
    """Inference speed of every model on ``task``'s test split; {"models": {name: record}, ...}.
    ``reduced`` times the reduced-mode subset (the CI smoke test); ``device`` and ``precision``:
    where and how the in-process models run."""
    ok, reason = task.available()
    if not ok:
        return {"skipped": reason}
    samples, split = load_task(task, reduced=reduced)
    test = [samples[i] for i in split["test"]]
    atoms = sum(s.num_atoms for s in test)
    predictors: dict[str, Callable[[list[Sample]], Any]] = {}
    params: dict[str, int] = {}
    for name, config in backbones.items():
        conservative = split_model_name(name)[1]
        if conservative and not any(head["name"] == "force" for head in task.heads):
            continue  # no forces to derive: the same model as the direct one
        predictors[name], params[name] = tensorframe_predictor(task, config, conservative, device, precision)
    if "e3nn" in peers:
        predictors["e3nn"], params["e3nn"] = e3nn_predictor(task, samples, split, device, precision)
    graph_stats = test_graph_sizes(task, test)
    models: dict[str, Any] = {}
    with torch.no_grad(), matmul_precision(precision, device):
        for name in list(predictors):  # a model that cannot run so (e3nn under bf16 autocast) is left out, with why
            failure = first_failure(predictors[name], test[:BATCH])
            if failure is not None:
                models[name] = {"kind": "peer" if name == "e3nn" else "backbone", "supported": False,
                                "reason": f"fails under {precision} on {device.type}: {failure}"}
                log(f"[{task.name}] {name}: {models[name]['reason']}")
                del predictors[name]
        # a warm-up pass each, then `repeats` rounds
        times = interleaved_rounds({name: lambda p=predict: p(test) for name, predict in predictors.items()}, repeats)
    for name, seconds in times.items():
        t = statistics.median(seconds)
        models[name] = {"kind": "peer" if name == "e3nn" else "backbone", "time_s": t, "times_s": seconds,
                        "structures_per_s": len(test) / t, "atoms_per_s": atoms / t, "num_parameters": params[name],
                        "how": "in-process, interleaved rounds"}
        log(f"[{task.name}] {name}: {len(test) / t:.1f} structures/s ({atoms / t:.0f} atoms/s)")
    for name in peers:
        if name != "e3nn" and (device.type != "cpu" or precision != "float32"):
            models[name] = {"kind": "peer", "supported": False,
                            "reason": f"its runner times float32 on the CPU only, not {precision} on {device.type}"}
        elif name != "e3nn":
            models[name] = subprocess_peer_speed(name, task, samples, split)
            log(f"[{task.name}] {name}: {models[name].get('structures_per_s', models[name].get('reason'))}")
    return {"num_test_structures": len(test), "num_test_atoms": atoms, **graph_stats, "models": models}


def first_failure(predict: Callable[[list[Sample]], Any], batch: list[Sample]) -> str | None:
    """None when ``predict(batch)`` runs, else its error in one line."""
    try:
        predict(batch)
    except (RuntimeError, TypeError, ValueError) as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


def test_graph_sizes(task: Task, samples: Sequence[Sample]) -> dict[str, float]:
    """Edges and triplets per atom of ``samples`` at the task's cutoffs: the work per atom of an
    edge model (the e3nn peer, MACE) and of a triplet model (ETGNN)."""
    from tensorframe.graph import build_graph

    edges = triplets = 0
    for start in range(0, len(samples), BATCH):
        graph = build_graph(samples[start : start + BATCH], task.cutoff, min(task.triplet_cutoff, task.cutoff))
        edges, triplets = edges + graph.num_edges, triplets + graph.num_triplets
    atoms = max(sum(s.num_atoms for s in samples), 1)
    return {"edges_per_atom": edges / atoms, "triplets_per_atom": triplets / atoms}


def subprocess_peer_speed(name: str, task: Task, samples: Sequence[Sample], split: dict[str, list[int]]
                          ) -> dict[str, Any]:
    """A peer in its own venv (MACE, PaiNN), timed by its runner through the adapter's
    ``time_peer(task, samples, split, out_dir)``; or why not."""
    time_peer, why = load_peer(name, "time_peer")
    if time_peer is None:
        return {"kind": "peer", "supported": False, "reason": f"not available: {why}"}
    out = RESULTS / "runs" / "speed" / task.name / name
    out.mkdir(parents=True, exist_ok=True)
    record = dict(time_peer(task, samples, split, out))
    if not record.get("supported", False):
        return {"kind": "peer", "supported": False, "reason": record.get("reason", "unsupported")}
    return {"kind": "peer", "structures_per_s": record["inference_structures_per_s"],
            "atoms_per_s": record["inference_atoms_per_s"], "num_parameters": record.get("num_parameters"),
            "how": f"{name}'s own venv, timed by its runner in a subprocess after the in-process models",
            **{k: v for k, v in record.items() if k in ("model", "versions", "device", "fields", "unsupported_fields")}}


def run_speed(task_names: Sequence[str], backbones: dict[str, dict[str, Any]], peers: Sequence[str], repeats: int,
              json_path: Path, log: Callable[[str], Any] = print, reduced: bool = False,
              merge: bool = False, device: torch.device = CPU, precision: str = "float32") -> dict[str, Any]:
    """Time every task; ``json_path`` is rewritten after each task. With ``merge`` an existing
    ``json_path`` keeps its other tasks; the tasks timed now replace theirs whole (every model of a
    task is timed in one pass) and carry this pass's ``environment``, device and precision."""
    check_precision(precision, device)
    torch.set_num_threads(1)
    env = environment()
    result: dict[str, Any] = {"environment": env, "protocol": PROTOCOL, "repeats": repeats, "device": str(device),
                              "precision": precision, "reduced": reduced, "backbone_configs": backbones, "tasks": {}}
    if merge and json_path.exists():
        old = json.loads(json_path.read_text())
        result = {**old, "backbone_configs": {**old.get("backbone_configs", {}), **backbones}}
    for name in task_names:
        result["tasks"][name] = {**time_task(TASKS[name], backbones, peers, repeats, log, reduced, device, precision),
                                 "environment": env, "device": str(device), "precision": precision}
        write_json(json_path, result)
    return result


def section_name(speed: dict[str, Any]) -> str:
    """The docs section of a speed JSON: ``speed-<device>-<precision>`` (e.g. speed-cuda-bf16)."""
    return f"speed-{torch.device(speed.get('device', 'cpu')).type}-{speed.get('precision', 'float32')}"


def render_speed(speed: dict[str, Any], json_path: str) -> str:
    """A speed JSON as a docs section: per task, every model's structures/s and atoms/s and its
    ratio to the e3nn peer's (a model that could not run shows why)."""
    from benchmarks.toolkit import machine_line, markdown_table, written_by

    env = speed["environment"]
    device, precision = speed.get("device", "cpu"), speed.get("precision", "float32")
    gpu = f" ({env['cuda']})" if device.startswith("cuda") and env.get("cuda") else ""
    lines = [f"## Inference speed side by side: {device}, {precision}", "",
             written_by("python -m benchmarks speed", env, json_path), "",
             f"- Device: **{device}**{gpu}; "
             f"precision **{precision}** (benchmarks/precision.py).", machine_line(env, cuda=True),
             f"- Protocol: {speed['protocol']}; {speed['repeats']} rounds.", ""]
    rows = []
    for task, record in speed["tasks"].items():
        if "skipped" in record:
            rows.append([task, "–", f"skipped: {record['skipped']}", "", "", ""])
            continue
        peer = record["models"].get("e3nn", {}).get("structures_per_s")
        for name, model in record["models"].items():
            rate = model.get("structures_per_s")
            if rate is None:
                rows.append([task, name, "–", "–", "–", model.get("reason", "not timed")])
                continue
            ratio = f"{rate / peer:.2f}x" if peer and name != "e3nn" else "–"
            rows.append([task, name, f"{rate:.3g}", f"{model['atoms_per_s']:.3g}", ratio, ""])
    lines.append(markdown_table(["task", "model", "structures/s", "atoms/s", "vs e3nn", "note"], rows))
    return "\n".join(lines)


def speeds_for(speed: dict[str, Any] | None, task: str) -> dict[str, float] | None:
    """{model: structures/s} of ``task`` from a speed JSON, or None."""
    if not speed or task not in speed.get("tasks", {}):
        return None
    models = speed["tasks"][task].get("models", {})
    return {name: r["structures_per_s"] for name, r in models.items() if r.get("structures_per_s")}
