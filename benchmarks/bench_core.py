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
from typing import Any

import numpy as np
import torch

from benchmarks.toolkit import (
    add_report_arguments,
    environment,
    fmt,
    machine_line,
    markdown_table,
    memory_method,
    peak_memory_mb,
    publish,
    quick_defaults,
    seeded_model,
    size_parser,
    slopes,
    time_call,
    written_by,
)
from tensorframe import get_registry
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
    return seeded_model(CUTOFF, TRIPLET_CUTOFF, {"name": backbone}, list(HEADS.values())).to(device).eval()


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
    return {name: {"per_atom_us": [r["stages"][name]["per_atom_us"] for r in rows],
                   **slopes(atoms, [r["stages"][name]["median_ms"] for r in rows], LARGE_ATOMS)}
            for name in rows[0]["stages"]}


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
            "memory_method": memory_method(device),
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


def render_markdown(result: dict[str, Any]) -> str:
    """The docs section: environment, then per device the times, per-atom cost with slopes, memory."""
    env, settings = result["environment"], result["settings"]
    lines = [
        "## Core: graph and head cost",
        "",
        written_by("python -m benchmarks.bench_core", env, "benchmarks/results/core.json"),
        "",
        machine_line(env),
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
        table = [[r["atoms"], r["edges"], r["triplets"], *(fmt(r["stages"][n]["median_ms"]) for n in names),
                  *(fmt(r["graph_over_model"][b], 2) for b in backbones)] for r in rows]
        lines += [markdown_table(header, table), ""]
        atoms = [r["atoms"] for r in rows]
        lines += [f"Cost per atom (µs) and fitted slope of log(time) against log(atoms) (1 = linear; "
                  f"'≥ {settings['large_atoms']}' fits only sizes from {settings['large_atoms']} atoms on):", ""]
        header = ["stage", *(f"{a} atoms" for a in atoms), "slope (all)", f"slope (≥ {settings['large_atoms']})"]
        table = [[_label(n), *(fmt(v) for v in run["scaling"][n]["per_atom_us"]),
                  fmt(run["scaling"][n]["slope"], 2), fmt(run["scaling"][n]["slope_large"], 2)] for n in names]
        lines += [markdown_table(header, table), ""]
        lines += [f"Peak memory growth during one call (MiB; {run['memory_method']}):", ""]
        header = ["atoms", *(_label(n) for n in names)]
        table = [[r["atoms"], *(fmt(r["stages"][n]["peak_mb"]) for n in names)] for r in rows]
        lines += [markdown_table(header, table)]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = size_parser("python -m benchmarks.bench_core", __doc__, f"sizes {QUICK_SIZES}, 3 repeats (a smoke run)",
                         DEFAULT_SIZES, "timed calls per stage (default 5, quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    add_report_arguments(parser, "core.json")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when it is available")
    args = quick_defaults(parser.parse_args(argv), sizes=(QUICK_SIZES, DEFAULT_SIZES), repeats=(3, 5))
    if any(s < 1 for s in args.sizes):
        parser.error(f"--sizes: expected positive numbers of atoms, got {args.sizes}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    result = run(args.sizes, args.repeats, args.warmup, devices)
    publish(result, args.out / "core.json", render_markdown(result), "core", None if args.no_docs else args.docs)
    return result


if __name__ == "__main__":
    main()
