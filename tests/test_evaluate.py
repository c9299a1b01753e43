"""Evaluation: per-field and per-component MAE/RMSE checked against errors planted by hand in
the labels, structures without a label left out of that field, bad labels named by structure
and field, and ``tensorframe evaluate`` writing the same metrics, parity plots and a table."""

from __future__ import annotations

import json

import ase
import ase.build
import ase.io
import numpy as np
import pytest
import torch

import tensorframe
from tensorframe.cli import main
from tensorframe.io.convert import to_sample
from tensorframe.scoring import component_names, score

HEADS = [
    {"name": "born", "hidden": 8},
    {"name": "dielectric", "hidden": 8},
    {"name": "force", "hidden": 8},
    {"name": "scalar", "field": "energy", "hidden": 8},
]
CONFIG = {"cutoff": 3.5, "triplet_cutoff": 3.0, "backbone": {"name": "reference", "hidden": 8, "num_radial": 6},
          "heads": HEADS, "lifting": {"hidden": 8, "out_dim": 8}}


@pytest.fixture(scope="module")
def model() -> tensorframe.TensorModel:
    torch.manual_seed(0)
    return tensorframe.build_model(CONFIG).double().eval()


def structures() -> list[ase.Atoms]:
    wurtzite = ase.build.bulk("AlN", "wurtzite", a=3.11, c=4.98)
    rocksalt = ase.build.bulk("NaCl", "rocksalt", a=4.6)
    rocksalt.positions[1] += [0.13, -0.07, 0.21]
    water = ase.Atoms("H2O", positions=[[0, 0.76, -0.47], [0, -0.76, -0.47], [0, 0, 0.12]])
    return [wurtzite, rocksalt, water]


def planted_errors(model, seed: int = 0):
    """Samples labelled with the model's own predictions plus random errors; returns both."""
    rng = np.random.default_rng(seed)
    samples = [to_sample(a) for a in structures()]
    predictions = model.predict(samples)
    errors = [{name: rng.normal(size=np.shape(value)) for name, value in p.items()} for p in predictions]
    labelled = [s.with_targets({n: p[n] - e[n] for n in p}) for s, p, e in zip(samples, predictions, errors, strict=True)]
    return labelled, errors


def reference_metrics(rows: list[np.ndarray]) -> tuple[float, float, list[float], list[float]]:
    """MAE, RMSE overall and per component, by explicit loops over rows and components."""
    flat = [r.reshape(-1) for r in rows]
    components = len(flat[0])
    values = [x for r in flat for x in r]
    mae = sum(abs(x) for x in values) / len(values)
    rmse = (sum(x * x for x in values) / len(values)) ** 0.5
    per_mae = [sum(abs(r[c]) for r in flat) / len(flat) for c in range(components)]
    per_rmse = [(sum(r[c] ** 2 for r in flat) / len(flat)) ** 0.5 for c in range(components)]
    return mae, rmse, per_mae, per_rmse


def test_component_names_are_row_major():
    assert component_names(0) == ["value"]
    assert component_names(1) == ["x", "y", "z"]
    assert component_names(2) == ["xx", "xy", "xz", "yx", "yy", "yz", "zx", "zy", "zz"]
    assert component_names(3)[:4] == ["xxx", "xxy", "xxz", "xyx"] and len(component_names(3)) == 27


def test_metrics_equal_the_planted_errors_per_field_and_component(model):
    samples, errors = planted_errors(model)
    result = score(model, samples)
    assert result["num_structures"] == 3 and result["unlabelled"] == []
    assert set(result["fields"]) == {"born_charges", "dielectric", "forces", "energy"}
    for name, m in result["fields"].items():
        if m["level"] == "atom":  # one row per atom, over all structures
            rows = [row for e in errors for row in e[name]]
        else:
            rows = [e[name] for e in errors]
        mae, rmse, per_mae, per_rmse = reference_metrics(rows)
        assert m["count"] == len(rows) == (9 if m["level"] == "atom" else 3), name
        assert m["mae"] == pytest.approx(mae, rel=1e-9) and m["rmse"] == pytest.approx(rmse, rel=1e-9)
        assert list(m["components"]) == component_names(rows[0].ndim)
        for c, component in enumerate(m["components"].values()):
            assert component["mae"] == pytest.approx(per_mae[c], rel=1e-9), (name, c)
            assert component["rmse"] == pytest.approx(per_rmse[c], rel=1e-9), (name, c)


