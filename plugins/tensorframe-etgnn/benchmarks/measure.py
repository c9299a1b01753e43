"""Time and peak memory of the ETGNN backbone on a batch of ~60-atom crystals (not a test).

    OMP_NUM_THREADS=1 python plugins/tensorframe-etgnn/benchmarks/measure.py [--mode forward|train] [--batch 8]

Each mode runs in its own process, so ``ru_maxrss`` is that mode's peak resident memory.
The crystals are rattled 2x2x3 BaTiO3 perovskite supercells (60 atoms, a = 4.0 Å), with
the authors' cutoffs: 6 Å edges, 4 Å triplets.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def crystals(count: int, seed: int = 0) -> list:
    from tensorframe import Sample

    a = 4.0
    fractional = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    numbers = np.array([56, 22, 8, 8, 8])
    reps = np.array([2, 2, 3])
    shifts = np.array([[x, y, z] for x in range(2) for y in range(2) for z in range(3)])
    positions = ((fractional[None] + shifts[:, None]) * a).reshape(-1, 3)
    cell = np.diag(reps * a)
    rng = np.random.default_rng(seed)
    return [
        Sample(np.tile(numbers, len(shifts)), positions + rng.normal(0, 0.05, positions.shape), cell, np.ones(3, bool))
        for _ in range(count)
    ]


def run(mode: str, batch: int, max_neighbors: int | None, repeats: int, recompute: bool) -> None:
    from tensorframe_etgnn import ETGNNConfig, build_etgnn

    from tensorframe.graph.collate import build_graph
    from tensorframe.specs import GraphSettings

    torch.manual_seed(0)
    model = build_etgnn(ETGNNConfig(checkpoint=recompute), GraphSettings(6.0, 4.0, max_neighbors))
    graph = build_graph(crystals(batch), 6.0, 4.0, max_neighbors)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        if mode == "forward":
            with torch.no_grad():
                model(graph)
        else:
            out = model(graph)
            loss = out.node.square().mean() + out.edge.square().mean() + out.triplet.square().mean()
            loss.backward()
            model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{mode:8s} batch={batch} atoms={graph.num_nodes} edges={graph.num_edges} triplets={graph.num_triplets} "
        f"max_neighbors={max_neighbors} checkpoint={recompute} params={params} time={min(times):.2f}s (best of {repeats}) "
        f"peak_rss={peak:.0f} MiB (before the model ran: {base:.0f} MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["forward", "train", "both"], default="both")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-neighbors", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", action="store_true", help="recompute blocks in backward")
    args = parser.parse_args()
    if args.mode == "both":
        for mode in ("forward", "train"):
            command = [sys.executable, __file__, "--mode", mode, "--batch", str(args.batch), "--repeats", str(args.repeats)]
            if args.max_neighbors:
                command += ["--max-neighbors", str(args.max_neighbors)]
            if args.checkpoint:
                command += ["--checkpoint"]
            subprocess.run(command, check=True)
    else:
        run(args.mode, args.batch, args.max_neighbors, args.repeats, args.checkpoint)


if __name__ == "__main__":
    main()
