"""Scaling benchmark: time and peak memory of every benchmark backbone and of the e3nn peer
against the number of atoms, and of ETGNN against its triplet cutoff, all in one process.

    python -m benchmarks.bench_scaling [--device cpu|cuda] [--precision float32|tf32|bf16] [--sizes 64 135 ...]
                                       [--repeats 5] [--quick]
                                       [--models reference etgnn ... e3nn] [--json benchmarks/results/scaling.json]
                                       [--docs-path docs/benchmarks.md | --no-docs] [--plots docs/benchmarks | --no-plots]

Structure: rattled cubic BaTiO3 perovskite supercells from :mod:`benchmarks.bench_backbones`
(a = 4.0 Å, Gaussian rattle 0.05 Å, seed 0; each requested size becomes the ``n1 x n2 x n3``
supercell with the closest number of atoms). Cutoff 5 Å, triplet cutoff 4 Å, float32.

Models: every tensorframe backbone config of :data:`benchmarks.suite.BACKBONES` under the heads
of the ``abo3-piezo`` crystal task (born with the acoustic sum rule, positive-definite
dielectric, piezo), and the e3nn peer (:mod:`benchmarks.peers.e3nn_peer`) predicting the same
three fields (Born charges with the structure mean removed) on an edges-only graph. MACE is
not measured: it lives in its own virtual environment.

Series 1, against atoms: for each size every model in turn (interleaved, so that a drift of the
machine hits all models alike): forward in eval mode under ``torch.inference_mode`` on a graph
built beforehand; one training step's forward + backward (train mode, gradients freed before
each call) of the sum over fields of the mean square of the predictions; and graph building
(with triplets, and edges only as the peer uses). Series 2, against the triplet cutoff: both
ETGNN configs on one supercell (about 640 atoms) with triplet cutoffs 2.5 ... 5.0 Å.

Precision (:mod:`benchmarks.precision`): float32 by default; ``tf32`` (CUDA products) or ``bf16``
(a tensorframe model's ``backbone_precision``, the peer under ``torch.autocast``). A run on
another device or precision than CPU float32 writes its own JSON, docs section and plots
(``scaling-<device>-<precision>``), so the CPU tables stay.

Timing (:func:`benchmarks.toolkit.measure_after_warmup`): one warm-up call, then the median of
``--repeats`` calls (a single call when the warm-up took longer than ``--slow-call-s``), then one
call for peak memory (:func:`benchmarks.toolkit.peak_memory_mb`).
Budget (:class:`SeriesGuard`): a model's series (one per mode) stops at the larger points once
one of its calls took longer than ``--max-call-s``, or when its last peak memory scaled linearly
in edges + triplets would exceed ``--max-memory-gb``; such points are recorded as
``{"skipped": reason}``. Writes the JSON, the section between ``<!-- scaling:start -->`` and
``<!-- scaling:end -->`` of the docs file, and two plots.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.bench_backbones import LATTICE, RATTLE, perovskite_supercell, supercell_reps
from benchmarks.precision import PRECISIONS, check_precision, matmul_precision, peer_call, tensorframe_call
from benchmarks.suite import BACKBONES
from benchmarks.toolkit import (
    DOCS,
    PLUGIN_DISTRIBUTIONS,
    RESULTS,
    cell,
    device_label,
    display_path,
    environment,
    fmt,
    free_memory,
    machine_line,
    markdown_table,
    measure_after_warmup,
    memory_method,
    mode_calls,
    num_parameters,
    prediction_loss,
    publish,
    quick_defaults,
    ratio,
    resolve_device,
    seeded_model,
    size_parser,
    slopes,
    written_by,
)
from tensorframe import TensorModel, get_registry
from tensorframe.graph import build_graph
from tensorframe.types import Graph, Sample

CUTOFF = 5.0
TRIPLET_CUTOFF = 4.0
DEFAULT_SIZES = (64, 135, 320, 640, 1080, 2040, 4000)  # -> 60, 135, 320, 640, 1080, 2025, 4000 atoms
QUICK_SIZES = (10, 40)
TRIPLET_SIZE = 640
QUICK_TRIPLET_SIZE = 10
TRIPLET_CUTOFFS = (2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
QUICK_TRIPLET_CUTOFFS = (3.0, 4.0)
TRIPLET_MODELS = ("etgnn", "etgnn-lean")
RATIO_BASE = "etgnn"
# The heads of the abo3-piezo crystal task (benchmarks.tasks), and the peer's fields for them.
HEADS = ({"name": "born", "acoustic_sum_rule": True}, {"name": "dielectric", "positive_definite": True},
         {"name": "piezo"})
PEER = "e3nn"
PEER_FIELDS = ("born_charges", "dielectric", "piezo")
PEER_ZERO_MEAN_FIELDS = ("born_charges",)  # the peer's acoustic sum rule: structure mean removed
PEER_SPECIES_SIZE = 135  # atoms of the cell the peer's average neighbour count is taken from
MODES = ("forward", "forward_backward")
MODE_LABELS = {"forward": "forward", "forward_backward": "forward + backward"}
GRAPH_KINDS = {"with_triplets": "graph build, triplets 4 Å (tensorframe)",
               "edges_only": "graph build, edges only (e3nn)"}
LARGE_ATOMS = 300  # slopes are also fitted over the sizes from here on, where fixed overheads fade
MAX_CALL_S = 20.0
MAX_MEMORY_GB = 12.0
SLOW_CALL_S = 2.0
DEFAULT_PLOTS = DOCS.parent / "benchmarks"
ATOMS_PLOT = "scaling_atoms.png"
TRIPLET_PLOT = "scaling_triplet_cutoff.png"
MACE_NOTE = ("MACE is not measured here: it lives in its own virtual environment "
             "(`benchmarks/peers/setup_mace_venv.sh`) and cannot be timed in this process beside the others")


def log(message: str) -> None:
    print(f"[bench_scaling] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- models


@dataclass
class Contender:
    """One model of the comparison. ``edges_only``: it runs on a graph without triplets (the peer).

    Shapes: module(graph) -> {field: (N, 3, ...) atom-level | (B, 3, ...) structure-level}
    """

    name: str
    module: nn.Module
    edges_only: bool
    description: str

    @property
    def parameters(self) -> int:
        return num_parameters(self.module, trainable=True)


def tensorframe_model(name: str, triplet_cutoff: float, device: torch.device) -> nn.Module:
    """The suite's backbone config ``name`` under :data:`HEADS`, seeded, float32 on ``device``."""
    return seeded_model(CUTOFF, triplet_cutoff, BACKBONES[name], HEADS).to(device)


