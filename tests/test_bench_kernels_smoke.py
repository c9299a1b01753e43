"""Smoke test of benchmarks/bench_kernels.py (--quick): it runs, records every case, and writes
its docs section between markers."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_kernels
from benchmarks.tasks import TASKS


def test_quick_run_records_every_case(tmp_path):
    ok, reason = TASKS["becs-eps"].available()
    if not ok:
        pytest.skip(reason)
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- kernels:start -->\nold\n<!-- kernels:end -->\n")
    result = bench_kernels.main(["--quick", "--output", str(tmp_path / "kernels.json"), "--docs", str(docs)])
    stored = json.loads((tmp_path / "kernels.json").read_text())
    assert stored["settings"]["quick"] is True and stored["compile"] == []
    assert [(r["config"], r["heads"], r["mode"]) for r in stored["kernels"]] == bench_kernels.KERNEL_CASES
    assert all(r["compiled_s"] > 0 and r["pytorch_s"] > 0 for r in stored["kernels"])
    assert stored["basis"]["max_abs_difference"] < 1e-4
    text = docs.read_text()
    assert "old" not in text and bench_kernels.render(result).strip() in text
