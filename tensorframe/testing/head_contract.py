"""The head contract: what every head must satisfy, the counterpart of
:mod:`tensorframe.testing.contract` for heads. Point it at a head by subclassing
:class:`HeadContract` and giving a class- (or wider-) scoped ``head_config`` fixture::

    import pytest
    from tensorframe.testing.head_contract import HeadContract

    class TestMyHead(HeadContract):
        @pytest.fixture(scope="class")
        @classmethod
        def head_config(cls):
            return {"name": "myhead", "hidden": 16}   # a head config, as in a model config

The head is built by ``build_model`` (so it gets the registry's field table like any model)
on the small ``reference`` backbone with native triplet features, in float64
(:func:`build_head_model`), and the contract checks its one field:

    nonzero       the output is non-zero on two generic structures (no check passes vacuously)
    symmetry      equivariant under proper AND improper rotations (e3nn Wigner-D reference,
                  :func:`~tensorframe.testing.assert_equivariant`); permutation and
                  translation invariant (crystals, molecules, slabs)
    periodicity   moving atoms to other periodic images changes nothing; supercells keep
                  intensive fields, scale extensive ones and repeat atom fields
    batching      a batch gives each structure what it gets alone
    training      a loss on the field gives every head parameter a finite gradient (not all
                  zero) and reaches the backbone (the head does not detach its features)
    dtypes        float32 agrees with float64 for the same weights
    completeness  on degenerate environments (default planar H2O, C2v, and linear CO2, D∞h;
                  class attribute ``complete_on``) the head reaches every component the
                  point group allows (:mod:`tensorframe.testing.completeness`)

Each check is a function (``check_symmetries``, ``check_periodicity``, ...) usable without
pytest, on any model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

from tensorframe.heads.base import Head
from tensorframe.model import TensorModel, build_model
from tensorframe.registry import build_registry
from tensorframe.specs import FeatureDims
from tensorframe.testing import strategies as tfst
from tensorframe.testing.completeness import STANDARD_ENVIRONMENTS, CompletenessReport, assert_complete
from tensorframe.testing.contract import (
    _KINDS,
    _SUPERCELL,
    _draw_image_shifts,
    assert_float32_matches_float64,
    assert_outputs_nonzero,
    check_gradient,
    contract_samples,
    property_test,
)
from tensorframe.testing.equivariance import assert_equivariant
from tensorframe.testing.invariance import (
    assert_batch_consistent,
    assert_periodic_images_consistent,
    assert_permutation_invariant,
    assert_supercell_consistent,
    assert_translation_invariant,
)
from tensorframe.types import Sample

__all__ = [
    "HEAD_BACKBONE",
    "HeadContract",
    "assert_gradients_reach_head",
    "build_head_model",
    "check_completeness",
    "check_periodicity",
    "check_symmetries",
    "head_dims",
    "head_under_contract",
]

HEAD_BACKBONE: dict[str, Any] = {"name": "reference", "hidden": 16, "num_radial": 8, "triplets": True}
"""The backbone every head is checked on: small, with native triplet features 16 wide (so the
head's feature widths are the completeness checker's :data:`~tensorframe.testing.CHECK_DIMS`)."""


def build_head_model(
    head_config: Mapping[str, Any],
    cutoff: float = 3.5,
    triplet_cutoff: float = 3.0,
    seed: int = 0,
    extra_plugins: Sequence[tuple[str, object]] = (),
    backbone: Mapping[str, Any] = HEAD_BACKBONE,
) -> TensorModel:
    """A float64 model in eval mode: ``backbone`` feeding the one head ``head_config``
    (``{"name": ..., **options}``), built by ``build_model`` with the installed plugins and
    ``extra_plugins``.

    Raises:
        ConfigError: for a head name or option that the registry does not accept.
    """
    config = {
        "cutoff": cutoff,
        "triplet_cutoff": triplet_cutoff,
        "backbone": dict(backbone),
        "heads": [dict(head_config)],
        "lifting": {"hidden": 16, "out_dim": 16},
    }
    torch.manual_seed(seed)
    return build_model(config, registry=build_registry(extra_plugins=extra_plugins)).double().eval()


def head_under_contract(model: TensorModel) -> Head:
    """The model's one head."""
    (head,) = model.heads.values()
    return head


