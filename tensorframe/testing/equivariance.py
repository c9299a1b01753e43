"""O(3) equivariance of every predicted field, against e3nn's Cartesian-tensor reference.

For a field with index-symmetry formula ``f`` (``"i"``, ``"ij"``, ``"ij=ji"``, ``"ijk=ikj"``,
...) and parity ``p``, the model must satisfy

    irreps( out(R x) ) = s(R) D_f(R) irreps( out(x) ),   s(R) = det(R) if p != (-1)^rank else 1

where ``irreps`` is ``e3nn.io.CartesianTensor(f).from_cartesian`` and ``D_f`` its
``D_from_matrix`` (which already carries the natural parity (-1)^rank of a polar tensor; the
extra det(R) makes pseudo-tensors such as an axial vector right). Scalars must be invariant
(pseudo-scalars flip sign under improper R). The reference is built in float64, also for
float32 models. Fields must lie in their formula's subspace (e.g. a ``"ij=ji"`` field must be
symmetric); that is checked too.

The helpers here (``model_outputs``, ``field_specs``, ``compare``) are shared by
:mod:`tensorframe.testing.invariance`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tensorframe.fields import FieldSpec
from tensorframe.registry import get_registry
from tensorframe.types import Sample

__all__ = ["assert_equivariant", "compare", "field_specs", "model_outputs", "rotate_sample", "spec_for", "tolerances"]

ModelOrFn = Any
"""A :class:`~tensorframe.TensorModel` (anything with ``make_graph`` and ``heads``) or a callable
``list[Sample] -> {field: tensor}`` with atom-level fields (N_total, 3, ...) and
structure-level fields (B, 3, ...)."""


def _is_model(model_or_fn: ModelOrFn) -> bool:
    return hasattr(model_or_fn, "make_graph") and hasattr(model_or_fn, "heads")


def model_outputs(model_or_fn: ModelOrFn, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
    """Run a model (in eval mode, restored after) or a callable on a batch; detached outputs on the CPU.

    Autograd stays enabled, so heads that differentiate (e.g. conservative forces) work.

    Shapes: -> {field: (N_total, 3, ...) atom level | (B, 3, ...) structure level}
    """
    samples = list(samples)
    if not _is_model(model_or_fn):
        outputs = model_or_fn(samples)
    else:
        model = model_or_fn
        was_training = model.training
        model.eval()
        try:
            outputs = model(model.make_graph(samples))
        finally:
            model.train(was_training)
    # On the CPU: the checks compare in float64 against e3nn's CPU tensors, whatever the model's device.
    return {name: torch.as_tensor(value).detach().cpu() for name, value in outputs.items()}


def field_specs(model_or_fn: ModelOrFn, fields: Mapping[str, FieldSpec] | None = None) -> dict[str, FieldSpec]:
    """Each predicted field's spec (level, symmetry, parity, reduce).

    From ``fields`` if given, else from ``model.heads[name].field``, else from the field table
    of the installed plugins (:func:`~tensorframe.registry.get_registry`: the test kit's default).
    """
    if fields is not None:
        return dict(fields)
    if _is_model(model_or_fn):
        fields = getattr(model_or_fn, "fields", None)  # a TensorModel's, derived fields included
        return dict(fields) if fields is not None else {name: head.field for name, head in model_or_fn.heads.items()}
    return dict(get_registry().fields)


def spec_for(specs: Mapping[str, FieldSpec], name: str) -> FieldSpec:
    """The spec of output ``name``; a ValueError naming it when there is none."""
    try:
        return specs[name]
    except KeyError:
        raise ValueError(
            f"field {name!r}: no FieldSpec known for this output; pass fields={{{name!r}: FieldSpec(...)}}"
        ) from None


def tolerances(dtype: torch.dtype, atol: float | None, rtol: float | None) -> tuple[float, float]:
    """Defaults: atol 1e-9, rtol 1e-7 for float64 outputs; 1e-4 and 1e-4 otherwise."""
    if dtype == torch.float64:
        return (1e-9 if atol is None else atol), (1e-7 if rtol is None else rtol)
    return (1e-4 if atol is None else atol), (1e-4 if rtol is None else rtol)


def compare(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> tuple[bool, float, float]:
    """``max|actual - expected| <= atol + rtol * max|expected|``; returns (ok, max error, tolerance).

    NaN marks a value that is undefined (stress without a volume): it must sit in the same
    places in both, and is otherwise ignored.
    """
    actual, expected = actual.to(torch.float64), expected.to(torch.float64)
    if actual.shape != expected.shape:
        return False, float("inf"), 0.0
    undefined = expected.isnan()
    if not torch.equal(actual.isnan(), undefined):
        return False, float("nan"), 0.0
    actual, expected = actual.masked_fill(undefined, 0.0), expected.masked_fill(undefined, 0.0)
    if actual.numel() == 0:
        return True, 0.0, atol
    error = float((actual - expected).abs().max())
    tolerance = atol + rtol * float(expected.abs().max())
    return error <= tolerance, error, tolerance


def check_shape(name: str, spec: FieldSpec, value: torch.Tensor, num_atoms: int, num_structures: int) -> None:
    __tracebackhide__ = True
    leading = num_atoms if spec.level == "atom" else num_structures
    expected = (leading, *spec.shape)
    if tuple(value.shape) != expected:
        raise AssertionError(
            f"field {name!r} ({spec.level} level, symmetry {spec.symmetry!r}): expected shape {expected}, "
            f"got {tuple(value.shape)}"
        )


@functools.cache
def _cartesian_tensor(formula: str):
    """e3nn's CartesianTensor and its reduced tensor products, built in float64.

    e3nn computes the change of basis in the default dtype; built in float32 it is only
    equivariant to ~1e-7, too coarse for a float64 check, so it is built under float64.
    """
    from e3nn.io import CartesianTensor

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        tensor = CartesianTensor(formula)
        rtp = tensor.reduced_tensor_products().to(dtype=torch.float64)
    finally:
        torch.set_default_dtype(previous)
    return tensor, rtp


def _d_matrix(formula: str, rotation: torch.Tensor) -> torch.Tensor:
    tensor, _ = _cartesian_tensor(formula)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return tensor.D_from_matrix(rotation)
    finally:
        torch.set_default_dtype(previous)


def rotate_sample(sample: Sample, rotation: np.ndarray) -> Sample:
    """The structure turned by ``rotation`` (positions and cell vectors; labels dropped).

    Shapes: rotation (3, 3)
    """
    rotation = np.asarray(rotation, dtype=np.float64)
    return Sample(sample.numbers, sample.positions @ rotation.T, sample.cell @ rotation.T, sample.pbc)


def _random_improper(seed: int = 0) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return -q if np.linalg.det(q) > 0 else q


def assert_equivariant(
    model_or_fn: ModelOrFn | Callable[[list[Sample]], dict[str, torch.Tensor]],
    sample: Sample,
    rotation: np.ndarray | torch.Tensor | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    fields: Mapping[str, FieldSpec] | None = None,
) -> dict[str, float]:
    """Assert every output field transforms under ``rotation`` as its symmetry and parity say.

    Args:
        model_or_fn: a TensorModel (``make_graph`` + ``forward``) or a callable
            ``list[Sample] -> {field: tensor}``.
        sample: one structure (molecule, crystal or mixed pbc).
        rotation: (3, 3) orthogonal matrix, proper or improper; None draws a fixed random
            improper one (a rotation times inversion tests rotation and parity at once).
        atol, rtol: tolerances on ``max|error| <= atol + rtol * max|expected|`` in the irreps
            basis; defaults from :func:`tolerances` by the output dtype.
        fields: FieldSpec per output name; default from the model's heads, else the registry.

    Returns:
        {field: max error} for every field.

    Raises:
        AssertionError: naming the field, the max error and whether R was proper or improper.
    """
    __tracebackhide__ = True
    rotation = _random_improper() if rotation is None else rotation
    rotation = torch.as_tensor(np.asarray(rotation, dtype=np.float64))
    orthogonality = float((rotation @ rotation.T - torch.eye(3, dtype=torch.float64)).abs().max())
    if orthogonality > 1e-8:
        raise ValueError(f"rotation: expected an orthogonal matrix, R R^T differs from I by {orthogonality:.2e}")
    det = float(torch.linalg.det(rotation))
    kind, article = ("proper", "a") if det > 0 else ("improper", "an")
    specs = field_specs(model_or_fn, fields)
    before = model_outputs(model_or_fn, [sample])
    after = model_outputs(model_or_fn, [rotate_sample(sample, rotation.numpy())])
    errors: dict[str, float] = {}
    for name, value in before.items():
        spec = spec_for(specs, name)
        check_shape(name, spec, value, sample.num_atoms, 1)
        check_shape(name, spec, after[name], sample.num_atoms, 1)
        x, y = value.to(torch.float64), after[name].to(torch.float64)
        sign = det if spec.parity != (-1) ** spec.rank else 1.0
        a_tol, r_tol = tolerances(value.dtype, atol, rtol)
        if spec.rank == 0:
            ok, error, tolerance = compare(y, sign * x, a_tol, r_tol)
        else:
            tensor, rtp = _cartesian_tensor(spec.symmetry)
            for label, data in (("input", x), ("rotated", y)):
                irreps = tensor.from_cartesian(data, rtp=rtp)
                ok, error, tolerance = compare(tensor.to_cartesian(irreps, rtp=rtp), data, a_tol, r_tol)
                if not ok:
                    raise AssertionError(
                        f"field {name!r} on the {label} structure is not in the subspace of its symmetry "
                        f"{spec.symmetry!r}: max distance {error:.3e} > tolerance {tolerance:.3e}"
                    )
            expected = sign * tensor.from_cartesian(x, rtp=rtp) @ _d_matrix(spec.symmetry, rotation).T
            ok, error, tolerance = compare(tensor.from_cartesian(y, rtp=rtp), expected, a_tol, r_tol)
        if not ok:
            raise AssertionError(
                f"field {name!r} (symmetry {spec.symmetry!r}, parity {spec.parity:+d}, {spec.level} level) is not "
                f"equivariant under {article} {kind} rotation (det {det:+.0f}): max error {error:.3e} > tolerance "
                f"{tolerance:.3e}"
            )
        errors[name] = error
    return errors
