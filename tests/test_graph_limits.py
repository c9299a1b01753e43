"""Limits before allocation, structures far from the origin, and the sum rule per fragment.

- A dense or tiny cell is refused before its neighbours or triplets are allocated (Al + N in
  a 0.5 Å cube: 410 million triplets, ~25 GiB), in one line naming the structure, the
  numbers and the way to raise the budget.
- A float32 model gives the same outputs for a structure at the origin and 1e6 Å away
  (positions are centred per structure in float64 before the cast).
- ``sum_rule_over: fragment`` applies the acoustic sum rule to each connected fragment, so
  two molecules 50 Å apart do not shift each other's Born charges; the default (per
  structure) couples them, which the test documents.
"""

from __future__ import annotations

import resource
import time

import numpy as np
import pytest
import torch

from tensorframe import Sample, build_model
from tensorframe.graph.collate import build_graph
from tensorframe.graph.limits import (
    GRAPH_MEMORY_ENV,
    GraphTooLarge,
    count_triplets,
    estimated_edges,
    graph_memory_budget_gb,
    set_graph_memory_budget,
)
from tensorframe.graph.neighbors import neighbor_list
from tensorframe.ops.fragments import connected_components
from tensorframe.testing.contract import build_contract_model

WATER = (np.array([8, 1, 1]), np.array([[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]]))
AMMONIA = (np.array([7, 1, 1, 1]),
           np.array([[0.0, 0.0, 0.0], [0.94, 0.0, -0.38], [-0.47, 0.814, -0.38], [-0.47, -0.814, -0.38]]))


def tiny_dense_cell() -> Sample:
    return Sample([13, 7], np.array([[0.0, 0.0, 0.0], [0.25, 0.25, 0.25]]), np.eye(3) * 0.5, [True] * 3)


def test_dense_cell_refused_before_allocating() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(GraphTooLarge) as caught:
        build_graph([tiny_dense_cell()], cutoff=6.0)
    assert time.perf_counter() - start < 2.0
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 500, f"max RSS grew by {grown_mib:.0f} MiB"
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("structure 0: ")
    assert "triplets" in message and "GiB graph budget" in message and "--graph-memory" in message


def test_estimate_refuses_before_the_neighbour_list() -> None:
    """With a budget below the estimated edges, the structure is refused before vesin runs."""
    sample = Sample([14, 14], np.array([[0.0, 0.0, 0.0], [1.3, 1.3, 1.3]]), np.eye(3) * 5.4, [True] * 3)
    estimate = estimated_edges(sample, 6.0)
    exact = neighbor_list(sample, 6.0).idx_i.shape[0]
    assert 0.5 * exact < estimate < 2 * exact  # a density estimate, not a bound
    with pytest.raises(GraphTooLarge, match=r"^structure 0: about [\d,]+ edges .* edges alone"):
        build_graph([sample], cutoff=6.0, memory_budget_gb=estimate * 100 / 2**30)


def test_batch_over_budget_names_the_batch_and_the_batch_size() -> None:
    sample = Sample([13, 7], np.array([[0.0, 0.0, 0.0], [1.25, 1.25, 1.25]]), np.eye(3) * 2.5, [True] * 3)
    one = build_graph([sample], cutoff=6.0)
    per_structure = one.num_edges * 160 + one.num_triplets * 64
    budget = 3.5 * per_structure / 2**30
    build_graph([sample] * 3, cutoff=6.0, memory_budget_gb=budget)
    with pytest.raises(GraphTooLarge, match=r"^batch of 4 structures: .* a smaller batch size$"):
        build_graph([sample] * 4, cutoff=6.0, memory_budget_gb=budget)


def test_triplet_count_is_exact_before_dropping_reverse_pairs() -> None:
    rng = np.random.default_rng(1)
    cell = np.array([[4.0, 0.2, 0.0], [0.0, 3.7, 0.3], [0.1, 0.0, 4.2]])
    sample = Sample([6, 8, 8, 1], rng.random((4, 3)) @ cell, cell, [True, True, False])
    graph = build_graph([sample], cutoff=4.0, triplet_cutoff=3.0)
    nl = neighbor_list(sample, 4.0)
    inside = nl.length < 3.0
    candidates = count_triplets(nl.idx_i, nl.idx_j, inside, sample.num_atoms)
    assert candidates - int(inside.sum()) == graph.num_triplets  # each edge's own reverse dropped


def test_budget_from_setter_environment_and_default(monkeypatch) -> None:
    monkeypatch.delenv(GRAPH_MEMORY_ENV, raising=False)
    assert graph_memory_budget_gb() == 8.0
    monkeypatch.setenv(GRAPH_MEMORY_ENV, "0.25")
    assert graph_memory_budget_gb() == 0.25
    monkeypatch.setenv(GRAPH_MEMORY_ENV, "lots")
    with pytest.raises(ValueError, match=GRAPH_MEMORY_ENV):
        graph_memory_budget_gb()
    try:
        set_graph_memory_budget(64.0)
        assert graph_memory_budget_gb() == 64.0
        with pytest.raises(ValueError):
            set_graph_memory_budget(0.0)
    finally:
        set_graph_memory_budget(None)


