"""``tensorframe plugins``: every backbone, head, field and reader, with its plugin and distribution."""

from __future__ import annotations

import argparse
import sys

from tensorframe.registry import PluginInfo, get_registry


def register(subparsers) -> None:
    parser = subparsers.add_parser("plugins", help="list backbones, heads, fields and readers")
    parser.set_defaults(func=cmd_plugins)


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


def _header() -> PluginInfo:
    return PluginInfo(name="NAME", kind="KIND", plugin="PLUGIN", distribution="DISTRIBUTION", description="")


