"""torch.compile as an opt-in (tensorframe.compile_model, predict/evaluate --compile, train
compile: true): the compiled model predicts and trains as the eager one does (to float32
rounding), batches of other sizes reuse the compiled code, and a conservative model is refused
for training. Compiling takes tens of seconds here, so each compiled model is built once."""

from __future__ import annotations

import copy

import pytest
import torch

import tensorframe
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
