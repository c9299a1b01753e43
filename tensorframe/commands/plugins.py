"""``tensorframe plugins``: every backbone, head, field and reader, with its plugin and distribution.

Fields also show their units and the shape of one prediction (N: the number of atoms).
Descriptions are shortened to the terminal width (100 columns when there is no terminal);
--full prints them whole. A plugin that failed to load is one "error:" line on stderr and the
exit status is 1; everything else is still listed.
"""

from __future__ import annotations

import argparse
import shutil
import sys

from tensorframe.commands.options import add_command
from tensorframe.fields import FieldSpec
from tensorframe.registry import PluginInfo, Registry, get_registry

COLUMNS = ("kind", "name", "plugin", "distribution")
DEFAULT_WIDTH = 100


def register(subparsers) -> None:
    parser = add_command(subparsers, "plugins", __doc__, help="list backbones, heads, fields and readers")
    parser.add_argument("--full", action="store_true", help="do not shorten descriptions to the terminal width")
    parser.set_defaults(func=cmd_plugins)


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = get_registry()
    width = None if args.full else shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    for line in plugin_table(registry, width):
        print(line)
    for problem in registry.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if registry.problems else 0


def plugin_table(registry: Registry, width: int | None = DEFAULT_WIDTH) -> list[str]:
    """The lines of the listing: a header, then one row per item, descriptions cut to ``width``
    characters (None: never cut)."""
    rows = registry.rows()
    header = PluginInfo(name="NAME", kind="KIND", plugin="PLUGIN", distribution="DISTRIBUTION")
    widths = [max(len(getattr(r, a)) for r in [header, *rows]) for a in COLUMNS]
    descriptions = describe(rows, registry.items["field"])
    lines = []
    for row, description in [(header, ""), *zip(rows, descriptions, strict=True)]:
        cells = "  ".join(getattr(row, a).ljust(w) for a, w in zip(COLUMNS, widths, strict=True))
        lines.append(f"{cells}  {_shorten(description, None if width is None else width - len(cells) - 2)}".rstrip())
    return lines


def describe(rows: list[PluginInfo], fields: dict[str, FieldSpec]) -> list[str]:
    """Each row's description; a field's starts with its units in brackets and the shape of
    one prediction: ``[e] (N,3,3) Born effective charge ...``."""
    described = []
    for row in rows:
        field = fields.get(row.name) if row.kind == "field" else None
        prefix = f"[{field.units}] {field_shape(field)} " if field is not None else ""
        described.append(prefix + row.description)
    return described


def field_shape(field: FieldSpec) -> str:
    """The shape of one prediction: ``(N,3,3)`` per atom (N atoms), ``(3,3)`` per structure,
    ``scalar`` for a structure-level scalar."""
    dims = ["N", *map(str, field.shape)] if field.level == "atom" else list(map(str, field.shape))
    if not dims:
        return "scalar"
    return f"({dims[0]},)" if len(dims) == 1 else f"({','.join(dims)})"


def _shorten(text: str, room: int | None) -> str:
    """``text`` cut to ``room`` characters with a final "…" (at least 20 are always kept)."""
    if room is None or len(text) <= max(room, 20):
        return text
    return text[: max(room, 20) - 1].rstrip() + "…"