def peer_available() -> tuple[bool, str]:
    try:
        import benchmarks.peers.e3nn_peer  # noqa: F401
    except ImportError as error:
        return False, f"e3nn peer not importable: {error}"
    return True, ""


def e3nn_model(device: torch.device) -> nn.Module:
    """The e3nn peer for :data:`PEER_FIELDS`, species and average neighbour count of a BaTiO3 cell."""
    from benchmarks.peers.e3nn_peer import build_peer

    registry = get_registry().items["field"]
    fields = {name: registry[name] for name in PEER_FIELDS}
    sample = perovskite_supercell(supercell_reps(PEER_SPECIES_SIZE))
    torch.manual_seed(0)
    return build_peer(fields, [sample], [0], CUTOFF, list(PEER_ZERO_MEAN_FIELDS)).to(device)


def model_names() -> list[str]:
    """Every name ``--models`` accepts: the suite's backbone configs, then the peer."""
    return [*BACKBONES, PEER]


def build_contenders(names: Sequence[str], device: torch.device) -> list[Contender]:
    out = []
    for name in names:
        if name == PEER:
            module = e3nn_model(device)
            description = (f"NequIP-style e3nn peer: {module.config.num_layers} layers, hidden {module.irreps_hidden}, "
                           f"spherical harmonics {module.irreps_sh}")
            out.append(Contender(name, module, edges_only=True, description=description))
        else:
            options = ", ".join(f"{k} {v}" for k, v in BACKBONES[name].items() if k != "name")
            description = f"tensorframe {BACKBONES[name]['name']}" + (f" ({options})" if options else "")
            out.append(Contender(name, tensorframe_model(name, TRIPLET_CUTOFF, device), edges_only=False,
                                 description=description))
    return out


def edges_only_graph(sample: Sample, device: torch.device) -> Graph:
    """The peer's graph: tensorframe's neighbour list at :data:`CUTOFF`, no triplets."""
    from benchmarks.peers.e3nn_peer import make_graph_fn

    return make_graph_fn(CUTOFF, torch.float32, device)([sample])


# --------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class Settings:
    """How every point is measured and when a series stops (see the module docstring)."""

    device: torch.device
    repeats: int
    slow_call_s: float
    max_call_s: float
    max_memory_mb: float
    precision: str = "float32"


