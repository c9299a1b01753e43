"""The ``tensorframe`` command line.

    tensorframe plugins              every backbone, head, field and reader, with its plugin
    tensorframe demo                 the README's main job
    tensorframe train CONFIG.yaml    train (also under torchrun for DistributedDataParallel)
    tensorframe evaluate CKPT DATA   per-field and per-component errors, parity plots
    tensorframe predict CKPT INPUT   predicted tensors as extended XYZ / JSON, phonopy BORN file
    tensorframe native build|status  the compiled triplet kernels (setup builds them)

Errors print one line and exit with status 2; ``--debug`` (before or after the command)
shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tensorframe import __version__
from tensorframe.commands import COMMANDS
from tensorframe.commands.options import plain_text


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``tensorframe`` with every subcommand of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="tensorframe", description=plain_text(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--version", action="version", version=f"tensorframe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"tensorframe.commands.{name}").register(sub)
    return parser


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (its lines joined by "; "), or its type's name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as error:  # noqa: BLE001 - one clear line unless --debug
        if args.debug:
            raise
        print(f"tensorframe {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
