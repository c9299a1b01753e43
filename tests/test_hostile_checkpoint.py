"""Hostile and careless input to checkpoints, model building and ``model.predict``: one clear
line naming the file (or structure), never a crash, a hang, a huge allocation or a silent NaN.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tensorframe as tf
from tensorframe.checkpoint import CheckpointError, load_model, save_checkpoint
from tensorframe.config import ConfigError
from tensorframe.types import Sample

TINY = {
    "cutoff": 3.5,
    "backbone": {"name": "reference", "hidden": 8, "num_radial": 4, "num_interactions": 1},
    "heads": [{"name": "force", "hidden": 8}],
}
HUGE = {"backbone": {"name": "reference", "hidden": 200_000}, "heads": [{"name": "force"}]}
WATER = Sample([8, 1, 1], [[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A valid checkpoint of a tiny model."""
    path = tmp_path_factory.mktemp("ckpt") / "good.pt"
    torch.manual_seed(0)
    save_checkpoint(path, tf.build_model(TINY))
    return path


@pytest.fixture(scope="module")
def model(good: Path) -> tf.TensorModel:
    return load_model(good)


def payload_of(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def write(path: Path, payload: Any) -> Path:
    torch.save(payload, path)
    return path


def refusal(error: pytest.ExceptionInfo, path: Path) -> str:
    """The message, checked to be one line naming the file."""
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    return message


# ------------------------------------------------------------------ unreadable files


def test_empty_file_is_named_as_empty(tmp_path):
    path = tmp_path / "EMPTY.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert refusal(error, path) == f"{path}: not a tensorframe checkpoint (empty file)"


def test_truncated_file_says_truncated_with_a_reason(good, tmp_path):
    path = tmp_path / "truncated.pt"
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    message = refusal(error, path)
    assert "truncated or corrupted" in message and not message.endswith(": )")


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello world\n")
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert "not a tensorframe checkpoint (not a zip archive written by torch.save" in refusal(error, path)


def test_objects_that_weights_only_refuses_are_named(tmp_path):
    from fractions import Fraction

    path = write(tmp_path / "object.pt", {"format": "tensorframe-checkpoint/2", "x": Fraction(1, 2)})
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert "fractions.Fraction" in refusal(error, path)


# ------------------------------------------------------------------ malformed payloads


@pytest.mark.parametrize("key", ["format", "model_config", "state_dict"])
def test_a_missing_key_is_named_with_the_expected_keys(good, tmp_path, key):
    payload = payload_of(good)
    del payload[key]
    path = write(tmp_path / f"no_{key}.pt", payload)
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert refusal(error, path).startswith(
        f"{path}: checkpoint has no {key!r} (expected keys: format, model_config, state_dict"
    )


def test_a_bare_state_dict_is_recognised(good, tmp_path):
    path = write(tmp_path / "bare.pt", payload_of(good)["state_dict"])
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert "holds a bare state_dict" in refusal(error, path)


@pytest.mark.parametrize(("key", "value", "words"), [
    ("model_config", "reference", "entry 'model_config' should be a dict, found a str"),
    ("state_dict", [1, 2], "entry 'state_dict' should be a dict, found a list"),
    ("dtype", "int7", "entry 'dtype' is 'int7'; expected one of float32"),
])
def test_entries_of_the_wrong_type_are_named(good, tmp_path, key, value, words):
    payload = payload_of(good)
    payload[key] = value
    path = write(tmp_path / "wrong.pt", payload)
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert words in refusal(error, path)


def test_a_state_dict_entry_that_is_not_a_tensor_is_named(good, tmp_path):
    payload = payload_of(good)
    payload["state_dict"]["backbone.embedding.weight"] = [[0.0] * 8] * 101
    path = write(tmp_path / "list.pt", payload)
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert "entry 'backbone.embedding.weight' holds a list" in refusal(error, path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load(good, tmp_path, bad):
    payload = payload_of(good)
    weight = payload["state_dict"]["backbone.embedding.weight"]
    weight.view(-1)[:3] = bad
    path = write(tmp_path / "nan.pt", payload)
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert refusal(error, path) == (f"{path}: weight 'backbone.embedding.weight' has 3 NaN/inf values; the checkpoint "
                                    f"is corrupt (or training diverged)")


def test_the_cli_prints_one_line_and_exits_2(good, tmp_path, capsys):
    from tensorframe.cli import main

    empty = tmp_path / "EMPTY.pt"
    empty.write_bytes(b"")
    payload = payload_of(good)
    payload["state_dict"]["backbone.embedding.weight"].view(-1)[0] = float("nan")
    nan = write(tmp_path / "nan.pt", payload)
    structures = tmp_path / "in.xyz"
    structures.write_text("3\n\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n")
    for path, words in ((empty, "(empty file)"), (nan, "1 NaN/inf values")):
        code = main(["predict", str(path), str(structures), "-o", str(tmp_path / "out.json")])
        err = capsys.readouterr().err
        assert code == 2
        assert err.count("\n") == 1 and err.startswith(f"tensorframe predict: error: {path}: ") and words in err


# ------------------------------------------------------------------ model size before allocation


def test_a_huge_config_is_refused_before_allocating():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        tf.build_model(HUGE)
    assert time.perf_counter() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: under 200 MiB
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("backbone: the model would have 240,044,000,")
    assert "over the 8 GiB model budget" in message and "backbone.hidden=200000" in message
    assert "TENSORFRAME_MODEL_MEMORY_GB" in message


def test_the_budget_is_an_argument_and_an_environment_variable(good, monkeypatch):
    with pytest.raises(ConfigError, match=r"over the 1e-06 GiB model budget"):
        tf.build_model(TINY, memory_budget_gb=1e-6)
    monkeypatch.setenv("TENSORFRAME_MODEL_MEMORY_GB", "1e-6")
    with pytest.raises(ConfigError) as error:
        load_model(good)
    assert refusal(error, good).startswith(f"{good}: model_config: backbone: the model would have")
    monkeypatch.setenv("TENSORFRAME_MODEL_MEMORY_GB", "lots")
    with pytest.raises(ConfigError, match="TENSORFRAME_MODEL_MEMORY_GB: expected a positive number of GiB, got 'lots'"):
        tf.build_model(TINY)


def test_a_model_that_cannot_be_planned_is_still_built_and_checked(monkeypatch):
    """A component that cannot be built with meta tensors: built for real, checked after."""
    from tensorframe import model as model_module

    def fail(*args, **kwargs):
        raise RuntimeError("Tensor.item() cannot be called on meta tensors")

    monkeypatch.setattr(model_module._LargeTensorsOnMeta, "__torch_function__", fail)
    assert model_module.plan_model(tf.config.parse_model_config(TINY), tf.get_registry()) is None
    assert isinstance(tf.build_model(TINY), tf.TensorModel)
    with pytest.raises(ConfigError, match="model budget"):
        tf.build_model(TINY, memory_budget_gb=1e-6)


@pytest.mark.parametrize("hidden", [8, 1100], ids=["all-real", "partly-meta"])
def test_planning_leaves_the_random_weights_as_a_plain_build(hidden):
    from tensorframe.model import assemble_model

    config = tf.config.parse_model_config({**TINY, "backbone": {**TINY["backbone"], "hidden": hidden}})
    torch.manual_seed(3)
    plain = assemble_model(config, tf.get_registry()).state_dict()
    after_plain = torch.rand(2)
    torch.manual_seed(3)
    built = tf.build_model(config).state_dict()
    assert torch.equal(torch.rand(2), after_plain)
    assert plain.keys() == built.keys() and all(torch.equal(plain[k], built[k]) for k in plain)


def test_a_checkpoint_config_that_does_not_fit_its_weights_never_builds_it(good, tmp_path):
    payload = payload_of(good)
    payload["model_config"]["backbone"]["hidden"] = 200_000
    path = write(tmp_path / "huge.pt", payload)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert time.perf_counter() - start < 1.0
    assert refusal(error, path) == (f"{path}: weights do not fit the saved config: tensor 'backbone.embedding.weight' "
                                    f"has shape (101, 8) in the file, the config builds (101, 200000)")


def test_missing_and_extra_weights_are_named(good, tmp_path):
    payload = payload_of(good)
    name = sorted(payload["state_dict"])[0]
    shape = tuple(payload["state_dict"].pop(name).shape)
    path = write(tmp_path / "missing.pt", payload)
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert f"the config builds {name!r} (shape {shape}), which the file lacks" in refusal(error, path)
    payload = payload_of(good)
    payload["state_dict"]["extra.weight"] = torch.zeros(2)
    path = write(tmp_path / "extra.pt", payload)
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert "the file holds 'extra.weight' (shape (2,)), which the config does not build" in refusal(error, path)


# ------------------------------------------------------------------ model.predict checks its structures


def test_predict_refuses_atomic_number_zero(model):
    with pytest.raises(ValueError, match=r"^structure 1: atom 0 has unknown element \(atomic number 0\)"):
        model.predict([WATER, Sample([0, 1], [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])])


def test_predict_refuses_elements_beyond_the_backbone(model):
    numbers = [1, 1, 1, 118]
    positions = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    with pytest.raises(ValueError) as error:
        model.predict([Sample(numbers, positions)])
    assert str(error.value) == ("structure 0: atom 3 has atomic number 118, outside the backbone's elements 1..100 "
                                "(backbone.max_z)")


def test_predict_refuses_overlapping_atoms_unless_min_distance_is_zero(model):
    import ase

    close = ase.Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.05, 0.0, 0.0]])
    with pytest.raises(ValueError) as error:
        model.predict([WATER, WATER, close])
    assert str(error.value) == ("structure 2: atoms 0 and 1 overlap, 0.050 Å apart; expected at least "
                                "min_distance=0.3 Å")
    (prediction,) = model.predict([close], min_distance=0)
    assert prediction["forces"].shape == (2, 3) and np.all(np.isfinite(prediction["forces"]))


def test_predict_names_the_structure_that_cannot_be_converted(model):
    with pytest.raises(TypeError, match=r"^structure 1: expected ase.Atoms, .* got builtins.str"):
        model.predict([WATER, "H2O"])


def test_evaluate_checks_structures_as_predict_does(model):
    from tensorframe.scoring import collect_pairs

    labelled = Sample([1, 1], [[0.0, 0.0, 0.0], [0.05, 0.0, 0.0]], targets={"forces": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"^structure 0: atoms 0 and 1 overlap"):
        collect_pairs(model, [labelled])
