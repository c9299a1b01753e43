"""``tensorframe predict`` and ``load_model(path).predict``: saved models predict what they
predicted before saving, files written read back as the same tensors (row-major, not
transposed), a BORN file carries the symmetrised predictions, and bad input ends in one clear
line naming the file — a checkpoint that carries code is refused without running it.

Commands run in-process through ``tensorframe.cli.main`` (the function the script calls).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import ase
import ase.build
import ase.io
import numpy as np
import pytest
import torch
from pymatgen.io.ase import AseAtomsAdaptor

import tensorframe
from tensorframe.checkpoint import CheckpointError
from tensorframe.cli import main
from tensorframe.io.convert import to_sample
from tensorframe.io.read import read_structures
from tensorframe.space_group import symmetrize_born_and_dielectric

HEADS = [
    {"name": "born", "acoustic_sum_rule": False, "hidden": 8},
    {"name": "dielectric", "positive_definite": True, "hidden": 8},
    {"name": "force", "hidden": 8},
    {"name": "piezo", "hidden": 8},
    {"name": "scalar", "field": "energy", "hidden": 8},
]


def config(heads: list[dict]) -> dict:
    return {"cutoff": 3.5, "triplet_cutoff": 3.0, "backbone": {"name": "reference", "hidden": 8, "num_radial": 6},
            "heads": heads, "lifting": {"hidden": 8, "out_dim": 8}}


def wurtzite() -> ase.Atoms:
    return ase.build.bulk("AlN", "wurtzite", a=3.11, c=4.98)


def distorted_rocksalt() -> ase.Atoms:
    """No symmetry left: every Born-charge component is free, Z* is not symmetric."""
    atoms = ase.build.bulk("NaCl", "rocksalt", a=4.6)
    atoms.positions[1] += [0.13, -0.07, 0.21]
    return atoms


def water() -> ase.Atoms:
    return ase.Atoms("H2O", positions=[[0, 0.76, -0.47], [0, -0.76, -0.47], [0, 0, 0.12]])


@pytest.fixture(scope="module")
def model() -> tensorframe.TensorModel:
    torch.manual_seed(0)
    model = tensorframe.build_model(config(HEADS)).double().eval()
    model.scaling["born_charges"].set(2.5)  # output scaling must survive the checkpoint
    model.scaling["energy"].set(0.7, shift=-3.0)
    return model


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    tensorframe.save_checkpoint(path, model)
    return path


@pytest.fixture(scope="module")
def structures_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "structures.extxyz"
    ase.io.write(path, [wurtzite(), distorted_rocksalt(), water()], format="extxyz")
    return path


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_loaded_model_predicts_what_the_saved_model_predicted(model, checkpoint):
    structures = [wurtzite(), AseAtomsAdaptor.get_structure(distorted_rocksalt()), water()]
    loaded = tensorframe.load_model(checkpoint)
    assert not loaded.training and next(loaded.parameters()).dtype == torch.float64
    before, after = model.predict(structures), loaded.predict(structures)
    for b, a in zip(before, after, strict=True):
        assert set(a) == {"born_charges", "dielectric", "forces", "piezo", "energy"}
        for name in b:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # The rocksalt given as pymatgen predicts the same numbers as given as ase.
    from_ase = loaded.predict([distorted_rocksalt()])[0]
    np.testing.assert_allclose(after[1]["born_charges"], from_ase["born_charges"], atol=1e-12)
    assert float(loaded.scaling["born_charges"].scale) == 2.5
    assert float(loaded.scaling["energy"].shift) == -3.0


def test_predict_writes_extended_xyz_that_reads_back_as_the_predictions(model, checkpoint, structures_file, tmp_path, capsys):
    out = tmp_path / "pred.xyz"
    code, stdout, stderr = run(capsys, "predict", checkpoint, structures_file, "-o", out)
    assert code == 0, stderr
    assert "wrote 3 structure(s)" in stdout and "(extxyz)" in stdout
    expected = model.predict(read_structures(structures_file))
    text = out.read_text()
    assert "born_charges:R:9" in text and "forces:R:3" in text  # per-atom tensors as flattened columns
    back = read_structures(out)  # the same reader turns the columns and info back into labels
    for sample, prediction in zip(back, expected, strict=True):
        assert set(sample.targets) == set(prediction)
        for name, value in prediction.items():
            np.testing.assert_allclose(sample.targets[name], value, atol=2e-8, rtol=0, err_msg=name)  # 8 decimals


def test_extended_xyz_flattens_row_major_and_reads_back_untransposed(tmp_path):
    """Distinct numbers in every slot: a transposed or reordered column would show."""
    from tensorframe.io.writers import write_predictions_extxyz

    samples = [to_sample(distorted_rocksalt()), to_sample(water())]
    predictions = [
        {"born_charges": np.arange(n * 9.0).reshape(n, 3, 3) + 100 * k, "dielectric": np.arange(9.0).reshape(3, 3) - k,
         "piezo": np.arange(27.0).reshape(3, 3, 3) * (k + 1), "energy": np.array(-1.5 - k)}
        for k, n in enumerate((2, 3))
    ]
    path = tmp_path / "p.extxyz"
    write_predictions_extxyz(path, samples, predictions)
    frame = ase.io.read(path, index=0)
    np.testing.assert_array_equal(frame.arrays["born_charges"][1], np.arange(9.0, 18.0))  # Z_xx Z_xy Z_xz Z_yx ...
    np.testing.assert_array_equal(frame.info["dielectric"], np.arange(9.0))
    for sample, prediction in zip(read_structures(path), predictions, strict=True):
        for name, value in prediction.items():
            np.testing.assert_array_equal(sample.targets[name], value, err_msg=name)
    assert read_structures(path)[1].pbc.tolist() == [False, False, False]


def test_predict_writes_json_with_unflattened_tensors(model, checkpoint, structures_file, tmp_path, capsys):
    out = tmp_path / "pred.json"
    code, stdout, stderr = run(capsys, "predict", checkpoint, structures_file, "-o", out)
    assert code == 0, stderr
    rows = json.loads(out.read_text())
    expected = model.predict(read_structures(structures_file))
    assert [row["source"] for row in rows] == [f"{structures_file}:{i}" for i in range(3)]
    assert rows[2]["pbc"] == [False, False, False] and rows[2]["numbers"] == [1, 1, 8]
    for row, prediction in zip(rows, expected, strict=True):
        for name, value in prediction.items():
            np.testing.assert_array_equal(np.array(row["predictions"][name]), value, err_msg=name)


def test_predict_born_file_holds_the_symmetrised_prediction(model, checkpoint, tmp_path, capsys):
    poscar = tmp_path / "POSCAR"
    wurtzite().write(poscar, format="vasp", direct=True)
    born = tmp_path / "BORN"
    code, stdout, stderr = run(capsys, "predict", checkpoint, poscar, "--born-file", born)
    assert code == 0, stderr
    assert "space group P6_3mc" in stdout
    prediction = model.predict([wurtzite()])[0]
    sample = read_structures(poscar)[0]
    result = symmetrize_born_and_dielectric(sample, prediction["born_charges"], prediction["dielectric"])
    # Neumann: an exactly equivariant model already respects the 6mm site symmetry, so
    # symmetrising only removes the sum-rule residual (this model has no ASR head).
    assert result.asr_residual > 1e-3
    np.testing.assert_allclose(result.born_charges, prediction["born_charges"] - prediction["born_charges"].mean(0),
                               atol=1e-9)
    np.testing.assert_allclose(result.dielectric, prediction["dielectric"], atol=1e-9)
    lines = born.read_text().splitlines()
    assert lines[0].startswith("default") and "atoms 1 2 " in lines[0]
    values = np.array([[float(x) for x in line.split()] for line in lines[1:]])
    np.testing.assert_allclose(values[0], result.dielectric.reshape(-1), atol=1e-8)
    np.testing.assert_allclose(values[1:], result.born_charges[[0, 1]].reshape(2, 9), atol=1e-8)


# --- bad input ------------------------------------------------------------------------------------


def assert_one_error_line(code: int, stdout: str, stderr: str, *words: str) -> str:
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("tensorframe predict: error: ") or lines[0].startswith("tensorframe evaluate: error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in stderr
    return lines[0]


def test_missing_checkpoint(structures_file, tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    assert_one_error_line(*run(capsys, "predict", missing, structures_file, "-o", tmp_path / "o.json"),
                          str(missing), "no such checkpoint file")


def test_truncated_checkpoint(checkpoint, structures_file, tmp_path, capsys):
    cut = tmp_path / "cut.pt"
    data = checkpoint.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert_one_error_line(*run(capsys, "predict", cut, structures_file, "-o", tmp_path / "o.json"), str(cut),
                          "not a loadable tensorframe checkpoint")
    assert not (tmp_path / "o.json").exists()


class Payload:
    """Unpickling this calls ``Path(marker).touch()``: code execution, if a loader allows it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_checkpoint_carrying_code_is_refused_and_the_code_never_runs(container, structures_file, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"format": "tensorframe-checkpoint/1", "model_config": Payload(marker)}
    if container == "torch-zip":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    assert_one_error_line(*run(capsys, "predict", evil, structures_file, "-o", tmp_path / "o.json"), str(evil),
                          "weights_only")
    with pytest.raises(CheckpointError):
        tensorframe.TensorframeCalculator(evil)
    assert not marker.exists()
    # Control: the payload is live — an unsafe loader does run it.
    if container == "torch-zip":
        torch.load(evil, weights_only=False)
    else:
        pickle.loads(evil.read_bytes())
    assert marker.exists()


