"""Test kit for plugin authors: hypothesis strategies, the equivariance tester and the
invariance / consistency / Neumann checks, usable on any TensorModel or callable.

    from tensorframe.testing import assert_equivariant, strategies
    from tensorframe.testing.invariance import rock_salt, assert_neumann

``strategies`` needs hypothesis (a dev dependency); it is imported lazily, and so is the
completeness checker (:mod:`tensorframe.testing.completeness`, which needs pymatgen and e3nn):

    from tensorframe.testing import CHECK_DIMS, assert_complete, completeness_report

The contracts for plugins: :class:`tensorframe.testing.contract.BackboneContract` and
:class:`tensorframe.testing.head_contract.HeadContract` (import them from their modules).
A plugin's test suite loads the project's hypothesis profiles from its conftest.py with
:func:`load_hypothesis_profile`.
"""

from __future__ import annotations

from typing import Any

from tensorframe.testing.equivariance import assert_equivariant, model_outputs, rotate_sample
from tensorframe.testing.invariance import (
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
    "HYPOTHESIS_PROFILES",
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
    "model_outputs",
    "invariant_subspace_dim",
    "load_hypothesis_profile",
    "point_group_operations",
    "repeat_sample",
    "rock_salt",
    "rotate_sample",
    "strategies",
    "tetragonal_perovskite",
    "wurtzite",
]


HYPOTHESIS_PROFILES: dict[str, dict[str, Any]] = {
    "ci": {"max_examples": 6, "derandomize": True, "print_blob": True},
    "dev": {"max_examples": 25},
    "thorough": {"max_examples": 200},
}
"""The project's hypothesis profiles: ``ci`` few examples, derandomised (the same examples on
every run); ``dev`` 25 examples; ``thorough`` 200. All without deadline and without the
too-slow health check."""


def load_hypothesis_profile(name: str | None = None) -> str:
    """Register :data:`HYPOTHESIS_PROFILES` and load ``name`` (default: the environment variable
    ``HYPOTHESIS_PROFILE``, else ``"dev"``); returns the name. Call it in a conftest.py, which
    pytest imports before the test modules.

    Raises:
        ValueError: for a name that is not a profile.
    """
    import os

    from hypothesis import HealthCheck, settings

    name = name or os.environ.get("HYPOTHESIS_PROFILE", "dev")
    if name not in HYPOTHESIS_PROFILES:
        raise ValueError(f"HYPOTHESIS_PROFILE: expected one of {', '.join(HYPOTHESIS_PROFILES)}, got {name!r}")
    for profile, options in HYPOTHESIS_PROFILES.items():
        settings.register_profile(profile, deadline=None, suppress_health_check=[HealthCheck.too_slow], **options)
    settings.load_profile(name)
    return name


def __getattr__(name: str) -> Any:
    import importlib

    if name == "strategies":
        return importlib.import_module("tensorframe.testing.strategies")
    if name in _COMPLETENESS:
        return getattr(importlib.import_module("tensorframe.testing.completeness"), name)
    raise AttributeError(f"module 'tensorframe.testing' has no attribute {name!r}")
