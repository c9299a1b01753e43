"""The benchmarks' one toolkit: environment record, timing, peak memory, number formatting,
markdown tables and reports (JSON + a docs section). Every benchmark script uses it.

Timing (:func:`time_call`): ``warmup`` untimed calls, then ``repeats`` timed calls
(``time.perf_counter``; on CUDA with ``torch.cuda.synchronize`` before and after each call); the
median is reported. :func:`measure_after_warmup` and :func:`measure_within_budget` add a
slow-call rule and peak memory; :func:`interleaved_rounds` times several models side by side.

Peak memory on CPU (:data:`CPU_MEMORY_METHOD`): before the call, garbage is collected, freed
heap memory is handed back to the system (glibc ``malloc_trim``) and the kernel's peak-RSS
mark is reset (``/proc/self/clear_refs``); the result is the peak resident set size during
the call (``VmHWM``) minus the resident size just before it. Where ``clear_refs`` is not
writable, the growth of ``ru_maxrss`` is reported instead, which misses any peak below an
earlier high-water mark (so it is a lower bound, often 0). On CUDA: ``max_memory_allocated``
minus ``memory_allocated`` before the call.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CPU_MEMORY_METHOD = "peak RSS growth: VmHWM after resetting it via /proc/self/clear_refs (after gc + malloc_trim) minus VmRSS before"
CPU_MEMORY_FALLBACK = "ru_maxrss growth (lower bound: peaks below an earlier high-water mark read as 0)"
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated minus memory_allocated before the call"
REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"
DOCS = REPO_ROOT / "docs" / "benchmarks.md"
PLUGIN_DISTRIBUTIONS = ("tensorframe-etgnn", "tensorframe-schnet", "tensorframe-cgcnn")


# --------------------------------------------------------------------------- environment


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def distribution_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def utc_now() -> str:
    """The date and time now, UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def environment(extra: Iterable[str] = ()) -> dict[str, Any]:
    """Where and with what a benchmark ran: machine, thread settings, library versions (plus the
    distributions ``extra``), date."""
    cuda = torch.cuda.is_available()
    names = ("tensorframe", "torch", "numpy", "vesin", "e3nn", *extra)
    return {
        "date": utc_now(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch_num_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "versions": {name: distribution_version(name) for name in names},
        "git_commit": _git_commit(),
    }


def resolve_device(name: str | None) -> torch.device:
    """``cuda`` when available and nothing is asked, else ``cpu``; an unavailable CUDA raises."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: expected cpu or cuda")
    return device


def device_label(device: torch.device) -> str:
    """``cuda (<GPU>)`` or ``cpu (<CPU model>, <n> thread(s))``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({cpu_model()}, {threads} thread{'s' if threads != 1 else ''})"


def seeded_model(cutoff: float, triplet_cutoff: float, backbone: Mapping[str, Any], heads: Sequence[Mapping[str, Any]],
                 **options: Any) -> nn.Module:
    """tensorframe's ``build_model`` of this config (``options``: more model keys, e.g. ``conservative``)
    right after ``torch.manual_seed(0)``, so that equal configs start from equal weights."""
    from tensorframe import build_model

    torch.manual_seed(0)
    return build_model({"cutoff": cutoff, "triplet_cutoff": triplet_cutoff, **options, "backbone": dict(backbone),
                        "heads": [dict(head) for head in heads]})


def num_parameters(module: nn.Module, trainable: bool = False) -> int:
    """Parameters of ``module`` (only those with ``requires_grad`` when ``trainable``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


# --------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of ``repeats`` calls in ms: median, fastest and slowest."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> Timing:
    """Median wall-clock time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    if repeats < 1:
        raise ValueError(f"repeats: expected at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return Timing(statistics.median(times), min(times), max(times), repeats)


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: torch.device | None = None) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls (:func:`time_call`)."""
    return time_call(fn, device or torch.device("cpu"), repeats, warmup).median_ms / 1e3


def throughput(seconds: float, samples: Sequence[Any], prefix: str = "") -> dict[str, float]:
    """``{prefix}structures_per_s`` and ``{prefix}atoms_per_s`` of one pass over ``samples`` taking ``seconds``."""
    atoms = sum(s.num_atoms for s in samples)
    return {f"{prefix}structures_per_s": len(samples) / seconds, f"{prefix}atoms_per_s": atoms / seconds}


def measure_after_warmup(call: Callable[[], Any], device: torch.device, repeats: int,
                         slow_call_s: float) -> dict[str, Any]:
    """One warm-up call, the median time of ``repeats`` calls (1 when the warm-up took longer than
    ``slow_call_s``), then one call for peak memory."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    warmup_ms = 1e3 * (time.perf_counter() - start)
    timing = time_call(call, device, 1 if warmup_ms > 1e3 * slow_call_s else repeats, warmup=0)
    peak = peak_memory_mb(call, device)
    return {"median_ms": timing.median_ms, "min_ms": timing.min_ms, "max_ms": timing.max_ms,
            "repeats": timing.repeats, "warmup_ms": warmup_ms, "peak_mb": peak}


def measure_within_budget(fn: Callable[[], Any], warmup: int, repeats: int, budget_s: float) -> dict[str, Any]:
    """Peak memory and time of ``fn()`` on the CPU.

    The first call is measured (memory and time). A call shorter than ``budget_s`` is then
    warmed up (``warmup`` calls in all, the first included), measured again, and repeated up
    to ``repeats`` timed calls while their total stays within ``budget_s``; the median is
    reported. A longer call is reported from its first call alone (``first_call: true``),
    where one-off start-up costs are small against its duration.
    """
    times: list[float] = []

    def timed() -> None:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)

    cpu = torch.device("cpu")
    peak = peak_memory_mb(timed, cpu)
    first_call = warmup == 0 or times[0] > budget_s
    if not first_call:
        for _ in range(warmup - 1):
            fn()
        times.clear()
        peak = peak_memory_mb(timed, cpu)
        while len(times) < repeats and sum(times) + times[-1] <= budget_s:
            timed()
    ms = [1e3 * t for t in times]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "repeats": len(ms),
            "first_call": first_call, "peak_mb": peak}