# --- far from the origin ---------------------------------------------------------------------


def float32_model() -> torch.nn.Module:
    model = build_contract_model({"name": "reference", "hidden": 16, "num_radial": 8}, cutoff=4.0)
    return model.float()


@pytest.mark.parametrize("periodic", [False, True])
def test_far_from_the_origin_changes_nothing_in_float32(periodic: bool) -> None:
    rng = np.random.default_rng(0)
    cell = np.array([[5.1, 0.0, 0.0], [0.7, 4.8, 0.0], [0.3, -0.4, 5.3]])
    positions = rng.random((5, 3)) @ cell
    near = Sample([8, 14, 14, 8, 1], positions, cell, [periodic] * 3)
    far = Sample([8, 14, 14, 8, 1], positions + np.array([1e6, -2e6, 5e5]), cell, [periodic] * 3)
    model = float32_model()
    with torch.no_grad():
        a, b = model(model.make_graph([near])), model(model.make_graph([far]))
    for name in a:
        scale = float(a[name].abs().max()) + 1e-6
        assert torch.allclose(a[name], b[name], atol=1e-5 * scale, rtol=0), name


# --- the sum rule per fragment ---------------------------------------------------------------


def two_molecules(separation: float) -> tuple[Sample, Sample, Sample]:
    water, ammonia = Sample(*WATER), Sample(*AMMONIA)
    shifted = AMMONIA[1] + np.array([separation, 0.0, 0.0])
    both = Sample(np.concatenate([WATER[0], AMMONIA[0]]), np.concatenate([WATER[1], shifted]))
    return both, water, ammonia


def born_model(sum_rule_over: str) -> torch.nn.Module:
    config = {
        "cutoff": 4.0,
        "backbone": {"name": "reference", "hidden": 16, "num_radial": 8},
        "heads": [{"name": "born", "hidden": 16, "acoustic_sum_rule": True, "sum_rule_over": sum_rule_over}],
        "lifting": {"hidden": 16, "out_dim": 16},
    }
    torch.manual_seed(0)
    return build_model(config).double().eval()


def test_fragment_sum_rule_keeps_far_molecules_independent() -> None:
    both, water, ammonia = two_molecules(50.0)
    model = born_model("fragment")
    together = model.predict([both])[0]["born_charges"]
    alone = np.concatenate([model.predict([water])[0]["born_charges"], model.predict([ammonia])[0]["born_charges"]])
    np.testing.assert_allclose(together, alone, atol=1e-12)
    np.testing.assert_allclose(together[:3].sum(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(together[3:].sum(axis=0), 0.0, atol=1e-12)


def test_structure_sum_rule_couples_far_molecules() -> None:
    """The documented default: one sum rule for the structure, so the water's charges no
    longer sum to zero when NH3 sits 50 Å away (what ``sum_rule_over: fragment`` is for)."""
    both, _, _ = two_molecules(50.0)
    together = born_model("structure").predict([both])[0]["born_charges"]
    np.testing.assert_allclose(together.sum(axis=0), 0.0, atol=1e-12)
    assert np.abs(together[:3].sum(axis=0)).max() > 1e-3


def test_connected_components_partition() -> None:
    """A 40-atom chain (long diameter), a lone atom and a triangle, in a shuffled order: the
    partition is the same whatever the order, and a periodic crystal is one fragment."""
    chain = np.stack([np.arange(40) * 1.5, np.zeros(40), np.zeros(40)], axis=1)
    lone = np.array([[0.0, 50.0, 0.0]])
    triangle = np.array([[0.0, -50.0, 0.0], [1.0, -50.0, 0.0], [0.5, -49.2, 0.0]])
    positions = np.concatenate([chain, lone, triangle])
    expected = np.array([0] * 40 + [1] + [2] * 3)
    order = np.random.default_rng(3).permutation(len(positions))
    sample = Sample(np.ones(len(positions), dtype=int), positions[order])
    graph = build_graph([sample], cutoff=2.0)
    labels, count = connected_components(graph.num_nodes, graph.idx_i, graph.idx_j)
    assert count == 3
    found = labels.numpy()
    truth = expected[order]
    for group in range(3):  # same partition: each true group maps to one label and back
        assert len(set(found[truth == group])) == 1
    assert len({int(found[truth == g][0]) for g in range(3)}) == 3

    crystal = Sample([11, 17], np.array([[0.0, 0.0, 0.0], [2.8, 0.0, 0.0]]), np.eye(3) * 5.6, [True] * 3)
    graph = build_graph([crystal], cutoff=3.0)
    assert connected_components(graph.num_nodes, graph.idx_i, graph.idx_j)[1] == 1
