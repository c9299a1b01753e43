"""Training a conservative model end to end: one energy head learns energy, forces and
stress together from an extended XYZ file (ASE's EMT potential as the teacher), resumes,
and ``tensorframe predict`` writes its forces and stress; bad stress labels get one line."""

from __future__ import annotations

from pathlib import Path

import ase
import ase.build
import ase.io
import numpy as np
import pytest
import yaml
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from tensorframe.checkpoint import load_model
from tensorframe.cli import main
from tensorframe.train import Trainer, parse_train_config
from tensorframe.train.data import DataError

MODEL = {"cutoff": 4.0, "triplet_cutoff": 3.0, "conservative": True,
         "backbone": {"name": "reference", "hidden": 16, "num_radial": 8},
         "heads": [{"name": "energy", "hidden": 16}], "lifting": {"hidden": 8, "out_dim": 8}}


def emt_frames(count: int = 24, seed: int = 0) -> list[ase.Atoms]:
    """Rattled, strained Cu and CuAl cells labelled by EMT: energy, forces and stress (ASE's sign)."""
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True)
        if index % 2:
            atoms.numbers[[1, 3]] = 13
        strain = np.eye(3) + rng.normal(scale=0.02, size=(3, 3))
        atoms.set_cell(atoms.cell.array @ (0.5 * (strain + strain.T)), scale_atoms=True)
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        atoms.calc = EMT()
        labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "stress": atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    return frames


def config(folder: Path, **overrides) -> dict:
    base = {"model": MODEL, "data": {"path": "data.xyz"}, "split": {"train": 0.7, "valid": 0.15, "test": 0.15},
            "targets": {"energy": 1.0, "forces": 1.0, "stress": 1.0}, "loss": "mse", "optimizer": {"lr": 0.005},
            "epochs": 40, "batch_size": 4, "output_dir": "run", "progress": False, "parity_plots": False, "scheduler": None}
    base.update(overrides)
    return base


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("conservative")
    ase.io.write(folder / "data.xyz", emt_frames(), format="extxyz")
    result = Trainer(parse_train_config(config(folder)), folder).run()
    return folder, result.metrics


def test_one_energy_head_learns_energy_forces_and_stress(trained):
    """Test errors well below the trivial predictors: reference energies per element only
    (measured 0.070 vs 0.237 eV), zero forces (0.077 vs 0.758 eV/Å), the mean stress
    (0.0049 vs 0.0257 eV/Å^3)."""
    folder, metrics = trained
    frames = emt_frames()
    energies = np.array([a.get_potential_energy() for a in frames])
    counts = np.array([[np.sum(a.numbers == 29), np.sum(a.numbers == 13)] for a in frames])
    e0s, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    stresses = np.stack([a.get_stress(voigt=False) for a in frames])
    baseline = {"energy": np.abs(counts @ e0s - energies).mean(),
                "forces": np.abs(np.concatenate([a.get_forces() for a in frames])).mean(),
                "stress": np.abs(stresses - stresses.mean(0)).mean()}
    for field, trivial in baseline.items():
        assert metrics["test"][f"mae_{field}"] < 0.5 * trivial, field
    model = load_model(folder / "run" / "best.pt")
    assert model.conservative and set(model.heads) == {"energy"}
    # The energy's reference values: float64, fitted on the element counts (Cu, Al).
    assert model.scaling["energy"].element_shift.dtype.is_floating_point
    assert model.scaling["energy"].element_shift[29] != 0 and model.scaling["energy"].element_shift[13] != 0


def test_predict_writes_forces_and_stress_that_ase_reads_back(trained, tmp_path, capsys):
    folder, _ = trained
    frames = emt_frames(3, seed=7)
    ase.io.write(tmp_path / "in.xyz", frames, format="extxyz")
    out = tmp_path / "out.xyz"
    assert main(["predict", str(folder / "run" / "best.pt"), str(tmp_path / "in.xyz"), "-o", str(out)]) == 0
    assert "forces" in capsys.readouterr().out
    model = load_model(folder / "run" / "best.pt")
    expected = model.predict(frames)
    for atoms, row in zip(ase.io.read(out, ":"), expected, strict=True):
        np.testing.assert_allclose(atoms.arrays["forces"] if "forces" in atoms.arrays else atoms.get_forces(),
                                   row["forces"], atol=1e-5)
        np.testing.assert_allclose(atoms.get_stress(voigt=False), row["stress"], atol=1e-7)


def test_a_resumed_conservative_run_continues(trained, tmp_path):
    folder, _ = trained
    (tmp_path / "data.xyz").symlink_to(folder / "data.xyz")
    first = Trainer(parse_train_config(config(tmp_path, epochs=2)), tmp_path).run()
    assert first.metrics["epochs"] == 2
    resumed = Trainer(parse_train_config(config(tmp_path, epochs=3)), tmp_path, resume=True).run()
    assert resumed.metrics["epochs"] == 3


def test_given_reference_energies_are_used(tmp_path):
    ase.io.write(tmp_path / "data.xyz", emt_frames(8), format="extxyz")
    overrides = {"epochs": 1, "normalize": {"E0s": {"Cu": -0.25, "Al": -3.5}}}
    Trainer(parse_train_config(config(tmp_path, **overrides)), tmp_path).run()
    shift = load_model(tmp_path / "run" / "last.pt").scaling["energy"].element_shift
    assert float(shift[29]) == -0.25 and float(shift[13]) == -3.5


