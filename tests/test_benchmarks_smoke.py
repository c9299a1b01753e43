"""Smoke test of the core benchmark script: it runs end to end on tiny crystals and writes
complete, self-consistent records. Timings are never asserted on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import bench_core
from benchmarks.toolkit import loglog_slope, replace_section
from tensorframe.graph import build_graph

STAGES = {"neighbor_list", "build_triplets", "build_graph", "backbone:reference", "lifting:reference",
          "head:force", "head:born", "head:dielectric", "head:piezo", "head:rank3", "model:reference"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    docs = out / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- other:start -->\nkept\n<!-- other:end -->\n")
    argv = ["--quick", "--sizes", "8", "27", "--repeats", "1", "--warmup", "0", "--cpu-only",
            "--out", str(out), "--docs", str(docs)]
    bench_core.main(argv)
    bench_core.main(argv)  # a second run must replace the section, not append another
    return json.loads((out / "core.json").read_text()), docs.read_text()


def test_json_records_environment_and_settings(quick_run):
    result, _ = quick_run
    env = result["environment"]
    assert {"date", "cpu", "OMP_NUM_THREADS", "torch_num_threads", "cuda", "git_commit"} <= set(env)
    assert {"torch", "numpy", "vesin", "e3nn"} <= set(env["versions"])
    assert result["settings"]["cutoff_A"] == bench_core.CUTOFF
    assert result["settings"]["triplet_cutoff_A"] == bench_core.TRIPLET_CUTOFF
    assert [run["device"] for run in result["runs"]] == ["cpu"]


def test_counts_match_an_independent_graph_build(quick_run):
    result, _ = quick_run
    rows = result["runs"][0]["sizes"]
    assert [(r["requested"], r["atoms"], r["supercell"]) for r in rows] == [(8, 8, [2, 2, 2]), (27, 27, [3, 3, 3])]
    for row in rows:
        n = row["supercell"][0]
        sample = bench_core.rocksalt_supercell(n)
        graph = build_graph([sample], bench_core.CUTOFF, bench_core.TRIPLET_CUTOFF)
        assert (row["edges"], row["triplets"]) == (graph.num_edges, graph.num_triplets)
        # Fixed density: 0.064 atoms/Å^3 gives ~4/3 pi 5^3 * 0.064 ~ 33 neighbours within 5 Å.
        assert 20 < row["edges"] / row["atoms"] < 40


def test_every_stage_has_time_memory_and_scaling(quick_run):
    result, _ = quick_run
    run = result["runs"][0]
    for row in run["sizes"]:
        assert STAGES <= set(row["stages"])
        for stage in row["stages"].values():
            assert {"median_ms", "min_ms", "max_ms", "repeats", "per_atom_us", "peak_mb"} <= set(stage)
            assert stage["repeats"] == 1
            assert stage["per_atom_us"] == pytest.approx(1e3 * stage["median_ms"] / row["atoms"])
        assert set(row["graph_over_model"]) == {"reference"} | ({"etgnn"} & set(result["settings"]["backbones"]))
    assert STAGES <= set(run["scaling"])
    assert all(len(s["per_atom_us"]) == 2 for s in run["scaling"].values())


def test_docs_section_is_generated_between_markers(quick_run):
    _, text = quick_run
    assert text.count("<!-- core:start -->") == 1 and text.count("<!-- core:end -->") == 1
    assert "<!-- other:start -->\nkept\n<!-- other:end -->" in text
    section = text.split("<!-- core:start -->")[1].split("<!-- core:end -->")[0]
    assert "## Core: graph and head cost" in section
    assert "| 8 | " in section and "| 27 | " in section


def test_replace_section_creates_appends_and_replaces(tmp_path):
    path = tmp_path / "docs" / "b.md"
    replace_section(path, "a", "first", intro="# Title\n")
    replace_section(path, "b", "other")
    replace_section(path, "a", "second")
    assert path.read_text() == "# Title\n\n<!-- a:start -->\nsecond\n<!-- a:end -->\n\n<!-- b:start -->\nother\n<!-- b:end -->\n"


def test_loglog_slope_recovers_power_laws():
    atoms = np.array([8.0, 64.0, 512.0, 4096.0])
    assert loglog_slope(atoms, 3e-3 * atoms) == pytest.approx(1.0)
    assert loglog_slope(atoms, 2.0 * atoms**1.5) == pytest.approx(1.5)
    assert loglog_slope([8.0], [1.0]) is None
