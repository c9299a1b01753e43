"""Pick a registered reader by explicit name or by file extension."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tensorframe.registry import get_registry
from tensorframe.types import Sample


def read_structures(path: str | Path, format: str | None = None, **options: Any) -> list[Sample]:
    """Samples from ``path`` with the reader named ``format``, or the first whose
    extensions match, falling back to the ``ase`` reader."""
    registry = get_registry()
    if format is not None:
        return registry.get("reader", format).read(path, **options)
    for name in registry.names("reader"):
        spec = registry.items["reader"][name]
        if spec.matches(path):
            return spec.read(path, **options)
    return registry.get("reader", "ase").read(path, **options)
