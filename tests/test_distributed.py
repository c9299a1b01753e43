"""``torchrun --nproc_per_node=2 -m tensorframe train``: DistributedDataParallel on CPU (gloo).

One launch, in a subprocess as a user runs it. With a structure-level target only (each
process averages over the same number of structures), two processes of batch 4 take
exactly the steps of one process of batch 8: the sampler gives process r the positions
r, r+2, ... of the same seeded permutation, DDP averages the gradients and the
metrics are summed over processes. So the two-process weights must equal the
single-process weights to rounding.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import tensorframe as tf
from tensorframe.checkpoint import load_checkpoint
from tensorframe.io.read import read_structures
from tensorframe.train import Trainer, parse_train_config
from tensorframe.train.state import seed_everything

sys.path.insert(0, str(Path(__file__).parent))
from test_train import STUDENT, make_config, write_synthetic  # noqa: E402


def config_for(folder: Path, batch_size: int, output_dir: str) -> dict:
    model = copy.deepcopy(STUDENT)
    model["heads"].append({"name": "force", "hidden": 8})  # not a target: its parameters get no gradient
    return make_config(folder, model=model, targets={"dielectric": 1.0}, dtype="float64", epochs=3,
                       batch_size=batch_size, output_dir=output_dir, checkpoint_every_steps=1, parity_plots=True)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("ddp")
    write_synthetic(folder / "data.xyz")
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(config_for(folder, batch_size=4, output_dir="ddp")))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "tensorframe", "train", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240, cwd=folder)
    return folder, result


def test_two_processes_finish_with_one_writer(two_process_run):
    folder, result = two_process_run
    assert result.returncode == 0, result.stderr[-3000:]
    out = folder / "ddp"
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.json", "parity",
                                                     "split.json", "train_log.csv"]
    with (out / "train_log.csv").open() as stream:
        assert [row["epoch"] for row in csv.DictReader(stream)] == ["1", "2", "3"]  # one writer: no duplicate rows
    assert sum(line.startswith("epoch ") for line in result.stdout.splitlines()) == 3
    state = load_checkpoint(out / "last.pt")["training_state"]
    assert state["world_size"] == 2 and len(state["data_order"]) == 2
    # 12 training structures, batch 4 per process: 2 steps per epoch.
    assert state["global_step"] == 6
    model = tf.load_model(out / "best.pt")
    samples = read_structures(folder / "data.xyz", key_map={"eps": "dielectric"}, index=":2")
    assert all(torch.isfinite(torch.as_tensor(p["dielectric"])).all() for p in model.predict(samples))
    assert "test" in json.loads((out / "metrics.json").read_text())


def test_two_processes_take_the_steps_of_one_process_with_twice_the_batch(two_process_run):
    folder, result = two_process_run
    assert result.returncode == 0, result.stderr[-3000:]
    single = Trainer(parse_train_config(config_for(folder, batch_size=8, output_dir="single")), folder).run()
    ddp = load_checkpoint(folder / "ddp" / "last.pt")["state_dict"]
    one = load_checkpoint(single.output_dir / "last.pt")["state_dict"]
    for key, value in one.items():
        torch.testing.assert_close(ddp[key], value, rtol=0, atol=1e-10, msg=key)
    # Not vacuous: training moved the backbone and the dielectric head away from the seeded
    # initial weights, and left the force head (no target, so no gradient) exactly alone.
    seed_everything(0)
    initial = tf.build_model(config_for(folder, 4, "x")["model"]).double().state_dict()
    assert not torch.equal(initial["heads.dielectric.edge_coefficients.0.weight"], ddp["heads.dielectric.edge_coefficients.0.weight"])
    assert not torch.equal(initial["backbone.embedding.weight"], ddp["backbone.embedding.weight"])
    assert all(torch.equal(initial[k], ddp[k]) for k in ddp if k.startswith("heads.forces."))
    ddp_metrics = json.loads((folder / "ddp" / "metrics.json").read_text())
    for key, value in single.metrics["test"].items():
        assert ddp_metrics["test"][key] == pytest.approx(value, rel=1e-9), key
