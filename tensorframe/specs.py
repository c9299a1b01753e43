"""What plugins register: typed specs for backbones, heads and readers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from tensorframe.fields import FieldSpec
from tensorframe.graph.neighbors import DEFAULT_SHELL_TOLERANCE

if TYPE_CHECKING:
    from tensorframe.backbones.base import Backbone
    from tensorframe.heads.base import Head
    from tensorframe.types import Sample


class PluginConfig(BaseModel):
    """Base of every plugin's options: unknown keys are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class FeatureDims:
    """Widths of the invariant features a backbone produces (``triplet`` None: no triplets)."""

    node: int
    edge: int
    triplet: int | None = None


@dataclass(frozen=True)
class GraphSettings:
    """The neighbour-list settings a model was built with (Å).

    ``max_neighbors`` caps each atom by whole shells: the K nearest plus every neighbour at
    most ``neighbor_shell_tolerance`` farther than the K-th (see
    :func:`tensorframe.graph.neighbor_list`).
    """

    cutoff: float
    triplet_cutoff: float
    max_neighbors: int | None = None
    neighbor_shell_tolerance: float = DEFAULT_SHELL_TOLERANCE


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone plugin.

    Attributes:
        name: the ``backbone.name`` users write in a config.
        config: pydantic model of the backbone's options (subclass :class:`PluginConfig`).
        build: ``build(options, graph_settings) -> Backbone``.
    """

    name: str
    config: type[PluginConfig]
    build: Callable[[PluginConfig, GraphSettings], Backbone]
    description: str = ""


FieldTable = Mapping[str, FieldSpec]
"""Registered fields by name (:attr:`tensorframe.registry.Registry.fields`): what head builders
and readers look field specs up in. They are given it; they never ask the global registry."""


@dataclass(frozen=True)
class HeadSpec:
    """A head plugin.

    Attributes:
        name: the ``heads[].name`` users write in a config.
        config: pydantic model of the head's options (subclass :class:`PluginConfig`).
        build: ``build(options, feature_dims, fields) -> Head``; ``fields`` is the field table
            of the registry the model is built from (:class:`FieldTable`), where a head looks
            up the spec of the field it predicts.
    """

    name: str
    config: type[PluginConfig]
    build: Callable[[PluginConfig, FeatureDims, FieldTable], Head]
    description: str = ""


@dataclass(frozen=True)
class ReaderSpec:
    """A file reader: ``read(path, *, fields, **options) -> list[Sample]``, chosen by
    ``extensions`` (lower-case, with the dot, e.g. ``(".xyz", ".extxyz")``) or by ``name``.
    ``fields`` is the field table (:class:`FieldTable`) of the registry reading the file: the
    fields labels may be stored as (:func:`tensorframe.io.read.read_structures` passes it)."""

    name: str
    read: Callable[..., list[Sample]]
    extensions: tuple[str, ...] = ()
    description: str = ""

    def matches(self, path: str | Path) -> bool:
        lower = Path(path).name.lower()
        return any(lower.endswith(ext) for ext in self.extensions)
