"""The compiled triplet kernels against their pure-PyTorch fallback: values and gradients agree
to 1e-6 (float32) and 1e-12 (float64) on generated shapes, indices and thread counts; the
checker is shown to catch a broken kernel; ETGNN gives the same outputs and gradients on both
paths; bad indices are refused; the README's setup has built them (``tensorframe native``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorframe.ops.triplet_kernels as kernels
from tensorframe.cli import main
from tensorframe.ops import native
from tensorframe.ops.triplet_kernels import TripletBasis, filtered_aggregate, gather_mul_scatter, native_kernels

TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12}
TURNED_OFF = os.environ.get(native.DISABLE_VARIABLE, "1").strip().lower() in {"0", "false", "no", "off"}


@pytest.fixture(autouse=True)
def compiled_kernels():
    if TURNED_OFF:
        pytest.skip(f"{native.DISABLE_VARIABLE}=0 turns the compiled kernels off")
    current = native.status()
    assert current.loaded, f"the README's setup should have built the compiled kernels: {current.detail}"


def assert_agree(native_values, fallback_values, dtype, what=""):
    """Each tensor pair agrees to TOLERANCE[dtype] relative to the larger of its scale and 1."""
    for index, (a, b) in enumerate(zip(native_values, fallback_values, strict=True)):
        scale = max(float(b.abs().max()) if b.numel() else 0.0, 1.0)
        torch.testing.assert_close(a, b, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * scale,
                                   msg=lambda m, i=index: f"{what} tensor {i}: {m}")


def problem(draw_sizes, dtype, seed):
    num_edges, num_triplets, orders, radial, width = draw_sizes
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype, requires_grad=True)

    kj = torch.randint(0, num_edges, (num_triplets,), generator=generator)
    ji = torch.randint(0, num_edges, (num_triplets,), generator=generator)
    return {
        "angular": rand(num_triplets, orders), "radial": rand(num_edges, orders, radial),
        "w1": rand(orders * radial, 3), "w2": rand(3, width), "x": rand(num_edges, width),
        "filters": rand(num_triplets, width), "kj": kj, "ji": ji, "num_edges": num_edges,
    }


def outputs_and_gradients(p, enabled: bool):
    """Every kernel entry point on one problem, and the gradients of a loss on all of them."""
    with native_kernels(enabled):
        basis = TripletBasis(p["angular"], p["radial"], p["kj"])
        assert basis.native == enabled
        chain = [p["w1"], p["w2"]]
        results = [
            basis.aggregate(p["x"], chain, p["ji"], p["num_edges"]),
            gather_mul_scatter(p["x"], p["kj"], p["filters"], p["ji"], p["num_edges"]),
            filtered_aggregate(p["x"], p["angular"], basis.projected(chain), p["kj"], p["ji"], p["num_edges"]),
            basis.project(chain),
        ]
        loss = sum((r * torch.linspace(-1, 2, r.numel(), dtype=r.dtype).reshape(r.shape)).sum() for r in results)
        loss = loss + sum(r.square().sum() for r in results)
        inputs = [p[name] for name in ("angular", "radial", "w1", "w2", "x", "filters")]
        gradients = torch.autograd.grad(loss, inputs, allow_unused=True)
        gradients = [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, gradients, strict=True)]
    return [r.detach() for r in results], gradients


sizes = st.tuples(st.integers(1, 30), st.integers(0, 150), st.integers(1, 8), st.integers(1, 6), st.integers(1, 40))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
@settings(deadline=None)
@given(draw_sizes=sizes, seed=st.integers(0, 2**31 - 1))
def test_compiled_kernels_match_the_fallback(dtype, threads, draw_sizes, seed):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        p = problem(draw_sizes, dtype, seed)
        fast, fast_grads = outputs_and_gradients(p, True)
        slow, slow_grads = outputs_and_gradients(p, False)
    finally:
        torch.set_num_threads(previous)
    assert_agree(fast, slow, dtype, "output")
    assert_agree(fast_grads, slow_grads, dtype, "gradient")


def test_agreement_check_catches_a_broken_kernel(monkeypatch):
    """The comparison above fails when the compiled path drops one triplet's contribution."""
    p = problem((6, 40, 3, 2, 5), torch.float64, 0)
    slow, slow_grads = outputs_and_gradients(p, False)
    original = kernels._FilteredAggregate.apply

    def drops_last_triplet(x, angular, projected, kj, ji, num_out):
        return original(x, angular[:-1], projected, kj[:-1], ji[:-1], num_out)

    monkeypatch.setattr(kernels._FilteredAggregate, "apply", drops_last_triplet)
    fast, fast_grads = outputs_and_gradients(p, True)
    with pytest.raises(AssertionError):
        assert_agree(fast + fast_grads, slow + slow_grads, torch.float64)


def test_compiled_kernels_pass_gradcheck():
    p = problem((5, 30, 3, 2, 4), torch.float64, 1)
    projected = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    with native_kernels(True):
        assert torch.autograd.gradcheck(
            lambda x, a, q: filtered_aggregate(x, a, q, p["kj"], p["ji"], 5), (p["x"][:, :4], p["angular"], projected))
        assert torch.autograd.gradcheck(
            lambda x, w: gather_mul_scatter(x, p["kj"], w, p["ji"], 5), (p["x"], p["filters"]))


