"""ETGNN's speed paths side by side (issue 13, items 1 and 4): the compiled triplet kernels
against the pure-PyTorch ones, inference on blocks of triplets against whole tensors, the
vectorised spherical basis against the per-order one, and torch.compile against eager.

Every comparison runs in one process on the same prebuilt graphs of the becs-eps task (the
e3nn crystal BECs and dielectric tensors; cutoffs 6 Å / 4 Å, max_neighbors 32): the variants
are timed in interleaved rounds after a warm-up call each (median round). Inference: eval mode
under ``torch.no_grad`` over the test split, batch 16. Training: forward, the loss
``sum(mean(prediction^2))`` and backward over 64 training crystals, batch 8 (no optimizer
step). Configurations: ``paper`` (the plugin's defaults: hidden 128, triplet_dim 64,
int_emb_size 64, 4 blocks), and the suite's ``etgnn`` and ``etgnn-lean``; heads: born +
dielectric (they read triplet features), a force head only, or a conservative energy head
(forces = -dE/dr; its training differentiates the forces). The last two read edge features:
ETGNN drops its triplet chain, and in inference the edge update's triplet sum is the fused
kernel. Blocks: ETGNN's triplet embedding and updates and the tensor heads' triplet coefficient
MLPs run on blocks of triplets in inference (``tensorframe.ops.blocking.BLOCK_VALUES`` values of
the widest intermediate per block); "whole tensors" sets the block larger than any batch (the
same code, one block).

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_kernels`` (about 10 minutes, compiling
included); writes ``benchmarks/results/kernels.json`` and the kernels section of
docs/benchmarks.md. ``--quick``: a few crystals and one round, no compile (the smoke test).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import tensorframe.ops.blocking as blocking
from benchmarks.suite import BACKBONES
from benchmarks.tasks import TASKS, load_task
from benchmarks.toolkit import (
    DOCS,
    RESULTS,
    environment,
    fmt,
    interleaved_rounds,
    machine_line,
    markdown_table,
    publish,
    seeded_model,
    written_by,
)
from tensorframe import compile_model
from tensorframe.ops.native import status as native_status
from tensorframe.ops.triplet_kernels import native_kernels

CUTOFF, TRIPLET_CUTOFF, MAX_NEIGHBORS = 6.0, 4.0, 32
CONFIGS = {"paper": {"name": "etgnn"}, "etgnn": BACKBONES["etgnn"], "etgnn-lean": BACKBONES["etgnn-lean"]}
HEADS = {"tensor": (TASKS["becs-eps"].heads, False), "force": ([{"name": "force"}], False),
         "conservative": ([{"name": "scalar", "field": "energy"}], True)}
HEADS_LABEL = {"tensor": "born + dielectric", "force": "force (no triplet chain)",
               "conservative": "energy, forces = -dE/dr (no triplet chain)"}
# (configuration, heads, mode) of the compiled-vs-PyTorch kernel rows
KERNEL_CASES = [("paper", "tensor", "training"), ("paper", "force", "training"),
                ("paper", "conservative", "training"), ("paper", "tensor", "inference"),
                ("etgnn", "tensor", "inference"), ("etgnn-lean", "tensor", "inference"),
                ("etgnn-lean", "force", "inference")]


def workload(config: str, heads: str, mode: str, samples: Sequence[Any]) -> tuple[torch.nn.Module, Callable[[], Any]]:
    """A seeded model and a call that runs it over ``samples`` in ``mode`` on prebuilt graphs."""
    head_configs, conservative = HEADS[heads]
    model = seeded_model(CUTOFF, TRIPLET_CUTOFF, CONFIGS[config], head_configs, max_neighbors=MAX_NEIGHBORS,
                         conservative=conservative)
    batch = 8 if mode == "training" else 16
    graphs = [model.make_graph(samples[i:i + batch]) for i in range(0, len(samples), batch)]
    if mode == "training":
        model.train()

        def run() -> None:
            for graph in graphs:
                outputs = model(graph)
                sum(value.float().square().mean() for value in outputs.values()).backward()
    else:
        model.eval()

        def run() -> None:
            with torch.no_grad():
                for graph in graphs:
                    model(graph)
    return model, run


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in times.items()}


def with_kernels(run: Callable[[], Any], compiled: bool) -> Callable[[], None]:
    """``run`` with the compiled triplet kernels on or off."""
    def call() -> None:
        with native_kernels(compiled):
            run()
    return call


def kernel_rows(train: Sequence[Any], test: Sequence[Any], repeats: int) -> list[dict[str, Any]]:
    """Compiled against pure-PyTorch kernels for every case of :data:`KERNEL_CASES`."""
    rows = []
    for config, heads, mode in KERNEL_CASES:
        _, run = workload(config, heads, mode, train[:64] if mode == "training" else test)
        calls = {"compiled": with_kernels(run, True), "pytorch": with_kernels(run, False)}
        seconds = medians(interleaved_rounds(calls, repeats, alternate=True))
        rows.append({"config": config, "heads": heads, "mode": mode, "compiled_s": seconds["compiled"],
                     "pytorch_s": seconds["pytorch"], "speedup": seconds["pytorch"] / seconds["compiled"]})
        print(rows[-1], flush=True)
    return rows


def blocking_rows(test: Sequence[Any], repeats: int) -> list[dict[str, Any]]:
    """Inference over the test split (born + dielectric heads) on blocks of triplets against
    whole tensors, for the suite's two ETGNN sizes."""
    rows, default = [], blocking.BLOCK_VALUES

    def with_block(run: Callable[[], Any], size: int) -> Callable[[], None]:
        def call() -> None:
            blocking.BLOCK_VALUES = size
            try:
                run()
            finally:
                blocking.BLOCK_VALUES = default
        return call

    for config in ("etgnn", "etgnn-lean"):
        _, run = workload(config, "tensor", "inference", test)
        calls = {"blocks": with_block(run, default), "whole": with_block(run, 1 << 40)}
        # Three times the rounds, and the median of the ratio within each round (both timed back
        # to back): a gain of ~10 % is within the round-to-round spread of this shared machine.
        times = interleaved_rounds(calls, 3 * repeats, alternate=True)
        ratios = [whole / blocks for blocks, whole in zip(times["blocks"], times["whole"], strict=True)]
        seconds = medians(times)
        rows.append({"config": config, "block_values": default, "blocks_s": seconds["blocks"],
                     "whole_s": seconds["whole"], "speedup": statistics.median(ratios),
                     "speedup_range": [min(ratios), max(ratios)], "rounds": len(ratios)})
        print(rows[-1], flush=True)
    return rows


