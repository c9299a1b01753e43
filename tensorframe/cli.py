"""The ``tensorframe`` command line.

    tensorframe plugins          every backbone, head, field and reader, with its plugin
    tensorframe demo             predict tensors for the bundled structures (random model)

Errors print one line (a traceback with ``--debug``) and exit non-zero.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources

import numpy as np

from tensorframe.registry import get_registry


def bundled_structures_path() -> str:
    return str(resources.files("tensorframe") / "data" / "examples.extxyz")


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = get_registry()
    rows = registry.rows()
    widths = [max(len(getattr(r, a)) for r in rows + [_header()]) for a in ("kind", "name", "plugin", "distribution")]
    for row in [_header(), *rows]:
        cells = [getattr(row, a).ljust(w) for a, w in zip(("kind", "name", "plugin", "distribution"), widths, strict=True)]
        print("  ".join(cells) + ("  " + row.description if row.description else ""))
    for problem in registry.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if registry.problems else 0


def _header():
    from tensorframe.registry import PluginInfo

    return PluginInfo(name="NAME", kind="KIND", plugin="PLUGIN", distribution="DISTRIBUTION", description="")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tensorframe", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("plugins", help="list backbones, heads, fields and readers").set_defaults(func=cmd_plugins)
    demo = sub.add_parser("demo", help="predict tensors for the bundled structures")
    demo.add_argument("--backbone", default=None, help="backbone name (default: etgnn if installed, else reference)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as error:  # noqa: BLE001 - one clear line unless --debug
        if args.debug:
            raise
        print(f"tensorframe {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
