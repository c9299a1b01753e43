"""What every subcommand shares: its parser (plain-text help, ``--debug``), checked argparse
types (a bad value is one argparse error line such as
``argument --symprec: expected a positive, finite number, got -1``, never a crash later),
the device check and the graph memory budget."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterable

DEVICE_PATTERN = re.compile(r"(auto|cpu|cuda(:\d+)?|mps)")
_ROLE = re.compile(r":[\w.:-]+:`(~?)([^`<]*?)\s*(?:<[^`>]*>)?`")  # :func:`a.b`, :class:`~a.B`, :ref:`text <target>`
_LITERAL = re.compile(r"``(.+?)``")
_INTERPRETED = re.compile(r"(?<![`\w])`([^`]+)`(?![`\w])")


def plain_text(text: str) -> str:
    """``text`` (a reST docstring) as plain text for ``--help``: roles become their text
    (``:func:`a.b``` -> ``a.b``; a ``~`` keeps the last part), literals lose their backticks,
    and the common leading indentation of the lines after the first is removed."""
    text = _ROLE.sub(lambda m: m.group(2).split(".")[-1] if m.group(1) else m.group(2), text)
    text = _LITERAL.sub(r"\1", text)
    text = _INTERPRETED.sub(r"\1", text)
    return text.strip("\n")


def add_command(subparsers, name: str, doc: str, help: str) -> argparse.ArgumentParser:
    """The parser of ``tensorframe NAME``: its description is ``doc`` as plain text (line
    breaks kept), and it accepts ``--debug`` after the command as well as before it."""
    parser = subparsers.add_parser(name, help=help, description=plain_text(doc),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    # SUPPRESS: an absent flag must not reset ``tensorframe --debug NAME ...``.
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    return parser


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (tolerances such as spglib's symprec, memory budgets in GiB)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive, finite number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive, finite number, got {text}")
    return value


def device_name(text: str) -> str:
    """A device request: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. Whether the
    machine has it is checked later by :func:`check_device`."""
    if DEVICE_PATTERN.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def add_device_option(parser: argparse.ArgumentParser, default: str | None, help: str) -> None:
    parser.add_argument("--device", type=device_name, default=default, metavar="DEVICE",
                        help=f"{help}: auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps")


def check_device(request: str) -> str:
    """The torch device for ``request`` (``auto`` resolved) on this machine.

    Raises:
        ValueError: one line naming ``--device`` when the machine lacks the device.
    """
    import torch

    if request == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if request.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {request}: CUDA is not available on this machine (torch {torch.__version__})")
        count = torch.cuda.device_count()
        index = int(request.partition(":")[2] or 0)
        if index >= count:
            raise ValueError(f"--device {request}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if request == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"--device mps: MPS is not available on this machine (torch {torch.__version__})")
    return request


def add_graph_memory_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--graph-memory", type=positive_float, default=None, metavar="GB",
                        help="memory budget in GiB for one batch's neighbour list and triplets (default: "
                             "TENSORFRAME_GRAPH_MEMORY_GB, else 8)")


def apply_graph_memory(gib: float | None) -> None:
    """Set the process's graph memory budget when ``--graph-memory`` was given."""
    if gib is not None:
        from tensorframe.graph.limits import set_graph_memory_budget

        set_graph_memory_budget(gib)


def parse_key_map(items: Iterable[str | Iterable[str]] | None) -> dict[str, str]:
    """``--key-map`` values -> ``{file_key: field}``.

    Each item is ``"FILE_KEY=FIELD"``, several of those comma-separated, or a list of such
    strings: ``["REF_forces=forces", "a=b,c=d"]`` -> ``{"REF_forces": "forces", "a": "b", "c": "d"}``.

    Two file keys may name the same field (files that label it differently); a structure
    that carries both is refused by its reader.

    Raises:
        ValueError: for an item that is not ``FILE_KEY=FIELD``, or a file key mapped to two fields.
    """
    flat = [item for group in items or [] for item in ([group] if isinstance(group, str) else group)]
    key_map: dict[str, str] = {}
    for item in (part.strip() for text in flat for part in text.split(",")):
        key, sep, name = (s.strip() for s in item.partition("="))
        if not sep or not key or not name or "=" in name:
            raise ValueError(f"--key-map: expected FILE_KEY=FIELD, got {item!r}")
        if key in key_map and key_map[key] != name:
            raise ValueError(f"--key-map: file key {key!r} is mapped twice, to {key_map[key]!r} and to {name!r}")
        key_map[key] = name
    return key_map


__all__ = [
    "add_command", "add_device_option", "add_graph_memory_option", "apply_graph_memory", "check_device", "device_name",
    "parse_key_map", "plain_text", "positive_float", "positive_int",
]
