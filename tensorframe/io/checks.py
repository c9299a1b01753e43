"""Checks every reader runs on what it read: elements, positions, overlapping atoms, and
labels present in every structure.

Each error is a ValueError whose message starts with ``where`` (the file and the structure
index, e.g. ``"data.xyz: structure 3"``) and says what was expected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tensorframe.types import Sample

MIN_DISTANCE = 0.3
"""Å. Two atoms closer than this are "overlapping" (a duplicated atom, a CIF with partial
occupancies, a unit mix-up). The shortest distance in the reactive DeePMD combustion data
is 0.52 Å; no chemical bond is shorter than 0.7 Å. Readers take ``min_distance`` (0 turns
the check off)."""

MAX_ATOMIC_NUMBER = 118


class InputError(ValueError):
    """Bad input found by a check (raised as is by readers, never re-wrapped)."""


def structure_sample(build: Callable[[], Sample], where: str, min_distance: float = MIN_DISTANCE) -> Sample:
    """``build()`` (a Sample without labels), its errors prefixed with ``where``, then checked."""
    try:
        sample = build()
    except InputError:
        raise
    except (ValueError, TypeError, KeyError) as error:
        raise InputError(f"{where}: {error}") from None
    check_structure(sample, where, min_distance)
    return sample


def check_structure(sample: Sample, where: str, min_distance: float = MIN_DISTANCE) -> None:
    """Known elements, a usable cell, no two atoms (or periodic images) closer than ``min_distance``.

    Raises:
        ValueError: naming ``where``, the atom(s) and what was expected.
    """
    numbers = sample.numbers
    bad = np.flatnonzero((numbers < 1) | (numbers > MAX_ATOMIC_NUMBER))
    if bad.size:
        raise InputError(
            f"{where}: atom {int(bad[0])} has unknown element (atomic number {int(numbers[bad[0]])}); "
            f"expected 1-{MAX_ATOMIC_NUMBER}"
        )
    if sample.num_atoms == 0:
        raise InputError(f"{where}: no atoms")
    if sample.pbc.any():
        if not np.all(np.isfinite(sample.cell)):
            raise InputError(f"{where}: cell has NaN or inf")
        periodic = sample.cell[sample.pbc]
        if np.linalg.matrix_rank(periodic, tol=1e-8) < periodic.shape[0]:
            raise InputError(
                f"{where}: cell vectors {periodic.tolist()} of the periodic directions "
                f"{np.flatnonzero(sample.pbc).tolist()} are zero or linearly dependent"
            )
    if min_distance > 0:
        _check_overlap(sample, where, min_distance)


def _check_overlap(sample: Sample, where: str, min_distance: float) -> None:
    import vesin

    box = sample.cell if sample.pbc.any() else np.zeros((3, 3))
    # vesin's cell list is slow for a tiny cutoff (many cells); search 2 Å and filter.
    search = max(float(min_distance), 2.0)
    i, j, shift, dist = vesin.NeighborList(cutoff=search, full_list=False).compute(
        points=sample.positions, box=box, periodic=[bool(p) for p in sample.pbc], quantities="ijSd"
    )
    close = dist < min_distance
    if close.any():
        k = int(np.argmin(np.where(close, dist, np.inf)))
        image = "" if not shift[k].any() else f" (periodic image {shift[k].astype(int).tolist()})"
        raise InputError(
            f"{where}: atoms {int(i[k])} and {int(j[k])}{image} overlap, {dist[k]:.3f} Å apart; "
            f"expected at least min_distance={min_distance} Å"
        )


def check_same_labels(samples: Sequence[Sample], wheres: Sequence[str]) -> None:
    """Every structure carries the same fields (a label missing from one structure is an error).

    Raises:
        ValueError: naming the first structure that lacks a field, and one that has it.
    """
    everything: dict[str, int] = {}
    for index, sample in enumerate(samples):
        for name in sample.targets:
            everything.setdefault(name, index)
    for index, sample in enumerate(samples):
        missing = [name for name in everything if name not in sample.targets]
        if missing:
            name = missing[0]
            raise InputError(
                f"{wheres[index]}, field {name!r}: missing, but given for {wheres[everything[name]]}; "
                f"every structure needs the same labels"
            )


def not_found(path: Any) -> FileNotFoundError:
    return FileNotFoundError(f"{path}: no such file or directory")
