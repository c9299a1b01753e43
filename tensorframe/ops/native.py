"""Build and load tensorframe's compiled (C++/OpenMP) triplet kernels.

    tensorframe native build     # compile (the README's setup runs this)
    tensorframe native status    # what is loaded, and from where

The library is compiled once per environment, torch version and source into
``<sys.prefix>/share/tensorframe/native/<tag>/`` (override with ``TENSORFRAME_NATIVE_DIR``)
and loaded on first use; nothing is compiled at run time. Without a build (no compiler, a
changed source, another torch) or with ``TENSORFRAME_NATIVE=0``, the pure-PyTorch kernels of
:mod:`tensorframe.ops.triplet_kernels` run instead: same contract, same results to rounding.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "triplet_ops.cpp"
LIBRARY_NAME = "tensorframe_triplet_ops"
DISABLE_VARIABLE = "TENSORFRAME_NATIVE"
DIRECTORY_VARIABLE = "TENSORFRAME_NATIVE_DIR"


@dataclass(frozen=True)
class NativeStatus:
    """Whether the compiled kernels are in use, and why not when they are not."""

    loaded: bool
    detail: str  # the library's path when loaded, else the reason


def build_tag() -> str:
    """Names a build by everything it depends on: the source, torch, Python's ABI and platform."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    abi = sysconfig.get_config_var("SOABI") or f"py{sys.version_info.major}{sys.version_info.minor}"
    return f"{LIBRARY_NAME}-{digest}-torch{torch.__version__}-{abi}".replace("+", "_")


def build_directory() -> Path:
    root = os.environ.get(DIRECTORY_VARIABLE)
    base = Path(root) if root else Path(sys.prefix) / "share" / "tensorframe" / "native"
    return base / build_tag()


def library_path() -> Path:
    return build_directory() / f"{LIBRARY_NAME}.so"


_status: NativeStatus | None = None


def status() -> NativeStatus:
    """Loads the compiled kernels on first call (never compiles); the result is remembered."""
    global _status
    if _status is None:
        _status = _load()
    return _status


def native_enabled() -> bool:
    """True when the compiled kernels are loaded and not turned off."""
    return status().loaded


def _load() -> NativeStatus:
    if os.environ.get(DISABLE_VARIABLE, "1").strip().lower() in {"0", "false", "no", "off"}:
        return NativeStatus(False, f"turned off ({DISABLE_VARIABLE}=0)")
    path = library_path()
    if not path.is_file():
        return NativeStatus(False, f"not built for this source and torch {torch.__version__} "
                                   f"(run ./setup.sh or tensorframe native build)")
    if hasattr(torch.ops, "tensorframe") and hasattr(torch.ops.tensorframe, "gather_mul_scatter"):
        return NativeStatus(True, str(path))
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as error:
        return NativeStatus(False, f"{path} did not load: {str(error).splitlines()[0]}")
    return NativeStatus(True, str(path))


def build(verbose: bool = False) -> Path:
    """Compiles the kernels into :func:`build_directory` (seconds to a minute) and returns the
    library's path; raises ``RuntimeError`` with the compiler's complaint when it fails."""
    from torch.utils.cpp_extension import load

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    load(
        name=LIBRARY_NAME,
        sources=[str(SOURCE)],
        build_directory=str(directory),
        extra_cflags=["-O3", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        is_python_module=False,
        verbose=verbose,
    )
    global _status
    _status = None
    path = library_path()
    if not path.is_file():
        raise RuntimeError(f"the build finished but {path} is missing")
    return path


def compiler_complaint(error: BaseException) -> str:
    """The first compiler error line in a failed build's message (else its first line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() and not line.startswith("[")]
    chosen = errors[0] if errors else (lines[0] if lines else type(error).__name__)
    return chosen[:300]