def test_stress_on_a_molecule_and_of_the_wrong_shape_are_one_line_errors(tmp_path):
    from tensorframe.io.read import read_structures

    water = ase.build.molecule("H2O")
    water.info["stress"] = np.zeros(9)
    ase.io.write(tmp_path / "molecule.xyz", [water], format="extxyz")
    with pytest.raises(ValueError) as caught:
        read_structures(tmp_path / "molecule.xyz")
    message = str(caught.value)
    assert "\n" not in message and "molecule.xyz" in message and "structure 0" in message and "stress" in message
    cell = ase.build.bulk("Cu", "fcc", a=3.6)
    cell.info["virial"] = np.zeros(4)
    ase.io.write(tmp_path / "bad.xyz", [cell], format="extxyz")
    with pytest.raises(ValueError) as caught:
        read_structures(tmp_path / "bad.xyz")
    message = str(caught.value)
    assert "\n" not in message and "bad.xyz" in message and "virial" in message


def test_a_stress_target_on_a_slab_is_refused_before_training(tmp_path):
    from tensorframe.model import build_model
    from tensorframe.train.data import Dataset, validate_samples
    from tensorframe.types import Sample

    slab = Sample([29, 29], [[0, 0, 0], [1.8, 1.8, 0]], np.diag([3.6, 3.6, 20.0]), [True, True, False],
                  targets={"stress": np.zeros((3, 3)), "energy": np.array(0.0), "forces": np.zeros((2, 3))})
    model = build_model(MODEL)
    with pytest.raises(DataError, match=r"slab\.xyz: structure 0: field 'stress': needs a cell periodic in all three"):
        validate_samples(model, Dataset([slab], ["slab.xyz: structure 0"]), [0], ["energy", "forces", "stress"])


def test_the_cli_trains_a_conservative_config(tmp_path, capsys):
    ase.io.write(tmp_path / "data.xyz", emt_frames(8), format="extxyz")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config(tmp_path, epochs=1)))
    assert main(["train", str(tmp_path / "train.yaml")]) == 0
    assert "mae_stress" in capsys.readouterr().out


def test_weight_average_updates_swaps_and_restores():
    import torch

    from tensorframe.train.ema import WeightAverage

    layer = torch.nn.Linear(2, 1)
    average = WeightAverage(layer, decay=0.9)
    start = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    average.update()  # warm-up: d = min(0.9, 1/10) = 0.1
    np.testing.assert_allclose(average.shadow["weight"], 0.1 * start + 0.9 * (start + 1.0), rtol=1e-6)
    with average.averaged():
        np.testing.assert_allclose(layer.weight.detach(), average.shadow["weight"])
    np.testing.assert_allclose(layer.weight.detach(), start + 1.0)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(layer, decay=1.0)


def test_ema_runs_resume_exactly_and_save_the_averaged_weights(trained, tmp_path):
    import torch

    from tensorframe.checkpoint import load_checkpoint

    folder, _ = trained
    (tmp_path / "data.xyz").symlink_to(folder / "data.xyz")
    whole = tmp_path / "whole"
    (whole).mkdir()
    (whole / "data.xyz").symlink_to(folder / "data.xyz")
    Trainer(parse_train_config(config(whole, epochs=4, ema_decay=0.9)), whole).run()
    Trainer(parse_train_config(config(tmp_path, epochs=2, ema_decay=0.9)), tmp_path).run()
    Trainer(parse_train_config(config(tmp_path, epochs=4, ema_decay=0.9)), tmp_path, resume=True).run()
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(whole / "run" / name), load_checkpoint(tmp_path / "run" / name)
        for key, value in a["state_dict"].items():
            assert torch.equal(value, b["state_dict"][key]), (name, key)
    last = load_checkpoint(whole / "run" / "last.pt")
    shadow = last["training_state"]["ema"]["shadow"]
    assert any(not torch.equal(shadow[k], last["state_dict"][k]) for k in shadow)  # last.pt keeps the raw weights


def test_two_processes_train_a_conservative_model_like_one_with_twice_the_batch(tmp_path):
    """DistributedDataParallel with forces and stress from the energy's autograd graph
    (create_graph inside the forward): every EMT cell has 4 atoms, so two processes of batch 2
    take exactly the steps of one process of batch 4."""
    import os
    import subprocess
    import sys

    import torch

    from tensorframe.checkpoint import load_checkpoint

    ase.io.write(tmp_path / "data.xyz", emt_frames(12), format="extxyz")
    for name, batch in (("ddp", 2), ("single", 4)):
        settings = config(tmp_path, epochs=2, batch_size=batch, dtype="float64", output_dir=name)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(settings))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "tensorframe", "train", str(tmp_path / "ddp.yaml")]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    Trainer(parse_train_config(config(tmp_path, epochs=2, batch_size=4, dtype="float64", output_dir="single")),
            tmp_path).run()
    ddp, single = (load_checkpoint(tmp_path / name / "last.pt")["state_dict"] for name in ("ddp", "single"))
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=0, atol=1e-10, msg=key)


def test_a_key_given_twice_in_a_config_is_an_error(tmp_path):
    """Plain YAML keeps the last of two `epochs:` silently; the config reader names the line."""
    from tensorframe.config import ConfigError
    from tensorframe.train.config import load_train_config

    text = yaml.safe_dump(config(tmp_path)) + "epochs: 3\n"
    (tmp_path / "twice.yaml").write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith("epochs:"))
    with pytest.raises(ConfigError) as caught:
        load_train_config(tmp_path / "twice.yaml")
    message = str(caught.value)
    assert "\n" not in message and "twice.yaml" in message
    assert f"duplicate key 'epochs' (first on line {line}); give each key once" in message
    (tmp_path / "once.yaml").write_text(yaml.safe_dump(config(tmp_path)))
    assert load_train_config(tmp_path / "once.yaml").epochs == 40
