"""The plugin contract: hooks a tensorframe plugin may implement.

A plugin is a module (or object) with functions decorated by ``tensorframe.hookimpl``,
exposed through the entry-point group ``tensorframe``::

    [project.entry-points.tensorframe]
    mybackbone = "my_package.plugin"

Each hook returns a list of the spec type in its annotation (an empty list or ``None`` for
nothing); anything else (a string, a single spec, an object without ``.name``, another
kind's spec) is reported as a problem of the plugin and skipped, see
:mod:`tensorframe.registry`. The built-in backbones, heads, fields and readers are
registered through the same hooks.
"""

from __future__ import annotations

import pluggy

from tensorframe.fields import FieldSpec
from tensorframe.specs import BackboneSpec, HeadSpec, ReaderSpec

hookspec = pluggy.HookspecMarker("tensorframe")
hookimpl = pluggy.HookimplMarker("tensorframe")


@hookspec
def tensorframe_register_backbones() -> list[BackboneSpec]:
    """Backbones this plugin provides: invariant networks mapping a Graph to InvariantFeatures."""


@hookspec
def tensorframe_register_heads() -> list[HeadSpec]:
    """Heads this plugin provides: modules mapping InvariantFeatures to a tensor field, each
    built as ``build(options, feature_dims, fields)`` with ``fields`` the field table of the
    registry the model is built from."""


@hookspec
def tensorframe_register_fields() -> list[FieldSpec]:
    """Target fields this plugin defines (name, level, symmetry formula, parity, units)."""


@hookspec
def tensorframe_register_readers() -> list[ReaderSpec]:
    """File readers this plugin provides, producing Samples with labels; each is called as
    ``read(path, *, fields, **options)`` with ``fields`` the registry's field table."""