@dataclass
class SeriesGuard:
    """Whether one model's series in one mode measures its next, larger point.

    It stops for good once a call took longer than ``max_call_s`` or a call failed; before each
    point it predicts the peak memory as the last point's, scaled linearly in ``work``
    (edges + triplets), and skips the point when that exceeds ``max_memory_mb``.
    """

    max_call_s: float
    max_memory_mb: float
    stop_reason: str | None = None
    last_work: float | None = None
    last_peak_mb: float | None = None

    def check(self, work: float) -> str | None:
        """The reason to skip a point of ``work`` edges + triplets, or None to measure it."""
        if self.stop_reason is not None:
            return self.stop_reason
        if self.last_peak_mb is not None and self.last_work:
            predicted = self.last_peak_mb * work / self.last_work
            if predicted > self.max_memory_mb:
                return (f"predicted peak memory {predicted:.0f} MiB (last point scaled linearly in edges + "
                        f"triplets) > {self.max_memory_mb:.0f} MiB")
        return None

    def record(self, result: dict[str, Any], work: float, where: str) -> None:
        self.last_work, self.last_peak_mb = work, result["peak_mb"]
        slowest_s = max(result["max_ms"], result["warmup_ms"]) / 1e3
        if slowest_s > self.max_call_s:
            self.stop_reason = f"a call at {where} took {slowest_s:.1f} s > {self.max_call_s:g} s"

    def stop(self, reason: str) -> None:
        self.stop_reason = reason


def run_point(call: Callable[[], Any], guard: SeriesGuard, work: float, where: str,
              settings: Settings) -> dict[str, Any]:
    """``measure_after_warmup(call)`` unless the guard skips it; out-of-memory and other failures are recorded, not raised."""
    reason = guard.check(work)
    if reason is not None:
        return {"skipped": reason}
    try:
        result = measure_after_warmup(call, settings.device, settings.repeats, settings.slow_call_s)
    except torch.cuda.OutOfMemoryError:
        free_memory(settings.device)
        guard.stop(f"out of CUDA memory at {where}")
        return {"skipped": f"out of CUDA memory at {where}"}
    except Exception as error:  # noqa: BLE001 - one failing model must not hide the others
        free_memory(settings.device)
        guard.stop(f"failed at {where}")
        return {"error": f"{type(error).__name__}: {error}"}
    guard.record(result, work, where)
    return result


def measure_model(module: nn.Module, graph: Graph, guards: dict[str, SeriesGuard], work: float, where: str,
                  settings: Settings) -> dict[str, dict[str, Any]]:
    """Forward (eval, inference mode) and forward + backward (train mode) of one model on one graph."""
    out = {}
    for mode, plain in mode_calls(module, module, prediction_loss, graph, torch.inference_mode).items():
        call = (tensorframe_call(module, plain, settings.precision) if isinstance(module, TensorModel)
                else peer_call(settings.device, plain, settings.precision))
        module.train(mode == "forward_backward")
        out[mode] = _per_atom(run_point(call, guards[mode], work, where, settings), graph.num_nodes)
        module.zero_grad(set_to_none=True)
        free_memory(settings.device)
    module.eval()
    return out


def _per_atom(result: dict[str, Any], atoms: int) -> dict[str, Any]:
    if "median_ms" in result:
        result["per_atom_us"] = 1e3 * result["median_ms"] / atoms
    return result


def _guards(settings: Settings) -> dict[str, SeriesGuard]:
    return {mode: SeriesGuard(settings.max_call_s, settings.max_memory_mb) for mode in MODES}


def atoms_series(sizes: Sequence[int], contenders: Sequence[Contender], settings: Settings) -> list[dict[str, Any]]:
    """Series 1: per size, graph building and every model's forward and forward + backward."""
    device = settings.device
    guards = {c.name: _guards(settings) for c in contenders}
    graph_guards = {kind: SeriesGuard(settings.max_call_s, settings.max_memory_mb) for kind in GRAPH_KINDS}
    rows = []
    for size in sorted(sizes):
        reps = supercell_reps(size)
        sample = perovskite_supercell(reps)
        graphs = {"with_triplets": build_graph([sample], CUTOFF, TRIPLET_CUTOFF, device=device)}
        graph = graphs["with_triplets"]
        if any(c.edges_only for c in contenders):
            graphs["edges_only"] = edges_only_graph(sample, device)
        atoms, work = sample.num_atoms, graph.num_edges + graph.num_triplets
        where = f"{atoms} atoms"
        log(f"{where} (supercell {'x'.join(map(str, reps))}): {graph.num_edges} edges, {graph.num_triplets} triplets")
        row: dict[str, Any] = {
            "requested": size, "supercell": list(reps), "atoms": atoms, "edges": graph.num_edges,
            "triplets": graph.num_triplets, "edges_per_atom": graph.num_edges / atoms,
            "triplets_per_atom": graph.num_triplets / atoms,
            "edges_only_graph": ({"edges": graphs["edges_only"].num_edges, "triplets": graphs["edges_only"].num_triplets}
                                 if "edges_only" in graphs else None),
            "graph_build": {}, "models": {},
        }
        builders = {"with_triplets": lambda sample=sample: build_graph([sample], CUTOFF, TRIPLET_CUTOFF, device=device),
                    "edges_only": lambda sample=sample: edges_only_graph(sample, device)}
        for kind in graphs:
            log(f"{where}: {GRAPH_KINDS[kind]}")
            row["graph_build"][kind] = _per_atom(run_point(builders[kind], graph_guards[kind], work, where, settings),
                                                 atoms)
        for contender in contenders:
            log(f"{where}: {contender.name}")
            row["models"][contender.name] = measure_model(
                contender.module, graphs["edges_only" if contender.edges_only else "with_triplets"],
                guards[contender.name], work, where, settings)
        rows.append(row)
        del graphs, graph
        free_memory(device)
    return rows


