"""Where inference time goes, ETGNN against the e3nn peer (issue 13, bar 2): the matrix-product
FLOPs of each model and the rate at which it runs them.

Per task, on the test split, with the speed pass's models and protocol
(:mod:`benchmarks.speed`: ``predict`` with batch 16 under ``torch.no_grad``, float32, graph
building included, freshly initialised weights):

- **FLOPs** of one ``predict`` over the split, counted by ``torch.utils.flop_counter.FlopCounterMode``:
  matrix products only (``mm``, ``addmm``, ``bmm``, and e3nn's tensor products through ``einsum``
  as ``bmm``); activations, gathers, scatters and graph building do work it does not count.
- **Time**: the models in interleaved rounds after a warm-up call each, median round.
- **Rate** = FLOPs / time; for scale, the rate of one plain float32 product
  (65536 x 64) @ (64 x 64) (the width of the suite's ETGNN messages) timed in the same process.

The speed ratio of two models is their rate ratio divided by their FLOP ratio, so "ETGNN 3x the
e3nn peer" needs ETGNN to run its matrix products at ``3 x FLOPs(ETGNN) / FLOPs(e3nn)`` times
the peer's rate. The table says how far each ETGNN size is from that, and how far its rate is
from the plain product's.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_flops [--tasks ...] [--repeats 3]`` (about
15 minutes for all tasks); writes ``benchmarks/results/flops.json`` and the flops section of
docs/benchmarks.md. ``--quick``: the reduced subset of one task, one round (the smoke test).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.speed import e3nn_predictor, tensorframe_predictor
from benchmarks.suite import BACKBONES
from benchmarks.tasks import TASKS, load_task
from benchmarks.toolkit import (
    DOCS,
    RESULTS,
    environment,
    fmt_sig,
    interleaved_rounds,
    machine_line,
    markdown_table,
    publish,
    written_by,
)

ETGNN_SIZES = ("etgnn", "etgnn-lean")
PEER = "e3nn"
GEMM_SHAPE = (65536, 64, 64)  # rows, inner, outer: one edge-message linear map of the suite's ETGNN


def matmul_flops(call: Callable[[], Any]) -> int:
    """Matrix-product FLOPs of one ``call`` (multiply and add counted as 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call()
    return int(counter.get_total_flops())


def gemm_rate(repeats: int) -> float:
    """GFLOP/s of a plain float32 ``addmm`` of :data:`GEMM_SHAPE` into a preallocated output
    (median of ``repeats`` timed calls after one warm-up)."""
    rows, inner, outer = GEMM_SHAPE
    generator = torch.Generator().manual_seed(0)
    x, weight = torch.randn(rows, inner, generator=generator), torch.randn(outer, inner, generator=generator)
    bias, out = torch.randn(outer, generator=generator), torch.empty(rows, outer)
    torch.addmm(bias, x, weight.t(), out=out)
    seconds = []
    for _ in range(max(repeats, 3)):
        start = time.perf_counter()
        torch.addmm(bias, x, weight.t(), out=out)
        seconds.append(time.perf_counter() - start)
    return 2 * rows * inner * outer / statistics.median(seconds) / 1e9


def task_row(name: str, repeats: int, reduced: bool) -> dict[str, Any]:
    """FLOPs, median time and rate of every ETGNN size and the e3nn peer on ``name``'s test split."""
    task = TASKS[name]
    ok, reason = task.available()
    if not ok:
        return {"task": name, "skipped": reason}
    samples, split = load_task(task, reduced=reduced)
    test = [samples[i] for i in split["test"]]
    predictors: dict[str, Callable[[list[Any]], Any]] = {}
    for size in ETGNN_SIZES:
        predictors[size], _ = tensorframe_predictor(task, BACKBONES[size])
    predictors[PEER], _ = e3nn_predictor(task, samples, split)
    calls = {model: (lambda p=predict: p(test)) for model, predict in predictors.items()}
    flops = {model: matmul_flops(call) for model, call in calls.items()}
    with torch.no_grad():
        times = interleaved_rounds(calls, repeats)
    models = {}
    for model, seconds in times.items():
        median = statistics.median(seconds)
        models[model] = {"gflop": flops[model] / 1e9, "time_s": median, "times_s": seconds,
                         "gflop_per_s": flops[model] / 1e9 / median}
    peer = models[PEER]
    for size in ETGNN_SIZES:
        m = models[size]
        flop_ratio = m["gflop"] / peer["gflop"] if peer["gflop"] else None
        m["speedup_over_peer"] = peer["time_s"] / m["time_s"]
        m["flop_ratio_to_peer"] = flop_ratio
        m["rate_ratio_to_peer"] = m["gflop_per_s"] / peer["gflop_per_s"] if peer["gflop_per_s"] else None
        m["rate_ratio_needed_for_3x"] = 3.0 * flop_ratio if flop_ratio is not None else None
    return {"task": name, "structures": len(test), "atoms": sum(s.num_atoms for s in test), "models": models}


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = ["## Where inference time goes: matrix-product FLOPs, ETGNN against the e3nn peer", "",
             written_by("python -m benchmarks.bench_flops", result["environment"], "benchmarks/results/flops.json"),
             "", machine_line(result["environment"]),
             f"- The speed pass's protocol (`predict` over the test split{' (reduced subsets)' if s['reduced'] else ''}, "
             f"batch 16, float32, graph building included, seeded weights), {s['repeats']} interleaved round(s), "
             "median. GFLOP: matrix products only (`torch.utils.flop_counter`); activations, gathers, scatters "
             "and graph building are not counted, but their time is in the rate.",
             f"- A plain float32 product {' x '.join(map(str, GEMM_SHAPE[:2]))} @ {' x '.join(map(str, GEMM_SHAPE[1:]))} "
             f"runs at {result['gemm_gflop_per_s']:.0f} GFLOP/s here.",
             "- Speed ratio = rate ratio / FLOP ratio. \"Rate needed\": the rate ratio to the peer that 3x "
             "would take with these FLOPs (3 x the FLOP ratio).", ""]
    rows = []
    for row in result["tasks"]:
        if "skipped" in row:
            rows.append([row["task"], "skipped: " + row["skipped"]] + [""] * 7)
            continue
        peer = row["models"][PEER]
        for size in ETGNN_SIZES:
            m = row["models"][size]
            rows.append([row["task"], size, fmt_sig(m["gflop"]), fmt_sig(peer["gflop"]), f"{m['flop_ratio_to_peer']:.2f}",
                         f"{m['gflop_per_s']:.1f}", f"{peer['gflop_per_s']:.1f}", f"{m['rate_ratio_to_peer']:.2f}",
                         f"{m['speedup_over_peer']:.2f}x", f"{m['rate_ratio_needed_for_3x']:.2f}"])
    lines.append(markdown_table(
        ["task", "ETGNN size", "ETGNN GFLOP", "e3nn GFLOP", "FLOP ratio", "ETGNN GFLOP/s", "e3nn GFLOP/s",
         "rate ratio", "speed ratio", "rate ratio needed for 3x"], rows))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_flops", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="*", default=None, help="task names (default: all)")
    parser.add_argument("--quick", action="store_true", help="the reduced subset of one task, one round (smoke test)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(RESULTS / "flops.json"))
    parser.add_argument("--docs", default=str(DOCS), help="markdown file to update ('' to skip)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = args.tasks or (["tensoap-clusters"] if args.quick else list(TASKS))
    repeats = 1 if args.quick else args.repeats
    result: dict[str, Any] = {
        "environment": environment(),
        "settings": {"repeats": repeats, "reduced": args.quick, "gemm_shape": list(GEMM_SHAPE)},
        "gemm_gflop_per_s": gemm_rate(repeats),
        "tasks": [],
    }
    for name in names:
        result["tasks"].append(task_row(name, repeats, reduced=args.quick))
        print(f"[{name}] done", flush=True)
    publish(result, Path(args.output), render(result), "flops", Path(args.docs) if args.docs else None)
    return result


if __name__ == "__main__":
    main()
