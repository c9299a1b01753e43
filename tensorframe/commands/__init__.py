"""Subcommands of ``tensorframe``: one module each, with ``register(subparsers)``."""

COMMANDS = ("plugins", "demo", "train", "evaluate", "predict", "native")