def test_missing_and_unreadable_input_files(checkpoint, tmp_path, capsys):
    missing = tmp_path / "missing.xyz"
    assert_one_error_line(*run(capsys, "predict", checkpoint, missing, "-o", tmp_path / "o.json"),
                          str(missing), "no such input file")
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("3\nnot an extended xyz comment\nH 0 0\n")
    assert_one_error_line(*run(capsys, "predict", checkpoint, garbage, "-o", tmp_path / "o.json"), str(garbage))


def test_born_file_needs_a_model_with_dielectric(tmp_path, capsys):
    torch.manual_seed(1)
    no_eps = tmp_path / "born_only.pt"
    tensorframe.save_checkpoint(no_eps, tensorframe.build_model(config([{"name": "born", "hidden": 8}])).double())
    poscar = tmp_path / "POSCAR"
    wurtzite().write(poscar, format="vasp")
    line = assert_one_error_line(*run(capsys, "predict", no_eps, poscar, "--born-file", tmp_path / "BORN"),
                                 str(no_eps), "'dielectric'", "born_charges")
    assert "'born_charges' head" not in line  # it names only what is missing
    assert not (tmp_path / "BORN").exists()


def test_born_file_refuses_several_structures_and_molecules(checkpoint, structures_file, tmp_path, capsys):
    assert_one_error_line(*run(capsys, "predict", checkpoint, structures_file, "--born-file", tmp_path / "BORN"),
                          "one crystal", "3 structures")
    molecule = tmp_path / "water.xyz"
    ase.io.write(molecule, water(), format="extxyz")
    assert_one_error_line(*run(capsys, "predict", checkpoint, molecule, "--born-file", tmp_path / "BORN"),
                          f"{molecule}:0", "periodic in 3 directions")
    assert not (tmp_path / "BORN").exists()


def test_nothing_to_write_is_an_error(checkpoint, structures_file, capsys):
    assert_one_error_line(*run(capsys, "predict", checkpoint, structures_file), "-o OUT", "--born-file")


def test_debug_raises_with_the_traceback(structures_file, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        main(["--debug", "predict", str(tmp_path / "nope.pt"), str(structures_file), "-o", str(tmp_path / "o.json")])


def test_predict_accepts_pymatgen_and_sample_inputs_in_python(model):
    sample = to_sample(wurtzite())
    structure = AseAtomsAdaptor.get_structure(wurtzite())
    a, b = model.predict([sample, structure])
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-12, err_msg=name)
