"""One of each (issue 12): the per-structure split of batched outputs, the MAE/RMSE definition,
and the contract attributes heads and backbones declare instead of being probed with getattr."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tensorframe as tf
from tensorframe.backbones.base import Backbone
from tensorframe.fields import builtin_field
from tensorframe.heads.base import Head
from tensorframe.model import embedding_limit
from tensorframe.outputs import split_by_structure
from tensorframe.scoring import FieldPairs, mae_rmse, metrics
from tensorframe.testing import rock_salt, wurtzite
from tensorframe.testing.invariance import split_outputs
from tensorframe.train.loss import batch_loss, summarize

FORCES = builtin_field("forces")
DIELECTRIC = builtin_field("dielectric")


def small_model() -> tf.TensorModel:
    """float64, reference backbone (edge only: the core lifts to triplets), ASR Born charges,
    a positive-definite dielectric and forces."""
    torch.manual_seed(0)
    heads = [{"name": "born", "acoustic_sum_rule": True, "hidden": 8},
             {"name": "dielectric", "positive_definite": True, "hidden": 8}, {"name": "force", "hidden": 8}]
    config = {"cutoff": 3.5, "triplet_cutoff": 3.0, "backbone": {"name": "reference", "hidden": 8, "num_radial": 4},
              "heads": heads, "lifting": {"hidden": 8, "out_dim": 8}}
    return tf.build_model(config).double().eval()


def test_split_by_structure_cuts_atom_fields_at_ptr_and_indexes_structure_fields():
    forces = torch.arange(15.0).reshape(5, 3)  # atoms 0-2 in structure 0, atoms 3-4 in structure 1
    dielectric = torch.stack([torch.eye(3), 2 * torch.eye(3)])
    rows = split_by_structure({"forces": forces, "dielectric": dielectric},
                              {"forces": FORCES, "dielectric": DIELECTRIC}, torch.tensor([0, 3, 5]))
    assert len(rows) == 2
    assert torch.equal(rows[0]["forces"], forces[:3]) and torch.equal(rows[1]["forces"], forces[3:])
    assert torch.equal(rows[0]["dielectric"], torch.eye(3)) and torch.equal(rows[1]["dielectric"], 2 * torch.eye(3))
    assert split_by_structure({}, {}, [0, 2, 4]) == [{}, {}]
    with pytest.raises(KeyError, match=r"output 'stress': not in the fields given \(forces\); its level is unknown"):
        split_by_structure({"stress": dielectric}, {"forces": FORCES}, [0, 3, 5])


def test_predict_and_the_test_kit_split_the_same_way():
    """model.predict and the test kit's split_outputs both cut a batch of two crystals of
    different sizes: each row equals the structure predicted alone."""
    model = small_model()
    samples = [rock_salt(), wurtzite()]
    batch = model.predict(samples, batch_size=2)
    graph = model.make_graph(samples)
    with torch.no_grad():
        kit = split_outputs(model(graph), model.fields, [s.num_atoms for s in samples])
    for index, sample in enumerate(samples):
        (alone,) = model.predict([sample])
        assert set(batch[index]) == set(alone) == set(kit[index])
        for name, value in alone.items():
            np.testing.assert_allclose(batch[index][name], value, atol=1e-10)
            np.testing.assert_allclose(kit[index][name].numpy(), value, atol=1e-10)
            assert value.shape == ((sample.num_atoms, *model.fields[name].shape) if model.fields[name].level == "atom"
                                   else model.fields[name].shape)


def test_mae_and_rmse_have_one_definition_for_training_and_scoring():
    rng = np.random.default_rng(0)
    predicted, target = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    error = predicted - target
    expected_mae, expected_rmse = float(np.abs(error).mean()), float(np.sqrt((error**2).mean()))
    assert mae_rmse(float(np.abs(error).sum()), float((error**2).sum()), error.size) == pytest.approx(
        (expected_mae, expected_rmse), rel=1e-14)
    assert mae_rmse(0.0, 0.0, 0) == (0.0, 0.0)
    scored = metrics(FieldPairs("forces", "atom", "eV/Å", 1, predicted, target, 2))
    assert (scored["mae"], scored["rmse"]) == pytest.approx((expected_mae, expected_rmse), rel=1e-14)
    assert scored["components"]["y"]["mae"] == pytest.approx(float(np.abs(error[:, 1]).mean()), rel=1e-14)
    _, stats = batch_loss({"forces": torch.as_tensor(predicted)}, {"forces": torch.as_tensor(target)}, {"forces": FORCES},
                          {"forces": 1.0}, {"forces": 1.0}, torch.tensor([4, 3]), "mse")
    trained = summarize(stats, {"forces": 1.0})
    assert (trained["mae_forces"], trained["rmse_forces"]) == pytest.approx((expected_mae, expected_rmse), rel=1e-14)


class _PlainHead(Head):
    """A head that sets only what every head must (``field``): the declared defaults apply."""

    def __init__(self) -> None:
        super().__init__()
        self.field = FORCES


class _Embedding(Backbone):
    def __init__(self, max_z: int | None) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(51, 4)
        if max_z is not None:
            self.max_z = max_z


def test_contract_attributes_are_declared_with_defaults_and_set_by_the_builtins():
    head = _PlainHead()
    assert head.add_identity is False and head.subtract_structure_mean is False and head.needs_triplets is False
    model = small_model()
    assert model.heads["dielectric"].add_identity is True  # positive_definite: identity + PSD part
    assert model.scaling["dielectric"].keep_identity is True
    assert model.heads["born_charges"].subtract_structure_mean is True  # acoustic_sum_rule
    assert model.heads["born_charges"].add_identity is False and model.scaling["born_charges"].keep_identity is False
    assert model.backbone.max_z == model.backbone.embedding.num_embeddings - 1 == 100
    assert embedding_limit(_Embedding(max_z=20)) == 20  # the declared limit wins over the table size
    assert embedding_limit(_Embedding(max_z=None)) == 50  # unknown: the embedding table's size