def basis_row(test: Sequence[Any], repeats: int) -> dict[str, Any]:
    """The radial part of the spherical basis on one test batch's triplet edges: every order in
    one pass (now) against one order at a time (before)."""
    from tensorframe_etgnn.basis import spherical_bessel

    model = seeded_model(CUTOFF, TRIPLET_CUTOFF, CONFIGS["paper"], HEADS["tensor"][0], max_neighbors=MAX_NEIGHBORS)
    basis = model.backbone.sbf
    graph = model.make_graph(test[:16])
    lengths = graph.edge_len[torch.unique(graph.idx_kj)]

    def per_order() -> torch.Tensor:
        zeros, norms = basis._zeros.to(lengths), basis._norms.to(lengths)
        scaled = (lengths / basis.cutoff).unsqueeze(-1)
        return torch.stack([spherical_bessel(order, scaled * zeros[order]) for order in range(basis.num_spherical)],
                           dim=-2) * norms

    seconds = medians(interleaved_rounds({"vectorised": lambda: basis.radial(lengths), "per_order": per_order},
                                         repeats * 10, alternate=True))
    difference = float((basis.radial(lengths) - per_order()).abs().max())
    return {"edges": int(lengths.shape[0]), "vectorised_s": seconds["vectorised"], "per_order_s": seconds["per_order"],
            "speedup": seconds["per_order"] / seconds["vectorised"], "max_abs_difference": difference}


