"""The completeness benchmark in reduced (CI) mode: one molecular task and one crystal task,
the reference backbone, every variant; the principal-frame split and the report. No timing asserts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.bench_completeness import frame_errors, main, principal_frame, render, with_basis
from benchmarks.tasks import TASKS
from tensorframe.types import Sample


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("completeness")
    main(["--reduced", "--no-docs", "--tasks", "default-molecules", "becs-eps", "--backbones", "reference",
          "--repeats", "1", "--out", str(out / "completeness.json"), "--runs", str(out / "runs")])
    return json.loads((out / "completeness.json").read_text())


def test_every_variant_is_trained_and_timed(reduced):
    molecules = reduced["training"]["default-molecules"]["models"]
    assert set(molecules) == {"reference-complete", "reference-paper", "reference-complete-cf"}
    for record in molecules.values():
        assert set(record["fields"]) == set(TASKS["default-molecules"].targets)
        assert set(record["frames"]) == {"born_charges", "polarizability"}
    if TASKS["becs-eps"].available()[0]:
        assert set(reduced["training"]["becs-eps"]["models"]) == {"reference-complete", "reference-paper"}
        assert reduced["cost"]["becs-eps"]["reference"]["median_s"]["paper"] > 0
    text = render(reduced)
    assert "### default-molecules" in text and "### Cost of the extra words" in text


def test_variants_set_the_basis_and_charge_flow_on_the_right_heads():
    task = with_basis(TASKS["default-molecules"], "paper", charge_flow=True)
    assert all(head["basis"] == "paper" for head in task.heads)
    flows = {head.get("field", head["name"]) for head in task.heads if head.get("charge_flow")}
    assert flows == {"dipole", "polarizability"}


def test_principal_frame_split_of_a_planar_and_a_linear_molecule():
    """A planar molecule's error is split into in-plane and normal parts in its own frame,
    whatever its orientation; a linear one into axial and perpendicular parts."""
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    planar = Sample([8, 1, 1], np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]) @ rotation.T,
                    targets={"polarizability": np.zeros((3, 3))})
    linear = Sample([6, 8, 8], np.array([[0, 0, 0], [0, 0, 1.16], [0, 0, -1.16]]) @ rotation.T,
                    targets={"polarizability": np.zeros((3, 3))})
    assert principal_frame(planar)[0] == "planar" and principal_frame(linear)[0] == "linear"
    normal = principal_frame(planar)[1][2]
    axis = principal_frame(linear)[1][0]
    # A prediction that is wrong only along the normal / the axis.
    predictions = [{"polarizability": 2.0 * np.outer(normal, normal)}, {"polarizability": 3.0 * np.outer(axis, axis)}]
    errors = frame_errors([planar, linear], predictions, "polarizability")
    assert errors["planar:normal"]["mae"] == pytest.approx(2.0)
    assert errors["planar:in_plane"]["mae"] == pytest.approx(0.0, abs=1e-12)
    assert errors["linear:axial"]["mae"] == pytest.approx(3.0)
    assert errors["linear:perpendicular"]["mae"] == pytest.approx(0.0, abs=1e-12)
    assert errors["molecules"] == {"planar": 1, "linear": 1}
