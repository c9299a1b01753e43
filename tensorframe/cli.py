"""The ``tensorframe`` command line.

    tensorframe plugins              every backbone, head, field and reader, with its plugin
    tensorframe demo                 the README's main job
    tensorframe train CONFIG.yaml    train (also under torchrun for DistributedDataParallel)
    tensorframe evaluate CKPT DATA   per-field and per-component errors, parity plots
    tensorframe predict CKPT INPUT   predicted tensors as extended XYZ / JSON, phonopy BORN file

Errors print one line (a traceback with ``--debug``) and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tensorframe import __version__
from tensorframe.commands import COMMANDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tensorframe", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--version", action="version", version=f"tensorframe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"tensorframe.commands.{name}").register(sub)
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