def compile_row(config: str, test: Sequence[Any], repeats: int) -> dict[str, Any]:
    """torch.compile (dynamic shapes) against eager inference: compile time and speed-up."""
    eager_model, eager = workload(config, "tensor", "inference", test)
    compiled_model, compiled = workload(config, "tensor", "inference", test)
    compile_model(compiled_model)
    started = time.perf_counter()
    compiled()  # compiles on the first batch; the other batch sizes reuse it (dynamic shapes)
    first_s = time.perf_counter() - started
    seconds = medians(interleaved_rounds({"eager": eager, "compiled": compiled}, repeats, alternate=True))
    return {"config": config, "first_call_s": first_s, "eager_s": seconds["eager"], "compiled_s": seconds["compiled"],
            "speedup": seconds["eager"] / seconds["compiled"]}


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = ["## Kernels: compiled triplet kernels, blocks of triplets, spherical basis, torch.compile", "",
             written_by("python -m benchmarks.bench_kernels", result["environment"], "benchmarks/results/kernels.json"),
             "", machine_line(result["environment"]),
             f"- becs-eps: {s['train']} training / {s['test']} test crystals, cutoffs {CUTOFF} / {TRIPLET_CUTOFF} Å, "
             f"max_neighbors {MAX_NEIGHBORS}, float32, prebuilt graphs; {s['repeats']} interleaved rounds after a "
             f"warm-up call each, median. Native kernels: {result['native']}.",
             "", "Compiled triplet kernels against the pure-PyTorch ones (same model, same graphs):", ""]
    lines.append(markdown_table(
        ["ETGNN size", "heads", "mode", "compiled kernels (s)", "PyTorch kernels (s)", "speed-up"],
        [[r["config"], HEADS_LABEL[r["heads"]], r["mode"],
          fmt(r["compiled_s"]), fmt(r["pytorch_s"]), f"{r['speedup']:.2f}x"] for r in result["kernels"]]))
    if result.get("blocking"):
        lines += ["", "Inference (born + dielectric heads) on blocks of triplets against whole tensors (same code, one "
                  f"block), {result['blocking'][0]['rounds']} interleaved rounds; speed-up: the median of the "
                  "ratio within each round, and its range:", ""]
        lines.append(markdown_table(
            ["ETGNN size", "values per block", "blocks (s)", "whole tensors (s)", "speed-up", "range over rounds"],
            [[r["config"], str(r["block_values"]), fmt(r["blocks_s"]), fmt(r["whole_s"]), f"{r['speedup']:.2f}x",
              f"{r['speedup_range'][0]:.2f}-{r['speedup_range'][1]:.2f}x"] for r in result["blocking"]]))
    b = result["basis"]
    lines += ["", f"Spherical basis, radial part on the {b['edges']} triplet edges of one test batch: every order in "
              f"one pass {fmt(b['vectorised_s'] * 1e3)} ms, one order at a time (before) "
              f"{fmt(b['per_order_s'] * 1e3)} ms ({b['speedup']:.1f}x); largest difference "
              f"{b['max_abs_difference']:.1e}."]
    if result["compile"]:
        lines += ["", "torch.compile (dynamic shapes) against eager, inference over the test split:", ""]
        lines.append(markdown_table(
            ["ETGNN size", "first call, compiling (s)", "eager (s)", "compiled (s)", "speed-up"],
            [[r["config"], fmt(r["first_call_s"]), fmt(r["eager_s"]), fmt(r["compiled_s"]), f"{r['speedup']:.2f}x"]
             for r in result["compile"]]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few crystals, one round, no compile (smoke test)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(RESULTS / "kernels.json"))
    parser.add_argument("--docs", default=str(DOCS), help="markdown file to update ('' to skip)")
    args = parser.parse_args(argv)
    samples, split = load_task(TASKS["becs-eps"], reduced=False)
    train = [samples[i] for i in split["train"][: 16 if args.quick else 64]]
    test = [samples[i] for i in split["test"][: 16 if args.quick else None]]
    repeats = 1 if args.quick else args.repeats
    current = native_status()
    result: dict[str, Any] = {
        "environment": environment(),
        "settings": {"train": len(train), "test": len(test), "repeats": repeats, "quick": args.quick},
        "native": f"loaded ({current.detail.rsplit('/', 1)[-1]})" if current.loaded else f"not in use: {current.detail}",
        "kernels": kernel_rows(train, test, repeats) if current.loaded else [],
        "blocking": blocking_rows(test, repeats),
        "basis": basis_row(test, repeats),
        "compile": [] if args.quick else [compile_row("etgnn-lean", test, repeats)],
    }
    publish(result, Path(args.output), render(result), "kernels", Path(args.docs) if args.docs else None)
    return result


if __name__ == "__main__":
    main()
