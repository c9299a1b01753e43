"""Core scaling benchmark: cost of graph construction, backbone, each head and the whole model
against the number of atoms, for periodic crystals at fixed density.

    python -m benchmarks.bench_core [--quick] [--sizes 8 64 ...] [--repeats 5] [--warmup 1]
                                    [--out benchmarks/results] [--docs docs/benchmarks.md | --no-docs]

Structure: a rattled simple-cubic supercell with rock-salt ordering of Na and Cl
(a = 2.5 Å, 0.064 atoms/Å^3, Gaussian rattle 0.1 Å), cutoff 5 Å, triplet cutoff 4 Å
(about 29 edges and 310 triplets per atom). Each requested size becomes the nearest cube
``n**3`` (n >= 2). Torch stages run in float32 under ``torch.inference_mode``. Writes
``<out>/core.json`` and the section between ``<!-- core:start -->`` and ``<!-- core:end -->``
of the docs file. On a machine with CUDA, every stage is also timed on the GPU (the vesin
neighbour list always runs on the CPU).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    CUDA_MEMORY_METHOD,
    REPO_ROOT,
    cpu_memory_method,
    environment,
    loglog_slope,
    markdown_table,
    peak_memory_mb,
    replace_section,
    time_call,
    write_json,
)
from tensorframe import build_model, get_registry
from tensorframe.graph import build_graph, build_triplets, neighbor_list
from tensorframe.model import TensorModel
from tensorframe.types import Sample

LATTICE = 2.5  # Å, simple cubic: 1 / 2.5**3 = 0.064 atoms/Å^3
RATTLE = 0.1  # Å, standard deviation of the Gaussian displacement of each atom
CUTOFF = 5.0
TRIPLET_CUTOFF = 4.0
DEFAULT_SIZES = (8, 64, 216, 512, 1000, 2197, 4096)
QUICK_SIZES = (8, 64, 512)
LARGE_ATOMS = 200  # slopes are also fitted over sizes from here on, where fixed overheads fade
BACKBONES = ("reference", "etgnn")  # etgnn only when a plugin registers it
HEADS: dict[str, dict[str, Any]] = {
    "force": {"name": "force"},
    "born": {"name": "born"},
    "dielectric": {"name": "dielectric"},
    "piezo": {"name": "piezo"},
    # The general head with its default words, on a registered rank-3 field (ijk=ikj, structure level).
    "rank3": {"name": "tensor", "field": "hyperpolarizability"},
}
HEAD_FIELDS = {"force": "forces", "born": "born_charges", "dielectric": "dielectric", "piezo": "piezo", "rank3": "hyperpolarizability"}
STAGE_LABELS = {
    "neighbor_list": "neighbour list",
    "build_triplets": "triplets",
    "build_graph": "build_graph",
    "head:rank3": "head tensor (rank 3)",
}


def rocksalt_supercell(n: int, seed: int = 0) -> Sample:
    """``n**3`` atoms on a rattled simple-cubic lattice, Na/Cl alternating (rock-salt order for even n).

    Shapes: -> Sample with numbers (n**3,), positions (n**3, 3), cell (3, 3)
    """
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    positions = grid * LATTICE + rng.normal(scale=RATTLE, size=grid.shape)
    numbers = np.where(grid.sum(axis=1) % 2 == 0, 11, 17)
    return Sample(numbers, positions, np.eye(3) * n * LATTICE, np.ones(3, dtype=bool))


def supercell_edge(size: int) -> int:
    """The cube ``n`` whose ``n**3`` atoms are closest to ``size`` (at least 2)."""
    return max(2, round(size ** (1 / 3)))


def available_backbones() -> list[str]:
    registered = get_registry().items["backbone"]
    return [name for name in BACKBONES if name in registered]


def make_model(backbone: str, device: torch.device) -> TensorModel:
    torch.manual_seed(0)
    config = {"cutoff": CUTOFF, "triplet_cutoff": TRIPLET_CUTOFF, "backbone": {"name": backbone},
              "heads": list(HEADS.values())}
    return build_model(config).to(device).eval()


def stages(sample: Sample, device: torch.device, models: dict[str, TensorModel]) -> dict[str, Callable[[], Any]]:
    """The timed calls for one structure, by stage name (inputs of each stage prepared here)."""
    graph = build_graph([sample], CUTOFF, TRIPLET_CUTOFF, device=device)
    in_triplets = graph.edge_len < TRIPLET_CUTOFF
    calls: dict[str, Callable[[], Any]] = {
        "neighbor_list": lambda: neighbor_list(sample, CUTOFF),
        "build_triplets": lambda: build_triplets(graph.idx_i, graph.idx_j, graph.cell_shift, graph.num_nodes,
                                                 in_triplets),
        "build_graph": lambda: build_graph([sample], CUTOFF, TRIPLET_CUTOFF, device=device),
    }
    for name, model in models.items():
        calls[f"backbone:{name}"] = lambda model=model: model.backbone(graph)
        if model.lifting is not None:
            raw = model.backbone(graph)
            calls[f"lifting:{name}"] = lambda model=model, raw=raw: model.lifting(graph, raw)
    reference = models["reference"]
    features = reference.features(graph)
    for head in HEADS:
        module = reference.heads[HEAD_FIELDS[head]]
        calls[f"head:{head}"] = lambda module=module: module(graph, features)
    for name, model in models.items():
        calls[f"model:{name}"] = lambda model=model: model(graph)
    calls["_graph"] = lambda: graph  # not timed: carries the counts
    return calls


def bench_size(size: int, device: torch.device, models: dict[str, TensorModel], repeats: int, warmup: int) -> dict:
    """Times and peak memory of every stage for the supercell nearest ``size`` atoms."""
    n = supercell_edge(size)
    sample = rocksalt_supercell(n)
    with torch.inference_mode():
        calls = stages(sample, device, models)
        graph = calls.pop("_graph")()
        row: dict[str, Any] = {
            "requested": size, "supercell": [n, n, n], "atoms": sample.num_atoms,
            "edges": graph.num_edges, "triplets": graph.num_triplets, "stages": {},
        }
        for name, call in calls.items():
            timing = time_call(call, device, repeats, warmup)
            row["stages"][name] = {
                "median_ms": timing.median_ms, "min_ms": timing.min_ms, "max_ms": timing.max_ms,
                "repeats": timing.repeats, "per_atom_us": 1e3 * timing.median_ms / sample.num_atoms,
                "peak_mb": peak_memory_mb(call, device),
            }
    medians = {name: stage["median_ms"] for name, stage in row["stages"].items()}
    row["graph_over_model"] = {
        name: medians["build_graph"] / medians[f"model:{name}"] for name in models
    }
    return row


def scaling(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per stage: cost per atom at each size and log-log slopes of time vs atoms (1 = linear)."""
    atoms = [r["atoms"] for r in rows]
    out = {}
    for name in rows[0]["stages"]:
        times = [r["stages"][name]["median_ms"] for r in rows]
        large = [(a, t) for a, t in zip(atoms, times, strict=True) if a >= LARGE_ATOMS]
        out[name] = {
            "per_atom_us": [r["stages"][name]["per_atom_us"] for r in rows],
            "slope": loglog_slope(atoms, times),
            "slope_large": loglog_slope([a for a, _ in large], [t for _, t in large]),
        }
    return out


