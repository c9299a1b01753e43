"""``tensorframe native build | status``: the compiled (C++/OpenMP) triplet kernels.

build compiles them for this environment, torch and source (the README's setup runs it; a
minute at most, no network); status says whether they are in use, or why not. Without them
the pure-PyTorch kernels run, with the same results to rounding; TENSORFRAME_NATIVE=0 turns
them off.
"""

from __future__ import annotations

import argparse

from tensorframe.commands.options import add_command
from tensorframe.ops import native


def register(subparsers) -> None:
    parser = add_command(subparsers, "native", __doc__, help="build the compiled triplet kernels, or show their status")
    parser.add_argument("action", choices=("build", "status"), help="build: compile them; status: are they in use")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's commands and output")
    parser.set_defaults(func=cmd_native)


def cmd_native(args: argparse.Namespace) -> int:
    if args.action == "build":
        try:
            path = native.build(verbose=args.verbose)
        except Exception as error:  # noqa: BLE001 - one line; the pure-PyTorch kernels stay usable
            raise RuntimeError(f"the compiled triplet kernels were not built ({native.compiler_complaint(error)}); "
                               "the pure-PyTorch kernels will be used") from error
        print(f"native triplet kernels built: {path}")
        return 0
    current = native.status()
    print(f"native triplet kernels: {'loaded from ' if current.loaded else 'not in use: '}{current.detail}")
    return 0