def interleaved_rounds(calls: Mapping[str, Callable[[], Any]], repeats: int,
                       alternate: bool = False) -> dict[str, list[float]]:
    """Seconds of each call in ``repeats`` rounds (every call once per round, so that a drift of
    the machine hits them alike), after one untimed warm-up call each. ``alternate``: odd rounds
    run the calls in reverse order, so that none always runs on a warmer cache."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    for round_ in range(repeats):
        for name in (list(calls) if not alternate or round_ % 2 == 0 else list(calls)[::-1]):
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------- memory


def proc_status_kb(key: str) -> int | None:
    """One ``/proc/self/status`` entry in kB (``VmRSS``, ``VmHWM``), or None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """The resident set size now (MiB), or None."""
    kb = proc_status_kb("VmRSS")
    return None if kb is None else kb / 1024


def max_rss_mb() -> float:
    """``ru_maxrss`` now (MiB). Resetting VmHWM (``clear_refs``) resets it too: this is the
    high-water mark since the start of the last measurement, not of the whole process."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return proc_status_kb("VmHWM") is not None


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_memory_method() -> str:
    """The method :func:`peak_memory_mb` uses on CPU on this machine."""
    return CPU_MEMORY_METHOD if _reset_peak_rss() else CPU_MEMORY_FALLBACK


def memory_method(device: torch.device) -> str:
    """The method :func:`peak_memory_mb` uses on ``device``."""
    return CUDA_MEMORY_METHOD if device.type == "cuda" else cpu_memory_method()


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float:
    """Extra memory (MiB) at the peak of one call of ``fn()``; see the module docstring for the method."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del result
        return (peak - before) / 2**20
    _malloc_trim()
    if _reset_peak_rss():
        before = proc_status_kb("VmRSS") or 0
        result = fn()
        peak = proc_status_kb("VmHWM") or 0
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del result
    return max(peak - before, 0) / 1024


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- model calls


