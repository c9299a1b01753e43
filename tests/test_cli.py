"""The ``tensorframe`` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tensorframe.cli import main

SCRIPT = Path(sys.executable).with_name("tensorframe")
BUILTIN_ROWS = [
    ("backbone", "reference"), ("head", "born"), ("head", "dielectric"), ("head", "force"), ("head", "piezo"),
    ("head", "scalar"), ("head", "tensor"), ("field", "born_charges"), ("field", "dielectric"), ("field", "dipole"),
    ("field", "energy"), ("field", "forces"), ("field", "hyperpolarizability"), ("field", "piezo"),
    ("field", "polarizability"), ("reader", "ase"),
]
DEMO_FIELDS = ("energy", "forces", "dipole", "polarizability", "born_charges", "hyperpolarizability")


def tensorframe(*args: str, module: bool = False) -> subprocess.CompletedProcess:
    """The installed ``tensorframe`` script, or ``python -m tensorframe`` (``module`` or no script)."""
    command = [str(SCRIPT)] if SCRIPT.exists() and not module else [sys.executable, "-m", "tensorframe"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The main job on a small budget: the reference backbone, two epochs."""
    out = tmp_path_factory.mktemp("demo") / "run"
    return tensorframe("demo", "--backbone", "reference", "--epochs", "2", "--output-dir", str(out)), out


def test_plugins_lists_every_builtin_with_its_plugin_and_distribution():
    result = tensorframe("plugins")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "PLUGIN", "DISTRIBUTION"]
    table = {tuple(line.split()[:2]): line.split()[2:4] for line in lines[1:]}
    for row in BUILTIN_ROWS:
        assert table[row] == ["tensorframe", "tensorframe"], row


def test_demo_trains_evaluates_saves_reloads_and_predicts(demo):
    import tensorframe
    from tensorframe.datasets import load_default_dataset

    result, out = demo
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "training stopped (epochs) after 2 epochs" in text
    table = text.split("MAE beside the spread (std) of the labels\n")[1]
    for field in DEMO_FIELDS:
        assert re.search(rf"^{field}\s+\d+\s", table, re.M), field
        assert (out / "test" / f"parity_{field}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The printed numbers are those of the saved model on the saved test split.
    model = tensorframe.load_model(out / "best.pt")
    split = json.loads((out / "split.json").read_text())
    assert split["test"] and not set(split["test"]) & set(split["train"])
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert metrics["num_structures"] == len(split["test"])
    assert set(metrics["fields"]) == set(DEMO_FIELDS) == set(model.fields)
    samples = load_default_dataset()
    forces = np.concatenate([samples[i].targets["forces"] for i in split["test"]])
    assert metrics["fields"]["forces"]["target_std"] == pytest.approx(forces.std(), rel=1e-4)
    # The reloaded model on an unseen molecule: exact sum rule, a polarizability with 3 eigenvalues.
    unseen = text.split("a molecule not in the data set:")[1]
    assert "born_charges (3, 3, 3)" in unseen and "hyperpolarizability (3, 3, 3)" in unseen
    residual = float(re.search(r"acoustic sum rule \|sum_k Z_k\| = (\S+);", unseen).group(1))
    assert residual < 1e-5
    # HOF is planar (xy): the out-of-plane Born charges are printed and not zero.
    line = re.search(r"Z\*_zz per atom \(H, O, F\) = \[([^\]]+)\]", unseen).group(1)
    assert max(abs(float(v)) for v in line.split()) > 1e-3, line


def test_demo_replaces_only_its_own_run_folder(tmp_path):
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep me")
    result = tensorframe("demo", "--backbone", "reference", "--epochs", "1", "--output-dir", str(foreign))
    assert result.returncode == 2
    assert "exists and is not a demo run folder" in result.stderr
    assert (foreign / "data.txt").read_text() == "keep me"


def test_bad_option_value_prints_one_error_line_and_exits_non_zero():
    result = tensorframe("demo", "--backbone", "nosuch")
    assert result.returncode != 0
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("tensorframe demo: error: model.backbone.name: unknown backbone 'nosuch'; valid choices: ")
    assert "reference" in errors[0]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback():
    result = tensorframe("--debug", "demo", "--backbone", "nosuch", module=True)
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "backbone.name: unknown backbone 'nosuch'" in result.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["demo", "--seed", "x"], "invalid int value: 'x'"),
    ([], "required: command"),
])
def test_malformed_command_lines_end_with_one_clear_error_line(args, words, capsys):
    """argparse's own errors (in-process: the same ``main`` the script calls)."""
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]
    assert re.match(r"tensorframe( demo)?: error: ", last), last
    assert words in last
    assert captured.out == ""


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--symprec", "-1", "expected a positive, finite number, got -1"),
    ("--symprec", "nan", "expected a positive, finite number, got nan"),
    ("--batch-size", "0", "expected a positive integer, got 0"),
    ("--batch-size", "-1", "expected a positive integer, got -1"),
])
def test_numeric_options_are_checked_before_use(option, value, expected, capsys):
    """A negative or NaN symprec used to segfault inside spglib; a zero batch size crashed in range()."""
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "model.pt", "in.xyz", "-o", "out.xyz", option, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {option}: {expected}" in error


def test_evaluate_batch_size_is_checked(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "model.pt", "data.xyz", "--batch-size", "0"])
    assert "argument --batch-size: expected a positive integer, got 0" in capsys.readouterr().err


def test_version(capsys):
    import tensorframe

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"tensorframe {tensorframe.__version__}"


def test_the_born_file_writer_refuses_a_bad_symprec():
    from tensorframe.space_group import crystal_symmetry
    from tensorframe.testing.invariance import rock_salt

    for bad in (-1.0, float("nan"), 0.0):
        with pytest.raises(ValueError, match="symprec: expected a positive, finite tolerance"):
            crystal_symmetry(rock_salt(), bad)
    assert crystal_symmetry(rock_salt(), 1e-5)[3] == "Fm-3m"
