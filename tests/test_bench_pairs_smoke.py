"""Smoke test of benchmarks/bench_pairs.py: both pair searches and both task paths run, the
predictions with and without the dense path are identical, and the threshold is restored."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_pairs
from benchmarks.tasks import TASKS
from tensorframe.graph import neighbors


def test_small_run_records_searches_and_identical_predictions(tmp_path):
    ok, reason = TASKS["default-molecules"].available()
    if not ok:
        pytest.skip(reason)
    output = tmp_path / "pairs.json"
    bench_pairs.main(["--repeats", "1", "--calls", "2", "--sizes", "5", "40", "--tasks", "default-molecules",
                      "--structures", "8", "--output", str(output)])
    stored = json.loads(output.read_text())
    assert [row["atoms"] for row in stored["pair_search"]] == [5, 40]
    assert [row["dense_used"] for row in stored["pair_search"]] == [True, False]
    (task,) = stored["tasks"]
    assert task["structures"] == 8 and task["identical_predictions"] is True
    assert task["predict_ms"]["vesin"] > 0 and task["graphs_and_checks_ms"]["dense"] > 0
    assert neighbors.DENSE_MAX_ATOMS == stored["setup"]["dense_max_atoms"] == 32
