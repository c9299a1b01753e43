"""Invariance and consistency checks of every predicted field, and reference crystals.

Each ``assert_*`` takes a TensorModel (or a callable ``list[Sample] -> {field: tensor}`` plus
``fields``), runs it on a structure and on a transformed copy, and compares every field the
model predicts, using the field's level (atom | structure) and reduce (mean | sum):

    assert_permutation_invariant     atoms reordered: atom fields follow, structure fields stay
    assert_translation_invariant     everything shifted by a vector: nothing changes
    assert_periodic_images_consistent  atoms moved by lattice vectors: nothing changes
    assert_supercell_consistent      n1 x n2 x n3 repeat: mean fields stay, sum fields scale by
                                     n1 n2 n3, atom fields repeat in the supercell's atom order
    assert_batch_consistent          a batch (in several orders) == each structure alone
    assert_neumann                   a crystal's point-group operations leave structure fields
                                     unchanged and map atom fields between equivalent atoms

Reference crystals for Neumann's principle: :func:`rock_salt`, :func:`wurtzite`,
:func:`tetragonal_perovskite`.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from tensorframe.fields import FieldSpec
from tensorframe.outputs import split_by_structure
from tensorframe.testing.equivariance import (
    ModelOrFn,
    check_shape,
    compare,
    field_specs,
    model_outputs,
    spec_for,
    tolerances,
)
from tensorframe.types import Sample

__all__ = [
    "apply_orthogonal",
    "assert_batch_consistent",
    "assert_neumann",
    "assert_periodic_images_consistent",
    "assert_permutation_invariant",
    "assert_supercell_consistent",
    "assert_translation_invariant",
    "point_group_operations",
    "repeat_sample",
    "rock_salt",
    "sample_to_structure",
    "split_outputs",
    "tetragonal_perovskite",
    "wurtzite",
]


# ---------------------------------------------------------------- shared helpers


def split_outputs(
    outputs: Mapping[str, torch.Tensor], specs: Mapping[str, FieldSpec], counts: Sequence[int]
) -> list[dict[str, torch.Tensor]]:
    """Batched outputs as one dict per structure (atom fields by atom counts), each output's
    shape checked first (:func:`tensorframe.outputs.split_by_structure` does the split).

    Shapes: {field: (N_total, ...) | (B, ...)} -> B x {field: (N_b, ...) | (...)}
    """
    ptr = np.concatenate([[0], np.cumsum(counts)]).tolist()
    for name, value in outputs.items():
        check_shape(name, spec_for(specs, name), value, ptr[-1], len(counts))
    return split_by_structure(outputs, specs, ptr)


def _assert_fields_close(
    actual: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    atol: float | None,
    rtol: float | None,
    what: str,
    specs: Mapping[str, FieldSpec] | None = None,
) -> None:
    __tracebackhide__ = True
    missing = sorted(set(expected) ^ set(actual))
    if missing:
        raise AssertionError(f"{what}: fields {missing} are predicted for one structure but not the other")
    for name in expected:
        a_tol, r_tol = tolerances(expected[name].dtype, atol, rtol)
        ok, error, tolerance = compare(actual[name], expected[name], a_tol, r_tol)
        if not ok:
            detail = ""
            if specs is not None and name in specs:
                spec = specs[name]
                detail = f" ({spec.level} level, reduce {spec.reduce!r}, symmetry {spec.symmetry!r})"
            shape = "" if actual[name].shape == expected[name].shape else (
                f"; shapes {tuple(actual[name].shape)} vs {tuple(expected[name].shape)}"
            )
            raise AssertionError(
                f"field {name!r}{detail} changes {what}: max error {error:.3e} > tolerance {tolerance:.3e}{shape}"
            )


def _single(model_or_fn: ModelOrFn, sample: Sample, specs: Mapping[str, FieldSpec]) -> dict[str, torch.Tensor]:
    return split_outputs(model_outputs(model_or_fn, [sample]), specs, [sample.num_atoms])[0]


def _require_periodic(sample: Sample, check: str) -> np.ndarray:
    periodic = np.flatnonzero(sample.pbc)
    if periodic.size == 0:
        raise ValueError(f"{check}: needs a structure with at least one periodic direction, got pbc {sample.pbc.tolist()}")
    return periodic


# ---------------------------------------------------------------- permutation, translation, images


def assert_permutation_invariant(
    model_or_fn: ModelOrFn,
    sample: Sample,
    permutation: Sequence[int] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    fields: Mapping[str, FieldSpec] | None = None,
) -> None:
    """Reorder the atoms: atom fields must follow (``new[a] == old[permutation[a]]``) and
    structure fields must not change.

    Args:
        permutation: (N,) new order of the atoms; default reversed, then rolled by one.
    """
    __tracebackhide__ = True
    specs = field_specs(model_or_fn, fields)
    n = sample.num_atoms
    perm = np.roll(np.arange(n)[::-1], 1) if permutation is None else np.asarray(permutation, dtype=np.int64)
    if sorted(perm.tolist()) != list(range(n)):
        raise ValueError(f"permutation: expected a permutation of 0..{n - 1}, got {perm.tolist()}")
    permuted = Sample(sample.numbers[perm], sample.positions[perm], sample.cell, sample.pbc)
    reference = _single(model_or_fn, sample, specs)
    expected = {
        name: value[torch.as_tensor(perm)] if spec_for(specs, name).level == "atom" else value
        for name, value in reference.items()
    }
    _assert_fields_close(
        _single(model_or_fn, permuted, specs), expected, atol, rtol, f"when the atoms are permuted by {perm.tolist()}", specs
    )


def assert_translation_invariant(
    model_or_fn: ModelOrFn,
    sample: Sample,
    shift: Sequence[float] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    fields: Mapping[str, FieldSpec] | None = None,
) -> None:
    """Shift every atom by ``shift`` (Å; default (1.37, -2.21, 0.83)): nothing may change."""
    __tracebackhide__ = True
    specs = field_specs(model_or_fn, fields)
    vector = np.array([1.37, -2.21, 0.83] if shift is None else shift, dtype=np.float64)
    moved = Sample(sample.numbers, sample.positions + vector, sample.cell, sample.pbc)
    _assert_fields_close(
        _single(model_or_fn, moved, specs), _single(model_or_fn, sample, specs), atol, rtol,
        f"when the structure is translated by {vector.tolist()}", specs,
    )


def assert_periodic_images_consistent(
    model_or_fn: ModelOrFn,
    sample: Sample,
    shifts: np.ndarray | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    fields: Mapping[str, FieldSpec] | None = None,
) -> None:
    """Move atoms by integer combinations of the periodic cell vectors: nothing may change.

    Args:
        shifts: (N, 3) integers, the lattice translation of each atom; default: a fixed random
            choice in -2..2 along the periodic directions, with at least one atom moved.

    Raises:
        ValueError: for a structure with no periodic direction, or shifts along a
            non-periodic one.
    """
    __tracebackhide__ = True
    periodic = _require_periodic(sample, "assert_periodic_images_consistent")
    if shifts is None:
        shifts = np.random.default_rng(7).integers(-2, 3, size=(sample.num_atoms, 3))
        shifts[:, ~sample.pbc] = 0
        shifts[0, periodic[0]] = 1
    shifts = np.asarray(shifts, dtype=np.int64)
    if shifts.shape != (sample.num_atoms, 3):
        raise ValueError(f"shifts: expected shape ({sample.num_atoms}, 3), got {shifts.shape}")
    if np.any(shifts[:, ~sample.pbc]):
        raise ValueError(f"shifts: only periodic directions {periodic.tolist()} may be shifted")
    specs = field_specs(model_or_fn, fields)
    moved = Sample(sample.numbers, sample.positions + shifts @ sample.cell, sample.cell, sample.pbc)
    _assert_fields_close(
        _single(model_or_fn, moved, specs), _single(model_or_fn, sample, specs), atol, rtol,
        "when atoms are moved to other periodic images", specs,
    )


# ---------------------------------------------------------------- supercells and batches


def repeat_sample(sample: Sample, repeats: Sequence[int]) -> Sample:
    """The ``n1 x n2 x n3`` supercell, image-major like ``ase.Atoms.repeat``: all atoms of image
    (0,0,0), then (0,0,1), ...; the atom ``a`` of image number ``m`` is atom ``m * N + a``.

    Shapes: (N,) atoms -> (n1 n2 n3 N,) atoms; cell rows scaled by n1, n2, n3

    Raises:
        ValueError: for a repeat > 1 along a non-periodic direction.
    """
    reps = np.asarray(repeats, dtype=np.int64)
    if reps.shape != (3,) or np.any(reps < 1):
        raise ValueError(f"repeats: expected three positive integers, got {list(repeats)}")
    if np.any((reps > 1) & ~sample.pbc):
        raise ValueError(f"repeats: {reps.tolist()} repeats a non-periodic direction (pbc {sample.pbc.tolist()})")
    images = np.array(list(itertools.product(*(range(n) for n in reps))), dtype=np.float64)
    offsets = images @ sample.cell
    positions = (offsets[:, None, :] + sample.positions[None, :, :]).reshape(-1, 3)
    numbers = np.tile(sample.numbers, len(images))
    return Sample(numbers, positions, sample.cell * reps[:, None], sample.pbc)


def _default_repeats(sample: Sample) -> list[tuple[int, int, int]]:
    periodic = np.flatnonzero(sample.pbc).tolist()
    first = [1, 1, 1]
    first[periodic[0]] = 2
    repeats = [tuple(first)]
    if len(periodic) > 1:
        rest = [1, 1, 1]
        for axis in periodic[1:]:
            rest[axis] = 2
        repeats.append(tuple(rest))
    return repeats


def assert_supercell_consistent(
    model_or_fn: ModelOrFn,
    sample: Sample,
    repeats: Sequence[Sequence[int]] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    fields: Mapping[str, FieldSpec] | None = None,
) -> None:
    """A supercell is the same crystal: for each repeat (default 2x1x1 and 1x2x2, along the
    periodic directions), intensive (``reduce="mean"``) structure fields are unchanged,
    extensive (``"sum"``) ones scale by the multiplicity, atom fields repeat in
    :func:`repeat_sample`'s atom order.
    """
    __tracebackhide__ = True
    _require_periodic(sample, "assert_supercell_consistent")
    specs = field_specs(model_or_fn, fields)
    reference = _single(model_or_fn, sample, specs)
    for reps in repeats if repeats is not None else _default_repeats(sample):
        supercell = repeat_sample(sample, reps)
        multiplicity = int(np.prod(reps))
        expected = {}
        for name, value in reference.items():
            spec = spec_for(specs, name)
            if spec.level == "atom":
                expected[name] = value.repeat(multiplicity, *([1] * (value.dim() - 1)))
            else:
                expected[name] = value * multiplicity if spec.reduce == "sum" else value
        _assert_fields_close(
            _single(model_or_fn, supercell, specs), expected, atol, rtol,
            f"in the {'x'.join(str(int(n)) for n in reps)} supercell", specs,
        )


def assert_batch_consistent(
    model_or_fn: ModelOrFn,
    samples: Sequence[Sample],
    orders: Sequence[Sequence[int]] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    fields: Mapping[str, FieldSpec] | None = None,
) -> None:
    """Predicting a batch (in several orders) gives each structure what it gets alone.

    Args:
        orders: orders of ``samples`` to batch; default: as given, reversed and one fixed
            random order.
    """
    __tracebackhide__ = True
    samples = list(samples)
    if not samples:
        raise ValueError("samples: expected at least one structure")
    specs = field_specs(model_or_fn, fields)
    alone = [_single(model_or_fn, s, specs) for s in samples]
    if orders is None:
        n = len(samples)
        orders = [list(range(n)), list(range(n))[::-1], np.random.default_rng(3).permutation(n).tolist()]
    for order in orders:
        batch = [samples[i] for i in order]
        rows = split_outputs(model_outputs(model_or_fn, batch), specs, [s.num_atoms for s in batch])
        for position, index in enumerate(order):
            _assert_fields_close(
                rows[position], alone[index], atol, rtol,
                f"for structure {index} at position {position} of a batch in order {list(order)} (vs alone)", specs,
            )


# ---------------------------------------------------------------- Neumann's principle


def apply_orthogonal(matrix: torch.Tensor, tensor: torch.Tensor, rank: int, parity: int) -> torch.Tensor:
    """``T'_{i1..in} = s R_{i1 a1} ... R_{in an} T_{a1..an}``, ``s = det R`` for pseudo-tensors.

    Shapes: matrix (3, 3), tensor (..., 3 x rank) -> same as tensor
    """
    out = tensor
    first = tensor.dim() - rank
    for axis in range(first, tensor.dim()):
        out = torch.movedim(torch.tensordot(out, matrix, dims=([axis], [1])), -1, axis)
    if parity != (-1) ** rank:
        out = out * torch.linalg.det(matrix)
    return out


def sample_to_structure(sample: Sample):
    """A pymatgen Structure with the sample's Cartesian frame (no re-standardisation)."""
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(sample.cell, pbc=tuple(bool(p) for p in sample.pbc)), sample.numbers.tolist(),
                     sample.positions, coords_are_cartesian=True)


