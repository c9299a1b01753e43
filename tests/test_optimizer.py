"""The trainer's optimizer: AdamW with the fused kernel on CPU and CUDA (one pass over all
parameters instead of a loop of per-tensor ops), which must give the loop's update up to
rounding; a run trains with it, and its state resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tensorframe.testing.contract import build_contract_model
from tensorframe.train.config import parse_train_config
from tensorframe.train.trainer import Trainer
from tests.test_graph_cache import _train_config


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_fused_adamw_updates_like_the_loop(dtype: torch.dtype):
    """Three steps on the contract model's parameters with fixed random gradients (away from
    zero: Adam divides by the gradient's running scale, so gradients at rounding level would
    turn rounding differences into whole steps)."""
    model = build_contract_model({"name": "reference", "hidden": 8}).to(dtype)
    start = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(0)
    grads = [[torch.randn(p.shape, generator=generator, dtype=dtype) for p in start] for _ in range(3)]
    result = {}
    for fused in (False, True):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01, fused=fused)
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            optimizer.step()
        result[fused] = params
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6
    for (name, _), loop, fused, before in zip(model.named_parameters(), result[False], result[True], start,
                                              strict=True):
        assert torch.allclose(fused, loop, rtol=0.0, atol=tolerance), name
        assert float((loop - before).detach().abs().max()) > 1e-3, name  # the steps moved every weight


def test_the_trainer_steps_with_the_fused_kernel(tmp_path: Path):
    trainer = Trainer(parse_train_config(dict(_train_config(tmp_path, False, "out"), epochs=1)), tmp_path)
    trainer.run()
    assert trainer.optimizer.defaults["fused"] is True
