"""Equivariant peers run beside tensorframe's backbones (``benchmarks/peers/<name>_peer.py``).

Each peer module defines::

    def run_peer(task: Task, samples, split, budget: dict, out_dir: Path) -> dict
        # {"supported": bool, "reason": str, "fields": {field: {"mae", "rmse"}}, "train_time_s",
        #  "inference_structures_per_s", "inference_atoms_per_s", "peak_memory_mib",
        #  "num_parameters", "device", "versions": {...}}

Peers are imported lazily by name (``mace`` -> ``benchmarks.peers.mace_peer``); one that fails
to import is reported as "not available: <reason>" and never stops the suite.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

PEERS_DIR = Path(__file__).resolve().parent


def available_peers() -> list[str]:
    """Names of the peer modules present (``<name>_peer.py``), whether they import or not."""
    return sorted(p.stem[: -len("_peer")] for p in PEERS_DIR.glob("*_peer.py"))


def load_peer(name: str, entry: str = "run_peer") -> tuple[Callable[..., dict[str, Any]] | None, str]:
    """``(the peer's entry point, "")`` (``run_peer``, ``time_peer``, ...), or ``(None, reason)`` when the
    peer is absent, does not import or has no such entry point."""
    if not (PEERS_DIR / f"{name}_peer.py").is_file():
        return None, f"no module benchmarks/peers/{name}_peer.py (present: {', '.join(available_peers()) or 'none'})"
    try:
        module = importlib.import_module(f"benchmarks.peers.{name}_peer")
    except Exception as error:  # noqa: BLE001 - any import failure makes the peer unavailable
        return None, f"import failed: {type(error).__name__}: {error}"
    function = getattr(module, entry, None)
    if not callable(function):
        return None, f"benchmarks/peers/{name}_peer.py defines no {entry}"
    return function, ""
