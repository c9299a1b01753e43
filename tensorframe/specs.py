"""What plugins register: typed specs for backbones, heads and readers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

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


@dataclass(frozen=True)
class HeadSpec:
    """A head plugin: ``build(options, feature_dims) -> Head``."""

    name: str
    config: type[PluginConfig]
    build: Callable[[PluginConfig, FeatureDims], Head]
    description: str = ""


@dataclass(frozen=True)
class ReaderSpec:
    """A file reader: ``read(path, **options) -> list[Sample]``, chosen by ``extensions``
    (lower-case, with the dot, e.g. ``(".xyz", ".extxyz")``) or by ``name``."""

    name: str
    read: Callable[..., list[Sample]]
    extensions: tuple[str, ...] = ()
    description: str = ""

    def matches(self, path: str | Path) -> bool:
        lower = Path(path).name.lower()
        return any(lower.endswith(ext) for ext in self.extensions)
