#!/usr/bin/env bash
# Create the PaiNN (SchNetPack) peer's own virtual environment, as the MACE peer has one:
# schnetpack pulls pytorch-lightning, hydra and an older ase API, none of which belong in
# tensorframe's venv.
#
#   bash benchmarks/peers/setup_schnetpack_venv.sh          # -> .bench-venvs/schnetpack
#   SCHNETPACK_VENV=/some/dir bash benchmarks/peers/setup_schnetpack_venv.sh
#
# torch is installed first from the CPU wheel on pip's find-links; a constraint then pins it
# while schnetpack resolves, so pip never swaps in a CUDA build (several GiB of nvidia-* wheels).
# pip runs under nice -n 19 so a benchmark running beside it keeps its CPU.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${SCHNETPACK_VENV:-$repo_root/.bench-venvs/schnetpack}"
torch_spec="${SCHNETPACK_TORCH_SPEC:-torch==2.13.0+cpu}"
schnetpack_spec="${SCHNETPACK_SPEC:-schnetpack}"

start=$(date +%s)
python3 -m venv "$venv"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "$torch_spec" > "$constraints"
nice -n 19 "$venv/bin/python" -m pip install --quiet "$torch_spec"
PIP_CONSTRAINT="$constraints" nice -n 19 "$venv/bin/python" -m pip install --quiet "$schnetpack_spec"
end=$(date +%s)

# Import check through the runner's shim (schnetpack imports torch.utils.data.T_co, which
# newer torch no longer exports; see painn_runner.py).
OMP_NUM_THREADS=1 nice -n 19 "$venv/bin/python" - "$repo_root/benchmarks/peers" <<'PY'
import importlib.metadata as md
import sys
sys.path.insert(0, sys.argv[1])
import painn_runner  # noqa: F401  (applies the shim, imports schnetpack)
import torch
print("torch", torch.__version__, "| cuda build:", torch.version.cuda)
print("schnetpack", md.version("schnetpack"), "| shim applied:", painn_runner.SHIMS_APPLIED or "none")
PY
echo "SchNetPack venv ready at $venv in $((end - start)) s"