def head_dims(model: TensorModel) -> FeatureDims:
    """The feature widths the model's heads receive (triplets from the lifting when the
    backbone has none)."""
    dims = model.backbone.feature_dims
    if dims.triplet is None:
        return FeatureDims(dims.node, dims.edge, model.config.lifting.out_dim)
    return dims


# ---------------------------------------------------------------- the checks


def check_symmetries(
    model: TensorModel, sample: Sample, rotation: np.ndarray, permutation: Sequence[int], shift: Sequence[float]
) -> None:
    """Equivariance under ``rotation`` and ``-rotation`` (one proper, one improper), then
    permutation and translation invariance.

    Raises:
        AssertionError: from the first check that fails, naming the field and the operation.
    """
    __tracebackhide__ = True
    assert_equivariant(model, sample, rotation)
    assert_equivariant(model, sample, -np.asarray(rotation))
    assert_permutation_invariant(model, sample, permutation)
    assert_translation_invariant(model, sample, shift)


def check_periodicity(model: TensorModel, sample: Sample, image_shifts: np.ndarray, repeat: Sequence[int]) -> None:
    """Atoms moved to other periodic images by ``image_shifts`` ((N, 3) integers) change
    nothing; the ``repeat`` supercell is consistent (intensive fields kept, extensive ones
    scaled, atom fields repeated).

    Raises:
        AssertionError: naming the field and the check.
    """
    __tracebackhide__ = True
    assert_periodic_images_consistent(model, sample, image_shifts)
    assert_supercell_consistent(model, sample, [tuple(repeat)])


def assert_gradients_reach_head(model: TensorModel, samples: Sequence[Sample], seed: int = 0) -> None:
    """A loss on the head's output (dotted with fixed random weights) gives every trainable
    parameter of the head a finite gradient, not all of them zero (a single one may be: a
    constant coefficient on an odd edge term cancels over the two directions of each edge),
    and a non-zero gradient to some backbone parameter: the head does not detach its
    features.

    Raises:
        AssertionError: naming the parameter without a (finite) gradient, or saying that
            nothing reaches the head's parameters or the backbone.
    """
    __tracebackhide__ = True
    head = head_under_contract(model)
    model.zero_grad(set_to_none=True)
    try:
        (output,) = model(model.make_graph(list(samples))).values()
        generator = torch.Generator().manual_seed(seed)
        (output * torch.randn(output.shape, generator=generator, dtype=output.dtype)).sum().backward()
        largest = 0.0
        for name, parameter in head.named_parameters():
            if not parameter.requires_grad:
                continue
            check_gradient(f"heads.{head.field.name}.{name}", parameter, f"a loss on {head.field.name!r}")
            largest = max(largest, float(parameter.grad.abs().max()))
        if not largest > 0:
            raise AssertionError(f"every parameter of the {head.field.name!r} head has an all-zero gradient")
        backbone = [p.grad for p in model.backbone.parameters() if p.grad is not None]
        if not any(bool(grad.abs().max() > 0) for grad in backbone):
            raise AssertionError(
                f"a loss on {head.field.name!r} gives the backbone no gradient: the head detaches its features"
            )
    finally:
        model.zero_grad(set_to_none=True)


def check_completeness(model: TensorModel, environments: Sequence[str]) -> list[CompletenessReport]:
    """:func:`~tensorframe.testing.assert_complete` of the model's head on each of
    ``environments`` (names in :data:`~tensorframe.testing.STANDARD_ENVIRONMENTS`), fed the
    checker's orbit-invariant features at the head's own widths.

    Raises:
        AssertionError: naming the field, the environment, its point group, and the span
            found against the dimension required at each failing site.
    """
    __tracebackhide__ = True
    head, dims = head_under_contract(model), head_dims(model)
    return [
        assert_complete(head, STANDARD_ENVIRONMENTS[name](), environment=name, dims=dims) for name in environments
    ]


