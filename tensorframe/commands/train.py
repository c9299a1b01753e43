"""``tensorframe train CONFIG.yaml``: train a model from a YAML config (see docs/training.md).

Run with ``torchrun --nproc_per_node=K -m tensorframe train CONFIG.yaml`` for data-parallel
training on K processes.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a model from a YAML config",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML training config")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last.pt")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="overrides the config's device")
    parser.add_argument("--output-dir", default=None, help="overrides the config's output_dir")
    # SUPPRESS: an absent flag must not reset ``tensorframe --debug train ...``.
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    parser.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from tensorframe.config import ConfigError
    from tensorframe.train import Trainer, load_train_config

    config = load_train_config(args.config)
    try:
        result = Trainer(config, base_dir=Path(args.config).parent, resume=args.resume, device=args.device,
                         output_dir=args.output_dir).run()
    except ConfigError as error:  # found only once the model is built: name the config file too
        raise ConfigError(f"{args.config}: {error}") from error
    if os.environ.get("RANK", "0") == "0":  # one summary under torchrun
        test = result.metrics.get("test", {})
        summary = "  ".join(f"{k} {v:.4g}" for k, v in test.items() if k.startswith("mae_"))
        print(f"stopped by {result.stopped} after {result.metrics['epochs']} epochs; best epoch "
              f"{result.metrics['best_epoch']}" + (f"; test {summary}" if summary else "") + f"; run in {result.output_dir}")
    return 0