def prediction_loss(predictions: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over fields of the mean square of the predictions: a loss for timing a backward pass."""
    return sum(value.square().mean() for value in predictions.values())


def mode_calls(model: nn.Module, run: Callable[[Any], Any], loss: Callable[[Any], torch.Tensor], graph: Any,
               grad_mode: Callable[[], Any] = torch.no_grad) -> dict[str, Callable[[], Any]]:
    """``forward``: ``run(graph)`` under ``grad_mode()`` (``torch.no_grad`` or ``torch.inference_mode``);
    ``forward_backward``: one forward + backward of ``loss(run(graph))``, gradients freed first, so
    that their allocation is measured."""

    def forward() -> Any:
        with grad_mode():
            return run(graph)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        loss(run(graph)).backward()

    return {"forward": forward, "forward_backward": forward_backward}


# --------------------------------------------------------------------------- numbers and tables


def loglog_slope(atoms: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of log(value) against log(atoms): 1 for linear cost (None if < 2 points)."""
    pairs = [(a, v) for a, v in zip(atoms, values, strict=True) if a > 0 and v > 0]
    if len({a for a, _ in pairs}) < 2:
        return None
    x = np.log([a for a, _ in pairs])
    y = np.log([v for _, v in pairs])
    return float(np.polyfit(x, y, 1)[0])


def slopes(atoms: Sequence[float], times: Sequence[float | None], large: float) -> dict[str, float | None]:
    """``slope`` of log time against log atoms over the measured points and ``slope_large`` over
    those from ``large`` atoms on (None times are left out)."""
    measured = [(a, t) for a, t in zip(atoms, times, strict=True) if t is not None]
    big = [(a, t) for a, t in measured if a >= large]
    return {"slope": loglog_slope([a for a, _ in measured], [t for _, t in measured]),
            "slope_large": loglog_slope([a for a, _ in big], [t for _, t in big])}


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is 0."""
    return a / b if a is not None and b else None


def fmt(value: float | None, digits: int = 3) -> str:
    """``digits`` significant digits below ``10**digits``, whole numbers above; "–" for None."""
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


def fmt_sig(value: float | None, digits: int = 3) -> str:
    """``digits`` significant digits; "–" for None."""
    return "–" if value is None else f"{value:.{digits}g}"


def fmt_g(value: Any, digits: int = 3) -> str:
    """Floats with ``digits`` significant digits, anything else as ``str``; "–" for None."""
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def cell(result: dict[str, Any], key: str = "median_ms") -> str:
    """A table cell of one measured point: its ``key``, else "skipped", "failed" or "–"."""
    if key in result:
        return fmt(result[key])
    if "skipped" in result:
        return "skipped"
    return "failed" if "error" in result else "–"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def written_by(command: str, env: dict[str, Any], raw: str) -> str:
    """The first line of a generated docs section: who wrote it, when, from which commit and JSON."""
    return (f"Written by `{command}` on {env['date']} (commit {env['git_commit'] or 'unknown'}); "
            f"do not edit by hand. Raw numbers: `{raw}`.")


def machine_line(env: dict[str, Any], cuda: bool = False) -> str:
    """``- Machine: ...`` from an :func:`environment` record (versions that are None left out)."""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    gpu = f"CUDA {env['cuda'] or 'not available'}; " if cuda else ""
    return (f"- Machine: {env['cpu']}, {env['cpu_count']} logical CPUs, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, "
            f"torch threads {env['torch_num_threads']}; {gpu}{env['platform']}, Python {env['python']}; {versions}.")


# --------------------------------------------------------------------------- reports


def display_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it, else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, creating the folder; atomically (write then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


DOCS_INTRO = """# Benchmarks

Speed and memory of tensorframe, measured by the scripts in `benchmarks/` (they are not
tests: timings depend on the machine, which is recorded with every table). Each section
below is written by its script between `<!-- name:start -->` and `<!-- name:end -->`
markers; rerun the script to refresh it rather than editing the tables by hand.
"""


def replace_section(path: Path, name: str, body: str, intro: str = DOCS_INTRO) -> None:
    """Put ``body`` between ``<!-- name:start -->`` and ``<!-- name:end -->`` in the markdown file
    ``path``, replacing what was there and keeping the rest; appends the section if the markers
    are missing, and creates the file (starting with ``intro``) if it does not exist."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else intro.rstrip() + "\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def publish(result: dict[str, Any], json_path: Path, markdown: str, section: str, docs: Path | None) -> None:
    """Write the JSON record, the docs section ``section`` of ``docs`` (unless None) and print the markdown."""
    write_json(json_path, result)
    if docs is not None:
        replace_section(docs, section, markdown)
    print(markdown)


# --------------------------------------------------------------------------- command line


def size_parser(prog: str, doc: str, quick_help: str, default_sizes: Sequence[int],
                repeats_help: str) -> argparse.ArgumentParser:
    """A parser with the options every size series shares: ``--quick``, ``--sizes``, ``--repeats``."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--sizes", type=int, nargs="+", help=f"atoms per structure (default {tuple(default_sizes)})")
    parser.add_argument("--repeats", type=int, help=repeats_help)
    return parser


def add_report_arguments(parser: argparse.ArgumentParser, json_name: str) -> None:
    """``--out`` (folder of ``json_name``), ``--docs`` (markdown file) and ``--no-docs``."""
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"folder for {json_name}")
    parser.add_argument("--docs", type=Path, default=DOCS, help="markdown file to update")
    parser.add_argument("--no-docs", action="store_true", help="do not touch the markdown file")


def quick_defaults(args: argparse.Namespace, **defaults: tuple[Any, Any]) -> argparse.Namespace:
    """Every option of ``defaults`` left unset gets its ``(quick, full)`` value (tuples become lists)."""
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            value = quick if args.quick else full
            setattr(args, name, list(value) if isinstance(value, tuple) else value)
    return args
