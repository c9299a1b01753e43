"""Smoke test of benchmarks/bench_training.py on a few crystals: each variant trains in its own
process with the tree's tensorframe, and its throughput and losses are recorded."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_training
from benchmarks.tasks import TASKS


def test_small_run_records_each_variant(tmp_path):
    ok, reason = TASKS["becs-eps"].available()
    if not ok:
        pytest.skip(reason)
    output = tmp_path / "training.json"
    bench_training.main(["--variants", "eager", "amp", "--rounds", "1", "--train", "8", "--epochs", "2",
                         "--output", str(output)])
    stored = json.loads(output.read_text())
    assert set(stored["structures_per_s"]) == {"eager", "amp"} and stored["speedup_vs_baseline"] == {}
    for variant in ("eager", "amp"):
        (record,) = stored["runs"][variant]
        assert len(record["epoch_s"]) == 2 and record["structures_per_s"] > 0
        assert all(loss > 0 for loss in record["train_loss"] + record["valid_loss"])
