"""Batched model outputs as one dict per structure.

A model's forward pass on a batched :class:`~tensorframe.types.Graph` gives atom-level fields
stacked over every atom of the batch (N_total, 3, ...) and structure-level fields one row per
structure (B, 3, ...). :func:`split_by_structure` is the one place that cuts them apart; the
model's ``predict``, the ASE calculator, the test kit and the benchmarks' peers all use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch

from tensorframe.fields import FieldSpec

Array = TypeVar("Array", torch.Tensor, np.ndarray)


def split_by_structure(outputs: Mapping[str, Array], fields: Mapping[str, FieldSpec],
                       ptr: Sequence[int] | torch.Tensor) -> list[dict[str, Array]]:
    """One ``{field: tensor or array}`` per structure: atom-level fields cut at the atom offsets
    ``ptr``, structure-level fields indexed by structure. Works on torch tensors and numpy
    arrays alike; the results are views (not copies, not detached).

    ``fields`` gives each output's level (a model's ``fields``; every output must be in it).

    Shapes: outputs {field: (N_total, 3, ...) | (B, 3, ...)}, ptr (B + 1,) with ptr[0] = 0 and
    ptr[B] = N_total -> B x {field: (N_b, 3, ...) | (3, ...)}

    Raises:
        KeyError: naming an output that is not in ``fields``.
    """
    offsets = ptr.tolist() if isinstance(ptr, torch.Tensor) else list(ptr)
    rows: list[dict[str, Array]] = [{} for _ in range(len(offsets) - 1)]
    for name, value in outputs.items():
        if name not in fields:
            raise KeyError(f"output {name!r}: not in the fields given ({', '.join(fields)}); its level is unknown")
        atom_level = fields[name].level == "atom"
        for b, row in enumerate(rows):
            row[name] = value[offsets[b] : offsets[b + 1]] if atom_level else value[b]
    return rows


__all__ = ["split_by_structure"]
