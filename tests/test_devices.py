"""The same physics and training on every device this machine has: the CPU always, CUDA when a
GPU is present (the ``cuda`` cases are skipped otherwise; ``benchmarks/gpu_pass.sh`` runs them
on a lent GPU).

- every backbone with tensor heads is O(3)-equivariant on the device (float64, e3nn's Wigner-D);
- on CUDA, predictions, conservative forces and stress equal the CPU's (float64);
- the triplet kernels (compiled on the CPU, PyTorch elsewhere) give the CPU's values and gradients;
- bfloat16 backbone precision stays close to float32 and pads graphs only on the CPU;
- one training epoch on the device, with and without ``amp``, and its checkpoint loads on the CPU.
"""

from __future__ import annotations

import copy
import csv
import math

import ase.build
import numpy as np
import pytest
import torch

import tensorframe as tf
import tensorframe.model as model_module
from tensorframe.checkpoint import load_model
from tensorframe.io import to_sample
from tensorframe.ops.triplet_kernels import gather_mul_scatter
from tensorframe.testing.contract import orthogonal_matrix
from tensorframe.testing.equivariance import assert_equivariant
from tensorframe.train import Trainer, parse_train_config
from tests.test_train import make_config, write_synthetic

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA)]
BACKBONES = {
    "reference": {"name": "reference", "hidden": 16},
    "etgnn": {"name": "etgnn", "hidden": 16, "triplet_dim": 8, "int_emb_size": 8, "out_emb_size": 16, "num_blocks": 1},
    "schnet": {"name": "schnet", "hidden": 16, "num_interactions": 1},
    "cgcnn": {"name": "cgcnn", "hidden": 16, "num_layers": 1},
}
HEADS = [{"name": "born", "hidden": 8}, {"name": "dielectric", "hidden": 8}, {"name": "piezo", "hidden": 8},
         {"name": "force", "hidden": 8}]


def config(backbone: str, **model: object) -> dict:
    return {"cutoff": 4.0, "triplet_cutoff": 3.0, "backbone": dict(BACKBONES[backbone]), "heads": copy.deepcopy(HEADS),
            **model}


def structures() -> list:
    rng = np.random.default_rng(0)
    crystal = ase.build.bulk("AlN", "wurtzite", a=3.11, c=4.98)
    crystal.positions += rng.normal(scale=0.05, size=crystal.positions.shape)
    molecule = ase.build.molecule("CH3OH")
    molecule.positions += rng.normal(scale=0.05, size=molecule.positions.shape)
    return [crystal, molecule]


def seeded(model_config: dict, device: str, dtype: torch.dtype = torch.float64) -> tf.TensorModel:
    torch.manual_seed(0)
    return tf.build_model(model_config).to(dtype).to(device).eval()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_is_equivariant_on_the_device(device, backbone):
    model = seeded(config(backbone), device)
    for atoms in structures():
        for proper in (True, False):
            rotation = orthogonal_matrix(seed=3, proper=proper)
            assert_equivariant(model, to_sample(atoms), rotation)


@CUDA
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_cuda_predictions_forces_and_stress_equal_the_cpu(backbone):
    direct = seeded(config(backbone), "cpu"), seeded(config(backbone), "cuda")
    conservative_config = config(backbone, conservative=True)
    conservative_config["heads"] = [{"name": "scalar", "field": "energy", "reduce": "sum", "hidden": 8},
                                    {"name": "born", "hidden": 8}]
    conservative = seeded(conservative_config, "cpu"), seeded(conservative_config, "cuda")
    for cpu, gpu in (direct, conservative):
        for a, b in zip(cpu.predict(structures()), gpu.predict(structures()), strict=True):
            assert a.keys() == b.keys()
            for name in a:
                np.testing.assert_allclose(b[name], a[name], rtol=1e-9, atol=1e-10, err_msg=f"{backbone}: {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triplet_kernels_on_the_device_equal_the_cpu(device, dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(30, 6, generator=generator, dtype=dtype)
    weight = torch.randn(200, 6, generator=generator, dtype=dtype)
    kj = torch.randint(0, 30, (200,), generator=generator)
    ji = torch.randint(0, 30, (200,), generator=generator)
    upstream = torch.randn(30, 6, generator=generator, dtype=dtype)

    def run(where: str) -> tuple[torch.Tensor, ...]:
        leaves = [t.to(where).requires_grad_() for t in (x, weight)]
        out = gather_mul_scatter(leaves[0], kj.to(where), leaves[1], ji.to(where), 30)
        grads = torch.autograd.grad((out * upstream.to(where)).sum(), leaves)
        return tuple(t.detach().cpu() for t in (out, *grads))

    reference = (torch.zeros(30, 6, dtype=dtype).index_add_(0, ji, x[kj] * weight),)
    tolerance = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(run(device)[0], reference[0], **tolerance)
    for a, b in zip(run(device), run("cpu"), strict=True):
        torch.testing.assert_close(a, b, **tolerance)


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_backbone_precision_is_close_to_float32_and_pads_only_on_the_cpu(device, monkeypatch):
    model = seeded(config("etgnn"), device, torch.float32)
    graph = model.make_graph([to_sample(a) for a in structures()])
    with torch.no_grad():
        full = model(graph)
    padded: list[int] = []
    original = model_module.pad_graph
    monkeypatch.setattr(model_module, "pad_graph", lambda g: padded.append(g.num_nodes) or original(g))
    with torch.no_grad(), model.backbone_precision(torch.bfloat16):
        half = model(graph)
    assert padded == ([graph.num_nodes] if device == "cpu" else [])
    for name, value in full.items():
        assert half[name].dtype == torch.float32
        scale = value.abs().max().item()
        # bfloat16 keeps 8 bits of mantissa: a few parts in a hundred of the output's scale
        assert (half[name] - value).abs().max().item() <= 5e-2 * scale + 1e-6, name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp", [False, True], ids=["float32", "amp"])
def test_one_training_epoch_on_the_device_and_its_checkpoint_loads_on_the_cpu(device, amp, tmp_path):
    write_synthetic(tmp_path / "data.xyz", copies=1)
    raw = make_config(tmp_path, str(tmp_path / "data.xyz"), epochs=1, device=device, amp=amp,
                      output_dir=str(tmp_path / "run"))
    result = Trainer(parse_train_config(raw), tmp_path).run()
    (row,) = csv.DictReader((result.output_dir / "train_log.csv").open())
    assert math.isfinite(float(row["train_loss"])) and math.isfinite(float(row["valid_loss"]))
    model = load_model(result.output_dir / "best.pt", map_location="cpu")
    assert next(model.parameters()).device.type == "cpu"
    predictions = model.predict(structures())
    assert all(np.isfinite(p["born_charges"]).all() for p in predictions)
