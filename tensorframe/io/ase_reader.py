"""Any structure file ase can read (extended XYZ, CIF, POSCAR, ...), labels included.

Labels are taken from ``atoms.arrays`` (atom-level) and ``atoms.info`` (structure-level)
under the names of registered fields, reshaped to the field's shape; ``key_map`` renames
file keys to field names (``{"REF_dipole": "dipole"}``). Forces and energies attached by
an ase calculator (extended XYZ ``forces=`` / ``energy=``) are read too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tensorframe.io.convert import to_sample
from tensorframe.types import Sample


def read_ase(path: str | Path, key_map: dict[str, str] | None = None, index: str = ":", format: str | None = None) -> list[Sample]:
    """Every structure in ``path`` (``index`` selects frames the way ``ase.io.read`` does).

    Shapes: each Sample's targets hold atom-level fields as (N, 3, ...) and structure-level
    fields as (3, ...), reshaped from the file's flat rows (row-major).

    Raises:
        ValueError: naming the file, the structure (its frame number in the file) and,
            for a label of the wrong size, the field and the key it came from.
    """
    import ase.io

    from tensorframe.registry import get_registry

    fields = get_registry().items["field"]
    key_map = dict(key_map or {})
    frame_of = _frame_numbers(index)
    samples: list[Sample] = []
    try:
        for number, atoms in enumerate(ase.io.iread(str(path), index=index, format=format)):
            samples.append(_sample_with_labels(atoms, fields, key_map, f"{path}: structure {frame_of(number)}"))
    except (FileNotFoundError, _LabelError):
        raise
    except Exception as error:  # noqa: BLE001 - ase raises many kinds for a malformed file
        raise ValueError(
            f"{path}: structure {frame_of(len(samples))} cannot be read (truncated or malformed file?): {type(error).__name__}: {error}"
        ) from error
    if not samples:
        raise ValueError(f"{path}: no structures found for index {index!r}")
    return samples


class _LabelError(ValueError):
    """A label of the wrong size or type (raised as is, not wrapped as a malformed file)."""


def _frame_numbers(index: str) -> Callable[[int], int | str]:
    """Position in the selection -> frame number in the file, where the index tells it."""
    from ase.io.formats import string2index

    selection = string2index(index) if isinstance(index, str) else index
    if isinstance(selection, int):
        return lambda n: selection
    start, step = selection.start or 0, selection.step or 1
    if start >= 0 and step > 0:
        return lambda n: start + n * step
    return lambda n: f"#{n} of selection {index!r}"


def _sample_with_labels(atoms: Any, fields: dict[str, Any], key_map: dict[str, str], where: str) -> Sample:
    sample = to_sample(atoms)
    found: dict[str, np.ndarray] = {}
    sources = dict(atoms.info)
    sources.update({k: v for k, v in atoms.arrays.items() if k not in ("numbers", "positions")})
    if atoms.calc is not None:
        sources.update(getattr(atoms.calc, "results", {}))
    for key, value in sources.items():
        name = key_map.get(key, key)
        if name not in fields:
            continue
        spec = fields[name]
        shape = ((sample.num_atoms,) if spec.level == "atom" else ()) + spec.shape
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise _LabelError(f"{where}, field {name!r} (key {key!r}): not numeric: {error}") from None
        if array.size != int(np.prod(shape)):
            raise _LabelError(
                f"{where}, field {name!r} (key {key!r}): expected {int(np.prod(shape))} "
                f"numbers for shape {shape}, got shape {array.shape}"
            )
        found[name] = array.reshape(shape)
    return sample.with_targets(found)