def point_group_operations(sample: Sample, symprec: float = 1e-3):
    """The crystal's point group and space group in the sample's own Cartesian frame.

    Uses pymatgen's ``SpacegroupAnalyzer(...).get_point_group_operations(cartesian=True)``,
    whose Cartesian matrices are ``M R_frac M^-1`` with M the sample's lattice (columns), so in
    the frame of the structure as given. That is verified here, not assumed: every matrix
    must be orthogonal, every space-group operation must map the atoms onto atoms of the same
    element, and its rotation part must be one of the point-group operations.

    Returns:
        (rotations (G, 3, 3) float64, atom maps: list of (rotation (3, 3), image (N,) int)
        where atom ``a`` goes to atom ``image[a]``)

    Raises:
        ValueError: when a check of the frame fails (the operations would be meaningless).
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    if not sample.pbc.all():
        raise ValueError(f"assert_neumann: needs a fully periodic crystal, got pbc {sample.pbc.tolist()}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # spglib's notice about its error handling
        analyzer = SpacegroupAnalyzer(sample_to_structure(sample), symprec=symprec)
        rotations = np.array([op.rotation_matrix for op in analyzer.get_point_group_operations(cartesian=True)])
        space_group = analyzer.get_symmetry_operations(cartesian=True)
    identity = np.eye(3)
    bad = np.abs(rotations @ rotations.transpose(0, 2, 1) - identity).max(axis=(1, 2))
    if bad.max() > 1e-6:
        raise ValueError(
            f"point-group operations are not orthogonal (error {bad.max():.2e}): not in the Cartesian frame of the sample"
        )
    inverse_cell = np.linalg.inv(sample.cell)
    fractional = sample.positions @ inverse_cell
    tolerance = 10 * symprec
    maps = []
    for op in space_group:
        rotation = op.rotation_matrix
        if np.abs(rotations - rotation).max(axis=(1, 2)).min() > 1e-6:
            raise ValueError("a space-group rotation is missing from the point group: frames disagree")
        moved = (sample.positions @ rotation.T + op.translation_vector) @ inverse_cell
        difference = moved[:, None, :] - fractional[None, :, :]
        difference -= np.round(difference)
        distance = np.linalg.norm(difference @ sample.cell, axis=-1)
        image = distance.argmin(axis=1)
        if distance.min(axis=1).max() > tolerance or np.any(sample.numbers[image] != sample.numbers):
            raise ValueError(
                "a symmetry operation does not map the crystal onto itself in the sample's frame "
                f"(worst atom {distance.min(axis=1).max():.2e} Å away)"
            )
        maps.append((rotation, image))
    return rotations, maps


def assert_neumann(
    model_or_fn: ModelOrFn,
    sample: Sample,
    symprec: float = 1e-3,
    atoms: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    fields: Mapping[str, FieldSpec] | None = None,
) -> int:
    """Neumann's principle: every structure field is invariant under each point-group
    operation R of the crystal (``T = R . T``), and (``atoms=True``) each atom field obeys
    ``T[image[a]] = R . T[a]`` for each space-group operation mapping atom a to ``image[a]``.

    The sample must be exactly symmetric (build it from fractional coordinates); the
    operations come from :func:`point_group_operations`, in the sample's own frame, so a
    rotated crystal works too.

    Returns:
        the number of point-group operations used.
    """
    __tracebackhide__ = True
    specs = field_specs(model_or_fn, fields)
    rotations, maps = point_group_operations(sample, symprec)
    outputs = _single(model_or_fn, sample, specs)
    for name, value in outputs.items():
        spec = spec_for(specs, name)
        a_tol, r_tol = tolerances(value.dtype, atol, rtol)
        tensor = value.to(torch.float64)
        if spec.level == "structure":
            checks = [(torch.as_tensor(r), tensor, tensor) for r in rotations]
        elif atoms:
            checks = [(torch.as_tensor(r), tensor, tensor[torch.as_tensor(image)]) for r, image in maps]
        else:
            continue
        for rotation, source, target in checks:
            expected = apply_orthogonal(rotation, source, spec.rank, spec.parity)
            ok, error, tolerance = compare(target, expected, a_tol, r_tol)
            if not ok:
                det = float(torch.linalg.det(rotation))
                raise AssertionError(
                    f"field {name!r} ({spec.level} level, symmetry {spec.symmetry!r}) breaks Neumann's principle: "
                    f"the crystal's {'proper' if det > 0 else 'improper'} operation "
                    f"{np.round(rotation.numpy(), 6).tolist()} changes it by {error:.3e} > tolerance {tolerance:.3e}"
                )
    return len(rotations)


# ---------------------------------------------------------------- reference crystals


def _from_fractional(numbers: Sequence[int], fractional: Sequence[Sequence[float]], cell: np.ndarray) -> Sample:
    return Sample(np.asarray(numbers), np.asarray(fractional, dtype=np.float64) @ cell, cell, np.ones(3, dtype=bool))


def rock_salt(a: float = 5.64, numbers: tuple[int, int] = (11, 17)) -> Sample:
    """Rock salt (NaCl, Fm-3m, point group m-3m), primitive fcc cell, 2 atoms, cube axes = x, y, z.

    Neumann: every rank-2 property is isotropic; every odd-parity one (piezo) is zero.
    """
    cell = 0.5 * a * np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    return _from_fractional(numbers, [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]], cell)


def wurtzite(a: float = 3.11, c: float = 4.98, u: float = 0.382, numbers: tuple[int, int] = (13, 7)) -> Sample:
    """Wurtzite (AlN by default; ZnO with a=3.25, c=5.21, u=0.382, numbers=(30, 8)), P6_3mc,
    point group 6mm, c axis along z, 4 atoms.

    Neumann: eps_xx = eps_yy (!= eps_zz), off-diagonal zero; piezo only e_33 (zzz),
    e_31 = e_32 (zxx = zyy) and e_15 = e_24 (xxz = yyz, and j<->k) are non-zero.
    """
    cell = np.array([[a, 0.0, 0.0], [-a / 2, a * np.sqrt(3.0) / 2, 0.0], [0.0, 0.0, c]])
    third, two_thirds = 1.0 / 3.0, 2.0 / 3.0
    fractional = [[third, two_thirds, 0.0], [two_thirds, third, 0.5], [third, two_thirds, u], [two_thirds, third, 0.5 + u]]
    return _from_fractional([numbers[0], numbers[0], numbers[1], numbers[1]], fractional, cell)


def tetragonal_perovskite(
    a: float = 3.99,
    c: float = 4.03,
    b_shift: float = 0.015,
    o_shift: float = -0.025,
    numbers: tuple[int, int, int] = (56, 22, 8),
) -> Sample:
    """Tetragonal perovskite ABO3 (BaTiO3 by default), P4mm, point group 4mm, polar axis z,
    5 atoms: B (Ti) and O displaced along z by ``b_shift`` / ``o_shift`` (fractional).

    Neumann: the same pattern as wurtzite (eps_xx = eps_yy, piezo only e_33, e_31, e_15).
    """
    cell = np.diag([a, a, c])
    fractional = [
        [0.0, 0.0, 0.0],
        [0.5, 0.5, 0.5 + b_shift],
        [0.5, 0.5, o_shift],
        [0.5, 0.0, 0.5 + o_shift],
        [0.0, 0.5, 0.5 + o_shift],
    ]
    return _from_fractional([numbers[0], numbers[1], numbers[2], numbers[2], numbers[2]], fractional, cell)
