"""The ``tensorframe`` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

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
DEMO_STRUCTURES = {"AlN wurtzite": 4, "BaTiO3 tetragonal P4mm": 5, "H2O molecule": 3}


def tensorframe(*args: str, module: bool = False) -> subprocess.CompletedProcess:
    """The installed ``tensorframe`` script, or ``python -m tensorframe`` (``module`` or no script)."""
    command = [str(SCRIPT)] if SCRIPT.exists() and not module else [sys.executable, "-m", "tensorframe"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def demo() -> subprocess.CompletedProcess:
    return tensorframe("demo")


def test_plugins_lists_every_builtin_with_its_plugin_and_distribution():
    result = tensorframe("plugins")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "PLUGIN", "DISTRIBUTION"]
    table = {tuple(line.split()[:2]): line.split()[2:4] for line in lines[1:]}
    for row in BUILTIN_ROWS:
        assert table[row] == ["tensorframe", "tensorframe"], row


def test_demo_predicts_every_structure_with_the_physics_it_promises(demo):
    assert demo.returncode == 0, demo.stderr
    out = demo.stdout
    assert "randomly initialised model" in out
    sections = re.split(r"\n== ", out)[1:]
    assert [s.split(" (")[0] for s in sections] == list(DEMO_STRUCTURES)
    for section, (name, atoms) in zip(sections, DEMO_STRUCTURES.items(), strict=True):
        assert section.startswith(f"{name} ({atoms} atoms)")
        for shape in (f"born_charges ({atoms}, 3, 3)", "dielectric (3, 3)", "piezo (3, 3, 3)", f"forces ({atoms}, 3)"):
            assert shape in section, (name, shape)
        residual = float(re.search(r"acoustic sum rule residual \|sum_k Z\*_k\| = (\S+)", section).group(1))
        assert residual < 1e-5, name  # exact sum rule, up to float32 round-off
        eigenvalues = np.array(re.search(r"dielectric eigenvalues \(>= 1\): \[([^\]]*)\]", section).group(1).split(),
                               dtype=float)
        assert eigenvalues.shape == (3,)
        assert eigenvalues.min() >= 1.0 - 1e-4, name  # positive definite, eps >= 1 (printed to 4 decimals)
        if name != "H2O molecule":
            # Uniaxial crystals (6mm, 4mm): two equal eigenvalues by Neumann's principle.
            assert min(np.diff(np.sort(eigenvalues))) <= 2e-4, (name, eigenvalues)


def test_demo_lists_the_plugins_first(demo):
    assert demo.stdout.startswith("plugins:\n")
    assert "backbone  reference" in demo.stdout.split("randomly initialised")[0]


def test_bad_option_value_prints_one_error_line_and_exits_non_zero():
    result = tensorframe("demo", "--backbone", "nosuch")
    assert result.returncode != 0
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("tensorframe demo: error: backbone.name: unknown backbone 'nosuch'; valid choices: ")
    assert "reference" in errors[0]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback():
    result = tensorframe("--debug", "demo", "--backbone", "nosuch", module=True)
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "ConfigError: backbone.name: unknown backbone 'nosuch'" in result.stderr


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