# ---------------------------------------------------------------- the pytest mixin

_PERIODIC_KINDS = list(_SUPERCELL)


class HeadContract:
    """Contract tests for a head: subclass it and provide a ``head_config`` fixture (scope
    ``"class"`` or wider) returning ``{"name": <head>, **options}``.

    Class attributes to override:
        cutoff / triplet_cutoff: graph cutoffs (Å).
        extra_plugins: ``(name, plugin)`` pairs registering a head that is not installed.
        complete_on: names of :data:`~tensorframe.testing.STANDARD_ENVIRONMENTS` on which the
            head must be complete (default planar water and linear CO2; ``()`` for a head
            that is incomplete by design, e.g. ``basis: paper``).
        periodic: False for a head that refuses periodic structures (e.g. ``charge_flow``):
            it is checked on molecules only, and the periodic-image and supercell checks
            are skipped.

    Structures come from :mod:`tensorframe.testing.strategies` (2..8 atoms); the number of
    examples follows the loaded hypothesis profile.
    """

    cutoff: float = 3.5
    triplet_cutoff: float = 3.0
    extra_plugins: Sequence[tuple[str, object]] = ()
    complete_on: Sequence[str] = ("water", "co2")
    periodic: bool = True

    @pytest.fixture(scope="class")
    @classmethod
    def head_model(cls, head_config: Mapping[str, Any]) -> TensorModel:
        return build_head_model(head_config, cls.cutoff, cls.triplet_cutoff, extra_plugins=cls.extra_plugins)

    def _fixed_samples(self) -> list[Sample]:
        """The generic contract crystal and molecule (the molecule only, if not periodic)."""
        crystal, molecule = contract_samples()
        return [crystal, molecule] if self.periodic else [molecule]

    def _require(self, kind: str) -> None:
        if not self.periodic and kind != "molecule":
            pytest.skip(f"the head is checked on molecules only (periodic = False), not on a {kind}")

    def test_output_is_nonzero(self, head_model: TensorModel) -> None:
        assert_outputs_nonzero(head_model, self._fixed_samples())

    @pytest.mark.parametrize("kind", list(_KINDS))
    @property_test(data=st.data(), rotation=tfst.orthogonal_matrices(proper=True),
           shift=st.lists(st.floats(-10.0, 10.0), min_size=3, max_size=3))
    def test_equivariant_permutation_and_translation_invariant(
            self, head_model: TensorModel, kind: str, data: st.DataObject, rotation: np.ndarray, shift: list[float]) -> None:
        self._require(kind)
        sample = data.draw(_KINDS[kind], label=kind)
        permutation = data.draw(st.permutations(range(sample.num_atoms)), label="permutation")
        check_symmetries(head_model, sample, rotation, permutation, shift)

    @pytest.mark.parametrize("kind", _PERIODIC_KINDS)
    @property_test(data=st.data())
    def test_periodic_images_and_supercells(self, head_model: TensorModel, kind: str, data: st.DataObject) -> None:
        self._require(kind)
        strategy, repeat, _ = _SUPERCELL[kind]
        sample = data.draw(strategy, label=kind)
        check_periodicity(head_model, sample, _draw_image_shifts(data, sample), repeat)

    @property_test(data=st.data())
    def test_batch_equals_one_by_one(self, head_model: TensorModel, data: st.DataObject) -> None:
        kinds = list(_KINDS.values()) if self.periodic else [_KINDS["molecule"]]
        assert_batch_consistent(head_model, data.draw(st.lists(st.one_of(*kinds), min_size=2, max_size=3)))

    def test_gradients_reach_the_head_and_the_backbone(self, head_model: TensorModel) -> None:
        assert_gradients_reach_head(head_model, self._fixed_samples())

    def test_float32_matches_float64(self, head_model: TensorModel) -> None:
        assert_float32_matches_float64(head_model, self._fixed_samples())

    def test_complete_on_degenerate_environments(self, head_model: TensorModel) -> None:
        if not self.complete_on:
            pytest.skip("complete_on is empty: this head is not required to be complete")
        check_completeness(head_model, self.complete_on)
