"""Backbone benchmark: forward and forward+backward time and peak memory of every registered
backbone, alone and under Born + dielectric + piezo heads, side by side with PyTorch
Geometric's DimeNet++ on the same edges and triplets.

    python -m benchmarks.bench_backbones [--quick] [--sizes 8 64 ...] [--repeats 3] [--out benchmarks/results]
                                         [--docs docs/benchmarks.md | --no-docs] [--in-process] [--no-pyg]

Structure: rattled cubic BaTiO3 perovskite supercells (a = 4.0 Å, Gaussian rattle 0.05 Å,
0.078 atoms/Å^3); each requested size becomes the ``n1 x n2 x n3`` supercell (n3 <= 2 n1) with
the closest number of atoms. Edges within 6 Å, triplets from edges within 4 Å (ETGNN's
cutoffs). float32 on the CPU; default sizes of each plugin's config.

Each size and *group* runs in a fresh subprocess (unless ``--in-process``), which builds the
graph and the model once and measures every *series* of its group, forward and
forward+backward:

- ``<backbone>``: the backbone alone; the backward loss is the sum of the mean squares of its
  node, edge and (when present) triplet features, so the triplet blocks are in the backward.
- ``<backbone>+heads``: backbone (+ triplet lifting for edge-only backbones) + born,
  dielectric and piezo heads; loss = sum of the mean squares of the three predictions.
- ``etgnn_trunk``: ETGNN without its triplet embedding and triplet updates, i.e. its DimeNet++
  part; triplet messages never feed the edge messages, so it returns the same node and edge
  features (checked). ``etgnn - etgnn_trunk`` is the cost of the triplet blocks.
- ``etgnn_checkpoint+heads``: ETGNN with ``checkpoint: true`` under the heads (forward+backward only).
- ``pyg_dimenetpp_4A`` / ``pyg_dimenetpp_6A``: PyG's DimeNet++ (hidden 128, int_emb 64,
  basis_emb 8, out_emb 256, 4 blocks, 7 spherical, 6 radial, cutoff 6 Å), its own basis,
  embedding, interaction and output blocks run on our edges and triplets (PyG's own
  ``radius_graph``/``triplets`` need torch-cluster/torch-sparse and ignore periodic images),
  with distances and angles computed in its forward as PyG does; on ETGNN's 4 Å triplet set
  and on the full 6 Å set DimeNet++ would build (skipped above ``--max-pyg-triplets``).
  Loss = mean square of its node output.

Forward runs in eval mode under ``torch.no_grad``. ETGNN's timed forward calls are also split
by module forward hooks into trunk and triplet blocks; one forward+backward of ETGNN and of PyG
DimeNet++ (4 Å) near 512 atoms is profiled (``torch.profiler``, top operators by self CPU
time). Writes ``<out>/backbones.json`` and the section between ``<!-- backbones:start -->``
and ``<!-- backbones:end -->`` of the docs file.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.toolkit import (
    PLUGIN_DISTRIBUTIONS,
    REPO_ROOT,
    add_report_arguments,
    cpu_memory_method,
    environment,
    fmt,
    machine_line,
    markdown_table,
    max_rss_mb,
    measure_within_budget,
    mode_calls,
    num_parameters,
    prediction_loss,
    publish,
    quick_defaults,
    ratio,
    rss_mb,
    seeded_model,
    size_parser,
    written_by,
)
from tensorframe import get_registry
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
TRUNK_CHECK_TRIPLETS = 200_000  # the trunk is checked against the full backbone on graphs up to this size
PROFILE_SIZE = 512  # atoms requested for the profiled run (the nearest benchmarked size is used)
MODES = ("forward", "forward_backward")
HEADS = ({"name": "born"}, {"name": "dielectric"}, {"name": "piezo"})
BACKBONE_ORDER = ("reference", "schnet", "cgcnn", "etgnn")
PYG_GROUP = "pyg_dimenetpp"
PYG_TRIPLET_CUTOFFS = {"pyg_dimenetpp_4A": TRIPLET_CUTOFF, "pyg_dimenetpp_6A": CUTOFF}  # series -> triplet cutoff
PYG_CONFIG: dict[str, Any] = {
    "hidden_channels": 128, "out_channels": 128, "num_blocks": 4, "int_emb_size": 64, "basis_emb_size": 8,
    "out_emb_channels": 256, "num_spherical": 7, "num_radial": 6, "cutoff": CUTOFF,
    "output_initializer": "glorot_orthogonal",  # PyG's default zero output layer would give a zero gradient
}
TRUNK_PARTS = ("basis", "edge embedding", "angular filters", "edge updates", "output")
TRIPLET_PARTS = ("triplet embedding", "triplet updates")
SERIES_LABELS = {
    "etgnn_trunk": "etgnn trunk (no triplet blocks)",
    "etgnn_checkpoint+heads": "etgnn, checkpoint: true + heads",
    "pyg_dimenetpp_4A": "PyG DimeNet++, 4 Å triplets",
    "pyg_dimenetpp_6A": "PyG DimeNet++, 6 Å triplets",
}


# --------------------------------------------------------------------------- structures


def supercell_reps(size: int) -> tuple[int, int, int]:
    """The supercell ``(n1, n2, n3)``, ``n1 <= n2 <= n3 <= 2 n1``, of the 5-atom perovskite cell
    whose atom count is closest to ``size`` (ties: the more cubic, then the smaller)."""
    if size < 1:
        raise ValueError(f"size: expected a positive number of atoms, got {size}")
    top = max(2, 2 * math.ceil((size / 5) ** (1 / 3)))
    candidates = [r for r in itertools.combinations_with_replacement(range(1, top + 1), 3) if r[2] <= 2 * r[0]]
    return min(candidates, key=lambda r: (abs(5 * math.prod(r) - size), r[2] - r[0], math.prod(r)))


def perovskite_supercell(reps: Sequence[int], seed: int = 0) -> Sample:
    """A rattled cubic BaTiO3 supercell of ``5 n1 n2 n3`` atoms.

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
    ``d (d - 1)`` triplets (every ordered pair of its edges but an edge with its own reverse)."""
    nl = neighbor_list(sample, CUTOFF)
    counts = {"edges": int(nl.idx_i.shape[0])}
    for name, cutoff in (("triplets_4A", TRIPLET_CUTOFF), ("triplets_6A", CUTOFF)):
        degree = np.bincount(nl.idx_i[nl.length < cutoff], minlength=sample.num_atoms)
        counts[name] = int((degree * (degree - 1)).sum())
    return counts


# --------------------------------------------------------------------------- models


def etgnn_trunk(backbone: nn.Module, graph: Graph) -> InvariantFeatures:
    """ETGNN without its triplet embedding and triplet updates (its DimeNet++ part): the
    backbone's own forward with the triplet chain pruned, as for heads that read no triplet
    features (the node and edge features are unchanged).

    Shapes: -> InvariantFeatures(node (N, hidden), edge (E, hidden), triplet None)
    """
    previous = backbone.triplet_output
    backbone.prune_outputs(triplet=False)
    try:
        return backbone(graph)
    finally:
        backbone.prune_outputs(triplet=previous)


@functools.lru_cache(maxsize=4)
def _pyg_prototype(config: tuple[tuple[str, Any], ...]) -> nn.Module:
    from torch_geometric.nn.models import DimeNetPlusPlus

    torch.manual_seed(0)
    return DimeNetPlusPlus(**dict(config))  # slow: sympy derives its spherical Bessel basis


class PygDimeNetPlusPlus(nn.Module):
    """PyG's ``DimeNetPlusPlus`` run on a tensorframe :class:`Graph` (periodic images included):
    the body of ``DimeNet.forward`` after ``radius_graph`` and ``triplets``, with PyG's
    DimeNet++ angle ``atan2(|r_ij x r_jk|, r_ij . r_jk)`` taken from our edge vectors.

    The conventions agree: PyG's edge ``j -> i`` has ``i = col`` (our ``idx_i``, the centre),
    its triplet ``k -> j -> i`` joins edges ``idx_kj`` and ``idx_ji`` as ours does, and our
    ``edge_vec[e] = r_i - r_j`` (with the image shift). ``config`` overrides :data:`PYG_CONFIG`.
    Models with equal configs start from equal weights (a copy of one cached prototype).

    Shapes: forward(graph) -> (N, out_channels), the sum of the output blocks per atom
    """

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.net = copy.deepcopy(_pyg_prototype(tuple(sorted({**PYG_CONFIG, **config}.items()))))

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


def make_model(backbone: str, checkpoint: bool = False) -> nn.Module:
    options = {"checkpoint": True} if checkpoint else {}
    return seeded_model(CUTOFF, TRIPLET_CUTOFF, {"name": backbone, **options}, HEADS)


# --------------------------------------------------------------------------- measurement


class ForwardParts:
    """Forward time of each part of ETGNN in every backbone call made while active (a context
    manager), from forward pre/post hooks on its modules; ``other`` is the rest of the forward
    (envelope product, max_z check). The hooks cost microseconds per call."""

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone
        self.parts: dict[str, list[nn.Module]] = {
            "basis": [backbone.rbf, backbone.sbf],
            "edge embedding": [backbone.edge_embedding],
            "angular filters": [block.angular for block in backbone.blocks],
            "edge updates": [block.edge for block in backbone.blocks],
            "output": [backbone.output],
            "triplet embedding": [backbone.triplet_embedding],
            "triplet updates": [block.triplet for block in backbone.blocks],
        }
        self.records: list[dict[str, float]] = []  # ms per part, one dict per backbone call
        self._totals = dict.fromkeys(self.parts, 0.0)
        self._starts: dict[int, float] = {}
        self._handles: list[Any] = []

    def _pre(self, module: nn.Module, _: Any) -> None:
        if module is self.backbone:
            self._totals = dict.fromkeys(self.parts, 0.0)
        self._starts[id(module)] = time.perf_counter()

    def _post(self, name: str | None) -> Callable[..., None]:
        def hook(module: nn.Module, _: Any, __: Any) -> None:
            elapsed = time.perf_counter() - self._starts[id(module)]
            if name is not None:
                self._totals[name] += elapsed
                return
            record = {part: 1e3 * value for part, value in self._totals.items()}
            record["other"] = 1e3 * elapsed - sum(record.values())
            record["total"] = 1e3 * elapsed
            self.records.append(record)

        return hook

    def __enter__(self) -> ForwardParts:
        pairs = [(module, name) for name, modules in self.parts.items() for module in modules]
        for module, name in [(self.backbone, None), *pairs]:
            self._handles += [module.register_forward_pre_hook(self._pre),
                              module.register_forward_hook(self._post(name))]
        return self

    def __exit__(self, *_: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def median(self, last: int) -> dict[str, float]:
        """Median over the ``last`` recorded calls of each part's time (ms)."""
        records = self.records[-last:]
        return {name: statistics.median(r[name] for r in records) for name in records[0]}


