"""``amp``: the backbone's matrix products in bfloat16, the rest in the model's dtype.

What the mode promises, and what it costs: only the backbone runs under autocast (its
features come back in float32, the heads' layers and their products of edge directions run
in float32); outputs stay equivariant to bfloat16 resolution of the invariant features
(about 1e-2 relative at most, against 1e-4 for float32), and a broken head is still caught
at that resolution; training steps use it, validation does not; float64 models are
untouched (autocast leaves float64 alone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tensorframe.testing.contract import build_contract_model, contract_samples, orthogonal_matrix
from tensorframe.testing.equivariance import assert_equivariant
from tensorframe.train.config import parse_train_config
from tensorframe.train.trainer import Trainer
from tests.test_graph_cache import _train_config


def amp_model(dtype: torch.dtype = torch.float32):
    """The contract model (reference backbone, every tensor head) in ``dtype``."""
    return build_contract_model({"name": "reference"}).to(dtype)


def linear_output_dtypes(model, graph) -> dict[str, set[torch.dtype]]:
    """The dtypes that the backbone's and the heads' linear layers produce in one forward."""
    seen: dict[str, set[torch.dtype]] = {"backbone": set(), "heads": set()}
    hooks = []
    for part, module in (("backbone", model.backbone), ("heads", model.heads)):
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                hooks.append(layer.register_forward_hook(
                    lambda mod, args, out, part=part: seen[part].add(out.dtype)))
    try:
        model(graph)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_only_the_backbone_runs_in_bfloat16():
    model = amp_model()
    graph = model.make_graph(contract_samples())
    assert linear_output_dtypes(model, graph) == {"backbone": {torch.float32}, "heads": {torch.float32}}
    dtypes = {name: value.dtype for name, value in model(graph).items()}
    with model.backbone_precision(torch.bfloat16):
        assert linear_output_dtypes(model, graph) == {"backbone": {torch.bfloat16}, "heads": {torch.float32}}
        features = model.features(graph)
        assert features.node.dtype == features.edge.dtype == torch.float32
        assert {name: value.dtype for name, value in model(graph).items()} == dtypes
    assert model.backbone_autocast is None


def test_the_precision_is_restored_after_an_error():
    model = amp_model()
    with pytest.raises(RuntimeError, match="inside"), model.backbone_precision(torch.bfloat16):
        raise RuntimeError("inside")
    assert model.backbone_autocast is None


def _amp_predictions(model):
    def predict(samples):
        with torch.no_grad(), model.backbone_precision(torch.bfloat16):
            return model(model.make_graph(samples))
    return predict


@pytest.mark.parametrize("proper", [True, False])
def test_outputs_stay_equivariant_to_bfloat16_resolution(proper: bool):
    """Usually as equivariant as float32 (a rotation moves the invariant inputs by ~1e-7, which
    rarely changes their bfloat16 rounding); where a rounding flips, one feature moves by a
    bfloat16 step (2**-8 relative), hence the tolerance."""
    model = amp_model()
    for sample in contract_samples():
        assert_equivariant(_amp_predictions(model), sample, orthogonal_matrix(3, proper), atol=1e-3, rtol=1e-2,
                           fields=dict(model.fields))
    # bfloat16 was really in use: the outputs moved from float32's by more than float32 rounding
    samples = contract_samples()
    with torch.no_grad():
        full = model(model.make_graph(samples))
    low = _amp_predictions(model)(samples)
    moved = max(float((low[k] - full[k]).abs().max() / full[k].abs().max().clamp_min(1e-12)) for k in full)
    assert 1e-5 < moved < 5e-2


def test_a_broken_head_is_still_caught_at_bfloat16_resolution(monkeypatch: pytest.MonkeyPatch):
    model = amp_model()
    born = model.heads["born_charges"]
    forward = born.forward
    # the same small tensor added in every orientation: not equivariant
    monkeypatch.setattr(born, "forward", lambda graph, features: forward(graph, features) + 0.05)
    with pytest.raises(AssertionError, match="born_charges"):
        assert_equivariant(_amp_predictions(model), contract_samples()[1], orthogonal_matrix(3, False),
                           atol=1e-3, rtol=1e-2, fields=dict(model.fields))


def test_float64_models_are_untouched():
    model = amp_model(torch.float64)
    graph = model.make_graph(contract_samples())
    expected = model(graph)
    with model.backbone_precision(torch.bfloat16):
        got = model(graph)
    assert all(torch.equal(got[name], expected[name]) for name in expected)


def test_training_with_amp_steps_in_bfloat16_and_validates_in_float32(tmp_path: Path):
    def trained(amp: bool, folder: str) -> tuple[Trainer, list[list[str]]]:
        config = dict(_train_config(tmp_path, True, folder), dtype="float32", amp=amp)
        trainer = Trainer(parse_train_config(config), tmp_path)
        trainer.run()
        rows = [row.split(",") for row in (tmp_path / folder / "train_log.csv").read_text().splitlines()]
        return trainer, rows

    fp32, rows32 = trained(False, "fp32")
    amp, rows_amp = trained(True, "amp")
    assert amp.model.backbone_autocast is None
    header = rows32[0]
    train_loss = header.index("train_loss")
    first32, first_amp = float(rows32[1][train_loss]), float(rows_amp[1][train_loss])
    assert first_amp != first32 and abs(first_amp - first32) < 0.05 * abs(first32)
    # the last logged validation loss is the final weights' loss in float32, not in bfloat16
    logged = float(rows_amp[-1][header.index("valid_loss")])
    valid = amp.split_metrics(amp.split["valid"])["loss"]
    with amp.model.backbone_precision(torch.bfloat16):
        valid_bf16 = amp.split_metrics(amp.split["valid"])["loss"]
    assert np.isfinite(logged) and logged == pytest.approx(valid, rel=1e-6)
    assert logged != pytest.approx(valid_bf16, rel=1e-6)
