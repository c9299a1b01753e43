"""What a daily user sees of a run and its outputs: parity plots with one panel per
independent component and robust axes, written at the end of ``train``; progress lines on a
non-terminal stderr; predictions written beside the input labels (``REF_<field>``); and a
note when rounded positions hide a crystal's symmetry from spglib.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import ase
import ase.build
import ase.io
import numpy as np
import pytest
import torch

import tensorframe as tf
from tensorframe.io.convert import to_sample
from tensorframe.io.read import read_structures
from tensorframe.io.writers import write_predictions
from tensorframe.scoring import FieldPairs, independent_components, parity_plot, robust_limits
from tensorframe.space_group import symmetrize_born_and_dielectric
from tensorframe.train import Trainer, parse_train_config
from tensorframe.train import config as train_config
from tensorframe.train.run_log import EpochProgress

# ------------------------------------------------------------------ parity plots


@pytest.mark.parametrize(
    "symmetry, rank, expected",
    [
        ("", 0, ["value"]),
        ("i", 1, ["x", "y", "z"]),
        ("ij", 2, ["xx", "xy", "xz", "yx", "yy", "yz", "zx", "zy", "zz"]),  # Born charges: no symmetry
        ("ij=ji", 2, ["xx", "xy", "xz", "yy", "yz", "zz"]),  # dielectric, stress
        ("ij=-ji", 2, ["xy", "xz", "yz"]),  # the diagonal of an antisymmetric tensor is zero
    ],
)
def test_independent_components_follow_the_index_symmetry(symmetry, rank, expected):
    names = tf.scoring.component_names(rank)
    assert [names[c] for c in independent_components(rank, symmetry)] == expected


@pytest.mark.parametrize("symmetry, count", [("ijk=ikj", 18), ("ijk", 27), ("ijkl=jikl=ijlk=klij", 21)])
def test_independent_component_counts_of_higher_ranks(symmetry, count):
    assert len(independent_components(len(symmetry.split("=")[0]), symmetry)) == count


def test_robust_limits_ignore_one_far_outlier_but_keep_ordinary_extremes():
    rng = np.random.default_rng(0)
    labels = rng.normal(size=40)
    predictions = labels + 0.1 * rng.normal(size=40)
    low, high = robust_limits(labels, predictions)
    assert low < min(labels.min(), predictions.min()) and high > max(labels.max(), predictions.max())
    predictions[3] = 1e6
    low_out, high_out = robust_limits(labels, predictions)
    assert high_out < 10 and low_out == pytest.approx(low)


def test_parity_plot_draws_a_panel_per_independent_component_and_clips_the_outlier(tmp_path):
    rng = np.random.default_rng(1)
    target = rng.normal(size=(30, 9)) + 5 * np.eye(3).reshape(1, 9)
    target = 0.5 * (target + target.reshape(30, 3, 3).transpose(0, 2, 1).reshape(30, 9))  # symmetric
    predicted = target + 0.05 * rng.normal(size=target.shape)
    predicted[7, 4] = 1e6  # yy of one structure
    pairs = FieldPairs("dielectric", "structure", "", 2, predicted, target, 30)
    path = tmp_path / "parity_dielectric.png"
    panels = parity_plot(pairs, path, fields=tf.get_registry().fields)  # symmetry from the field table: ij=ji
    assert [p.component for p in panels] == ["xx", "xy", "xz", "yy", "yz", "zz"]
    yy = panels[3]
    assert yy.clipped == 1 and yy.limits[1] < 10 and yy.mae > 1e4
    assert all(p.clipped == 0 for p in panels if p.component != "yy")
    assert panels[1].mae == pytest.approx(np.abs(predicted[:, 1] - target[:, 1]).mean())
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[1] > image.shape[0] > 300  # a 3 x 2 grid: wider than tall


# ---------------------------------------------------------- training: plots and progress


def tiny_training_config(folder: Path) -> dict:
    frames = [ase.build.bulk("NaCl", "rocksalt", a=5.64), ase.build.bulk("Si", "diamond", a=5.43),
              ase.build.bulk("GaAs", "zincblende", a=5.65), ase.build.bulk("MgO", "rocksalt", a=4.21)] * 3
    rng = np.random.default_rng(0)
    for k, atoms in enumerate(frames):
        frames[k] = atoms = atoms.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.arrays["bec"] = rng.normal(size=(len(atoms), 9))
        atoms.info["eps"] = (5 * np.eye(3) + 0.1 * rng.normal(size=(3, 3))).reshape(9)
    ase.io.write(folder / "data.xyz", frames, format="extxyz")
    return {
        "model": {"cutoff": 3.5, "triplet_cutoff": 3.0, "backbone": {"name": "reference", "hidden": 8, "num_radial": 4},
                  "heads": [{"name": "born", "hidden": 8}, {"name": "dielectric", "hidden": 8}],
                  "lifting": {"hidden": 8, "out_dim": 8}},
        "data": {"path": "data.xyz", "key_map": {"bec": "born_charges", "eps": "dielectric"}},
        "split": {"train": 0.5, "valid": 0.25, "test": 0.25, "seed": 0},
        "targets": {"born_charges": 1.0, "dielectric": 1.0},
        "epochs": 2, "batch_size": 2, "output_dir": "run", "progress": True,
    }


def set_progress_interval(config: dict, seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the config when it has the option, else through the module default."""
    if "progress_interval_s" in train_config.TrainConfig.model_fields:
        config["progress_interval_s"] = seconds
    else:
        monkeypatch.setattr("tensorframe.train.run_log.PROGRESS_INTERVAL_S", seconds)