def profile_top_ops(call: Callable[[], Any], top: int = 15) -> list[dict[str, Any]]:
    """The ``top`` operators of one call by self CPU time (torch.profiler, CPU activities)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "self_share": e.self_cpu_time_total / total,
             "total_ms": e.cpu_time_total / 1e3, "calls": e.count} for e in events[:top]]


def backbone_series(group: str, model: nn.Module, graph: Graph) -> dict[str, dict[str, Callable[[], Any]]]:
    """The calls of a tensorframe backbone group: ``{series: {mode: call}}``."""
    series = {group: mode_calls(model, model.backbone, feature_loss, graph),
              f"{group}+heads": mode_calls(model, model, prediction_loss, graph)}
    if group == "etgnn_checkpoint":  # recomputation needs gradients (its forward is etgnn's); training = with heads
        return {f"{group}+heads": {"forward_backward": series[f"{group}+heads"]["forward_backward"]}}
    if group == "etgnn":
        series["etgnn_trunk"] = mode_calls(model, functools.partial(etgnn_trunk, model.backbone), feature_loss, graph)
    return series


def run_group(group: str, reps: Sequence[int], warmup: int, repeats: int, budget_s: float, profile: bool,
              skip: Sequence[str] = ()) -> dict[str, Any]:
    """Everything one group measures on one supercell (what a worker subprocess prints as JSON).

    ``skip``: series not to measure (PyG's 6 Å set on large cells). ``profile``: also profile
    one forward+backward of the ETGNN backbone or of PyG DimeNet++ on 4 Å triplets.
    """
    sample = perovskite_supercell(reps)
    out: dict[str, Any] = {"group": group, "atoms": sample.num_atoms, "results": [], "graphs": {}}
    if group == PYG_GROUP:
        model: nn.Module = PygDimeNetPlusPlus()
        graphs = {name: cutoff for name, cutoff in PYG_TRIPLET_CUTOFFS.items() if name not in skip}
    else:
        model = make_model(group.removesuffix("_checkpoint"), checkpoint=group.endswith("_checkpoint"))
        graphs = {group: TRIPLET_CUTOFF}
    out["parameters"] = num_parameters(model)
    for name, triplet_cutoff in graphs.items():
        graph = build_graph([sample], CUTOFF, triplet_cutoff)
        out["graphs"][name] = {"edges": graph.num_edges, "triplets": graph.num_triplets}
        gc.collect()
        out.setdefault("baseline_rss_mb", rss_mb())
        series = ({name: mode_calls(model, model, lambda output: output.square().mean(), graph)}
                  if group == PYG_GROUP else backbone_series(group, model, graph))
        parts = ForwardParts(model.backbone) if group == "etgnn" else contextlib.nullcontext()
        for series_name, modes in series.items():  # ETGNN's timed forward calls are split by module hooks
            for mode, call in modes.items():
                model.train(mode == "forward_backward")
                print(f"[bench_backbones]   {series_name} {mode}", file=sys.stderr, flush=True)
                with parts if (series_name, mode) == ("etgnn", "forward") else contextlib.nullcontext():
                    out["results"].append({"series": series_name, "mode": mode,
                                           **measure_within_budget(call, warmup, repeats, budget_s)})
        if group == "etgnn":
            timed = next(r for r in out["results"] if (r["series"], r["mode"]) == ("etgnn", "forward"))["repeats"]
            out["forward_breakdown_ms"] = parts.median(last=timed)  # from the timed forward calls themselves
            if graph.num_triplets <= TRUNK_CHECK_TRIPLETS:
                model.eval()
                with torch.no_grad():
                    full, trunk = model.backbone(graph), etgnn_trunk(model.backbone, graph)
                # To float32 rounding: the pruned model sums triplets in one fused pass (another order).
                out["trunk_matches_backbone"] = bool(torch.allclose(full.node, trunk.node, rtol=1e-5, atol=1e-6)
                                                     and torch.allclose(full.edge, trunk.edge, rtol=1e-5, atol=1e-6))
                del full, trunk
        if profile and name in ("etgnn", "pyg_dimenetpp_4A"):
            model.train()
            series[name]["forward_backward"]()  # warm-up
            out["profile"] = {name: {"mode": "forward_backward",
                                     "top_ops": profile_top_ops(series[name]["forward_backward"])}}
        del graph, series
    out["max_rss_mb"] = max_rss_mb()
    return out


def run_worker(spec: dict[str, Any], in_process: bool, timeout_s: float) -> dict[str, Any]:
    """``run_group(**spec)`` in a fresh subprocess (its JSON is the last stdout line), or here."""
    if in_process:
        return run_group(**spec)
    command = [sys.executable, "-m", "benchmarks.bench_backbones", "--worker", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or "1"}
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"group": spec["group"], "error": f"timed out after {timeout_s:.0f} s"}
    if done.returncode != 0:
        killed = done.returncode in (-9, 137)
        return {"group": spec["group"],
                "error": "killed (out of memory?)" if killed else f"exit status {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- driver


def available_groups(with_pyg: bool) -> list[str]:
    registered = get_registry().items["backbone"]
    groups = [name for name in BACKBONE_ORDER if name in registered]
    groups += sorted(set(registered) - set(BACKBONE_ORDER))
    if "etgnn" in groups:
        groups.append("etgnn_checkpoint")
    if with_pyg:
        groups.append(PYG_GROUP)
    return groups


def run(sizes: Sequence[int], repeats: int, warmup: int, budget_s: float, max_pyg_triplets: int,
        in_process: bool, timeout_s: float, profile: bool, with_pyg: bool) -> dict[str, Any]:
    env = environment(("torch_geometric", "sympy", *PLUGIN_DISTRIBUTIONS))
    groups = available_groups(with_pyg and pyg_available())
    profile_reps = supercell_reps(min(sizes, key=lambda s: abs(s - PROFILE_SIZE))) if profile else None
    rows, failures = [], []
    for size in sizes:
        reps = supercell_reps(size)
        sample = perovskite_supercell(reps)
        row: dict[str, Any] = {"requested": size, "supercell": list(reps), "atoms": sample.num_atoms,
                               **graph_counts(sample), "groups": {}, "skipped": {}}
        skip = [name for name, cutoff in PYG_TRIPLET_CUTOFFS.items()
                if row[f"triplets_{cutoff:g}A"] > max_pyg_triplets]
        for name in skip:
            row["skipped"][name] = f"{row[f'triplets_{PYG_TRIPLET_CUTOFFS[name]:g}A']} triplets > --max-pyg-triplets"
        for group in groups:
            print(f"[bench_backbones] {sample.num_atoms} atoms: {group}", file=sys.stderr, flush=True)
            spec = {"group": group, "reps": list(reps), "warmup": warmup, "repeats": repeats, "budget_s": budget_s,
                    "profile": tuple(reps) == profile_reps, "skip": skip if group == PYG_GROUP else []}
            result = run_worker(spec, in_process, timeout_s)
            if "error" in result:
                failures.append(f"{sample.num_atoms} atoms, {group}: {result['error']}")
            row["groups"][group] = result
        rows.append(row)
    result = {
        "benchmark": "backbones",
        "environment": env,
        "settings": {
            "structure": "rattled cubic BaTiO3 perovskite supercell",
            "lattice_A": LATTICE, "rattle_A": RATTLE, "density_per_A3": 5 / LATTICE**3,
            "cutoff_A": CUTOFF, "triplet_cutoff_A": TRIPLET_CUTOFF, "dtype": "float32", "device": "cpu",
            "heads": list(HEADS), "groups": groups,
            "losses": {
                "<backbone>": "sum of mean squares of node, edge and triplet (when present) features",
                "<backbone>+heads": "sum of mean squares of the born, dielectric and piezo predictions",
                "etgnn_trunk": "sum of mean squares of node and edge features",
                "pyg_dimenetpp_*": "mean square of DimeNet++'s node output",
            },
            "pyg": PYG_CONFIG if PYG_GROUP in groups else "not measured (torch_geometric not importable or --no-pyg)",
            "max_pyg_triplets": max_pyg_triplets,
            "timing": f"first call measured; calls under {budget_s:g} s are then warmed up ({warmup} call(s) in all), "
                      f"measured again and repeated up to {repeats} timed calls within {budget_s:g} s (median); "
                      "longer calls are reported from their first call alone",
            "memory_method": cpu_memory_method() + ("; all cases in one process" if in_process
                                                    else "; one fresh subprocess per size and group"),
            "in_process": in_process,
        },
        "sizes": rows,
        "failures": failures,
    }
    result["summary"] = summary(result)
    return result


# --------------------------------------------------------------------------- report


def lookup(row: dict[str, Any], series: str, mode: str, key: str = "median_ms") -> float | None:
    """One number of one series at one size, or None when it was not measured."""
    for group in row["groups"].values():
        for item in group.get("results", []):
            if item["series"] == series and item["mode"] == mode:
                return item[key]
    return None


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per size: ETGNN over PyG DimeNet++, and ETGNN's triplet blocks against the trunks."""
    out = []
    for row in result["sizes"]:
        if lookup(row, "etgnn", "forward") is None:
            continue
        item: dict[str, Any] = {"atoms": row["atoms"]}
        for mode in MODES:
            full, trunk = lookup(row, "etgnn", mode), lookup(row, "etgnn_trunk", mode)
            entry: dict[str, Any] = {"etgnn_ms": full, "etgnn_trunk_ms": trunk,
                                     "triplet_blocks_ms": full - trunk if full is not None and trunk is not None
                                     else None}
            for name in PYG_TRIPLET_CUTOFFS:
                entry[f"{name}_ms"] = lookup(row, name, mode)
                entry[f"etgnn_over_{name}"] = ratio(full, entry[f"{name}_ms"])
            entry["triplet_blocks_over_pyg_dimenetpp_4A"] = ratio(entry["triplet_blocks_ms"],
                                                                   entry["pyg_dimenetpp_4A_ms"])
            entry["triplet_blocks_over_etgnn_trunk"] = ratio(entry["triplet_blocks_ms"], trunk)
            item[mode] = entry
        breakdown = row["groups"]["etgnn"].get("forward_breakdown_ms")
        if breakdown:
            item["forward_hooks_ms"] = {
                "total": breakdown["total"], "trunk": sum(breakdown[p] for p in TRUNK_PARTS),
                "triplet_blocks": sum(breakdown[p] for p in TRIPLET_PARTS), "other": breakdown["other"],
            }
        out.append(item)
    return out


def series_label(series: str) -> str:
    if series in SERIES_LABELS:
        return SERIES_LABELS[series]
    return series.replace("+heads", " + heads")


def _cell(row: dict[str, Any], series: str, mode: str, key: str) -> str:
    value = lookup(row, series, mode, key)
    if value is not None:
        return fmt(value)
    if series in row["skipped"]:
        return "skipped"
    return "failed" if any("error" in g for g in row["groups"].values()) else "–"


def render_markdown(result: dict[str, Any]) -> str:
    env, settings, rows = result["environment"], result["settings"], result["sizes"]
    lines = [
        "## Backbones: time and memory, and ETGNN against PyG DimeNet++",
        "",
        written_by("python -m benchmarks.bench_backbones", env, "benchmarks/results/backbones.json"),
        "",
        machine_line(env),
        f"- Structure: {settings['structure']}, a = {settings['lattice_A']} Å "
        f"({settings['density_per_A3']:.3f} atoms/Å³), rattle {settings['rattle_A']} Å; edges within "
        f"{settings['cutoff_A']} Å, triplets from edges within {settings['triplet_cutoff_A']} Å; "
        f"{settings['dtype']} on the CPU; default sizes of each plugin's config.",
        "- Series: a backbone name = the backbone alone (backward loss: mean squares of its node, edge and "
        "triplet features, so triplet blocks are in the backward pass); *+ heads* = backbone (+ triplet lifting "
        "for edge-only backbones) + born, dielectric and piezo heads (loss: mean squares of the predictions); "
        "*etgnn trunk* = ETGNN without its triplet embedding and triplet updates (its DimeNet++ part, same node "
        "and edge features); *checkpoint: true* recomputes each ETGNN block in the backward pass. "
        "Forward: eval mode under `torch.no_grad`.",
        "- PyG DimeNet++ = torch_geometric's own blocks (hidden 128, int_emb 64, basis_emb 8, out_emb 256, "
        "4 blocks, 7 spherical, 6 radial, cutoff 6 Å) run on our edges and triplets (periodic images included), "
        "computing distances and angles in its forward as PyG does; *4 Å triplets* = ETGNN's triplet set, "
        "*6 Å triplets* = all pairs of edges, the set DimeNet++ builds itself.",
        f"- Timing: {settings['timing']}. Peak memory: {settings['memory_method']}.",
        "",
        "Graph sizes:",
        "",
        markdown_table(["atoms", "supercell", "edges (6 Å)", "triplets (4 Å)", "triplets (6 Å)"],
                       [[r["atoms"], "×".join(map(str, r["supercell"])), r["edges"], r["triplets_4A"],
                         r["triplets_6A"]] for r in rows]),
    ]
    series = list(dict.fromkeys(item["series"] for r in rows for g in r["groups"].values()
                                for item in g.get("results", [])))
    for mode, key, title in (("forward", "median_ms", "Forward time (ms)"),
                             ("forward_backward", "median_ms", "Forward + backward time (ms)"),
                             ("forward", "peak_mb", "Forward peak memory (MiB)"),
                             ("forward_backward", "peak_mb", "Forward + backward peak memory (MiB)")):
        present = [s for s in series if any(lookup(r, s, mode) is not None or s in r["skipped"] for r in rows)]
        lines += ["", f"{title}:", "",
                  markdown_table(["", *(f"{r['atoms']} atoms" for r in rows)],
                                 [[series_label(s), *(_cell(r, s, mode, key) for r in rows)] for s in present])]
    if result["summary"]:
        lines += ["", "ETGNN (backbone) against PyG DimeNet++ on the same graph, and the cost of ETGNN's triplet "
                  "blocks (triplet embedding + triplet updates): forward split by module hooks (trunk / triplet "
                  "blocks / rest); forward+backward triplet cost = etgnn − etgnn trunk.", ""]
        header = ["atoms", "fwd etgnn / pyg 4 Å", "fwd etgnn / pyg 6 Å", "f+b etgnn / pyg 4 Å", "f+b etgnn / pyg 6 Å",
                  "fwd hooks ms: trunk / triplet / rest", "f+b ms: trunk / triplet", "triplet / pyg 4 Å: fwd, f+b",
                  "triplet / etgnn trunk: fwd, f+b"]
        table = []
        for item in result["summary"]:
            fwd, fb, hooks = item["forward"], item["forward_backward"], item.get("forward_hooks_ms")
            table.append([
                item["atoms"], fmt(fwd["etgnn_over_pyg_dimenetpp_4A"], 2), fmt(fwd["etgnn_over_pyg_dimenetpp_6A"], 2),
                fmt(fb["etgnn_over_pyg_dimenetpp_4A"], 2), fmt(fb["etgnn_over_pyg_dimenetpp_6A"], 2),
                " / ".join(fmt(hooks[k]) for k in ("trunk", "triplet_blocks", "other")) if hooks else "–",
                f"{fmt(fb['etgnn_trunk_ms'])} / {fmt(fb['triplet_blocks_ms'])}",
                f"{fmt(fwd['triplet_blocks_over_pyg_dimenetpp_4A'], 2)}, "
                f"{fmt(fb['triplet_blocks_over_pyg_dimenetpp_4A'], 2)}",
                f"{fmt(fwd['triplet_blocks_over_etgnn_trunk'], 2)}, {fmt(fb['triplet_blocks_over_etgnn_trunk'], 2)}",
            ])
        lines.append(markdown_table(header, table))
    for row in rows:
        for group in row["groups"].values():
            for name, profile in group.get("profile", {}).items():
                lines += ["", f"Top operators of one forward+backward of {series_label(name)}, {row['atoms']} atoms "
                          "(torch.profiler, self CPU time):", "",
                          markdown_table(["operator", "self ms", "share", "calls"],
                                         [[f"`{op['op']}`", fmt(op["self_ms"]), f"{100 * op['self_share']:.0f}%",
                                           op["calls"]] for op in profile["top_ops"]])]
    if result["failures"]:
        lines += ["", "Failures: " + "; ".join(result["failures"]) + "."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = size_parser("python -m benchmarks.bench_backbones", __doc__,
                         f"sizes {QUICK_SIZES}, 1 call per case, in one process, no profile (a smoke run)",
                         DEFAULT_SIZES, "most timed calls per case (default 3, quick 1)")
    parser.add_argument("--warmup", type=int, help="calls before the measured ones, for calls under the budget "
                        "(default 1, quick 0)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timed calls per case (default 3)")
    parser.add_argument("--max-pyg-triplets", type=int,
                        help="skip PyG DimeNet++ on triplet sets larger than this (default 2.5e6, quick 1e5)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per worker subprocess (default 900)")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per size and group")
    parser.add_argument("--no-pyg", action="store_true", help="skip PyG DimeNet++")
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler runs")
    add_report_arguments(parser, "backbones.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = quick_defaults(parser.parse_args(argv), sizes=(QUICK_SIZES, DEFAULT_SIZES), repeats=(1, 3), warmup=(0, 1),
                          max_pyg_triplets=(100_000, 2_500_000))
    args.in_process = args.in_process or args.quick
    args.profile = not (args.no_profile or args.quick)
    if any(s < 1 for s in args.sizes):
        parser.error(f"--sizes: expected positive numbers of atoms, got {args.sizes}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    if args.worker:
        print(json.dumps(run_group(**json.loads(args.worker))))
        return None
    result = run(args.sizes, args.repeats, args.warmup, args.budget, args.max_pyg_triplets, args.in_process,
                 args.timeout, args.profile, not args.no_pyg)
    publish(result, args.out / "backbones.json", render_markdown(result), "backbones", None if args.no_docs else args.docs)
    return result


if __name__ == "__main__":
    main()
