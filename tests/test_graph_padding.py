"""Padding a batch graph to bucket sizes (``tensorframe.graph.padding``), what ``amp`` training
on a CPU runs the backbone on so that oneDNN's per-shape bfloat16 kernels are reused.

The bucket sizes: few per doubling, never below the count, at most ~19 % above it. The padded
graph: its real rows are the original rows, its counts (atoms, edges, triplets, edges inside
triplets) are buckets, and its padding atoms, edges and triplets index only each other, with
finite geometry. That the backbones' real features and gradients do not change on it is the
backbone contract's check (``assert_features_unchanged_by_padding``, run on every backbone);
here it is shown to catch a padding that leaks into a real atom. The model pads only under
autocast on a CPU, and the trainer's ``amp_padding`` turns it off.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tensorframe.graph import padding
from tensorframe.graph.padding import bucket_size, pad_graph
from tensorframe.testing import contract
from tensorframe.testing import strategies as tfst
from tensorframe.testing.contract import (
    assert_features_unchanged_by_padding,
    build_contract_model,
    contract_samples,
    degenerate_samples,
)
from tensorframe.train.config import parse_train_config
from tensorframe.train.trainer import Trainer
from tests.test_graph_cache import _train_config

MODEL = build_contract_model({"name": "reference", "hidden": 16, "num_radial": 8, "triplets": True})


@given(st.integers(0, 10**7))
def test_a_bucket_holds_the_count_with_little_to_spare(count: int):
    size = bucket_size(count)
    assert size >= max(count, padding.MIN_BUCKET) and size % padding.ALIGNMENT == 0
    if count > padding.MIN_BUCKET:
        assert size <= count * 2 ** (1 / padding.STEPS_PER_DOUBLING) + padding.ALIGNMENT
    assert bucket_size(size) == size


@given(st.integers(0, 10**7), st.integers(0, 10**7))
def test_buckets_are_monotone(a: int, b: int):
    assert (bucket_size(a) <= bucket_size(b)) == (a <= b) or bucket_size(a) == bucket_size(b)


def test_few_buckets_per_doubling():
    for low in (64, 1000, 30_000, 500_000):
        sizes = {bucket_size(count) for count in range(low, 2 * low)}
        assert len(sizes) <= padding.STEPS_PER_DOUBLING + 1, (low, sorted(sizes))


def _in_triplets(graph) -> int:
    return int(torch.cat([graph.idx_kj, graph.idx_ji]).unique().numel())


@given(st.lists(st.one_of(tfst.crystals(), tfst.molecules(), tfst.slabs()), min_size=1, max_size=3))
def test_padded_graph_has_bucket_counts_and_keeps_to_itself(samples):
    graph = MODEL.make_graph(samples)
    padded = pad_graph(graph)
    p = padded.graph
    n, e, t = graph.num_nodes, graph.num_edges, graph.num_triplets
    assert (padded.num_nodes, padded.num_edges, padded.num_triplets) == (n, e, t)
    for count in (p.num_nodes, p.num_edges, p.num_triplets, _in_triplets(p)):
        assert count == bucket_size(count)
    assert p.num_nodes > n and p.num_structures == graph.num_structures + 1
    # the real rows are the original ones
    for name in ("numbers", "positions", "batch", "idx_i", "idx_j", "cell_shift", "edge_batch", "edge_vec",
                 "edge_len", "edge_dir", "edge_envelope", "idx_kj", "idx_ji", "triplet_cos", "triplet_envelope"):
        real, padded_field = getattr(graph, name), getattr(p, name)
        assert torch.equal(padded_field[: real.shape[0]], real), name
    assert torch.equal(p.ptr[:-1], graph.ptr) and int(p.ptr[-1]) == p.num_nodes
    assert torch.equal(p.cell[:-1], graph.cell) and torch.equal(p.pbc[:-1], graph.pbc)
    # padding indexes padding only, and is a structure of its own
    assert bool((p.idx_i[e:] >= n).all() and (p.idx_j[e:] >= n).all())
    assert bool((p.idx_kj[t:] >= e).all() and (p.idx_ji[t:] >= e).all())
    assert bool((p.batch[n:] == graph.num_structures).all() and (p.edge_batch[e:] == graph.num_structures).all())
    # finite geometry, zero envelopes, consistent lengths and directions
    assert bool((p.edge_len[e:] > 0).all()) and bool(torch.isfinite(p.edge_vec).all())
    assert torch.allclose(p.edge_vec[e:].norm(dim=-1), p.edge_len[e:])
    assert torch.allclose(p.edge_dir[e:] * p.edge_len[e:, None], p.edge_vec[e:])
    assert not p.edge_envelope[e:].any() and not p.triplet_envelope[t:].any()
    assert bool((p.triplet_cos[t:].abs() <= 1).all())
    # every element a backbone may embed is one the batch already has
    assert set(p.numbers[n:].tolist()) <= set(graph.numbers.tolist())


def test_gradients_reach_the_real_edge_vectors_through_the_padding():
    graph = MODEL.make_graph(contract_samples())
    edge_vec = graph.edge_vec.clone().requires_grad_(True)
    padded = pad_graph(replace(graph, edge_vec=edge_vec))
    padded.graph.edge_vec.square().sum().backward()
    assert torch.equal(edge_vec.grad, 2 * edge_vec.detach())


def _leaking_pad(graph, *args, **kwargs):
    """A broken padding: its edges point at the first real atom, and carry weight (a zero
    envelope alone hides the leak from a backbone that scales every message by it)."""
    result = padding.pad_graph(graph, *args, **kwargs)
    idx_i, envelope = result.graph.idx_i.clone(), result.graph.edge_envelope.clone()
    idx_i[graph.num_edges:] = 0
    envelope[graph.num_edges:] = 1.0
    return replace(result, graph=replace(result.graph, idx_i=idx_i, edge_envelope=envelope))


def test_the_contract_check_catches_a_padding_that_leaks(monkeypatch: pytest.MonkeyPatch):
    assert_features_unchanged_by_padding(MODEL, contract_samples())  # the intact padding passes
    monkeypatch.setattr(contract, "pad_graph", _leaking_pad)
    with pytest.raises(AssertionError, match="node features change when the graph is padded"):
        assert_features_unchanged_by_padding(MODEL, contract_samples())


def test_degenerate_graphs_are_padded():
    for name, sample in degenerate_samples().items():
        graph = MODEL.make_graph([sample])
        p = pad_graph(graph).graph
        assert p.num_edges == bucket_size(p.num_edges) >= graph.num_edges, name
        assert _in_triplets(p) == bucket_size(_in_triplets(p)), name


class _Spy(torch.nn.Module):
    """Wraps a backbone and records the atom counts of the graphs it is called on."""

    def __init__(self, backbone):
        super().__init__()
        self.inner, self.feature_dims, self.seen = backbone, backbone.feature_dims, []

    def forward(self, graph):
        self.seen.append(graph.num_nodes)
        return self.inner(graph)


@pytest.mark.parametrize("pads", [True, False])
def test_the_model_pads_under_autocast_on_a_cpu_only(pads: bool):
    model = build_contract_model({"name": "reference", "hidden": 16, "num_radial": 8, "triplets": True}).float()
    graph = model.make_graph(contract_samples())
    spy = model.backbone = _Spy(model.backbone)
    model.features(graph)
    assert spy.seen == [graph.num_nodes]  # full precision: never padded
    with model.backbone_precision(torch.bfloat16, padding=pads):
        features = model.features(graph)
    assert spy.seen[-1] == (bucket_size(graph.num_nodes + 1) if pads else graph.num_nodes)
    assert model.autocast_padding is True and model.backbone_autocast is None  # restored
    # the features are the padded run's real rows, in the model's dtype
    padded = pad_graph(graph)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = padded.unpad(spy.inner(padded.graph if pads else graph)) if pads else spy.inner(graph)
    assert features.node.dtype == torch.float32 and features.node.shape[0] == graph.num_nodes
    assert torch.equal(features.node, expected.node.float()) and torch.equal(features.edge, expected.edge.float())
    assert torch.equal(features.triplet, expected.triplet.float())


@pytest.mark.parametrize("amp_padding", [True, False])
def test_the_trainer_passes_amp_padding_to_the_model(tmp_path, amp_padding: bool):
    config = dict(_train_config(tmp_path, False, "out"), dtype="float32", amp=True, amp_padding=amp_padding)
    trainer = Trainer(parse_train_config(config), tmp_path)
    trainer.model = build_contract_model({"name": "reference", "hidden": 8}).float()  # what _build would set
    with trainer._autocast():
        assert trainer.model.backbone_autocast == torch.bfloat16
        assert trainer.model.autocast_padding is amp_padding


def test_the_bucket_formula():
    assert [bucket_size(c) for c in (0, 64, 65, 100, 128, 129)] == [64, 64, 80, 112, 128, 160]
    assert bucket_size(27_000) == 16 * math.ceil(64 * 2 ** (35 / 4) / 16) == 27_568
    assert bucket_size(30_000) == 32_768


def test_conservative_forces_and_stress_are_unchanged_by_padding():
    """A float64 model under ``backbone_precision(bfloat16)`` on a CPU is padded but not cast
    (autocast leaves float64 alone): energy, forces = -dE/dr and stress, which differentiate
    through the padded graph, equal the unpadded ones."""
    model = build_contract_model({"name": "reference", "hidden": 16, "num_radial": 8, "triplets": True},
                                 conservative=True)
    graph = model.make_graph(contract_samples())
    spy = model.backbone = _Spy(model.backbone)
    fields = ["energy", "forces", "stress"]
    expected = model(graph, fields=fields)
    with model.backbone_precision(torch.bfloat16):
        padded = model(graph, fields=fields)
    assert spy.seen[-1] > graph.num_nodes  # the second pass ran on the padded graph
    for name in fields:
        assert torch.allclose(padded[name], expected[name], rtol=1e-10, atol=1e-12, equal_nan=True), name
