"""Per-stage overhead of ``model.predict`` on small molecules (issue 13, item 3).

A batch of 16 five-atom molecules from the embedded default data, the demo's model
(reference backbone; energy, force, dipole, polarizability, born and hyperpolarizability
heads; cutoff 5 Å, triplet cutoff 4 Å), CPU, one thread. Each stage of a prediction is timed
on its own (median of many calls after warm-up): structure checks (``checked_samples``),
neighbour lists (per structure: a dense distance matrix for small
molecules, vesin otherwise), triplets, geometry, the whole ``make_graph``, the
backbone, each head, the scalings, the output split, the numpy conversion, and the whole
``predict``.

``--baseline REF`` also loads ``tensorframe/graph/{neighbors,triplets,collate}.py`` and
``TensorModel.predict`` as they are at git revision ``REF`` into this process, and times every
stage old and new in alternating rounds (:func:`benchmarks.toolkit.interleaved_rounds`), so
both see the same machine; stages outside those files run the same code in both columns.
The old and new graphs and predictions must be identical.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_overhead [--baseline HEAD]`` (about a
minute); writes ``benchmarks/results/overhead.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import types
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.toolkit import REPO_ROOT, RESULTS, environment, interleaved_rounds, seeded_model, time_call, write_json
from tensorframe.commands.demo import demo_config
from tensorframe.datasets import load_default_dataset
from tensorframe.graph.collate import build_graph, derived_geometry, edge_geometry
from tensorframe.graph.neighbors import neighbor_list
from tensorframe.graph.triplets import build_triplets
from tensorframe.outputs import split_by_structure
from tensorframe.types import Graph, Sample

BATCH, ATOMS = 16, 5
GRAPH_MODULES = ("neighbors", "triplets", "collate")


def five_atom_batch() -> list[Sample]:
    """The first 16 five-atom molecules of the embedded data set."""
    samples = [s for s in load_default_dataset() if s.num_atoms == ATOMS]
    return samples[:BATCH]


def demo_model() -> torch.nn.Module:
    """The demo's model on the reference backbone, seeded."""
    model = demo_config("reference", 1.0, 1, 0, "unused")["model"]
    heads = model.pop("heads")
    backbone = model.pop("backbone")
    net = seeded_model(model.pop("cutoff"), model.pop("triplet_cutoff"), backbone, heads, **model)
    return net.eval()


def stage_calls(model: torch.nn.Module, samples: list[Sample], graph_fns: types.SimpleNamespace) -> dict[str, Callable]:
    """``{stage: call}`` for every stage of ``predict``; graph stages use ``graph_fns``."""
    settings = model.graph_settings
    graph = model.make_graph(samples)
    features = model.features(graph)
    raw = {name: head(graph, features) for name, head in model.heads.items()}
    outputs = model(graph)
    rows = split_by_structure(outputs, model.fields, graph.ptr)  # "split" and "numpy": as before
    dtype = next(model.parameters()).dtype

    def neighbours() -> list:
        return [graph_fns.neighbor_list(s, settings.cutoff, settings.max_neighbors) for s in samples]

    def triplets() -> tuple:
        return graph_fns.build_triplets(graph.idx_i, graph.idx_j, graph.cell_shift, graph.positions.shape[0],
                                        graph.edge_len < settings.triplet_cutoff)

    def geometry() -> dict:
        vec, length, direction = graph_fns.edge_geometry(graph.positions, graph.cell, graph.idx_i, graph.idx_j,
                                                         graph.cell_shift, graph.edge_batch)
        return graph_fns.derived_geometry(length, direction, graph.idx_kj, graph.idx_ji, settings.cutoff,
                                          settings.triplet_cutoff)

    def whole_graph() -> Graph:
        return graph_fns.build_graph(samples, settings.cutoff, settings.triplet_cutoff, settings.max_neighbors,
                                     dtype=dtype, activation_bytes=model.activation_bytes())

    calls: dict[str, Callable] = {
        "checks": lambda: model.checked_samples(samples),
        "neighbours": neighbours,
        "triplets": triplets,
        "geometry": geometry,
        "make_graph": whole_graph,
        "backbone": lambda: model.features(graph),
    }
    for name, head in model.heads.items():
        calls[f"head:{name}"] = lambda head=head: head(graph, features)
    calls["scaling"] = lambda: {name: model.scaling[name](raw[name], graph) for name in raw}
    calls["forward"] = lambda: model(graph)
    calls["split"] = lambda: split_by_structure(outputs, model.fields, graph.ptr)
    calls["numpy"] = lambda: [{k: v.detach().cpu().numpy() for k, v in row.items()} for row in rows]
    calls["split+numpy"] = lambda: graph_fns.split_to_numpy(outputs, model.fields, graph.ptr)
    calls["predict"] = lambda: graph_fns.predict(model, samples)
    return calls


def _split_then_numpy(outputs: dict, fields: dict, ptr: torch.Tensor) -> list[dict]:
    """The outputs to numpy as ``predict`` did before: split the tensors, convert every slice."""
    return [{k: v.detach().cpu().numpy() for k, v in row.items()} for row in split_by_structure(outputs, fields, ptr)]


def _numpy_then_split(outputs: dict, fields: dict, ptr: torch.Tensor) -> list[dict]:
    """As ``predict`` does now: convert each field once, split the numpy arrays."""
    rows = split_by_structure({k: v.detach().cpu().numpy() for k, v in outputs.items()}, fields, ptr)
    return [{k: np.asarray(v) for k, v in row.items()} for row in rows]


