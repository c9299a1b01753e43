"""Backbone benchmark: forward and forward+backward time and peak memory of every registered
backbone, alone and under Born + dielectric + piezo heads, side by side with PyTorch
Geometric's DimeNet++ on the same edges and triplets.

    python -m benchmarks.bench_backbones [--quick] [--sizes 8 64 ...] [--repeats 3] [--out benchmarks/results]
                                         [--docs docs/benchmarks.md | --no-docs] [--in-process]

Structure: rattled cubic BaTiO3 perovskite supercells (a = 4.0 Å, Gaussian rattle 0.05 Å,
0.078 atoms/Å^3); each requested size becomes the ``n1 x n2 x n3`` supercell (n3 <= 2 n1) with
the closest number of atoms. Edges within 6 Å, triplets from edges within 4 Å (ETGNN's
cutoffs). float32, CPU, default sizes of each plugin's config.

Per size and *group* (a backbone, ETGNN with ``checkpoint: true``, or PyG DimeNet++), one fresh
subprocess (unless ``--in-process``) builds the graph and the model once and measures its cases:

- ``backbone``: the backbone alone; forward+backward loss = sum of the mean squares of its
  node, edge and (when present) triplet features, so every block, the triplet ones included,
  is in the backward pass.
- ``model``: backbone (+ triplet lifting for edge-only backbones) + born, dielectric and
  piezo heads; loss = sum of the mean squares of the three predictions.
- ``trunk`` (ETGNN only): ETGNN without its triplet embedding and triplet updates, i.e. its
  DimeNet++ part (basis, edge embedding, angular filters, edge updates, output); the triplet
  messages never feed the edge messages, so it returns the same node and edge features
  (checked). ``backbone - trunk`` is the cost of the triplet blocks, forward and backward.
- PyG DimeNet++ (hidden 128, int_emb 64, basis_emb 8, out_emb 256, 4 blocks, 7 spherical,
  6 radial, cutoff 6 Å): its own basis, embedding, interaction and output blocks, run on our
  edges and triplets (PyG's ``radius_graph``/``triplets`` need torch-cluster/torch-sparse and
  ignore periodic images), with distances and angles computed in its forward as PyG does.
  Measured on the same 4 Å triplet set as ETGNN and on the full 6 Å triplet set that
  DimeNet++ would build itself (skipped above ``--max-pyg-triplets``); loss = mean square of
  its node output.

Forward runs in eval mode under ``torch.no_grad``. ETGNN's forward is also split by module
forward hooks into trunk and triplet blocks, and one forward+backward of ETGNN and of PyG
DimeNet++ is profiled (``torch.profiler``, top operators by self CPU time). Writes
``<out>/backbones.json`` and the section between ``<!-- backbones:start -->`` and
``<!-- backbones:end -->`` of the docs file.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.common import (
    REPO_ROOT,
    cpu_memory_method,
    environment,
    markdown_table,
    peak_memory_mb,
    replace_section,
    write_json,
)
from tensorframe import build_model, get_registry
from tensorframe.graph import build_graph, neighbor_list
from tensorframe.types import Graph, InvariantFeatures, Sample

LATTICE = 4.0  # Å, cubic BaTiO3
RATTLE = 0.05  # Å, standard deviation of the Gaussian displacement of each atom
CUTOFF = 6.0
TRIPLET_CUTOFF = 4.0
PEROVSKITE_FRACTIONAL = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
PEROVSKITE_NUMBERS = np.array([56, 22, 8, 8, 8])  # Ba, Ti, O, O, O
DEFAULT_SIZES = (8, 64, 216, 512, 1000, 2000)
QUICK_SIZES = (8, 64)
PROFILE_SIZE = 512  # atoms requested for the profiled run (the nearest benchmarked size)
HEADS = ({"name": "born"}, {"name": "dielectric"}, {"name": "piezo"})
PYG_GROUPS = {"pyg_dimenetpp_4A": TRIPLET_CUTOFF, "pyg_dimenetpp_6A": CUTOFF}  # group -> triplet cutoff
PYG_CONFIG = {
    "hidden_channels": 128, "out_channels": 128, "num_blocks": 4, "int_emb_size": 64, "basis_emb_size": 8,
    "out_emb_channels": 256, "num_spherical": 7, "num_radial": 6, "cutoff": CUTOFF,
    "output_initializer": "glorot_orthogonal",  # PyG's default zero output layer would make the loss constant
}
BACKBONE_ORDER = ("reference", "schnet", "cgcnn", "etgnn")
TRUNK_PARTS = ("basis", "edge embedding", "angular filters", "edge updates", "output")
TRIPLET_PARTS = ("triplet embedding", "triplet updates")
GROUP_LABELS = {
    "etgnn_checkpoint": "etgnn (checkpoint: true)",
    "pyg_dimenetpp_4A": "PyG DimeNet++, 4 Å triplets (ETGNN's set)",
    "pyg_dimenetpp_6A": "PyG DimeNet++, 6 Å triplets (all edges)",
}


# --------------------------------------------------------------------------- structures


def supercell_reps(size: int) -> tuple[int, int, int]:
    """The supercell ``(n1, n2, n3)``, ``n1 <= n2 <= n3 <= 2 n1``, of the 5-atom perovskite cell
    whose atom count is closest to ``size`` (ties: the more cubic, then the smaller)."""
    if size < 1:
        raise ValueError(f"size: expected a positive number of atoms, got {size}")
    top = max(2, math.ceil((size / 5) ** (1 / 3)) * 2)
    candidates = [
        reps for reps in itertools.combinations_with_replacement(range(1, top + 1), 3) if reps[2] <= 2 * reps[0]
    ]
    return min(candidates, key=lambda r: (abs(5 * math.prod(r) - size), r[2] - r[0], math.prod(r)))


def perovskite_supercell(reps: Sequence[int], seed: int = 0) -> Sample:
    """A rattled cubic BaTiO3 supercell of ``5 * n1 * n2 * n3`` atoms.

    Shapes: -> Sample with numbers (5 n1 n2 n3,), positions (5 n1 n2 n3, 3), cell (3, 3)
    """
    reps = np.asarray(reps, dtype=np.int64)
    shifts = np.stack(np.meshgrid(*[np.arange(n) for n in reps], indexing="ij"), axis=-1).reshape(-1, 3)
    positions = ((PEROVSKITE_FRACTIONAL[None] + shifts[:, None]) * LATTICE).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    positions = positions + rng.normal(scale=RATTLE, size=positions.shape)
    numbers = np.tile(PEROVSKITE_NUMBERS, len(shifts))
    return Sample(numbers, positions, np.diag(reps * LATTICE), np.ones(3, dtype=bool))


def graph_counts(sample: Sample) -> dict[str, int]:
    """Edges within 6 Å and triplets from edges within 4 Å and 6 Å, counted from the neighbour
    list alone: every edge has its reverse, so a centre with ``d`` triplet edges has
    ``d (d - 1)`` triplets (all pairs of its edges but an edge with its own reverse)."""
    nl = neighbor_list(sample, CUTOFF)
    counts = {"edges": int(nl.idx_i.shape[0])}
    for name, cutoff in (("triplets_4A", TRIPLET_CUTOFF), ("triplets_6A", CUTOFF)):
        degree = np.bincount(nl.idx_i[nl.length < cutoff], minlength=sample.num_atoms)
        counts[name] = int((degree * (degree - 1)).sum())
    return counts


# --------------------------------------------------------------------------- models


def etgnn_trunk(backbone: nn.Module, graph: Graph) -> InvariantFeatures:
    """ETGNN without its triplet embedding and triplet updates: the DimeNet++ part of
    ``tensorframe_etgnn.model.ETGNN.forward``, step by step (uses the plugin's modules).

    Shapes: -> InvariantFeatures(node (N, hidden), edge (E, hidden), triplet None)
    """
    rbf = backbone.rbf(graph.edge_len) * graph.edge_envelope.unsqueeze(-1)
    sbf = backbone.sbf(graph.edge_len, graph.triplet_cos, graph.idx_kj, graph.triplet_envelope)
    messages, _, _ = backbone.edge_embedding(graph.numbers, rbf, graph.idx_i, graph.idx_j)
    for block in backbone.blocks:
        messages = block.edge(messages, rbf, block.angular(sbf), graph.idx_kj, graph.idx_ji)
    node = backbone.output(messages, rbf, graph.idx_i, graph.num_nodes)
    return InvariantFeatures(node=node, edge=messages, triplet=None)


class PygDimeNetPlusPlus(nn.Module):
    """PyG's ``DimeNetPlusPlus`` run on a tensorframe :class:`Graph` (periodic images included):
    the body of ``DimeNet.forward`` after ``radius_graph`` and ``triplets``, with PyG's angle
    ``atan2(|r_ij x r_jk|, r_ij . r_jk)`` taken from our edge vectors.

    Our conventions match PyG's: edge ``j -> i`` (``idx_i`` = PyG's ``i = col``), triplet
    ``k -> j -> i`` joining edges ``idx_kj`` and ``idx_ji``, and ``edge_vec[e] = r_i - r_j``.

    Shapes: forward(graph) -> (N, out_channels), the sum of the output blocks per atom
    """

    def __init__(self) -> None:
        super().__init__()
        from torch_geometric.nn.models import DimeNetPlusPlus

        self.net = DimeNetPlusPlus(**PYG_CONFIG)

    def forward(self, graph: Graph) -> torch.Tensor:
        net, num_nodes = self.net, graph.num_nodes
        i, j, idx_kj, idx_ji = graph.idx_i, graph.idx_j, graph.idx_kj, graph.idx_ji
        dist = graph.edge_len
        pos_jk = graph.edge_vec.index_select(0, idx_kj)  # r_j - r_k
        pos_ij = graph.edge_vec.index_select(0, idx_ji)  # r_i - r_j
        angle = torch.atan2(torch.cross(pos_ij, pos_jk, dim=1).norm(dim=-1), (pos_ij * pos_jk).sum(dim=-1))
        rbf = net.rbf(dist)
        sbf = net.sbf(dist, angle, idx_kj)
        x = net.emb(graph.numbers, rbf, i, j)
        out = net.output_blocks[0](x, rbf, i, num_nodes=num_nodes)
        for interaction, output in zip(net.interaction_blocks, net.output_blocks[1:], strict=True):
            x = interaction(x, rbf, sbf, idx_kj, idx_ji)
            out = out + output(x, rbf, i, num_nodes=num_nodes)
        return out


def pyg_available() -> bool:
    try:
        import torch_geometric.nn.models  # noqa: F401
    except ImportError:
        return False
    return True


def feature_loss(features: InvariantFeatures) -> torch.Tensor:
    loss = features.node.square().mean() + features.edge.square().mean()
    if features.triplet is not None:
        loss = loss + features.triplet.square().mean()
    return loss


def prediction_loss(predictions: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(value.square().mean() for value in predictions.values())


def make_model(backbone: str, checkpoint: bool = False) -> nn.Module:
    torch.manual_seed(0)
    options = {"checkpoint": True} if checkpoint else {}
    config = {"cutoff": CUTOFF, "triplet_cutoff": TRIPLET_CUTOFF, "backbone": {"name": backbone, **options},
              "heads": list(HEADS)}
    return build_model(config)


# --------------------------------------------------------------------------- measurement


def measure(fn: Callable[[], Any], warmup: int, repeats: int, budget_s: float) -> dict[str, Any]:
    """Peak memory of one call (also timed) after ``warmup`` calls, then up to ``repeats - 1``
    more timed calls while their estimated total stays within ``budget_s``; median time."""
    for _ in range(warmup):
        fn()
    times: list[float] = []

    def timed() -> None:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)

    peak = peak_memory_mb(timed, torch.device("cpu"))
    extra = min(repeats - 1, int(budget_s / max(times[0], 1e-9)))
    for _ in range(max(extra, 0)):
        timed()
    ms = [1e3 * t for t in times]
    return {"status": "ok", "median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
            "repeats": len(ms), "peak_mb": peak}


def forward_call(module: Callable[[Graph], Any], graph: Graph) -> Callable[[], Any]:
    def call() -> Any:
        with torch.no_grad():
            return module(graph)

    return call


def backward_call(model: nn.Module, run: Callable[[Graph], Any], loss: Callable[[Any], torch.Tensor],
                  graph: Graph) -> Callable[[], None]:
    """One forward + backward; gradients freed first so that their allocation is measured."""

    def call() -> None:
        model.zero_grad(set_to_none=True)
        loss(run(graph)).backward()

    return call


def etgnn_forward_breakdown(backbone: nn.Module, graph: Graph, repeats: int) -> dict[str, float]:
    """Median forward time (ms) of each part of ETGNN, from forward pre/post hooks on its modules;
    ``other`` is the rest of the forward (the envelope product, the max_z check)."""
    parts: dict[str, list[nn.Module]] = {
        "basis": [backbone.rbf, backbone.sbf],
        "edge embedding": [backbone.edge_embedding],
        "angular filters": [block.angular for block in backbone.blocks],
        "edge updates": [block.edge for block in backbone.blocks],
        "output": [backbone.output],
        "triplet embedding": [backbone.triplet_embedding],
        "triplet updates": [block.triplet for block in backbone.blocks],
    }
    totals = dict.fromkeys(parts, 0.0)
    starts: dict[int, float] = {}
    handles = []
    for name, modules in parts.items():
        for module in modules:
            handles.append(module.register_forward_pre_hook(lambda m, _: starts.__setitem__(id(m), time.perf_counter())))
            handles.append(module.register_forward_hook(
                lambda m, _, __, name=name: totals.__setitem__(name, totals[name] + time.perf_counter() - starts[id(m)])
            ))
    samples: dict[str, list[float]] = {name: [] for name in [*parts, "total", "other"]}
    try:
        with torch.no_grad():
            for _ in range(repeats):
                for name in totals:
                    totals[name] = 0.0
                start = time.perf_counter()
                backbone(graph)
                total = time.perf_counter() - start
                for name, value in totals.items():
                    samples[name].append(1e3 * value)
                samples["total"].append(1e3 * total)
                samples["other"].append(1e3 * (total - sum(totals.values())))
    finally:
        for handle in handles:
            handle.remove()
    return {name: statistics.median(values) for name, values in samples.items()}


def profile_top_ops(call: Callable[[], Any], top: int = 15) -> list[dict[str, Any]]:
    """The ``top`` operators of one call by self CPU time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "self_share": e.self_cpu_time_total / total,
         "total_ms": e.cpu_time_total / 1e3, "calls": e.count}
        for e in events[:top]
    ]


