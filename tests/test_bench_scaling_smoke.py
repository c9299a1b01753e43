"""Smoke test of the scaling benchmark: a quick run on two tiny crystals writes complete,
self-consistent records, its docs section and both plots into a temporary folder (timings are
never asserted on); the budget guard is checked on made-up numbers."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_scaling as bench
from benchmarks.bench_backbones import perovskite_supercell, supercell_reps
from benchmarks.suite import BACKBONES
from tensorframe.graph import build_graph

POINT_KEYS = {"median_ms", "min_ms", "max_ms", "repeats", "warmup_ms", "peak_mb", "per_atom_us"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    docs = out / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- core:start -->\nkept\n<!-- core:end -->\n")
    paths = ["--device", "cpu", "--json", str(out / "scaling.json"), "--docs-path", str(docs),
             "--plots", str(out / "plots")]
    # A first, smaller run writes the section; the quick run must replace it, not add another.
    bench.main(["--quick", "--sizes", "10", "--models", "reference", "--triplet-cutoffs", *paths])
    bench.main(["--quick", *paths])
    return json.loads((out / "scaling.json").read_text()), docs, out / "plots"


def test_json_records_environment_device_and_settings(quick_run):
    result, _, _ = quick_run
    env = result["environment"]
    assert {"date", "cpu", "OMP_NUM_THREADS", "torch_num_threads", "cuda", "git_commit"} <= set(env)
    assert {"torch", "numpy", "vesin", "e3nn"} <= set(env["versions"])
    assert result["device"] == "cpu" and result["device_label"].startswith("cpu (")
    assert env["torch_num_threads"] == 1
    settings = result["settings"]
    assert (settings["cutoff_A"], settings["triplet_cutoff_A"], settings["dtype"]) == (5.0, 4.0, "float32")
    assert [h["name"] for h in settings["heads"]] == ["born", "dielectric", "piezo"]
    assert settings["heads"][0]["acoustic_sum_rule"] is True
    assert settings["memory_method"] and settings["timing"] and settings["budget"] and "MACE" in settings["mace"]
    assert list(result["models"]) == [*BACKBONES, bench.PEER]


def test_sizes_are_the_quick_perovskite_supercells_with_correct_counts(quick_run):
    result, _, _ = quick_run
    rows = result["atoms_series"]
    assert [(r["requested"], r["atoms"]) for r in rows] == [(10, 10), (40, 40)]
    for row in rows:
        assert row["supercell"] == list(supercell_reps(row["requested"]))
        graph = build_graph([perovskite_supercell(row["supercell"])], bench.CUTOFF, bench.TRIPLET_CUTOFF)
        assert (row["edges"], row["triplets"]) == (graph.num_edges, graph.num_triplets)
        assert row["triplets"] > 0
        # The peer's graph has the same edges and no triplets.
        assert row["edges_only_graph"] == {"edges": row["edges"], "triplets": 0}


def test_every_model_and_graph_build_is_measured_at_every_size(quick_run):
    result, _, _ = quick_run
    assert result["skipped"] == []
    for row in result["atoms_series"]:
        assert set(row["models"]) == set(result["models"])
        points = [p for modes in row["models"].values() for p in modes.values()] + list(row["graph_build"].values())
        assert set(row["graph_build"]) == set(bench.GRAPH_KINDS)
        for point in points:
            assert POINT_KEYS <= set(point)
            assert point["repeats"] == 1
            assert point["per_atom_us"] == pytest.approx(1e3 * point["median_ms"] / row["atoms"])


def test_scaling_summary_and_ratios_cover_every_model(quick_run):
    result, _, _ = quick_run
    for name in result["models"]:
        for mode in bench.MODES:
            fit = result["scaling"][name][mode]
            assert len(fit["per_atom_us"]) == 2 and isinstance(fit["slope"], float)
            assert fit["slope_large"] is None  # no size reaches LARGE_ATOMS
    assert set(result["scaling"]["graph_build"]) == set(bench.GRAPH_KINDS)
    ratios = result["ratios"]
    assert ratios["base"] == "etgnn"
    assert ratios["time"]["etgnn"]["forward"] == [pytest.approx(1.0)] * 2
    row = result["atoms_series"][1]
    expected = row["models"]["schnet"]["forward_backward"]["median_ms"] / row["models"]["etgnn"]["forward_backward"]["median_ms"]
    assert ratios["time"]["schnet"]["forward_backward"][1] == pytest.approx(expected)


def test_triplet_cutoff_series_counts_grow_with_the_cutoff(quick_run):
    result, _, _ = quick_run
    series = result["triplet_cutoff_series"]
    assert series["models"] == list(bench.TRIPLET_MODELS) and series["cutoff_A"] == bench.CUTOFF
    assert [p["triplet_cutoff_A"] for p in series["points"]] == list(bench.QUICK_TRIPLET_CUTOFFS)
    sample = perovskite_supercell(series["supercell"])
    for point in series["points"]:
        graph = build_graph([sample], bench.CUTOFF, point["triplet_cutoff_A"])
        assert (point["edges"], point["triplets"]) == (graph.num_edges, graph.num_triplets)
        for name in series["models"]:
            for mode in bench.MODES:
                assert POINT_KEYS <= set(point["models"][name][mode])
    assert series["points"][0]["triplets"] < series["points"][1]["triplets"]


def test_docs_section_and_plots_are_written_to_the_given_paths(quick_run):
    _, docs, plots = quick_run
    text = docs.read_text()
    assert text.count("<!-- scaling:start -->") == 1 and text.count("<!-- scaling:end -->") == 1
    assert "<!-- core:start -->\nkept\n<!-- core:end -->" in text
    section = text.split("<!-- scaling:start -->")[1].split("<!-- scaling:end -->")[0]
    assert "## Scaling: time and memory against atoms and triplet cutoff" in section
    assert "Device: **cpu (" in section and "MACE" in section
    assert "| e3nn |" in section and "| etgnn-lean |" in section
    for name in (bench.ATOMS_PLOT, bench.TRIPLET_PLOT):
        assert (plots / name).read_bytes().startswith(PNG_SIGNATURE)
        assert f"(plots/{name})" in section  # linked relative to the docs file


def test_guard_stops_after_a_slow_call_and_skips_predicted_memory():
    guard = bench.SeriesGuard(max_call_s=1.0, max_memory_mb=100.0)
    assert guard.check(work=10) is None
    guard.record({"max_ms": 10.0, "warmup_ms": 12.0, "peak_mb": 40.0}, work=10, where="10 atoms")
    assert guard.check(work=20) is None  # 80 MiB predicted
    assert "predicted peak memory 120 MiB" in guard.check(work=30)
    guard.record({"max_ms": 1500.0, "warmup_ms": 1400.0, "peak_mb": 1.0}, work=20, where="20 atoms")
    assert guard.check(work=21) == "a call at 20 atoms took 1.5 s > 1 s"


def test_run_point_records_skips_and_failures_without_raising():
    settings = bench.Settings(torch.device("cpu"), repeats=1, slow_call_s=1.0, max_call_s=10.0, max_memory_mb=1e6)
    guard = bench.SeriesGuard(settings.max_call_s, settings.max_memory_mb)

    def failing() -> None:
        raise RuntimeError("boom")

    assert bench.run_point(failing, guard, 1, "5 atoms", settings) == {"error": "RuntimeError: boom"}
    assert bench.run_point(lambda: None, guard, 2, "10 atoms", settings) == {"skipped": "failed at 5 atoms"}
    fresh = bench.SeriesGuard(settings.max_call_s, settings.max_memory_mb)
    assert {"median_ms", "peak_mb", "repeats"} <= set(bench.run_point(lambda: None, fresh, 1, "5 atoms", settings))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_raises():
    with pytest.raises(ValueError, match="CUDA is not available"):
        bench.resolve_device("cuda")
    assert bench.resolve_device(None).type == "cpu"


def test_a_bfloat16_run_writes_its_own_json_section_and_plots(tmp_path):
    """``--precision bf16``: tensorframe models under their ``backbone_precision``, the e3nn peer
    under ``torch.autocast`` (its failure recorded, not raised); results go to
    ``scaling-cpu-bf16`` (JSON name, docs section, plot names), leaving the CPU float32 ones."""
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- scaling:start -->\nfloat32 table\n<!-- scaling:end -->\n")
    bench.main(["--quick", "--sizes", "10", "--models", "reference", "e3nn", "--triplet-cutoffs", "--device", "cpu",
                "--precision", "bf16", "--json", str(tmp_path / "scaling-cpu-bf16.json"), "--docs-path", str(docs),
                "--plots", str(tmp_path / "plots")])
    result = json.loads((tmp_path / "scaling-cpu-bf16.json").read_text())
    assert result["settings"]["precision"] == "bf16"
    (row,) = result["atoms_series"]
    assert row["models"]["reference"]["forward"]["median_ms"] > 0
    assert row["models"]["reference"]["forward_backward"]["median_ms"] > 0
    # e3nn 0.6's tensor products mix dtypes under autocast: the error is recorded for its points
    assert "median_ms" in row["models"]["e3nn"]["forward"] or "same dtype" in row["models"]["e3nn"]["forward"]["error"]
    text = docs.read_text()
    assert "float32 table" in text and "<!-- scaling-cpu-bf16:start -->" in text and "products in bf16" in text
    assert (tmp_path / "plots" / "scaling_atoms-cpu-bf16.png").exists()
    assert bench.output_name(torch.device("cpu"), "float32") == "scaling"
    with pytest.raises(ValueError, match="tf32"):
        bench.main(["--quick", "--device", "cpu", "--precision", "tf32", "--no-docs", "--no-plots",
                    "--json", str(tmp_path / "x.json")])


def test_a_stored_record_is_rendered_into_its_own_section_without_measuring(tmp_path, quick_run, monkeypatch):
    """``--from-json``: the GPU pass's records become their own docs section and plots here."""
    result, _, _ = quick_run
    record = dict(result, device="cuda", settings={**result["settings"], "precision": "tf32"})
    stored = tmp_path / "scaling-cuda-tf32.json"
    stored.write_text(json.dumps(record))
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("--from-json must not measure"))
    docs = tmp_path / "benchmarks.md"
    bench.main(["--from-json", str(stored), "--docs-path", str(docs), "--plots", str(tmp_path / "plots")])
    assert "<!-- scaling-cuda-tf32:start -->" in docs.read_text() and "products in tf32" in docs.read_text()
    assert (tmp_path / "plots" / "scaling_atoms-cuda-tf32.png").exists()
