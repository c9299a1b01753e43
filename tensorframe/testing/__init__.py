"""Test kit for plugin authors: hypothesis strategies, the equivariance tester and the
invariance / consistency / Neumann checks, usable on any TensorModel or callable.

    from tensorframe.testing import assert_equivariant, strategies
    from tensorframe.testing.checks import rock_salt, assert_neumann

``strategies`` needs hypothesis (a dev dependency); it is imported lazily, and so is the
completeness checker (:mod:`tensorframe.testing.completeness`, which needs pymatgen and e3nn):

    from tensorframe.testing import CHECK_DIMS, assert_complete, completeness_report
"""

from __future__ import annotations

from typing import Any

from tensorframe.testing.checks import (
    apply_orthogonal,
    assert_batch_consistent,
    assert_neumann,
    assert_periodic_images_consistent,
    assert_permutation_invariant,
    assert_supercell_consistent,
    assert_translation_invariant,
    point_group_operations,
    repeat_sample,
    rock_salt,
    tetragonal_perovskite,
    wurtzite,
)
from tensorframe.testing.equivariance import assert_equivariant, evaluate, rotate_sample

_COMPLETENESS = (
    "CHECK_DIMS",
    "STANDARD_ENVIRONMENTS",
    "CompletenessReport",
    "assert_complete",
    "assert_registered_heads_complete",
    "completeness_report",
    "invariant_subspace_dim",
)

__all__ = [
    "CHECK_DIMS",
    "STANDARD_ENVIRONMENTS",
    "CompletenessReport",
    "apply_orthogonal",
    "assert_complete",
    "assert_batch_consistent",
    "assert_equivariant",
    "assert_neumann",
    "assert_periodic_images_consistent",
    "assert_permutation_invariant",
    "assert_registered_heads_complete",
    "assert_supercell_consistent",
    "assert_translation_invariant",
    "completeness_report",
    "evaluate",
    "invariant_subspace_dim",
    "point_group_operations",
    "repeat_sample",
    "rock_salt",
    "rotate_sample",
    "strategies",
    "tetragonal_perovskite",
    "wurtzite",
]


def __getattr__(name: str) -> Any:
    import importlib

    if name == "strategies":
        return importlib.import_module("tensorframe.testing.strategies")
    if name in _COMPLETENESS:
        return getattr(importlib.import_module("tensorframe.testing.completeness"), name)
    raise AttributeError(f"module 'tensorframe.testing' has no attribute {name!r}")