def test_a_component_error_shows_in_that_component_only(model):
    """Off by 0.3 in Z*_xy of every atom: MAE_xy = RMSE_xy = 0.3, every other component 0."""
    samples = [to_sample(a) for a in structures()]
    predictions = model.predict(samples)
    shifted = []
    for sample, prediction in zip(samples, predictions, strict=True):
        born = prediction["born_charges"].copy()
        born[:, 0, 1] += 0.3
        shifted.append(sample.with_targets({"born_charges": born}))
    m = score(model, shifted)["fields"]["born_charges"]
    for component, values in m["components"].items():
        expected = 0.3 if component == "xy" else 0.0
        assert values["mae"] == pytest.approx(expected, abs=1e-12), component
        assert values["rmse"] == pytest.approx(expected, abs=1e-12), component
    assert m["mae"] == pytest.approx(0.3 / 9, abs=1e-12)
    assert m["rmse"] == pytest.approx(0.3 / 3, abs=1e-12)


def test_structures_without_a_label_are_left_out_of_that_field(model):
    samples, errors = planted_errors(model, seed=1)
    samples[1] = samples[1].with_targets({k: v for k, v in samples[1].targets.items() if k != "dielectric"})
    samples[2] = samples[2].with_targets({})
    result = score(model, samples)
    assert result["fields"]["dielectric"]["count"] == 1
    assert result["fields"]["forces"]["count"] == 4 + 2  # the water molecule has no labels at all
    mae, *_ = reference_metrics([errors[0]["dielectric"]])
    assert result["fields"]["dielectric"]["mae"] == pytest.approx(mae, rel=1e-9)


def test_bad_labels_are_named_by_structure_and_field(model):
    samples, _ = planted_errors(model)
    nan = dict(samples[2].targets, dielectric=np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match=r"structure 2, field 'dielectric': label contains NaN"):
        score(model, [samples[0], samples[1], samples[2].with_targets(nan)])
    short = dict(samples[1].targets, forces=np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"structure 1, field 'forces': label has shape \(1, 3\), the model predicts \(2, 3\)"):
        score(model, [samples[0], samples[1].with_targets(short)])


def write_labelled(model, path, seed: int = 2):
    """An extended XYZ file with labels under REF_ keys (energy, forces, Born charges, dielectric)."""
    samples, _ = planted_errors(model, seed)
    frames = []
    for atoms, sample in zip(structures(), samples, strict=True):
        atoms = atoms.copy()
        atoms.arrays["REF_forces"] = sample.targets["forces"]
        atoms.arrays["REF_born"] = sample.targets["born_charges"].reshape(len(atoms), 9)
        atoms.info["REF_eps"] = sample.targets["dielectric"].reshape(9)
        atoms.info["REF_energy"] = float(sample.targets["energy"])
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return samples


def test_evaluate_command_writes_metrics_plots_and_a_table(model, tmp_path, capsys):
    checkpoint = tmp_path / "model.pt"
    tensorframe.save_checkpoint(checkpoint, model)
    data = tmp_path / "labelled.extxyz"
    samples = write_labelled(model, data)
    outdir = tmp_path / "eval"
    code = main(["evaluate", str(checkpoint), str(data), "-o", str(outdir),
                 "--key-map", "REF_forces=forces,REF_born=born_charges", "--key-map", "REF_eps=dielectric",
                 "--key-map", "REF_energy=energy"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    written = json.loads((outdir / "metrics.json").read_text())
    expected = score(model, samples)
    for name, m in expected["fields"].items():
        assert written["fields"][name]["mae"] == pytest.approx(m["mae"], abs=1e-7)  # labels via 8-decimal text
        for component, values in m["components"].items():
            assert written["fields"][name]["components"][component]["rmse"] == pytest.approx(values["rmse"], abs=1e-7)
    table = captured.out.splitlines()
    born_row = next(line for line in table if line.startswith("born_charges"))
    assert born_row.split()[1] == "9"  # atoms
    assert float(born_row.split()[2]) == pytest.approx(expected["fields"]["born_charges"]["mae"], rel=1e-3)
    assert any(line.split()[0] == "zx" for line in table)
    import matplotlib.image

    for name in expected["fields"]:
        image = matplotlib.image.imread(outdir / f"parity_{name}.png")
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300, name
        # Component-coloured: a 9-component field uses many distinct colours.
        if name == "born_charges":
            colours = {tuple(np.round(px[:3], 1)) for px in image.reshape(-1, image.shape[-1])}
            assert len(colours) > 20


def test_evaluate_command_errors_name_the_file(model, tmp_path, capsys):
    checkpoint = tmp_path / "model.pt"
    tensorframe.save_checkpoint(checkpoint, model)
    unlabelled = tmp_path / "plain.xyz"
    ase.io.write(unlabelled, structures(), format="extxyz")
    assert main(["evaluate", str(checkpoint), str(unlabelled), "-o", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(unlabelled) in err[0] and "--key-map" in err[0]
    assert main(["evaluate", str(checkpoint), str(tmp_path / "none.xyz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'none.xyz'}: no such input file" in err[0]
    assert main(["evaluate", str(checkpoint), str(unlabelled), "--key-map", "oops"]) == 2
    assert "--key-map: expected FILE_KEY=FIELD, got 'oops'" in capsys.readouterr().err
