"""``tensorframe train CONFIG.yaml``: train a model from a YAML config (see docs/training.md).

Run with ``torchrun --nproc_per_node=K -m tensorframe train CONFIG.yaml`` for data-parallel
training on K processes.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tensorframe.commands.options import (
    add_command,
    add_device_option,
    add_graph_memory_option,
    apply_graph_memory,
    check_device,
)


def register(subparsers) -> None:
    parser = add_command(subparsers, "train", __doc__, help="train a model from a YAML config")
    parser.add_argument("config", help="YAML training config")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last.pt")
    add_device_option(parser, None, "overrides the config's device")
    parser.add_argument("--output-dir", default=None, help="overrides the config's output_dir")
    add_graph_memory_option(parser)
    parser.set_defaults(func=cmd_train)


def training_device(request: str | None) -> str | None:
    """``--device`` checked for training (``None``: the config's); ``auto`` and a plain
    ``cuda`` are left to the trainer, which gives each torchrun process its own GPU.

    Raises:
        ValueError: for a device this machine lacks, or MPS (the trainer runs on CPU or CUDA).
    """
    if request is None:
        return None
    if request == "mps":
        raise ValueError("--device mps: training runs on cpu or cuda (MPS is supported by predict and evaluate)")
    check_device(request)
    return request


def cmd_train(args: argparse.Namespace) -> int:
    from tensorframe.config import ConfigError
    from tensorframe.train import Trainer, load_train_config

    device = training_device(args.device)
    apply_graph_memory(args.graph_memory)
    config = load_train_config(args.config)
    try:
        result = Trainer(config, base_dir=Path(args.config).parent, resume=args.resume, device=device,
                         output_dir=args.output_dir).run()
    except ConfigError as error:  # found only once the model is built: name the config file too
        raise ConfigError(f"{args.config}: {error}") from error
    if os.environ.get("RANK", "0") == "0":  # one summary under torchrun
        test = result.metrics.get("test", {})
        summary = "  ".join(f"{k} {v:.4g}" for k, v in test.items() if k.startswith("mae_"))
        print(f"stopped by {result.stopped} after {result.metrics['epochs']} epochs; best epoch "
              f"{result.metrics['best_epoch']}" + (f"; test {summary}" if summary else "") + f"; run in {result.output_dir}"
              + (f"; parity plots in {result.parity_dir}" if result.parity_dir else ""))
    return 0
