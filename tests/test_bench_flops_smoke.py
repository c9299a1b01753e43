"""Smoke test of benchmarks/bench_flops.py (--quick): FLOP counts, times and rates of every
ETGNN size and the e3nn peer, consistent with each other, and its docs section between markers."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_flops
from benchmarks.tasks import TASKS


def test_matmul_flops_counts_a_known_product():
    """2 x rows x inner x outer for one linear map; elementwise work is not counted."""
    x, weight = torch.randn(10, 4), torch.randn(3, 4)
    assert bench_flops.matmul_flops(lambda: torch.nn.functional.linear(x, weight).relu()) == 2 * 10 * 4 * 3
    assert bench_flops.matmul_flops(lambda: (x * 2).sum()) == 0


def test_quick_run_records_flops_times_and_rates(tmp_path):
    ok, reason = TASKS["tensoap-clusters"].available()
    if not ok:
        pytest.skip(reason)
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- flops:start -->\nold\n<!-- flops:end -->\n")
    result = bench_flops.main(["--quick", "--output", str(tmp_path / "flops.json"), "--docs", str(docs)])
    stored = json.loads((tmp_path / "flops.json").read_text())
    assert stored["settings"]["reduced"] is True and stored["gemm_gflop_per_s"] > 0
    (row,) = stored["tasks"]
    models = row["models"]
    assert set(models) == {*bench_flops.ETGNN_SIZES, bench_flops.PEER}
    for record in models.values():
        assert record["gflop"] > 0 and record["time_s"] > 0
        assert record["gflop_per_s"] == pytest.approx(record["gflop"] / record["time_s"])
    peer = models[bench_flops.PEER]
    for size in bench_flops.ETGNN_SIZES:
        m = models[size]
        # speed ratio = rate ratio / FLOP ratio
        assert m["speedup_over_peer"] == pytest.approx(m["rate_ratio_to_peer"] / m["flop_ratio_to_peer"])
        assert m["rate_ratio_needed_for_3x"] == pytest.approx(3 * m["gflop"] / peer["gflop"])
    # the lean size does fewer matrix-product FLOPs than the larger one
    assert models["etgnn-lean"]["gflop"] < models["etgnn"]["gflop"]
    text = docs.read_text()
    assert "old" not in text and bench_flops.render(result).strip() in text