def group_cases(group: str, model: nn.Module, graph: Graph) -> dict[str, dict[str, Callable[[], Any]]]:
    """The timed calls of one group: ``{case: {mode: call}}`` with modes forward / forward_backward."""
    if group in PYG_GROUPS:
        return {"backbone": {
            "forward": forward_call(model, graph),
            "forward_backward": backward_call(model, model, lambda out: out.square().mean(), graph),
        }}
    cases = {
        "backbone": {"forward": forward_call(model.backbone, graph),
                     "forward_backward": backward_call(model, model.backbone, feature_loss, graph)},
        "model": {"forward": forward_call(model, graph),
                  "forward_backward": backward_call(model, model, prediction_loss, graph)},
    }
    if group == "etgnn_checkpoint":  # recomputation only happens with gradients: the forward is etgnn's
        return {case: {"forward_backward": modes["forward_backward"]} for case, modes in cases.items()}
    if group == "etgnn":
        trunk = lambda g: etgnn_trunk(model.backbone, g)  # noqa: E731
        cases["trunk"] = {"forward": forward_call(trunk, graph),
                          "forward_backward": backward_call(model, trunk, feature_loss, graph)}
    return cases


def run_group(group: str, reps: Sequence[int], warmup: int, repeats: int, budget_s: float, profile: bool) -> dict:
    """Everything one group measures on one supercell (what a worker subprocess returns)."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    sample = perovskite_supercell(reps)
    triplet_cutoff = PYG_GROUPS.get(group, TRIPLET_CUTOFF)
    graph = build_graph([sample], CUTOFF, triplet_cutoff)
    if group in PYG_GROUPS:
        torch.manual_seed(0)
        model: nn.Module = PygDimeNetPlusPlus()
    else:
        model = make_model(group.removesuffix("_checkpoint"), checkpoint=group.endswith("_checkpoint"))
    gc.collect()
    out: dict[str, Any] = {"group": group, "atoms": sample.num_atoms, "edges": graph.num_edges,
                           "triplets": graph.num_triplets, "parameters": sum(p.numel() for p in model.parameters()),
                           "baseline_rss_mb": _rss_mb(), "results": []}
    cases = group_cases(group, model, graph)
    for case, modes in cases.items():
        for mode, call in modes.items():
            model.train(mode == "forward_backward")
            print(f"[bench_backbones]   {group} {case} {mode}", file=sys.stderr, flush=True)
            out["results"].append({"case": case, "mode": mode, **measure(call, warmup, repeats, budget_s)})
    if group == "etgnn":
        model.eval()
        with torch.no_grad():
            full, trunk = model.backbone(graph), etgnn_trunk(model.backbone, graph)
        out["trunk_matches_backbone"] = bool(torch.equal(full.node, trunk.node) and torch.equal(full.edge, trunk.edge))
        out["forward_breakdown_ms"] = etgnn_forward_breakdown(model.backbone, graph, max(repeats, 1))
    if profile and group in ("etgnn", "pyg_dimenetpp_4A"):
        model.train()
        call = cases["backbone"]["forward_backward"]
        call()
        out["profile"] = {"case": "backbone", "mode": "forward_backward", "top_ops": profile_top_ops(call)}
    out["max_rss_mb"] = _max_rss_mb()
    return out


def _rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _max_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(spec: dict[str, Any], in_process: bool, timeout_s: float) -> dict[str, Any]:
    """``run_group`` in a fresh subprocess (its JSON on the last stdout line), or in this process."""
    args = (spec["group"], spec["reps"], spec["warmup"], spec["repeats"], spec["budget_s"], spec["profile"])
    if in_process:
        return run_group(*args)
    command = [sys.executable, "-m", "benchmarks.bench_backbones", "--worker", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"group": spec["group"], "error": f"timed out after {timeout_s:.0f} s"}
    sys.stderr.write(done.stderr[-2000:] if done.returncode else "")
    if done.returncode != 0:
        reason = "killed (out of memory?)" if done.returncode in (-9, 137) else f"exit status {done.returncode}"
        tail = done.stderr.strip().splitlines()[-1:] if done.stderr.strip() else []
        return {"group": spec["group"], "error": "; ".join([reason, *tail])}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- driver


def available_groups(with_pyg: bool) -> list[str]:
    registered = get_registry().items["backbone"]
    names = [name for name in BACKBONE_ORDER if name in registered]
    names += sorted(set(registered) - set(BACKBONE_ORDER))
    if "etgnn" in names:
        names.append("etgnn_checkpoint")
    if with_pyg:
        names += list(PYG_GROUPS)
    return names


def run(sizes: Sequence[int], repeats: int, warmup: int, budget_s: float, max_pyg_triplets: int,
        in_process: bool, timeout_s: float, profile: bool) -> dict[str, Any]:
    env = environment()
    for name in ("torch_geometric", "sympy", "tensorframe-etgnn", "tensorframe-schnet", "tensorframe-cgcnn"):
        try:
            env["versions"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env["versions"][name] = None
    with_pyg = pyg_available()
    groups = available_groups(with_pyg)
    profile_reps = supercell_reps(min(sizes, key=lambda s: abs(s - PROFILE_SIZE))) if profile else None
    rows, failures = [], []
    for size in sizes:
        reps = supercell_reps(size)
        sample = perovskite_supercell(reps)
        row: dict[str, Any] = {"requested": size, "supercell": list(reps), "atoms": sample.num_atoms,
                               **graph_counts(sample), "groups": {}}
        for group in groups:
            if group in PYG_GROUPS and row[f"triplets_{int(PYG_GROUPS[group])}A"] > max_pyg_triplets:
                row["groups"][group] = {"skipped": f"more than --max-pyg-triplets={max_pyg_triplets} triplets"}
                continue
            print(f"[bench_backbones] {sample.num_atoms} atoms: {group}", file=sys.stderr, flush=True)
            spec = {"group": group, "reps": list(reps), "warmup": warmup, "repeats": repeats, "budget_s": budget_s,
                    "profile": tuple(reps) == profile_reps}
            result = run_worker(spec, in_process, timeout_s)
            if "error" in result:
                failures.append(f"{sample.num_atoms} atoms, {group}: {result['error']}")
            row["groups"][group] = result
        rows.append(row)
    return {
        "benchmark": "backbones",
        "environment": env,
        "settings": {
            "structure": "rattled cubic BaTiO3 perovskite supercell",
            "lattice_A": LATTICE, "rattle_A": RATTLE, "density_per_A3": 5 / LATTICE**3,
            "cutoff_A": CUTOFF, "triplet_cutoff_A": TRIPLET_CUTOFF, "dtype": "float32", "device": "cpu",
            "heads": list(HEADS), "groups": groups,
            "losses": {
                "backbone": "sum of mean squares of node, edge and triplet (when present) features",
                "model": "sum of mean squares of the born, dielectric and piezo predictions",
                "trunk": "sum of mean squares of node and edge features",
                "pyg": "mean square of DimeNet++'s node output",
            },
            "pyg": PYG_CONFIG if with_pyg else "torch_geometric not importable: not measured",
            "max_pyg_triplets": max_pyg_triplets,
            "timing": f"{warmup} warm-up call(s), then 1 call measured for memory and time, then up to "
                      f"{repeats - 1} more timed calls while their estimated total stays under {budget_s:g} s; median",
            "memory_method": cpu_memory_method() + ("; one fresh subprocess per size and group" if not in_process
                                                    else "; all cases in one process"),
            "in_process": in_process,
        },
        "sizes": rows,
        "failures": failures,
    }


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"


def lookup(row: dict[str, Any], group: str, case: str, mode: str, key: str = "median_ms") -> float | None:
    for item in row["groups"].get(group, {}).get("results", []):
        if item["case"] == case and item["mode"] == mode:
            return item.get(key)
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per size: ETGNN against PyG DimeNet++ and ETGNN's triplet blocks against the trunks."""
    out = []
    for row in result["sizes"]:
        etgnn = row["groups"].get("etgnn", {})
        if "results" not in etgnn:
            continue
        item: dict[str, Any] = {"atoms": row["atoms"]}
        for mode in ("forward", "forward_backward"):
            full = lookup(row, "etgnn", "backbone", mode)
            trunk = lookup(row, "etgnn", "trunk", mode)
            item[mode] = {
                "etgnn_ms": full, "etgnn_trunk_ms": trunk,
                "triplet_blocks_ms": full - trunk if full is not None and trunk is not None else None,
                "pyg_4A_ms": lookup(row, "pyg_dimenetpp_4A", "backbone", mode),
                "pyg_6A_ms": lookup(row, "pyg_dimenetpp_6A", "backbone", mode),
            }
            item[mode]["etgnn_over_pyg_4A"] = _ratio(full, item[mode]["pyg_4A_ms"])
            item[mode]["etgnn_over_pyg_6A"] = _ratio(full, item[mode]["pyg_6A_ms"])
            item[mode]["triplet_blocks_over_pyg_4A"] = _ratio(item[mode]["triplet_blocks_ms"], item[mode]["pyg_4A_ms"])
        breakdown = etgnn.get("forward_breakdown_ms")
        if breakdown:
            item["forward_hooks_ms"] = {
                "total": breakdown["total"],
                "trunk": sum(breakdown[p] for p in TRUNK_PARTS),
                "triplet_blocks": sum(breakdown[p] for p in TRIPLET_PARTS),
                "other": breakdown["other"],
            }
        out.append(item)
    return out


