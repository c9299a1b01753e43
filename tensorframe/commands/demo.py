"""``tensorframe demo``: the README's main job."""

from __future__ import annotations

import argparse
from importlib import resources

import numpy as np

from tensorframe.commands.plugins import cmd_plugins
from tensorframe.registry import get_registry


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="predict tensors for the bundled structures")
    parser.add_argument("--backbone", default=None, help="backbone name (default: etgnn if installed, else reference)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=cmd_demo)


def bundled_structures_path() -> str:
    return str(resources.files("tensorframe") / "data" / "examples.extxyz")


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from tensorframe.io.read import read_structures
    from tensorframe.model import build_model

    torch.manual_seed(args.seed)
    backbone = args.backbone or ("etgnn" if "etgnn" in get_registry().items["backbone"] else "reference")
    config = {
        "cutoff": 5.0,
        "triplet_cutoff": 4.0,
        "backbone": {"name": backbone},
        "heads": [{"name": "born", "acoustic_sum_rule": True}, {"name": "dielectric", "positive_definite": True},
                  {"name": "piezo"}, {"name": "force"}],
    }
    print("plugins:")
    cmd_plugins(args)
    model = build_model(config)
    samples = read_structures(bundled_structures_path())
    names = ["AlN wurtzite", "BaTiO3 tetragonal P4mm", "H2O molecule"]
    print(f"\nrandomly initialised model: backbone {backbone!r}, heads {list(model.heads)}, "
          f"{sum(p.numel() for p in model.parameters())} parameters")
    np.set_printoptions(precision=4, suppress=True)
    for name, sample, prediction in zip(names, samples, model.predict(samples), strict=True):
        print(f"\n== {name} ({sample.num_atoms} atoms)")
        for field, value in prediction.items():
            print(f"{field} {value.shape}:\n{value if value.ndim <= 2 else value.reshape(value.shape[0], -1)}")
        print(f"acoustic sum rule residual |sum_k Z*_k| = {np.abs(prediction['born_charges'].sum(0)).max():.2e}")
        print(f"dielectric eigenvalues (>= 1): {np.linalg.eigvalsh(prediction['dielectric'])}")
    return 0


