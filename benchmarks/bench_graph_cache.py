"""Training throughput with and without the graph cache and data-loader workers (issue 13,
item 2), side by side.

On a subset of the becs-eps task (e3nn crystal BECs and dielectric tensors) at the paper's
graph settings (cutoff 6 Å, triplet cutoff 4 Å, max_neighbors 32), for ETGNN (the suite's
size) and the small reference backbone: training steps as the trainer takes them (batches
from :func:`tensorframe.train.loader.iterate_batches`, forward, euclidean loss, backward,
AdamW step), one model per mode from the same seed, in the modes of :data:`MODES`: graphs
rebuilt every batch, the memory cache, the disk cache, and the memory cache with one
data-loader worker. A warm-up epoch per mode (it fills the memory cache), then the timed
epochs alternate between the modes, so all see the same machine state; the losses of all
modes must be identical. Also: building the graphs of one epoch's batches vs joining them
from the filled memory cache and from the disk store (and the store's build time and size),
and the cache's bytes for the whole becs-eps set.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_graph_cache`` (about a minute);
writes ``benchmarks/results/graph_cache.json``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.suite import BACKBONES
from benchmarks.tasks import TASKS, load_task
from benchmarks.toolkit import RESULTS, environment, seeded_model, write_json
from tensorframe.graph import build_graph
from tensorframe.graph.cache import GraphCache, GraphRecipe, estimated_cache_bytes
from tensorframe.train.loader import BatchBuilder, iterate_batches
from tensorframe.train.loss import batch_loss
from tensorframe.types import Sample

CUTOFF, TRIPLET_CUTOFF, MAX_NEIGHBORS = 6.0, 4.0, 32
TASK = "becs-eps"


def _batches(count: int, size: int) -> list[list[int]]:
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


MODES = {
    "built": (None, 0),
    "cached": ("memory", 0),
    "disk": ("disk", 0),
    "cached+1 worker": ("memory", 1),
}
"""Training modes: (graph cache, data-loader workers). ``built`` rebuilds every batch."""


class TrainingRun:
    """One model, optimizer and graph cache (none, in memory or on disk under ``folder``),
    stepping through epochs of ``samples`` with batches from
    :func:`tensorframe.train.loader.iterate_batches` (``workers`` processes, or in process)."""

    def __init__(self, backbone: dict[str, Any], samples: Sequence[Sample], batch_size: int, cache: str | None,
                 workers: int, folder: Path) -> None:
        task = TASKS[TASK]
        self.model = seeded_model(CUTOFF, TRIPLET_CUTOFF, backbone, task.heads, max_neighbors=MAX_NEIGHBORS)
        self.targets = dict(task.targets)
        fields = {name: self.model.fields[name] for name in self.targets}
        self.fields = fields
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.batches = _batches(len(samples), batch_size)
        graph_cache = {None: None, "memory": GraphCache(), "disk": GraphCache(folder)}[cache]
        self.builder = BatchBuilder(samples, self.model.graph_recipe(), fields, tuple(self.targets), torch.float32,
                                    graph_cache)
        if graph_cache is not None and (cache == "disk" or workers):  # as the trainer does
            graph_cache.prepare(samples, list(range(len(samples))), self.builder.recipe)
        self.workers = workers
        self.losses: list[float] = []

    def epoch(self) -> float:
        """Seconds for one epoch of training steps."""
        started = time.perf_counter()
        for graph, labels in iterate_batches(self.builder, self.batches, torch.device("cpu"), self.workers):
            self.optimizer.zero_grad(set_to_none=True)
            loss, _ = batch_loss(self.model(graph), labels, self.fields, self.targets,
                                 dict.fromkeys(self.targets, 1.0), graph.atoms_per_structure, "euclidean")
            loss.backward()
            self.optimizer.step()
            self.losses.append(float(loss.detach()))
        return time.perf_counter() - started


def training_throughput(backbone: dict[str, Any], samples: Sequence[Sample], batch_size: int,
                        epochs: int, folder: Path) -> dict[str, Any]:
    """Structures/s of training in each of :data:`MODES` (warm-up epoch, then alternating epochs)."""
    runs = {mode: TrainingRun(backbone, samples, batch_size, cache, workers, folder)
            for mode, (cache, workers) in MODES.items()}
    warmup = {mode: run.epoch() for mode, run in runs.items()}
    seconds: dict[str, list[float]] = {mode: [] for mode in runs}
    for _ in range(epochs):
        for mode, run in runs.items():
            seconds[mode].append(run.epoch())
    result: dict[str, Any] = {"warmup_epoch_s": warmup}
    for mode in runs:
        result[mode] = {"epoch_s": seconds[mode],
                        "structures_per_s": len(samples) / statistics.median(seconds[mode])}
    built = result["built"]["structures_per_s"]
    result["speedup"] = result["cached"]["structures_per_s"] / built
    result["speedups"] = {mode: result[mode]["structures_per_s"] / built for mode in runs}
    result["identical_losses"] = all(run.losses == runs["built"].losses for run in runs.values())
    return result


def graph_only(samples: Sequence[Sample], batch_size: int, repeats: int) -> dict[str, Any]:
    """Seconds per epoch of graphs: built from scratch vs collated from the filled cache (float32)."""
    batches = _batches(len(samples), batch_size)
    cache = GraphCache()
    settings = {"cutoff": CUTOFF, "triplet_cutoff": TRIPLET_CUTOFF, "max_neighbors": MAX_NEIGHBORS}
    keys = list(range(len(samples)))
    with tempfile.TemporaryDirectory() as folder:
        store = GraphCache(folder)
        store_started = time.perf_counter()
        store.prepare(samples, keys, GraphRecipe(**settings))
        store_s = time.perf_counter() - store_started
        store_bytes = store.nbytes
        disk_s = []
        for _ in range(repeats):
            started = time.perf_counter()
            for batch in batches:
                store.graph([samples[k] for k in batch], batch, **settings)
            disk_s.append(time.perf_counter() - started)

    def built() -> None:
        for keys in batches:
            build_graph([samples[k] for k in keys], **settings)

    def cached() -> None:
        for keys in batches:
            cache.graph([samples[k] for k in keys], keys, **settings)

    built()  # warm-up (first calls of vesin and torch)
    fill_started = time.perf_counter()
    cached()
    fill_s = time.perf_counter() - fill_started
    times: dict[str, list[float]] = {"built": [], "cached": []}
    for _ in range(repeats):
        for name, call in (("built", built), ("cached", cached)):
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"batches": len(batches), "fill_s": fill_s, "built_epoch_s": medians["built"],
            "cached_epoch_s": medians["cached"], "speedup": medians["built"] / medians["cached"],
            "disk_store_build_s": store_s, "disk_store_bytes": store_bytes,
            "disk_epoch_s": statistics.median(disk_s)}


def cache_memory(samples: Sequence[Sample]) -> dict[str, Any]:
    """Bytes of the cache of the whole set (float32 masks), measured and estimated."""
    cache = GraphCache()
    for keys in _batches(len(samples), 16):
        cache.graph([samples[k] for k in keys], keys, CUTOFF, TRIPLET_CUTOFF, MAX_NEIGHBORS)
    edges = sum(t.idx_i.shape[0] for t in cache.topologies.values())
    triplets = sum(t.idx_kj.shape[0] for t in cache.topologies.values())
    return {"structures": len(samples), "atoms": int(sum(s.num_atoms for s in samples)), "edges": edges,
            "triplets": triplets, "bytes": cache.nbytes,
            "estimated_bytes": estimated_cache_bytes(samples, CUTOFF, TRIPLET_CUTOFF, MAX_NEIGHBORS)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_graph_cache", description=__doc__.split("\n")[0])
    parser.add_argument("--structures", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs per mode, after a warm-up epoch")
    parser.add_argument("--backbones", nargs="+", default=["etgnn", "reference"], choices=sorted(BACKBONES))
    parser.add_argument("--output", default=str(RESULTS / "graph_cache.json"))
    args = parser.parse_args(argv)
    samples, split = load_task(TASKS[TASK], reduced=False)
    subset = [samples[i] for i in split["train"][: args.structures]]
    result: dict[str, Any] = {
        "environment": environment(),
        "task": TASK,
        "settings": {"cutoff": CUTOFF, "triplet_cutoff": TRIPLET_CUTOFF, "max_neighbors": MAX_NEIGHBORS,
                     "structures": len(subset), "mean_atoms": float(np.mean([s.num_atoms for s in subset])),
                     "batch_size": args.batch_size, "timed_epochs": args.epochs, "dtype": "float32"},
        "graphs_only": graph_only(subset, args.batch_size, repeats=3),
        "training": {},
        "cache_memory_full_set": cache_memory(samples),
    }
    for name in args.backbones:
        with tempfile.TemporaryDirectory() as folder:
            result["training"][name] = {"backbone": BACKBONES[name],
                                        **training_throughput(BACKBONES[name], subset, args.batch_size, args.epochs,
                                                              Path(folder))}
        print(name, {k: v for k, v in result["training"][name].items() if k != "backbone"}, flush=True)
    print("graphs only", result["graphs_only"])
    print("cache memory", result["cache_memory_full_set"])
    write_json(Path(args.output), result)
    return result


if __name__ == "__main__":
    main()
