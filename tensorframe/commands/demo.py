"""``tensorframe demo``: the README's main job.

Trains ETGNN (or ``--backbone``) on the embedded molecule set for a few minutes, prints the
test errors of every field beside the spread of its labels, writes parity plots, saves the
model, reloads it and predicts the tensors of a molecule that is not in the data set.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from tensorframe.commands.options import add_command, positive_float, positive_int
from tensorframe.registry import get_registry

MARKER = ".tensorframe-demo"
TARGETS = {"energy": 0.1, "forces": 1.0, "dipole": 1.0, "polarizability": 1.0, "born_charges": 1.0,
           "hyperpolarizability": 0.5}


def register(subparsers) -> None:
    parser = add_command(subparsers, "demo", __doc__, help="train on the embedded molecules, evaluate, save, reload, predict")
    parser.add_argument("--backbone", default=None, help="backbone name (default: etgnn if installed, else reference)")
    parser.add_argument("--seconds", type=positive_float, default=150.0, help="training time budget (default 150 s)")
    parser.add_argument("--epochs", type=positive_int, default=200, help="at most this many epochs")
    parser.add_argument("--output-dir", default="runs/demo", help="run folder (a previous demo run there is replaced)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=cmd_demo)


def demo_config(backbone: str, seconds: float, epochs: int, seed: int, output_dir: str) -> dict:
    backbone_options = {"name": backbone}
    if backbone == "etgnn":
        backbone_options.update(hidden=64, triplet_dim=64, num_blocks=3, int_emb_size=32, out_emb_size=64)
    return {
        "model": {
            "cutoff": 5.0, "triplet_cutoff": 4.0, "backbone": backbone_options,
            "heads": [
                {"name": "scalar", "field": "energy", "reduce": "sum"},
                {"name": "force"},
                {"name": "tensor", "field": "dipole"},
                {"name": "tensor", "field": "polarizability"},
                {"name": "born", "acoustic_sum_rule": True},
                {"name": "tensor", "field": "hyperpolarizability"},
            ],
        },
        "data": "default",
        "split": {"train": 0.8, "valid": 0.1, "test": 0.1, "seed": seed},
        "targets": TARGETS,
        "loss": "euclidean",
        "optimizer": {"lr": 2e-3},
        "scheduler": {"factor": 0.5, "patience": 8, "min_lr": 1e-5},
        "batch_size": 16,
        "epochs": epochs,
        "max_time_s": seconds,
        "seed": seed,
        "output_dir": output_dir,
    }


def unseen_molecule():
    """Hypofluorous acid, HOF: H, O, F like the data set, but not one of its 40 molecules."""
    import ase

    return ase.Atoms("HOF", positions=[[0.0, 0.0, 0.0], [0.966, 0.0, 0.0], [1.157, 1.418, 0.0]])


def _prepare_output(path: Path) -> None:
    if path.exists():
        if not (path / MARKER).exists():
            raise FileExistsError(f"{path}: exists and is not a demo run folder; pass another --output-dir")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("written by `tensorframe demo`; replaced by the next demo run\n")


def cmd_demo(args: argparse.Namespace) -> int:
    from tensorframe.checkpoint import load_model
    from tensorframe.config import ConfigError
    from tensorframe.datasets import load_default_dataset
    from tensorframe.model import build_model
    from tensorframe.scoring import format_table, write_report
    from tensorframe.train import parse_train_config, train

    backbone = args.backbone or ("etgnn" if "etgnn" in get_registry().items["backbone"] else "reference")
    output = Path(args.output_dir)
    config = parse_train_config(demo_config(backbone, args.seconds, args.epochs, args.seed, str(output)))
    try:
        build_model(config.model)  # names and options checked before anything is written
    except ConfigError as error:
        raise ConfigError(f"model.{error}") from None
    _prepare_output(output)
    samples = load_default_dataset()
    print(f"tensorframe demo: {backbone} on the embedded RHF/6-31G* molecule set ({len(samples)} structures), "
          f"targets {', '.join(TARGETS)}; at most {args.seconds:.0f} s of training")
    result = train(config, output_dir=output)
    print(f"\ntraining stopped ({result.stopped}) after {result.metrics['epochs']} epochs, "
          f"{result.metrics['train_time_s']:.0f} s; best epoch {result.metrics['best_epoch']}")

    model = load_model(output / "best.pt")
    split = json.loads((output / "split.json").read_text())
    test = [samples[i] for i in split["test"]]
    report = write_report(model, test, output / "test")
    print(f"\ntest set ({len(test)} structures never used in training): MAE beside the spread (std) of the labels")
    print(format_table(report))
    print(f"\nparity plots and metrics: {output / 'test'}; checkpoint: {output / 'best.pt'}")

    prediction = model.predict([unseen_molecule()])[0]
    np.set_printoptions(precision=3, suppress=True)
    print("\nreloaded model on HOF, a molecule not in the data set:")
    for field, value in prediction.items():
        print(f"{field} {value.shape} [{model.fields[field].units}]:\n{value}")
    residual = np.abs(prediction["born_charges"].sum(0)).max()
    print(f"acoustic sum rule |sum_k Z_k| = {residual:.1e}; polarizability eigenvalues "
          f"{np.linalg.eigvalsh(prediction['polarizability'])}")
    # HOF lies in the xy plane: every edge direction does too, so the out-of-plane components
    # come from the identity and c = a x b words of the default (complete) basis.
    print(f"out of the molecular plane (z): Z*_zz per atom (H, O, F) = {prediction['born_charges'][:, 2, 2]}, "
          f"alpha_zz = {prediction['polarizability'][2, 2]:.3f} (exactly 0 with basis: paper)")
    return 0
