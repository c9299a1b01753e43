"""Labels a head can never produce are refused before training, in one line naming the
file, the structure and the field: eps with an eigenvalue below 1 for a ``positive_definite``
dielectric head (the identity plus a positive semi-definite tensor)."""

from __future__ import annotations

import numpy as np
import pytest

from tensorframe import Sample, build_model
from tensorframe.train.data import DataError, Dataset, validate_samples


def model(positive_definite: bool):
    return build_model({
        "cutoff": 4.0,
        "backbone": {"name": "reference", "hidden": 8, "num_radial": 4},
        "heads": [{"name": "dielectric", "hidden": 8, "positive_definite": positive_definite}],
    })


def crystal(eps: np.ndarray) -> Sample:
    cell = np.eye(3) * 4.0
    return Sample([11, 17], np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]), cell, [True] * 3,
                  targets={"dielectric": eps})


def dataset(*eps: np.ndarray) -> Dataset:
    return Dataset([crystal(e) for e in eps], [f"eps.xyz: structure {i}" for i in range(len(eps))])


def test_eps_below_one_refused_for_a_positive_definite_head() -> None:
    good = np.diag([2.5, 2.5, 3.0])
    bad = np.array([[0.8, 0.1, 0.0], [0.1, 2.0, 0.0], [0.0, 0.0, 2.0]])  # eigenvalue ~0.79
    with pytest.raises(DataError) as caught:
        validate_samples(model(True), dataset(good, bad), [0, 1], ["dielectric"])
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("eps.xyz: structure 1: field 'dielectric': the label has an eigenvalue 0.79")
    assert "positive_definite: false" in message


def test_eps_of_one_and_any_eps_for_a_free_head_accepted() -> None:
    vacuum_like = np.eye(3)
    below = np.diag([0.5, 2.0, 2.0])
    validate_samples(model(True), dataset(np.diag([1.0, 4.0, 9.0]), vacuum_like), [0, 1], ["dielectric"])
    validate_samples(model(False), dataset(below), [0], ["dielectric"])