def triplet_series(size: int, cutoffs: Sequence[float], names: Sequence[str], settings: Settings) -> dict[str, Any]:
    """Series 2: the ETGNN configs ``names`` on one supercell against the triplet cutoff (cutoff fixed)."""
    device = settings.device
    reps = supercell_reps(size)
    sample = perovskite_supercell(reps)
    guards = {name: _guards(settings) for name in names}
    points = []
    for triplet_cutoff in sorted(cutoffs):
        graph = build_graph([sample], CUTOFF, triplet_cutoff, device=device)
        where = f"triplet cutoff {triplet_cutoff:g} Å"
        log(f"{sample.num_atoms} atoms, {where}: {graph.num_triplets} triplets")
        point: dict[str, Any] = {"triplet_cutoff_A": triplet_cutoff, "edges": graph.num_edges,
                                 "triplets": graph.num_triplets, "triplets_per_atom": graph.num_triplets / sample.num_atoms,
                                 "models": {}}
        for name in names:
            log(f"{where}: {name}")
            model = tensorframe_model(name, triplet_cutoff, device)
            point["models"][name] = measure_model(model, graph, guards[name], graph.num_edges + graph.num_triplets,
                                                  where, settings)
            del model
            free_memory(device)
        points.append(point)
        del graph
    return {"requested": size, "supercell": list(reps), "atoms": sample.num_atoms, "cutoff_A": CUTOFF,
            "models": list(names), "points": points}


# --------------------------------------------------------------------------- summaries


