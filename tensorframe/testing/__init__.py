"""Test kit for plugin authors: hypothesis strategies, the equivariance tester and the
invariance / consistency / Neumann checks, usable on any TensorModel or callable.

    from tensorframe.testing import assert_equivariant, strategies
    from tensorframe.testing.checks import rock_salt, assert_neumann

``strategies`` needs hypothesis (a dev dependency); it is imported lazily.
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

__all__ = [
    "apply_orthogonal",
    "assert_batch_consistent",
    "assert_equivariant",
    "assert_neumann",
    "assert_periodic_images_consistent",
    "assert_permutation_invariant",
    "assert_supercell_consistent",
    "assert_translation_invariant",
    "evaluate",
    "point_group_operations",
    "repeat_sample",
    "rock_salt",
    "rotate_sample",
    "strategies",
    "tetragonal_perovskite",
    "wurtzite",
]


def __getattr__(name: str) -> Any:
    if name == "strategies":
        import importlib

        return importlib.import_module("tensorframe.testing.strategies")
    raise AttributeError(f"module 'tensorframe.testing' has no attribute {name!r}")
