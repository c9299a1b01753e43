"""benchmarks/gpu_pass.sh, the prepared GPU pass: valid bash, a usage line, and a clear refusal to
``run`` outside the device machine (no ``$OUT``). Its device run itself needs a GPU (issue 13)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_pass.sh"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env=env if env is not None else dict(os.environ))


def test_the_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_an_unknown_step_prints_the_usage():
    done = run("nonsense")
    assert done.returncode == 2 and "usage: benchmarks/gpu_pass.sh prepare|run" in done.stderr


def test_run_outside_the_device_machine_says_it_needs_out():
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    done = run("run", env=env)
    assert done.returncode != 0 and "$OUT is its output folder" in done.stderr