def current_graph_fns() -> types.SimpleNamespace:
    return types.SimpleNamespace(neighbor_list=neighbor_list, build_triplets=build_triplets,
                                 edge_geometry=edge_geometry, derived_geometry=derived_geometry,
                                 build_graph=build_graph, split_to_numpy=_numpy_then_split,
                                 predict=lambda model, samples: model.predict(samples))


def _load_old(ref: str, path: str) -> types.ModuleType:
    """The module at ``path`` as it is at git revision ``ref``, loaded under a private name."""
    source = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True).stdout
    module = types.ModuleType("_baseline_" + path.replace("/", "_").removesuffix(".py"))
    exec(compile(source, f"{ref}:{path}", "exec"), module.__dict__)  # noqa: S102 - our own file at a revision
    return module


def baseline_graph_fns(ref: str) -> types.SimpleNamespace:
    """The graph functions of ``tensorframe/graph/*.py`` and ``TensorModel.predict`` at git
    revision ``ref``, loaded as private modules; the old ``build_graph`` uses the old
    ``neighbor_list`` and ``build_triplets``, the old ``predict`` the old ``build_graph``."""
    neighbors = _load_old(ref, "tensorframe/graph/neighbors.py")
    triplets = _load_old(ref, "tensorframe/graph/triplets.py")
    old = _load_old(ref, "tensorframe/graph/collate.py")
    old.neighbor_list, old.build_triplets = neighbors.neighbor_list, triplets.build_triplets
    old_model = _load_old(ref, "tensorframe/model.py")

    def predict(model: torch.nn.Module, samples: list[Sample]) -> Any:
        with patched_build_graph(old.build_graph):
            return old_model.TensorModel.predict(model, samples)

    return types.SimpleNamespace(neighbor_list=neighbors.neighbor_list, build_triplets=triplets.build_triplets,
                                 edge_geometry=old.edge_geometry, derived_geometry=old.derived_geometry,
                                 build_graph=old.build_graph, split_to_numpy=_split_then_numpy, predict=predict)


@contextmanager
def patched_build_graph(fn: Callable) -> Any:
    """``TensorModel.make_graph`` (via ``tensorframe.graph.cache.build_graph``, which its
    :class:`GraphRecipe` calls) uses ``fn`` inside."""
    import tensorframe.graph.cache as cache_module

    saved = cache_module.build_graph
    cache_module.build_graph = fn
    try:
        yield
    finally:
        cache_module.build_graph = saved


def assert_same_graph(a: Graph, b: Graph) -> None:
    for field in dataclasses.fields(Graph):
        x, y = getattr(a, field.name), getattr(b, field.name)
        same = torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        if not same:
            raise AssertionError(f"baseline and current graphs differ in {field.name}")


def run(repeats: int, baseline: str | None) -> dict[str, Any]:
    torch.set_num_threads(1)
    samples = five_atom_batch()
    model = demo_model()
    current = stage_calls(model, samples, current_graph_fns())
    device = torch.device("cpu")
    result: dict[str, Any] = {
        "environment": environment(),
        "setup": {"structures": len(samples), "atoms_each": ATOMS, "model": "demo config, reference backbone",
                  "heads": list(model.heads), "repeats": repeats},
    }
    if baseline is None:
        result["stages_ms"] = {name: time_call(call, device, repeats, warmup=5).median_ms
                               for name, call in current.items()}
        return result
    old_fns = baseline_graph_fns(baseline)
    settings = model.graph_settings
    options = dict(dtype=torch.float32, activation_bytes=model.activation_bytes())
    assert_same_graph(old_fns.build_graph(samples, settings.cutoff, settings.triplet_cutoff, settings.max_neighbors,
                                          **options),
                      build_graph(samples, settings.cutoff, settings.triplet_cutoff, settings.max_neighbors, **options))
    old = stage_calls(model, samples, old_fns)
    for a, b in zip(old_fns.predict(model, samples), model.predict(samples), strict=True):
        if a.keys() != b.keys() or not all(type(a[k]) is type(b[k]) and a[k].dtype == b[k].dtype
                                           and a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a):
            raise AssertionError("baseline and current predictions differ")
    table = {}
    for name in current:
        times = interleaved_rounds({"before": old[name], "after": current[name]}, repeats, alternate=True)
        before, after = (statistics.median(times[key]) * 1e3 for key in ("before", "after"))
        table[name] = {"before_ms": round(before, 4), "after_ms": round(after, 4),
                       "ratio": round(before / after, 2) if after else None}
    result["baseline"] = baseline
    result["note"] = ("before: tensorframe/graph/{neighbors,triplets,collate}.py and TensorModel.predict at git "
                      "revision `baseline`, loaded into this process; after: the working tree; rounds alternate. "
                      "Stages outside those run the same code in both columns (their spread is the noise).")
    result["stages_ms"] = table
    return result


def print_table(result: dict[str, Any]) -> None:
    for name, value in result["stages_ms"].items():
        if isinstance(value, dict):
            print(f"{name:28s} {value['before_ms']:9.3f} {value['after_ms']:9.3f}  x{value['ratio']}")
        else:
            print(f"{name:28s} {value:9.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--baseline", default=None, help="git revision of the graph modules to compare with")
    parser.add_argument("--json", default=str(RESULTS / "overhead.json"))
    args = parser.parse_args(argv)
    result = run(args.repeats, args.baseline)
    print_table(result)
    write_json(Path(args.json), result)


if __name__ == "__main__":
    main()