def run(sizes: Sequence[int], repeats: int, warmup: int, devices: Sequence[str]) -> dict[str, Any]:
    env = environment()
    backbones = available_backbones()
    runs = []
    for device_name in devices:
        device = torch.device(device_name)
        models = {name: make_model(name, device) for name in backbones}
        rows = []
        for size in sizes:
            print(f"[bench_core] {device_name}: {size} atoms requested", file=sys.stderr, flush=True)
            rows.append(bench_size(size, device, models, repeats, warmup))
        label = f"cuda ({env['cuda']})" if device.type == "cuda" else f"cpu ({env['cpu']})"
        runs.append({
            "device": device_name, "label": label,
            "memory_method": CUDA_MEMORY_METHOD if device.type == "cuda" else cpu_memory_method(),
            "sizes": rows, "scaling": scaling(rows),
        })
    return {
        "benchmark": "core",
        "environment": env,
        "settings": {
            "structure": "rattled simple-cubic supercell, Na/Cl alternating (rock-salt order for even n)",
            "lattice_A": LATTICE, "density_per_A3": 1 / LATTICE**3, "rattle_A": RATTLE,
            "cutoff_A": CUTOFF, "triplet_cutoff_A": TRIPLET_CUTOFF, "dtype": "float32",
            "mode": "torch.inference_mode (forward only)",
            "repeats": repeats, "warmup": warmup, "statistic": "median",
            "backbones": backbones, "heads": HEADS,
            "heads_timed_on": "reference backbone features (triplets lifted from edges)",
            "cuda": "timed" if "cuda" in devices else "CPU only: torch.cuda.is_available() is False",
            "large_atoms": LARGE_ATOMS,
        },
        "runs": runs,
    }


