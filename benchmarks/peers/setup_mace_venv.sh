#!/usr/bin/env bash
# Create the MACE peer's own virtual environment (mace-torch pins e3nn 0.4.4, which clashes
# with tensorframe's e3nn 0.6, so MACE never shares tensorframe's venv).
#
#   bash benchmarks/peers/setup_mace_venv.sh            # -> .bench-venvs/mace
#   MACE_VENV=/some/dir bash benchmarks/peers/setup_mace_venv.sh
#
# The CPU torch wheel comes from pip's find-links; the constraint below keeps pip from ever
# resolving a CUDA build of torch (it would pull several GiB of nvidia-* wheels).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${MACE_VENV:-$repo_root/.bench-venvs/mace}"
torch_spec="${MACE_TORCH_SPEC:-torch==2.13.0+cpu}"
mace_spec="${MACE_SPEC:-mace-torch}"

start=$(date +%s)
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "$torch_spec" > "$constraints"
# torch first (CPU wheel, no deps pulled from a CUDA index), then mace-torch under the same pin.
"$venv/bin/python" -m pip install --quiet "$torch_spec"
PIP_CONSTRAINT="$constraints" "$venv/bin/python" -m pip install --quiet "$mace_spec"
end=$(date +%s)

"$venv/bin/python" - <<'PY'
import importlib.metadata as md
import torch, e3nn, mace  # noqa: F401  (import check)
from mace import modules
print("torch", torch.__version__, "| cuda build:", torch.version.cuda)
print("e3nn", e3nn.__version__, "| mace-torch", md.version("mace-torch"))
names = [n for n in ("MACE", "ScaleShiftMACE", "AtomicDipolesMACE",
                     "EnergyDipolesMACE", "AtomicDielectricMACE") if hasattr(modules, n)]
print("models:", ", ".join(names))
PY
echo "MACE venv ready at $venv in $((end - start)) s"
