"""Smoke test of the backbone benchmark: a quick run on the two smallest crystals writes complete,
self-consistent records (timings are never asserted on); the graph counts, the ETGNN trunk and
the PyG DimeNet++ adapter are checked against independent computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import bench_backbones as bench
from tensorframe import get_registry
from tensorframe.graph import build_graph
from tensorframe.ops.triplet_kernels import native_kernels
from tensorframe.types import Sample

# A small PyG basis keeps the quick run fast: PyG derives its spherical Bessel basis with sympy
# (about 15 s for the benchmark's 7 x 6); everything else about the adapter is the same.
SMALL_PYG = {"num_spherical": 3, "num_radial": 3}
MEASURE_KEYS = {"median_ms", "min_ms", "max_ms", "repeats", "first_call", "peak_mb"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    docs = out / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- core:start -->\nkept\n<!-- core:end -->\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench, "PYG_CONFIG", {**bench.PYG_CONFIG, **SMALL_PYG})
        bench.main(["--quick", "--out", str(out), "--docs", str(docs)])
    return json.loads((out / "backbones.json").read_text()), docs.read_text()


def test_json_records_environment_and_settings(quick_run):
    result, _ = quick_run
    env = result["environment"]
    assert {"date", "cpu", "OMP_NUM_THREADS", "torch_num_threads", "platform", "git_commit"} <= set(env)
    assert {"torch", "numpy", "vesin", "e3nn", "torch_geometric"} <= set(env["versions"])
    settings = result["settings"]
    assert (settings["cutoff_A"], settings["triplet_cutoff_A"]) == (6.0, 4.0)
    assert settings["memory_method"] and settings["timing"]
    assert result["failures"] == []


def test_sizes_are_the_quick_perovskite_supercells_with_correct_counts(quick_run):
    result, _ = quick_run
    rows = result["sizes"]
    assert [(r["requested"], r["supercell"], r["atoms"]) for r in rows] == [(8, [1, 1, 2], 10), (64, [2, 2, 3], 60)]
    for row in rows:
        sample = bench.perovskite_supercell(row["supercell"])
        # The d(d-1) triplet count from the neighbour list equals the triplets the library builds.
        for cutoff, key in ((4.0, "triplets_4A"), (6.0, "triplets_6A")):
            graph = build_graph([sample], bench.CUTOFF, cutoff)
            assert (row["edges"], row[key]) == (graph.num_edges, graph.num_triplets)
        # Every worker measured on that same graph.
        graphs = {name: g for group in row["groups"].values() for name, g in group["graphs"].items()}
        assert graphs["etgnn"] == {"edges": row["edges"], "triplets": row["triplets_4A"]}
        if "pyg_dimenetpp_6A" in graphs:
            assert graphs["pyg_dimenetpp_4A"] == graphs["etgnn"]
            assert graphs["pyg_dimenetpp_6A"] == {"edges": row["edges"], "triplets": row["triplets_6A"]}


def test_every_registered_backbone_and_pyg_has_both_modes(quick_run):
    result, _ = quick_run
    expected = {}
    for name in get_registry().items["backbone"]:
        expected[name] = expected[f"{name}+heads"] = set(bench.MODES)
    expected["etgnn_trunk"] = set(bench.MODES)
    expected["etgnn_checkpoint+heads"] = {"forward_backward"}
    if bench.pyg_available():
        expected["pyg_dimenetpp_4A"] = expected["pyg_dimenetpp_6A"] = set(bench.MODES)
    for row in result["sizes"]:
        if row["triplets_6A"] > result["settings"]["max_pyg_triplets"]:  # quick: 60 atoms have 272078
            assert set(row["skipped"]) == {"pyg_dimenetpp_6A"}
            expected.pop("pyg_dimenetpp_6A", None)
        found: dict[str, set[str]] = {}
        for group in row["groups"].values():
            for item in group["results"]:
                assert MEASURE_KEYS <= set(item) and item["repeats"] == 1
                assert item["min_ms"] <= item["median_ms"] <= item["max_ms"] and item["peak_mb"] >= 0
                found.setdefault(item["series"], set()).add(item["mode"])
        assert found == expected


def test_etgnn_trunk_and_triplet_split_are_consistent(quick_run):
    result, _ = quick_run
    for row, item in zip(result["sizes"], result["summary"], strict=True):
        etgnn = row["groups"]["etgnn"]
        assert etgnn["trunk_matches_backbone"] is True
        breakdown = etgnn["forward_breakdown_ms"]
        parts = set(bench.TRUNK_PARTS) | set(bench.TRIPLET_PARTS) | {"other"}
        assert set(breakdown) == parts | {"total"}
        assert sum(breakdown[p] for p in parts) == pytest.approx(breakdown["total"])  # one call per size here
        for mode in bench.MODES:
            entry = item[mode]
            assert entry["triplet_blocks_ms"] == pytest.approx(entry["etgnn_ms"] - entry["etgnn_trunk_ms"])
            if bench.pyg_available():
                pyg = bench.lookup(row, "pyg_dimenetpp_4A", mode)
                assert entry["etgnn_over_pyg_dimenetpp_4A"] == pytest.approx(entry["etgnn_ms"] / pyg)


def test_docs_section_is_generated_between_markers(quick_run):
    _, text = quick_run
    assert "<!-- core:start -->\nkept\n<!-- core:end -->" in text
    assert text.count("<!-- backbones:start -->") == 1 and text.count("<!-- backbones:end -->") == 1
    section = text.split("<!-- backbones:start -->")[1].split("<!-- backbones:end -->")[0]
    assert "| etgnn | " in section and "| 10 atoms | 60 atoms |" in section


def test_trunk_ignores_the_triplet_blocks():
    """The trunk uses no triplet-block weight: scrambling them changes the triplet features only
    (bit for bit with the pure-PyTorch kernels; the compiled ones sum in another order)."""
    if "etgnn" not in get_registry().items["backbone"]:
        pytest.skip("the etgnn plugin is not installed")
    model = bench.make_model("etgnn").double().eval()
    graph = build_graph([bench.perovskite_supercell((1, 1, 2))], bench.CUTOFF, bench.TRIPLET_CUTOFF,
                        dtype=torch.float64)
    with torch.no_grad(), native_kernels(False):
        before = model.backbone(graph)
        for module in [model.backbone.triplet_embedding, *(block.triplet for block in model.backbone.blocks)]:
            for parameter in module.parameters():
                parameter.add_(torch.randn_like(parameter))
        after, trunk = model.backbone(graph), bench.etgnn_trunk(model.backbone, graph)
    assert not torch.allclose(before.triplet, after.triplet)
    torch.testing.assert_close(trunk.node, before.node, rtol=0, atol=0)
    torch.testing.assert_close(trunk.edge, before.edge, rtol=0, atol=0)


def test_pyg_adapter_reproduces_pyg_forward_on_a_molecule(monkeypatch):
    """On a molecule, the adapter on our graph gives what PyG's own DimeNetPlusPlus.forward gives
    when its radius graph and triplets are ours (they need torch-cluster/torch-sparse here)."""
    if not bench.pyg_available():
        pytest.skip("torch_geometric is not installed (the bench extra)")
    from torch_geometric.nn.models import dimenet

    rng = np.random.default_rng(3)
    positions = rng.uniform(0, 3.5, size=(7, 3))
    sample = Sample(np.array([8, 1, 1, 6, 7, 8, 1]), positions)
    graph = build_graph([sample], 3.0, 3.0, dtype=torch.float64)
    assert graph.num_triplets > 20
    adapter = bench.PygDimeNetPlusPlus(**SMALL_PYG, cutoff=3.0).double()

    def radius_graph(pos, r, batch=None, max_num_neighbors=32):
        return torch.stack([graph.idx_j, graph.idx_i])  # PyG: row = source j, col = target i

    def triplets(edge_index, num_nodes):
        idx_kj, idx_ji = graph.idx_kj, graph.idx_ji
        return (graph.idx_i, graph.idx_j, graph.idx_i[idx_ji], graph.idx_j[idx_ji], graph.idx_j[idx_kj],
                idx_kj, idx_ji)

    monkeypatch.setattr(dimenet, "radius_graph", radius_graph)
    monkeypatch.setattr(dimenet, "triplets", triplets)
    with torch.no_grad():
        expected = adapter.net(graph.numbers, graph.positions)
        got = adapter(graph).sum(dim=0)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_supercells_match_the_documented_sizes():
    assert [bench.supercell_reps(s) for s in bench.DEFAULT_SIZES] == [
        (1, 1, 2), (2, 2, 3), (3, 3, 5), (4, 5, 5), (5, 5, 8), (5, 8, 10)]
    sample = bench.perovskite_supercell((2, 2, 3))
    assert sample.num_atoms == 60 and np.bincount(sample.numbers)[[8, 22, 56]].tolist() == [36, 12, 12]
    # Same density at every size: 5 atoms per (4 Å)^3.
    assert sample.num_atoms / abs(np.linalg.det(sample.cell)) == pytest.approx(5 / 64)
