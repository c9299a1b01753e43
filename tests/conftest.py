"""Hypothesis profiles and float64 models with every kind of head.

Profiles (choose with the environment variable HYPOTHESIS_PROFILE, default "dev"):
    ci        few examples, derandomised: the same examples on every run
    dev       25 examples
    thorough  200 examples
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings

import tensorframe as tf

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("ci", max_examples=6, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("dev", max_examples=25, **_COMMON)
settings.register_profile("thorough", max_examples=200, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

CUTOFF = 3.5
TRIPLET_CUTOFF = 3.0
HIDDEN = 16

# Two head sets, since a model predicts each field once: ASR Born charges and a
# positive-definite dielectric in "physics", the plain options in "general".
HEAD_SETS: dict[str, list[dict[str, Any]]] = {
    "physics": [
        {"name": "born", "acoustic_sum_rule": True},
        {"name": "dielectric", "positive_definite": True},
        {"name": "piezo"},
        {"name": "force"},
        {"name": "scalar", "field": "energy", "reduce": "sum"},
        {"name": "tensor", "field": "polarizability"},
        {"name": "tensor", "field": "hyperpolarizability"},
    ],
    "general": [
        {"name": "born"},
        {"name": "dielectric"},
        {"name": "scalar", "field": "charge", "level": "atom"},
        {"name": "scalar", "field": "band_gap", "level": "structure", "reduce": "mean"},
        {"name": "tensor", "field": "elastic", "symmetry": "ijkl=jikl=ijlk=klij", "level": "structure", "reduce": "mean"},
        {"name": "tensor", "field": "axial", "symmetry": "i", "parity": 1, "level": "atom"},
        {"name": "tensor", "field": "atom_tensor", "symmetry": "ij", "level": "atom"},
        {"name": "tensor", "field": "dipole"},
    ],
}


def make_model(head_set: str, triplets: bool, seed: int = 0) -> tf.TensorModel:
    """A float64 model on the ``reference`` backbone; ``triplets=False`` exercises the core's
    lifting of edge features to triplets."""
    heads = [dict(head, hidden=HIDDEN) for head in HEAD_SETS[head_set]]
    config = {
        "cutoff": CUTOFF,
        "triplet_cutoff": TRIPLET_CUTOFF,
        "backbone": {"name": "reference", "hidden": HIDDEN, "num_radial": 8, "triplets": triplets},
        "heads": heads,
        "lifting": {"hidden": HIDDEN, "out_dim": HIDDEN},
    }
    torch.manual_seed(seed)
    return tf.build_model(config).double().eval()


MODEL_PARAMS = [
    pytest.param((head_set, triplets), id=f"{head_set}-{'triplets' if triplets else 'lifted'}")
    for triplets in (False, True)
    for head_set in HEAD_SETS
]


@pytest.fixture(scope="session", params=MODEL_PARAMS)
def model(request: pytest.FixtureRequest) -> tf.TensorModel:
    """Every head set on both backbone variants (4 models)."""
    head_set, triplets = request.param
    return make_model(head_set, triplets)


@pytest.fixture(scope="session", params=[False, True], ids=["lifted", "triplets"])
def physics_model(request: pytest.FixtureRequest) -> tf.TensorModel:
    """Born charges with the acoustic sum rule and a positive-definite dielectric."""
    return make_model("physics", request.param)


@pytest.fixture(scope="session", params=[False, True], ids=["lifted", "triplets"])
def general_model(request: pytest.FixtureRequest) -> tf.TensorModel:
    """Plain Born charges and dielectric, rank-4, axial and atom-level rank-2 fields."""
    return make_model("general", request.param)