def test_second_derivatives_pass_gradgradcheck():
    """A second derivative (create_graph) goes through explicit PyTorch formulas of the backward;
    with inputs that depend on one another (as ETGNN's messages depend on the basis through
    earlier blocks) it must not count a path twice."""
    p = problem((5, 30, 3, 2, 4), torch.float64, 2)
    projected = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    with native_kernels(True):
        assert torch.autograd.gradgradcheck(
            lambda x, a, q: filtered_aggregate(x, a, q, p["kj"], p["ji"], 5), (p["x"][:, :4], p["angular"], projected))
        assert torch.autograd.gradgradcheck(
            lambda x, w: gather_mul_scatter(x, p["kj"], w, p["ji"], 5), (p["x"], p["filters"]))

        def chained(angular):  # x depends on angular, as in a second ETGNN block
            x = filtered_aggregate(torch.ones(5, 4, dtype=torch.float64), angular, projected, p["kj"], p["ji"], 5)
            return filtered_aggregate(x.tanh(), angular, projected, p["kj"], p["ji"], 5)

        assert torch.autograd.gradgradcheck(chained, (p["angular"],))


def test_out_of_range_indices_are_refused():
    x, weight = torch.randn(4, 3), torch.randn(2, 3)
    with native_kernels(True), pytest.raises(RuntimeError, match="kj holds indices in"):
        gather_mul_scatter(x, torch.tensor([0, 4]), weight, torch.tensor([0, 1]), 4)
    with native_kernels(True), pytest.raises(RuntimeError, match="ji holds indices in"):
        gather_mul_scatter(x, torch.tensor([0, 1]), weight, torch.tensor([-1, 1]), 4)


def test_integer_and_empty_inputs():
    """No triplets: zeros of the right shape; integer tensors take the fallback."""
    x = torch.randn(3, 2, dtype=torch.float64)
    empty = torch.zeros(0, dtype=torch.long)
    with native_kernels(True):
        assert torch.equal(gather_mul_scatter(x, empty, torch.zeros(0, 2, dtype=torch.float64), empty, 3),
                           torch.zeros(3, 2, dtype=torch.float64))
        assert not kernels.use_native(torch.zeros(2, dtype=torch.long))


def etgnn_outputs(dtype, enabled, heads, checkpoint=False, conservative=False):
    from tensorframe import build_model
    from tensorframe.testing.contract import contract_samples

    torch.manual_seed(0)
    config = {"cutoff": 4.0, "triplet_cutoff": 3.0, "conservative": conservative,
              "backbone": {"name": "etgnn", "hidden": 16, "triplet_dim": 8, "int_emb_size": 8, "out_emb_size": 16,
                           "num_blocks": 2, "checkpoint": checkpoint},
              "heads": heads}
    model = build_model(config).to(dtype).train()
    graph = model.make_graph(contract_samples())  # in the model's dtype
    with native_kernels(enabled):
        outputs = model(graph)
        loss = sum(v.square().sum() for v in outputs.values())
        params = [q for q in model.parameters() if q.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(q) if g is None else g for q, g in zip(params, grads, strict=True)]
    return [outputs[k].detach() for k in sorted(outputs)], grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("heads, checkpoint, conservative", [
    ([{"name": "born"}, {"name": "dielectric"}], False, False),  # triplet features read: gather_mul_scatter
    ([{"name": "force"}, {"name": "scalar", "field": "energy"}], False, False),  # edge-only: fused aggregate
    ([{"name": "force"}], True, False),  # recomputed blocks
    # forces = -dE/dr: the force loss differentiates the kernels' backward (create_graph); the
    # compiled backward has no derivative of its own and once lost part of these gradients
    ([{"name": "scalar", "field": "energy"}], False, True),
], ids=["triplet-heads", "edge-heads", "checkpoint", "conservative"])
def test_etgnn_is_the_same_on_both_paths(dtype, heads, checkpoint, conservative):
    fast, fast_grads = etgnn_outputs(dtype, True, heads, checkpoint, conservative)
    slow, slow_grads = etgnn_outputs(dtype, False, heads, checkpoint, conservative)
    tolerance = TOLERANCE[dtype] * (10 if dtype == torch.float32 else 1)  # a few float32 layers deep
    for a, b in zip(fast + fast_grads, slow + slow_grads, strict=True):
        scale = float(b.nan_to_num(0.0).abs().max())  # the stress of a molecule is NaN on both paths
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance * max(scale, 1e-12), equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_etgnn_inference_with_the_fused_aggregate(dtype):
    """Inference of a model whose heads read no triplet features runs the fused kernel (the
    angular filter applied on edges): the same predictions as the pure-PyTorch path."""
    from tensorframe import build_model
    from tensorframe.testing.contract import contract_samples

    torch.manual_seed(0)
    model = build_model({"cutoff": 4.0, "triplet_cutoff": 3.0, "heads": [{"name": "force"}],
                         "backbone": {"name": "etgnn", "hidden": 16, "triplet_dim": 8, "int_emb_size": 8,
                                      "out_emb_size": 16, "num_blocks": 2}}).to(dtype).eval()
    graph = model.make_graph(contract_samples())
    calls = []
    original = kernels._FilteredAggregate.apply

    def counted(*args):
        calls.append(1)
        return original(*args)

    with torch.no_grad():
        with native_kernels(False):
            slow = model(graph)["forces"]
        with native_kernels(True), pytest.MonkeyPatch.context() as patch:
            patch.setattr(kernels._FilteredAggregate, "apply", counted)
            fast = model(graph)["forces"]
    assert len(calls) == 2  # one per block
    torch.testing.assert_close(fast, slow, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * float(slow.abs().max()))


def test_native_command_status_and_a_failed_build(tmp_path: Path, monkeypatch, capsys):
    assert main(["native", "status"]) == 0
    assert "loaded from" in capsys.readouterr().out
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    monkeypatch.setenv(native.DIRECTORY_VARIABLE, str(tmp_path / "build"))
    monkeypatch.setattr(native, "_status", None)
    assert main(["native", "build"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "were not built" in error and "error" in error
    monkeypatch.setattr(native, "_status", None)
    assert not native.status().loaded  # nothing built for the broken source: the fallback runs