def _group_label(group: str) -> str:
    return GROUP_LABELS.get(group, group)


def render_markdown(result: dict[str, Any]) -> str:
    env, settings, rows = result["environment"], result["settings"], result["sizes"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    lines = [
        "## Backbones: time and memory, and ETGNN against PyG DimeNet++",
        "",
        f"Written by `python -m benchmarks.bench_backbones` on {env['date']} (commit {env['git_commit'] or 'unknown'}); "
        "do not edit by hand. Raw numbers: `benchmarks/results/backbones.json`.",
        "",
        f"- Machine: {env['cpu']}, {env['cpu_count']} logical CPUs, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, "
        f"torch threads {env['torch_num_threads']}; {env['platform']}, Python {env['python']}; {versions}.",
        f"- Structure: {settings['structure']}, a = {settings['lattice_A']} Å "
        f"({settings['density_per_A3']:.3f} atoms/Å³), rattle {settings['rattle_A']} Å; edges within "
        f"{settings['cutoff_A']} Å, triplets from edges within {settings['triplet_cutoff_A']} Å; "
        f"{settings['dtype']} on the CPU; default sizes of each plugin's config.",
        "- Cases: *backbone* = the backbone alone (forward+backward loss: mean squares of its node, edge and "
        "triplet features, so the triplet blocks are in the backward pass); *+ heads* = backbone (+ triplet lifting "
        "for edge-only backbones) + born, dielectric and piezo heads (loss: mean squares of the three predictions); "
        "*etgnn trunk* = ETGNN without its triplet embedding and triplet updates (its DimeNet++ part); "
        "*etgnn (checkpoint: true)* recomputes each block in the backward pass. Forward: eval mode, `torch.no_grad`.",
        "- PyG DimeNet++ (torch_geometric's own blocks; hidden 128, int_emb 64, basis_emb 8, out_emb 256, 4 blocks, "
        "7 spherical, 6 radial, cutoff 6 Å) runs on our edges and triplets (periodic images included), computing "
        "distances and angles in its forward as PyG does: once with ETGNN's 4 Å triplet set, once with the full 6 Å "
        "set DimeNet++ builds itself.",
        f"- Timing: {settings['timing']}. Peak memory: {settings['memory_method']}.",
    ]
    lines += ["", "Graph sizes:", ""]
    table = [[r["atoms"], "×".join(map(str, r["supercell"])), r["edges"], r["triplets_4A"], r["triplets_6A"]]
             for r in rows]
    lines.append(markdown_table(["atoms", "supercell", "edges (6 Å)", "triplets (4 Å)", "triplets (6 Å)"], table))
    series = [(g, c) for g in settings["groups"] for c in ("backbone", "model", "trunk")
              if any(lookup(r, g, c, m) is not None for r in rows for m in ("forward", "forward_backward"))]
    atoms = [r["atoms"] for r in rows]

    def label(group: str, case: str) -> str:
        return {"backbone": _group_label(group), "model": f"{_group_label(group)} + heads",
                "trunk": "etgnn trunk"}[case]

    def cell(row: dict[str, Any], group: str, case: str, mode: str, key: str) -> str:
        value = lookup(row, group, case, mode, key)
        if value is not None:
            return _fmt(value)
        entry = row["groups"].get(group, {})
        return "skipped" if "skipped" in entry else ("failed" if "error" in entry else "–")

    for mode, key, title in (("forward", "median_ms", "Forward time (ms)"),
                             ("forward_backward", "median_ms", "Forward + backward time (ms)"),
                             ("forward", "peak_mb", "Forward peak memory (MiB)"),
                             ("forward_backward", "peak_mb", "Forward + backward peak memory (MiB)")):
        present = [(g, c) for g, c in series if any(lookup(r, g, c, mode) is not None for r in rows)]
        lines += ["", f"{title}:", ""]
        lines.append(markdown_table(["", *(f"{a} atoms" for a in atoms)],
                                    [[label(g, c), *(cell(r, g, c, mode, key) for r in rows)] for g, c in present]))
    comparison = summary(result)
    if comparison:
        lines += ["", "ETGNN against PyG DimeNet++ on the same graph, and ETGNN's triplet blocks "
                  "(triplet embedding + triplet updates) against the trunks. Forward+backward triplet cost = "
                  "ETGNN backbone − ETGNN trunk; forward split also by module hooks (trunk / triplet / other).", ""]
        header = ["atoms", "fwd: etgnn / pyg 4 Å", "fwd: etgnn / pyg 6 Å", "f+b: etgnn / pyg 4 Å",
                  "f+b: etgnn / pyg 6 Å", "fwd hooks (ms): trunk / triplet / other",
                  "f+b (ms): etgnn trunk / triplet blocks", "triplet blocks / pyg 4 Å (fwd, f+b)"]
        table = []
        for item in comparison:
            fwd, fb, hooks = item["forward"], item["forward_backward"], item.get("forward_hooks_ms")
            table.append([
                item["atoms"], _fmt(fwd["etgnn_over_pyg_4A"], 2), _fmt(fwd["etgnn_over_pyg_6A"], 2),
                _fmt(fb["etgnn_over_pyg_4A"], 2), _fmt(fb["etgnn_over_pyg_6A"], 2),
                " / ".join(_fmt(hooks[k]) for k in ("trunk", "triplet_blocks", "other")) if hooks else "–",
                f"{_fmt(fb['etgnn_trunk_ms'])} / {_fmt(fb['triplet_blocks_ms'])}",
                f"{_fmt(fwd['triplet_blocks_over_pyg_4A'], 2)}, {_fmt(fb['triplet_blocks_over_pyg_4A'], 2)}",
            ])
        lines.append(markdown_table(header, table))
    for row in rows:
        for group in ("etgnn", "pyg_dimenetpp_4A"):
            profile = row["groups"].get(group, {}).get("profile")
            if not profile:
                continue
            lines += ["", f"Top operators of one forward+backward of {_group_label(group)} (backbone), "
                      f"{row['atoms']} atoms (torch.profiler, self CPU time):", ""]
            lines.append(markdown_table(["operator", "self ms", "share", "calls"],
                                        [[f"`{op['op']}`", _fmt(op["self_ms"]), f"{100 * op['self_share']:.0f}%",
                                          op["calls"]] for op in profile["top_ops"]]))
    if result["failures"]:
        lines += ["", "Failures: " + "; ".join(result["failures"]) + "."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_backbones", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"sizes {QUICK_SIZES}, 1 repeat, no warm-up, in one process, no profile (a smoke run)")
    parser.add_argument("--sizes", type=int, nargs="+", help=f"atoms per structure (default {DEFAULT_SIZES})")
    parser.add_argument("--repeats", type=int, help="most timed calls per case (default 3, quick 1)")
    parser.add_argument("--warmup", type=int, help="untimed calls before measuring (default 1, quick 0)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of repeated timing per case (default 3)")
    parser.add_argument("--max-pyg-triplets", type=int, default=3_000_000,
                        help="skip PyG DimeNet++ on graphs with more triplets (default 3e6)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per worker subprocess (default 900)")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per size and group")
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler run")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results",
                        help="folder for backbones.json")
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md", help="markdown file to update")
    parser.add_argument("--no-docs", action="store_true", help="do not touch the markdown file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.warmup is None:
        args.warmup = 0 if args.quick else 1
    args.in_process = args.in_process or args.quick
    args.profile = not (args.no_profile or args.quick)
    if any(s < 1 for s in args.sizes):
        parser.error(f"--sizes: expected positive numbers of atoms, got {args.sizes}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        result = run_group(spec["group"], spec["reps"], spec["warmup"], spec["repeats"], spec["budget_s"],
                           spec["profile"])
        print(json.dumps(result))
        return None
    result = run(args.sizes, args.repeats, args.warmup, args.budget, args.max_pyg_triplets, args.in_process,
                 args.timeout, args.profile)
    result["summary"] = summary(result)
    write_json(args.out / "backbones.json", result)
    markdown = render_markdown(result)
    if not args.no_docs:
        replace_section(args.docs, "backbones", markdown)
    print(markdown)
    return result


if __name__ == "__main__":
    main()
