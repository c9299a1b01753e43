"""Helpers shared by the benchmarks: environment record, timing, peak memory, JSON and markdown output.

Timing: ``warmup`` untimed calls, then ``repeats`` timed calls (``time.perf_counter``; on CUDA
with ``torch.cuda.synchronize`` before and after each call); the median is reported.

Peak memory on CPU (:data:`CPU_MEMORY_METHOD`): before the call, garbage is collected, freed
heap memory is handed back to the system (glibc ``malloc_trim``) and the kernel's peak-RSS
mark is reset (``/proc/self/clear_refs``); the result is the peak resident set size during
the call (``VmHWM``) minus the resident size just before it. Where ``clear_refs`` is not
writable, the growth of ``ru_maxrss`` is reported instead, which misses any peak below an
earlier high-water mark (so it is a lower bound, often 0). On CUDA: ``max_memory_allocated``
minus ``memory_allocated`` before the call.
"""

from __future__ import annotations

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CPU_MEMORY_METHOD = "peak RSS growth: VmHWM after resetting it via /proc/self/clear_refs (after gc + malloc_trim) minus VmRSS before"
CPU_MEMORY_FALLBACK = "ru_maxrss growth (lower bound: peaks below an earlier high-water mark read as 0)"
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated minus memory_allocated before the call"
REPO_ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(distribution: str) -> str | None:
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


def environment() -> dict[str, Any]:
    """Where and with what a benchmark ran: machine, thread settings, library versions, date."""
    cuda = torch.cuda.is_available()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch_num_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "versions": {
            name: _version(name) for name in ("tensorframe", "torch", "numpy", "vesin", "e3nn")
        },
        "git_commit": _git_commit(),
    }


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


def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_kb("VmHWM") is not None


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
        before = _proc_status_kb("VmRSS") or 0
        result = fn()
        peak = _proc_status_kb("VmHWM") or 0
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del result
    return max(peak - before, 0) / 1024


def loglog_slope(atoms: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of log(value) against log(atoms): 1 for linear cost (None if < 2 points)."""
    pairs = [(a, v) for a, v in zip(atoms, values, strict=True) if a > 0 and v > 0]
    if len({a for a, _ in pairs}) < 2:
        return None
    x = np.log([a for a, _ in pairs])
    y = np.log([v for _, v in pairs])
    return float(np.polyfit(x, y, 1)[0])


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, creating the folder; atomically (write then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


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