def scaling_summary(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per model and mode (and graph building): cost per atom at each size and log-log slopes of time
    against atoms over the measured sizes (all, and from :data:`LARGE_ATOMS` atoms on)."""

    def fit(results: list[dict[str, Any]]) -> dict[str, Any]:
        return {"per_atom_us": [x.get("per_atom_us") for x in results],
                **slopes([r["atoms"] for r in rows], [x.get("median_ms") for x in results], LARGE_ATOMS)}

    out: dict[str, dict[str, Any]] = {
        name: {mode: fit([r["models"][name][mode] for r in rows]) for mode in MODES} for name in names
    }
    kinds = [kind for kind in GRAPH_KINDS if all(kind in r["graph_build"] for r in rows)]
    out["graph_build"] = {kind: fit([r["graph_build"][kind] for r in rows]) for kind in kinds}
    return out


def ratios_to_base(rows: Sequence[dict[str, Any]], names: Sequence[str], base: str = RATIO_BASE) -> dict[str, Any]:
    """Per model and mode, ``model / base`` of the median time and of the peak memory at each size
    (None where either was not measured); empty when ``base`` is not among the models."""
    if base not in names:
        return {}
    out: dict[str, Any] = {"base": base, "time": {}, "peak_memory": {}}
    for name in names:
        for key, table in (("median_ms", out["time"]), ("peak_mb", out["peak_memory"])):
            table[name] = {mode: [ratio(r["models"][name][mode].get(key), r["models"][base][mode].get(key))
                                  for r in rows] for mode in MODES}
    return out


def skipped_points(result: dict[str, Any]) -> list[str]:
    """Every skipped or failed point, in words."""
    series = result.get("triplet_cutoff_series")
    places = [(row, f"{row['atoms']} atoms") for row in result["atoms_series"]]
    places += [(point, f"triplet cutoff {point['triplet_cutoff_A']:g} Å") for point in (series["points"] if series else [])]
    out = []
    for index, (row, where) in enumerate(places):
        out += [f"{name} {MODE_LABELS[mode]} at {where}: {key}: {value[key]}" for name, modes in row["models"].items()
                for mode, value in modes.items() for key in ("skipped", "error") if key in value]
        if index < len(result["atoms_series"]):
            out += [f"{GRAPH_KINDS[kind]} at {where}: {value.get('skipped') or value.get('error')}"
                    for kind, value in row["graph_build"].items() if "skipped" in value or "error" in value]
    return out


# --------------------------------------------------------------------------- driver


def run(sizes: Sequence[int], names: Sequence[str], triplet_size: int | None, triplet_cutoffs: Sequence[float],
        settings: Settings) -> dict[str, Any]:
    """Both series and their summaries: the JSON record."""
    env = environment(PLUGIN_DISTRIBUTIONS)
    peer_ok, peer_reason = peer_available() if PEER in names else (False, "")
    measured_names = [n for n in names if n != PEER or peer_ok]
    contenders = build_contenders(measured_names, settings.device)
    rows = atoms_series(sizes, contenders, settings)
    triplet_names = [n for n in TRIPLET_MODELS if n in names]
    triplets = (triplet_series(triplet_size, triplet_cutoffs, triplet_names, settings)
                if triplet_size is not None and triplet_names and triplet_cutoffs else None)
    device = settings.device
    result: dict[str, Any] = {
        "benchmark": "scaling",
        "environment": env,
        "device": device.type,
        "device_label": device_label(device),
        "settings": {
            "structure": "rattled cubic BaTiO3 perovskite supercell (benchmarks.bench_backbones.perovskite_supercell)",
            "lattice_A": LATTICE, "rattle_A": RATTLE, "density_per_A3": 5 / LATTICE**3, "seed": 0,
            "cutoff_A": CUTOFF, "triplet_cutoff_A": TRIPLET_CUTOFF, "dtype": "float32",
            "precision": settings.precision,
            "heads": [dict(h) for h in HEADS],
            "forward": "eval mode, torch.inference_mode, on a graph built beforehand",
            "forward_backward": "train mode, gradients freed (set to None) before each call, forward + backward of "
                                "the sum over fields of the mean square of the predictions (no optimizer step)",
            "graph_build": "tensorframe build_graph([sample]) with triplets from edges within the triplet cutoff, "
                           "and the e3nn peer's edges-only graph; neighbour list on the CPU, tensors on the device",
            "order": "all models in one process; for each size every model in turn (interleaved)",
            "timing": f"one warm-up call, then the median of {settings.repeats} call(s) (benchmarks.toolkit.time_call; "
                      f"1 call when the warm-up took more than {settings.slow_call_s:g} s)",
            "memory_method": memory_method(device),
            "memory_call": "one extra call after the timed ones",
            "budget": f"a model's series in one mode stops at larger points once a call took more than "
                      f"{settings.max_call_s:g} s or failed, and skips a point whose peak memory, predicted from the "
                      f"last point scaled linearly in edges + triplets, exceeds {settings.max_memory_mb / 1024:g} GiB",
            "repeats": settings.repeats, "slow_call_s": settings.slow_call_s, "max_call_s": settings.max_call_s,
            "max_memory_mb": settings.max_memory_mb, "large_atoms": LARGE_ATOMS,
            "mace": MACE_NOTE,
            "peer": "measured" if peer_ok else (peer_reason or "not requested"),
        },
        "models": {c.name: {"description": c.description, "parameters": c.parameters,
                            "graph": "edges only" if c.edges_only else "edges + triplets",
                            "config": dict(BACKBONES[c.name]) if c.name in BACKBONES else None}
                   for c in contenders},
        "atoms_series": rows,
        "scaling": scaling_summary(rows, [c.name for c in contenders]),
        "ratios": ratios_to_base(rows, [c.name for c in contenders]),
        "triplet_cutoff_series": triplets,
    }
    result["skipped"] = skipped_points(result)
    return result


# --------------------------------------------------------------------------- report


def _peer_words(status: str) -> str:
    if status == "measured":
        return ("The e3nn peer predicts the same three fields on an edges-only graph (Born charges with the "
                "structure mean removed; its dielectric is not constrained positive definite).")
    return f"e3nn peer: {status}."


def render_markdown(result: dict[str, Any], json_path: str, plots: dict[str, str]) -> str:
    """The docs section; ``plots`` maps each plot's file name to its path relative to the docs file."""
    env, settings, rows = result["environment"], result["settings"], result["atoms_series"]
    names = list(result["models"])
    atoms = [r["atoms"] for r in rows]
    heads = ", ".join(h["name"] + "".join(f" ({k})" for k in h if k != "name") for h in settings["heads"])
    lines = [
        "## Scaling: time and memory against atoms and triplet cutoff",
        "",
        written_by("python -m benchmarks.bench_scaling", env, json_path),
        "",
        f"- Device: **{result['device_label']}** (every number below).",
        machine_line(env, cuda=True),
        f"- Structure: {settings['structure']}, a = {settings['lattice_A']} Å ({settings['density_per_A3']:.3f} "
        f"atoms/Å³), rattle {settings['rattle_A']} Å; cutoff {settings['cutoff_A']} Å, triplet cutoff "
        f"{settings['triplet_cutoff_A']} Å; {settings['dtype']}"
        + (f" tensors, products in {settings['precision']} (benchmarks/precision.py)." if "precision" in settings else "."),
        f"- Models (heads: {heads}): "
        + "; ".join(f"*{n}* = {m['description']}, {m['parameters']:,} parameters" for n, m in result["models"].items())
        + f". {_peer_words(settings['peer'])} {settings['mace']}.",
        f"- Forward: {settings['forward']}. Forward + backward: {settings['forward_backward']}. "
        f"Graph build: {settings['graph_build']}. {settings['order'].capitalize()}.",
        f"- Timing: {settings['timing']}. Peak memory ({settings['memory_call']}): {settings['memory_method']}.",
        f"- Budget: {settings['budget']}; such points read *skipped* and are listed below.",
        "",
        "Graphs:",
        "",
        markdown_table(
            ["atoms", "supercell", "edges", "triplets", "edges / atom", "triplets / atom",
             *(f"{GRAPH_KINDS[k]} (ms)" for k in GRAPH_KINDS)],
            [[r["atoms"], "×".join(map(str, r["supercell"])), r["edges"], r["triplets"], fmt(r["edges_per_atom"]),
              fmt(r["triplets_per_atom"]), *(cell(r["graph_build"].get(k, {})) for k in GRAPH_KINDS)]
             for r in rows]),
    ]
    scaling = result["scaling"]
    large = settings["large_atoms"]
    for mode in MODES:
        header = ["", *(f"{a} atoms" for a in atoms), "slope", f"slope (≥ {large})"]
        table = [[n, *(cell(r["models"][n][mode]) for r in rows), fmt(scaling[n][mode]["slope"], 2),
                  fmt(scaling[n][mode]["slope_large"], 2)] for n in names]
        if mode == "forward":
            table += [[GRAPH_KINDS[k], *(cell(r["graph_build"][k]) for r in rows), fmt(fit["slope"], 2),
                       fmt(fit["slope_large"], 2)] for k, fit in scaling["graph_build"].items()]
        lines += ["", f"{MODE_LABELS[mode].capitalize()} time (ms; slope = fitted slope of log time against "
                  f"log atoms, 1 = linear; '≥ {large}' fits the sizes from {large} atoms on):", "",
                  markdown_table(header, table)]
    for key, what in (("per_atom_us", "time per atom (µs)"), ("peak_mb", "peak memory (MiB)")):
        for mode in MODES:
            lines += ["", f"{MODE_LABELS[mode].capitalize()} {what}:", "",
                      markdown_table(["", *(f"{a} atoms" for a in atoms)],
                                     [[n, *(cell(r["models"][n][mode], key) for r in rows)] for n in names])]
    ratios = result["ratios"]
    if ratios:
        base = ratios["base"]
        for key, what in (("time", "time"), ("peak_memory", "peak memory")):
            table = [[f"{n} / {base}, {MODE_LABELS[m]}", *(fmt(v, 2) for v in ratios[key][n][m])]
                     for n in names if n != base for m in MODES]
            lines += ["", f"Ratio of {what}, model / {base}:", "",
                      markdown_table(["", *(f"{a} atoms" for a in atoms)], table)]
    if ATOMS_PLOT in plots:
        lines += ["", f"![time against atoms]({plots[ATOMS_PLOT]})"]
    series = result["triplet_cutoff_series"]
    if series:
        lines += ["", f"ETGNN against the triplet cutoff: {series['atoms']} atoms (supercell "
                  f"{'×'.join(map(str, series['supercell']))}), cutoff {series['cutoff_A']} Å, "
                  f"{series['points'][0]['edges']} edges:", ""]
        header = ["model", "triplet cutoff (Å)", "triplets", "triplets / atom", "forward (ms)",
                  "forward + backward (ms)", "forward peak (MiB)", "forward + backward peak (MiB)"]
        table = [[name, f"{p['triplet_cutoff_A']:g}", p["triplets"], fmt(p["triplets_per_atom"]),
                  cell(p["models"][name]["forward"]), cell(p["models"][name]["forward_backward"]),
                  cell(p["models"][name]["forward"], "peak_mb"), cell(p["models"][name]["forward_backward"], "peak_mb")]
                 for name in series["models"] for p in series["points"]]
        lines.append(markdown_table(header, table))
        if TRIPLET_PLOT in plots:
            lines += ["", f"![time and memory against the triplet cutoff]({plots[TRIPLET_PLOT]})"]
    if result["skipped"]:
        lines += ["", "Skipped or failed:", "", *(f"- {item}" for item in result["skipped"])]
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mode_legend(ax: Any, **placement: Any) -> None:
    """The models' colours plus the two line styles: forward solid, forward + backward dashed."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="gray", linestyle="-"), Line2D([], [], color="gray", linestyle="--")]
    labels += ["forward", "forward + backward"]
    ax.legend(handles, labels, fontsize=8, **(placement or {"loc": "best"}))


def _plot_model(ax: Any, color: str, name: str, points: dict[str, list[tuple[float, float]]]) -> None:
    """One model's points per mode: forward solid, forward + backward dashed, labelled once."""
    for mode, style in zip(MODES, ("-", "--"), strict=True):
        if points[mode]:
            ax.plot(*zip(*points[mode], strict=True), linestyle=style, marker="o", markersize=3, color=color,
                    label=name if mode == "forward" else None)


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_atoms(result: dict[str, Any], path: Path) -> None:
    """Time against atoms, log-log: one colour per model, forward solid, forward + backward dashed."""
    plt = _pyplot()
    rows = result["atoms_series"]
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(9.5, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, name in enumerate(result["models"]):
        _plot_model(ax, colors[index % len(colors)], name,
                    {mode: [(r["atoms"], r["models"][name][mode]["median_ms"]) for r in rows
                            if "median_ms" in r["models"][name][mode]] for mode in MODES})
    for kind, style in zip(GRAPH_KINDS, (":", "-."), strict=False):
        points = [(r["atoms"], r["graph_build"][kind]["median_ms"]) for r in rows
                  if "median_ms" in r["graph_build"].get(kind, {})]
        if points:
            ax.plot(*zip(*points, strict=True), linestyle=style, marker=".", color="black", label=GRAPH_KINDS[kind])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("atoms")
    ax.set_ylabel("time (ms)")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks([r["atoms"] for r in rows])
    ax.set_title(f"Time against atoms, {result['device_label']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    _mode_legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(plt, fig, path)


def plot_triplet_cutoff(result: dict[str, Any], path: Path) -> None:
    """Time (left) and peak memory (right) of the ETGNN configs against the triplet cutoff; the
    x ticks also give the triplets per atom."""
    plt = _pyplot()
    series = result["triplet_cutoff_series"]
    points = series["points"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key, ylabel in zip(axes, ("median_ms", "peak_mb"), ("time (ms)", "peak memory (MiB)"), strict=True):
        for index, name in enumerate(series["models"]):
            _plot_model(ax, colors[index % len(colors)], name,
                        {mode: [(p["triplet_cutoff_A"], p["models"][name][mode][key]) for p in points
                                if key in p["models"][name][mode]] for mode in MODES})
        ax.set_yscale("log")
        ax.set_xticks([p["triplet_cutoff_A"] for p in points])
        ax.set_xticklabels([f"{p['triplet_cutoff_A']:g}\n{p['triplets_per_atom']:.0f}" for p in points], fontsize=8)
        ax.set_xlabel("triplet cutoff (Å) / triplets per atom")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        _mode_legend(ax)
    fig.suptitle(f"ETGNN against the triplet cutoff, {series['atoms']} atoms, cutoff {series['cutoff_A']} Å, "
                 f"{result['device_label']}", fontsize=9)
    _save(plt, fig, path)


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = size_parser("python -m benchmarks.bench_scaling", __doc__,
                         f"sizes {QUICK_SIZES}, 1 repeat, triplet series at {QUICK_TRIPLET_SIZE} atoms with cutoffs "
                         f"{QUICK_TRIPLET_CUTOFFS} (a smoke run)",
                         DEFAULT_SIZES, "timed calls per point after the warm-up (default 5, quick 1)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available, else cpu)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="float32 (default), tf32 (CUDA products) or bf16 (autocast)")
    parser.add_argument("--models", nargs="+", choices=model_names(), help="models to measure (default: all)")
    parser.add_argument("--triplet-size", type=int, help=f"atoms of the triplet-cutoff series (default {TRIPLET_SIZE})")
    parser.add_argument("--triplet-cutoffs", type=float, nargs="*",
                        help=f"triplet cutoffs in Å (default {TRIPLET_CUTOFFS}; none: skip the series)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; set OMP_NUM_THREADS too)")
    parser.add_argument("--max-call-s", type=float, default=MAX_CALL_S,
                        help=f"stop a series after a call longer than this (default {MAX_CALL_S:g} s)")
    parser.add_argument("--max-memory-gb", type=float, default=MAX_MEMORY_GB,
                        help=f"skip points predicted above this peak memory (default {MAX_MEMORY_GB:g} GiB)")
    parser.add_argument("--slow-call-s", type=float, default=SLOW_CALL_S,
                        help=f"time a single call when the warm-up took longer (default {SLOW_CALL_S:g} s)")
    parser.add_argument("--json", type=Path, default=None,
                        help="result file (default benchmarks/results/scaling.json; scaling-<device>-<precision>.json "
                             "for another device or precision than CPU float32)")
    parser.add_argument("--docs-path", type=Path, default=DOCS, help="markdown file whose scaling section is rewritten")
    parser.add_argument("--no-docs", action="store_true", help="do not touch the markdown file")
    parser.add_argument("--plots", type=Path, default=DEFAULT_PLOTS, help="folder for the two PNG plots")
    parser.add_argument("--no-plots", action="store_true", help="write no plots")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="measure nothing: write the docs section and plots of this stored record (e.g. a JSON "
                             "that benchmarks/gpu_pass.sh brought back)")
    args = quick_defaults(parser.parse_args(argv), sizes=(QUICK_SIZES, DEFAULT_SIZES), repeats=(1, 5),
                          models=(model_names(), model_names()), triplet_size=(QUICK_TRIPLET_SIZE, TRIPLET_SIZE),
                          triplet_cutoffs=(QUICK_TRIPLET_CUTOFFS, TRIPLET_CUTOFFS))
    if any(s < 1 for s in [*args.sizes, args.triplet_size]):
        parser.error(f"--sizes / --triplet-size: expected positive numbers of atoms, got {args.sizes}, {args.triplet_size}")
    if any(not 0 < c <= CUTOFF for c in args.triplet_cutoffs):
        parser.error(f"--triplet-cutoffs: expected values in (0, {CUTOFF}] Å, got {args.triplet_cutoffs}")
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.from_json is not None:  # a stored record (e.g. the GPU pass's): its docs section and plots only
        result = json.loads(args.from_json.read_text())
        section = output_name(torch.device(result["device"]), result["settings"].get("precision", "float32"))
        json_path = args.from_json
    else:
        device = resolve_device(args.device)
        check_precision(args.precision, device)
        section = output_name(device, args.precision)
        json_path = args.json or RESULTS / f"{section}.json"
        torch.set_num_threads(args.threads)
        if device.type == "cpu" and os.environ.get("OMP_NUM_THREADS") != str(args.threads):
            log(f"warning: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} while torch uses {args.threads} "
                f"thread(s); CPU timings are meant to run with OMP_NUM_THREADS={args.threads}")
        settings = Settings(device, args.repeats, args.slow_call_s, args.max_call_s, 1024 * args.max_memory_gb,
                            args.precision)
        with matmul_precision(args.precision, device):
            result = run(args.sizes, args.models, args.triplet_size, args.triplet_cutoffs, settings)
    plots: dict[str, str] = {}
    suffix = "" if section == "scaling" else section.removeprefix("scaling")
    for name, plot in ((ATOMS_PLOT, plot_atoms), (TRIPLET_PLOT, plot_triplet_cutoff)):
        if not args.no_plots and (name == ATOMS_PLOT or result["triplet_cutoff_series"]):
            path = args.plots / name.replace(".png", f"{suffix}.png")
            plot(result, path)
            plots[name] = os.path.relpath(path.resolve(), args.docs_path.resolve().parent)
    markdown = render_markdown(result, display_path(json_path), plots)
    publish(result, json_path, markdown, section, None if args.no_docs else args.docs_path)
    return result


def output_name(device: torch.device, precision: str) -> str:
    """``scaling`` for CPU float32 (the docs' main section), else ``scaling-<device>-<precision>``."""
    return "scaling" if device.type == "cpu" and precision == "float32" else f"scaling-{device.type}-{precision}"


if __name__ == "__main__":
    main()