def test_train_writes_parity_plots_and_progress_lines_with_the_loss(tmp_path, capsys, monkeypatch):
    config = tiny_training_config(tmp_path)
    set_progress_interval(config, 0.0, monkeypatch)
    result = Trainer(parse_train_config(config), tmp_path).run()
    captured = capsys.readouterr()
    # Not a terminal (pytest captures stderr): plain lines, one per batch at interval 0, with the loss.
    lines = [line for line in captured.err.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 * 3, captured.err  # 2 epochs x 3 batches of 2 of the 6 training structures
    assert lines[0].startswith("epoch 1/2  batch 1/3  loss ") and lines[-1].startswith("epoch 2/2  batch 3/3  loss ")
    losses = [float(line.split("loss ")[1].split()[0]) for line in lines]
    assert all(np.isfinite(losses)) and lines[0].endswith(" s")
    # Parity plots of the best model on the test split, announced in one line.
    folder = tmp_path / "run" / "parity"
    assert result.parity_dir == folder
    for name in ("born_charges", "dielectric"):
        assert (folder / f"parity_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"on the test split (3 structures): {folder}" in captured.out


def test_progress_lines_respect_the_interval_and_close_the_epoch():
    now = [0.0]
    stream = io.StringIO()
    shown = EpochProgress(True, 3, 100, 0, 400, interval_s=30.0, stream=stream, clock=lambda: now[0])
    for batch in range(1, 401):
        now[0] = batch * 0.1  # 40 s in all
        shown.update(batch, 1.0 / batch)
    shown.close()
    lines = stream.getvalue().splitlines()
    assert lines == ["epoch 3/100  batch 300/400  loss 0.003333  30.0 s", "epoch 3/100  batch 400/400  loss 0.0025  40.0 s"]
    quiet = io.StringIO()
    short = EpochProgress(True, 1, 1, 0, 5, interval_s=30.0, stream=quiet, clock=lambda: 0.0)
    for batch in range(1, 6):
        short.update(batch, 0.5)
    short.close()
    off = EpochProgress(False, 1, 1, 0, 5, interval_s=0.0, stream=quiet)
    off.update(1, 0.5)
    off.close()
    assert quiet.getvalue() == ""  # an epoch shorter than the interval, and progress: false


# ---------------------------------------------------------- predictions beside labels


def labelled_structures() -> list:
    rng = np.random.default_rng(2)
    samples = []
    for atoms in (ase.build.bulk("NaCl", "rocksalt", a=5.64), ase.build.bulk("AlN", "wurtzite", a=3.11, c=4.98)):
        n = len(atoms)
        stress = rng.normal(size=(3, 3))
        targets = {"forces": rng.normal(size=(n, 3)), "born_charges": rng.normal(size=(n, 3, 3)),
                   "dielectric": 5 * np.eye(3) + 0.1 * rng.normal(size=(3, 3)), "energy": np.array(-3.5 * n),
                   "stress": stress + stress.T}
        samples.append(to_sample(atoms).with_targets(targets))
    return samples


def predictions_for(samples) -> list[dict[str, np.ndarray]]:
    return [{name: value + 1.0 for name, value in sample.targets.items()} for sample in samples]


def test_extended_xyz_predictions_carry_the_labels_as_ref_keys(tmp_path):
    samples = labelled_structures()
    predictions = predictions_for(samples)
    path = tmp_path / "pred.xyz"
    write_predictions(path, samples, predictions)
    frames = ase.io.read(path, index=":")
    for atoms, sample, prediction in zip(frames, samples, predictions, strict=True):
        targets = sample.targets
        np.testing.assert_allclose(atoms.arrays["REF_forces"], targets["forces"], atol=1e-8)
        np.testing.assert_allclose(atoms.arrays["REF_born_charges"], targets["born_charges"].reshape(-1, 9), atol=1e-8)
        np.testing.assert_allclose(atoms.info["REF_dielectric"], targets["dielectric"].reshape(9), atol=1e-8)
        assert atoms.info["REF_energy"] == pytest.approx(float(targets["energy"]))
        # The predictions keep the plain names; ase puts forces and energy into its calculator.
        np.testing.assert_allclose(atoms.get_forces(), prediction["forces"], atol=1e-8)
        assert atoms.get_potential_energy() == pytest.approx(float(prediction["energy"]))
        np.testing.assert_allclose(atoms.arrays["born_charges"], prediction["born_charges"].reshape(-1, 9), atol=1e-8)
        # Row-major 9 numbers, not ase's special (calculator) stress.
        np.testing.assert_allclose(atoms.info["REF_stress"], targets["stress"].reshape(9), atol=1e-8)
    # Read back as labels: the REF_ keys mapped onto the fields, the predictions mapped away.
    key_map = {f"REF_{name}": name for name in samples[0].targets} | {name: f"pred_{name}" for name in samples[0].targets}
    back = read_structures(path, key_map=key_map)
    for sample, original in zip(back, samples, strict=True):
        assert set(sample.targets) == set(original.targets)
        for name, value in original.targets.items():
            np.testing.assert_allclose(sample.targets[name], value, atol=1e-8, err_msg=name)


def test_json_predictions_carry_the_labels(tmp_path):
    samples = labelled_structures()
    predictions = predictions_for(samples)
    path = tmp_path / "pred.json"
    write_predictions(path, samples, predictions)
    rows = json.loads(path.read_text())
    for row, sample, prediction in zip(rows, samples, predictions, strict=True):
        assert set(row["labels"]) == set(sample.targets)
        np.testing.assert_array_equal(np.array(row["labels"]["born_charges"]), sample.targets["born_charges"])
        np.testing.assert_array_equal(np.array(row["predictions"]["born_charges"]), prediction["born_charges"])


def test_evaluate_reads_the_labels_of_a_predictions_file(tmp_path, capsys):
    """predict -> evaluate round trip: the REF_ labels are what the model is scored against."""
    from tensorframe.cli import main

    torch.manual_seed(0)
    model = tf.build_model({"cutoff": 3.5, "triplet_cutoff": 3.0,
                            "backbone": {"name": "reference", "hidden": 8, "num_radial": 4},
                            "heads": [{"name": "force", "hidden": 8}], "lifting": {"hidden": 8, "out_dim": 8}}).double()
    checkpoint = tmp_path / "model.pt"
    tf.save_checkpoint(checkpoint, model)
    samples = labelled_structures()
    labelled = [s.with_targets({"forces": s.targets["forces"]}) for s in samples]
    path = tmp_path / "pred.xyz"
    write_predictions(path, labelled, model.predict(labelled))
    code = main(["evaluate", str(checkpoint), str(path), "-o", str(tmp_path / "eval"),
                 "--key-map", "REF_forces=forces,forces=pred_forces"])
    assert code == 0, capsys.readouterr().err
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    expected = tf.scoring.score(model, labelled)["fields"]["forces"]["mae"]
    assert written["fields"]["forces"]["mae"] == pytest.approx(expected, abs=1e-7)
    assert expected > 0.1  # scored against the random labels, not against its own predictions


# ---------------------------------------------------------- BORN: rounded positions


def rounded_wurtzite() -> ase.Atoms:
    """AlN wurtzite with fractional positions rounded to 5 decimals (u = 0.38 -> 0.12000):
    P6_3mc at symprec 1e-3, only Cmc2_1 at 1e-5."""
    atoms = ase.build.bulk("AlN", "wurtzite", a=3.11, c=4.98)
    atoms.set_scaled_positions(np.round(atoms.get_scaled_positions(), 5))
    return atoms


def test_born_symmetrisation_notes_a_higher_symmetry_at_a_looser_tolerance():
    born, eps = np.zeros((4, 3, 3)), np.eye(3)
    result = symmetrize_born_and_dielectric(to_sample(rounded_wurtzite()), born, eps)
    assert result.international_symbol == "Cmc2_1" and result.loose_symbol == "P6_3mc"
    assert result.note == ("space group P6_3mc at symprec 0.001 but Cmc2_1 at 1e-05: positions may be rounded; "
                           "pass --symprec 0.001 if the higher symmetry is real")
    exact = symmetrize_born_and_dielectric(to_sample(ase.build.bulk("AlN", "wurtzite", a=3.11, c=4.98)), born, eps)
    assert exact.international_symbol == "P6_3mc" and exact.note is None and exact.loose_symbol is None
    loose = symmetrize_born_and_dielectric(to_sample(rounded_wurtzite()), born, eps, symprec=1e-3)
    assert loose.international_symbol == "P6_3mc" and loose.note is None


def test_progress_bar_on_a_terminal_shows_the_running_loss():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    shown = EpochProgress(True, 1, 2, 0, 4, interval_s=0.0, stream=stream)
    shown.update(1, 0.75)
    shown.update(2, 0.5)
    assert shown.bar is not None and shown.bar.postfix == "loss=0.5" and shown.bar.n == 2
    shown.close()
    assert "batch 2/4" not in stream.getvalue()  # a bar, not plain lines
