"""Smoke test of benchmarks/bench_graph_cache.py on a few crystals: every training mode runs
(rebuilt graphs, memory cache, disk cache, one data-loader worker) with identical losses,
and the graph-only and memory figures are recorded."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_graph_cache
from benchmarks.tasks import TASKS


def test_small_run_records_every_mode(tmp_path):
    ok, reason = TASKS["becs-eps"].available()
    if not ok:
        pytest.skip(reason)
    output = tmp_path / "graph_cache.json"
    bench_graph_cache.main(["--structures", "12", "--batch-size", "4", "--epochs", "1", "--backbones", "reference",
                            "--output", str(output)])
    stored = json.loads(output.read_text())
    run = stored["training"]["reference"]
    assert set(run["speedups"]) == set(bench_graph_cache.MODES) and run["identical_losses"] is True
    assert all(run[mode]["structures_per_s"] > 0 for mode in bench_graph_cache.MODES)
    graphs = stored["graphs_only"]
    assert graphs["batches"] == 3 and graphs["disk_store_bytes"] > 0 and graphs["disk_epoch_s"] > 0
    assert stored["cache_memory_full_set"]["structures"] == 1520
