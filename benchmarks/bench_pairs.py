"""Dense pair search for small molecules against vesin (issue 13, item 3).

Structures with no periodic direction and at most ``DENSE_MAX_ATOMS`` atoms get their pairs from
one numpy distance matrix (:func:`tensorframe.graph.neighbors.find_pairs`; the small molecules of
a batch share one pass, :func:`~tensorframe.graph.neighbors.small_molecule_neighbor_lists`). Two
measurements,
both side by side in this process (:func:`benchmarks.toolkit.interleaved_rounds`, alternating):

1. one pair search (cutoff 5 Å, full list) on random molecules of growing size, dense against
   vesin: where the threshold belongs;
2. per task, etgnn-lean ``predict`` (batch 16, the whole test split, seeded weights) and graphs
   plus structure checks alone, with the dense path off (``DENSE_MAX_ATOMS = 0``: every search
   through vesin, the code before) and on. The predictions must be identical.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_pairs`` (about two minutes); writes
``benchmarks/results/pairs.json``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import vesin

from benchmarks.suite import BACKBONES
from benchmarks.tasks import TASKS, load_task
from benchmarks.toolkit import RESULTS, environment, interleaved_rounds, seeded_model, write_json
from tensorframe.graph import neighbors

SIZES = (5, 10, 20, 32, 40, 64, 100)
TASK_NAMES = ("default-molecules", "combustion-forces", "tensoap-clusters")
BACKBONE = "etgnn-lean"
BATCH = 16
CUTOFF = 5.0


@contextmanager
def dense_limit(limit: int) -> Iterator[None]:
    """Within the block, molecules of at most ``limit`` atoms use the dense path (0: none)."""
    saved, neighbors.DENSE_MAX_ATOMS = neighbors.DENSE_MAX_ATOMS, limit
    try:
        yield
    finally:
        neighbors.DENSE_MAX_ATOMS = saved


def search_rows(sizes: Sequence[int], calls: int, repeats: int) -> list[dict[str, Any]]:
    """Microseconds per pair search, dense against vesin, on random molecules (about 12 Å^3 per atom)."""
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        positions = rng.uniform(0.0, (12.0 * size) ** (1.0 / 3.0), (size, 3))

        def dense(positions: np.ndarray = positions) -> None:
            for _ in range(calls):
                neighbors._dense_pairs(positions, CUTOFF, True)

        def cell_list(positions: np.ndarray = positions) -> None:
            for _ in range(calls):
                vesin.NeighborList(cutoff=CUTOFF, full_list=True).compute(
                    points=positions, box=np.zeros((3, 3)), periodic=[False] * 3, quantities="ijSd")

        times = interleaved_rounds({"dense": dense, "vesin": cell_list}, repeats, alternate=True)
        dense_us, vesin_us = (statistics.median(times[k]) / calls * 1e6 for k in ("dense", "vesin"))
        rows.append({"atoms": size, "dense_us": round(dense_us, 1), "vesin_us": round(vesin_us, 1),
                     "speedup": round(vesin_us / dense_us, 2), "dense_used": size <= neighbors.DENSE_MAX_ATOMS})
    return rows


def task_row(name: str, repeats: int, structures: int | None) -> dict[str, Any]:
    """``predict`` and graphs + checks on a task's test split, vesin only against dense pairs."""
    task = TASKS[name]
    samples, split = load_task(task, reduced=False)
    test = [samples[i] for i in split["test"]][:structures]
    model = seeded_model(task.cutoff, min(task.triplet_cutoff, task.cutoff), BACKBONES[BACKBONE], task.heads).eval()
    limit = neighbors.DENSE_MAX_ATOMS

    def predict(dense: bool) -> Callable[[], Any]:
        def call() -> Any:
            with dense_limit(limit if dense else 0):
                return model.predict(test, batch_size=BATCH)
        return call

    def graphs(dense: bool) -> Callable[[], Any]:
        def call() -> None:
            with dense_limit(limit if dense else 0):
                model.checked_samples(test)
                for start in range(0, len(test), BATCH):
                    model.make_graph(test[start:start + BATCH])
        return call

    before, after = predict(False)(), predict(True)()
    identical = all(np.array_equal(a[k], b[k]) for a, b in zip(before, after, strict=True) for k in a)
    times = interleaved_rounds({"vesin predict": predict(False), "dense predict": predict(True),
                                "vesin graphs": graphs(False), "dense graphs": graphs(True)}, repeats, alternate=True)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {
        "task": name, "structures": len(test), "max_atoms": max(s.num_atoms for s in test),
        "graphs_and_checks_ms": {"vesin": round(ms["vesin graphs"], 2), "dense": round(ms["dense graphs"], 2),
                                 "speedup": round(ms["vesin graphs"] / ms["dense graphs"], 3)},
        "predict_ms": {"vesin": round(ms["vesin predict"], 2), "dense": round(ms["dense predict"], 2),
                       "speedup": round(ms["vesin predict"] / ms["dense predict"], 3)},
        "identical_predictions": identical,
    }


def print_table(result: dict[str, Any]) -> None:
    print("atoms   dense us   vesin us   speed-up")
    for row in result["pair_search"]:
        print(f"{row['atoms']:5d} {row['dense_us']:10.1f} {row['vesin_us']:10.1f} {row['speedup']:9.2f}x")
    for row in result["tasks"]:
        g, p = row["graphs_and_checks_ms"], row["predict_ms"]
        print(f"{row['task']}: graphs+checks {g['vesin']} -> {g['dense']} ms ({g['speedup']}x), "
              f"predict {p['vesin']} -> {p['dense']} ms ({p['speedup']}x), identical {row['identical_predictions']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_pairs", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200, help="pair searches per timed call")
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--tasks", nargs="*", default=list(TASK_NAMES))
    parser.add_argument("--structures", type=int, default=None, help="at most this many test structures per task")
    parser.add_argument("--output", type=Path, default=RESULTS / "pairs.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    result = {
        "environment": environment(),
        "setup": {"cutoff_search": CUTOFF, "backbone": BACKBONE, "batch_size": BATCH, "repeats": args.repeats,
                  "dense_max_atoms": neighbors.DENSE_MAX_ATOMS},
        "pair_search": search_rows(args.sizes, args.calls, args.repeats),
        "tasks": [task_row(name, args.repeats, args.structures) for name in args.tasks if TASKS[name].available()[0]],
    }
    write_json(args.output, result)
    print_table(result)


if __name__ == "__main__":
    main()