def _label(stage: str) -> str:
    if stage in STAGE_LABELS:
        return STAGE_LABELS[stage]
    kind, _, name = stage.partition(":")
    return f"{kind} {name}"


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"


def render_markdown(result: dict[str, Any]) -> str:
    """The docs section: environment, then per device the times, per-atom cost with slopes, memory."""
    env, settings = result["environment"], result["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    lines = [
        "## Core: graph and head cost",
        "",
        f"Written by `python -m benchmarks.bench_core` on {env['date']} (commit {env['git_commit'] or 'unknown'}); "
        "do not edit by hand. Raw numbers: `benchmarks/results/core.json`.",
        "",
        f"- Machine: {env['cpu']}, {env['cpu_count']} logical CPUs, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, "
        f"torch threads {env['torch_num_threads']}; {env['platform']}, Python {env['python']}; {versions}.",
        f"- CUDA: {settings['cuda']}." if env["cuda"] is None else f"- CUDA: {env['cuda']} (timed with synchronize).",
        f"- Structure: {settings['structure']}, a = {settings['lattice_A']} Å "
        f"({settings['density_per_A3']:.3f} atoms/Å³), rattle {settings['rattle_A']} Å; cutoff {settings['cutoff_A']} Å, "
        f"triplet cutoff {settings['triplet_cutoff_A']} Å.",
        f"- Torch stages: {settings['dtype']}, {settings['mode']}; heads timed alone on {settings['heads_timed_on']}; "
        f"`model` = backbone + lifting + all five heads. Times: median of {settings['repeats']} calls after "
        f"{settings['warmup']} warm-up call(s).",
    ]
    for run in result["runs"]:
        rows = run["sizes"]
        names = list(rows[0]["stages"])
        backbones = [n.split(":", 1)[1] for n in names if n.startswith("model:")]
        lines += ["", f"### {run['label']}", "", "Median time (ms):", ""]
        header = ["atoms", "edges", "triplets", *(_label(n) for n in names),
                  *(f"build_graph / model {b}" for b in backbones)]
        table = [[r["atoms"], r["edges"], r["triplets"], *(_fmt(r["stages"][n]["median_ms"]) for n in names),
                  *(_fmt(r["graph_over_model"][b], 2) for b in backbones)] for r in rows]
        lines += [markdown_table(header, table), ""]
        atoms = [r["atoms"] for r in rows]
        lines += [f"Cost per atom (µs) and fitted slope of log(time) against log(atoms) (1 = linear; "
                  f"'≥ {settings['large_atoms']}' fits only sizes from {settings['large_atoms']} atoms on):", ""]
        header = ["stage", *(f"{a} atoms" for a in atoms), "slope (all)", f"slope (≥ {settings['large_atoms']})"]
        table = [[_label(n), *(_fmt(v) for v in run["scaling"][n]["per_atom_us"]),
                  _fmt(run["scaling"][n]["slope"], 2), _fmt(run["scaling"][n]["slope_large"], 2)] for n in names]
        lines += [markdown_table(header, table), ""]
        lines += [f"Peak memory growth during one call (MiB; {run['memory_method']}):", ""]
        header = ["atoms", *(_label(n) for n in names)]
        table = [[r["atoms"], *(_fmt(r["stages"][n]["peak_mb"]) for n in names)] for r in rows]
        lines += [markdown_table(header, table)]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_core", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, 3 repeats (a smoke run)")
    parser.add_argument("--sizes", type=int, nargs="+", help=f"atoms per structure (default {DEFAULT_SIZES})")
    parser.add_argument("--repeats", type=int, help="timed calls per stage (default 5, quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results", help="folder for core.json")
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md", help="markdown file to update")
    parser.add_argument("--no-docs", action="store_true", help="do not touch the markdown file")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when it is available")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if any(s < 1 for s in args.sizes):
        parser.error(f"--sizes: expected positive numbers of atoms, got {args.sizes}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    result = run(args.sizes, args.repeats, args.warmup, devices)
    write_json(args.out / "core.json", result)
    markdown = render_markdown(result)
    if not args.no_docs:
        replace_section(args.docs, "core", markdown)
    print(markdown)
    return result


if __name__ == "__main__":
    main()
