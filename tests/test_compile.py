"""torch.compile as an opt-in (tensorframe.compile_model, predict/evaluate --compile, train
compile: true): the compiled model predicts and trains as the eager one does (to float32
rounding), batches of other sizes reuse the compiled code, and a conservative model is refused
for training. Compiling takes tens of seconds here, so each compiled model is built once."""

from __future__ import annotations

import copy

import pytest
import torch

import tensorframe
import tensorframe.ops.blocking
from tensorframe.config import ConfigError
from tensorframe.testing.contract import contract_samples, degenerate_samples

CONFIG = {"backbone": {"name": "reference"}, "heads": [{"name": "born"}, {"name": "dielectric"}]}


def assert_same(a: dict, b: dict) -> None:
    for name in a:
        torch.testing.assert_close(torch.as_tensor(a[name]), torch.as_tensor(b[name]), rtol=1e-5, atol=1e-6, msg=name)


def test_compiled_model_predicts_and_trains_as_the_eager_one():
    torch.manual_seed(0)
    eager = tensorframe.build_model(CONFIG)
    compiled = tensorframe.compile_model(copy.deepcopy(eager))
    first, other = contract_samples(), list(degenerate_samples().values())[:3]  # two batch sizes: dynamic shapes
    eager.eval(), compiled.eval()
    for samples in (first, other):
        for a, b in zip(eager.predict(samples), compiled.predict(samples), strict=True):
            assert_same(a, b)
    # One training step: the loss and every gradient agree.
    eager.train(), compiled.train()
    grads = []
    for model in (eager, compiled):
        outputs = model(model.make_graph(first))
        loss = sum(value.square().sum() for value in outputs.values())
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_conservative_model_is_refused_for_compiled_training():
    model = tensorframe.build_model({"backbone": {"name": "reference"}, "conservative": True,
                                     "heads": [{"name": "scalar", "field": "energy"}]})
    with pytest.raises(ConfigError, match="second derivatives"):
        tensorframe.compile_model(model, training=True)


def test_compiled_inference_takes_the_whole_tensor_path():
    """Inference on blocks of rows loops as often as the batch has blocks: traced by
    torch.compile, that loop would be unrolled and recompiled for every batch. Compiled code
    sees ``blocked_inference()`` false and takes the whole-tensor form."""
    probe = torch.compile(lambda x: x + 1 if tensorframe.blocked_inference() else x - 1, backend="eager", dynamic=True)
    with torch.no_grad():
        assert tensorframe.blocked_inference()
        assert float(probe(torch.zeros(1))) == -1.0


def test_compiled_heads_do_not_recompile_for_another_batch(monkeypatch):
    """A head with triplet words (its coefficient MLP has an inference fast path on blocks of
    rows, here one row each), compiled: a second batch with other numbers of atoms, edges and triplets
    (so another number of blocks) reuses the compiled code."""
    monkeypatch.setattr(tensorframe.ops.blocking, "BLOCK_VALUES", 56)
    torch.manual_seed(0)
    model = tensorframe.compile_model(tensorframe.build_model(CONFIG).eval())
    samples = contract_samples()
    model.predict(samples[:1])
    torch.compiler.set_stance("fail_on_recompile")
    try:
        model.predict(samples)
    finally:
        torch.compiler.set_stance("default")
