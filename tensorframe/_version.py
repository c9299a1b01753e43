"""The version of tensorframe: written here only. ``pyproject.toml`` reads it at build time
(``[tool.setuptools.dynamic]``), so the installed metadata and ``tensorframe.__version__``
cannot disagree."""

__version__ = "0.1.0"
