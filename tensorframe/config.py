"""Explicit, validated configuration of a model: ``name`` picks a plugin, the rest are its options."""

from __future__ import annotations

import difflib
import math
import os
import types
import typing
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from tensorframe.graph.neighbors import DEFAULT_SHELL_TOLERANCE


class ConfigError(ValueError):
    """A configuration mistake, naming the field path and, where there are any, the valid choices."""


MODEL_MEMORY_ENV = "TENSORFRAME_MODEL_MEMORY_GB"
DEFAULT_MODEL_MEMORY_GB = 8.0
"""GiB of parameters and buffers a model may take unless ``TENSORFRAME_MODEL_MEMORY_GB`` (or
``build_model(..., memory_budget_gb=...)``) says otherwise: a config (or checkpoint) asking for
more is refused before the memory is allocated."""


def model_memory_budget_gb(override: float | None = None) -> float:
    """The model memory budget in GiB: ``override``, else ``$TENSORFRAME_MODEL_MEMORY_GB``, else 8.

    Raises:
        ConfigError: for a budget that is not a positive, finite number.
    """
    source, value = ("memory_budget_gb", override) if override is not None else (
        MODEL_MEMORY_ENV, os.environ.get(MODEL_MEMORY_ENV, "").strip() or DEFAULT_MODEL_MEMORY_GB)
    try:
        budget = float(value)
    except (TypeError, ValueError):
        budget = math.nan
    if not (math.isfinite(budget) and budget > 0):
        raise ConfigError(f"{source}: expected a positive number of GiB, got {value!r}")
    return budget


class PluginChoice(BaseModel):
    """``{"name": <plugin name>, **options}``; options are checked against the plugin's own model."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class LiftingConfig(BaseModel):
    """Triplet features made from edge features for backbones without triplet messages."""

    model_config = ConfigDict(extra="forbid")
    hidden: PositiveInt = 64
    out_dim: PositiveInt = 64
    num_angular: PositiveInt = 8


class ModelConfig(BaseModel):
    """A whole model: graph settings, one backbone, one or more heads.

    Example::

        {"cutoff": 5.0, "backbone": {"name": "reference"},
         "heads": [{"name": "born"}, {"name": "dielectric"}, {"name": "piezo"}, {"name": "force"}]}
    """

    model_config = ConfigDict(extra="forbid")
    cutoff: PositiveFloat = 5.0
    triplet_cutoff: PositiveFloat | None = Field(default=None, description="default: the cutoff")
    max_neighbors: PositiveInt | None = Field(
        default=None,
        description="cap per atom: the K nearest neighbours plus the rest of the K-th shell (whole shells, "
        "so exact under rotations and permutations; the count may exceed K); default: no cap",
    )
    neighbor_shell_tolerance: PositiveFloat = Field(
        default=DEFAULT_SHELL_TOLERANCE,
        allow_inf_nan=False,
        description="Å; with max_neighbors, neighbours at most this much farther than the K-th nearest count "
        "as its shell and are kept too",
    )
    conservative: bool = Field(
        default=False,
        description="forces, stress and virial as derivatives of the energy head: F = -dE/dr, "
        "sigma = (1/V) dE/d(strain), W = -dE/d(strain); needs an energy head and no head of its own for them",
    )
    pair_repulsion: bool = Field(
        default=False,
        description="add the ZBL screened nuclear repulsion to the energy at close contact (as MACE's "
        "pair_repulsion): keeps MD from pulling atoms together where the training data has no structures; "
        "needs conservative: true",
    )
    backbone: PluginChoice
    heads: list[PluginChoice] = Field(min_length=1)
    lifting: LiftingConfig = LiftingConfig()

    @field_validator("triplet_cutoff")
    @classmethod
    def _triplet_cutoff_within_cutoff(cls, value: float | None, info: ValidationInfo) -> float | None:
        cutoff = info.data.get("cutoff")  # absent when the cutoff itself was invalid
        if value is not None and cutoff is not None and value > cutoff:
            raise ValueError(f"triplet_cutoff ({value}) must not exceed cutoff ({cutoff})")
        return value

    @property
    def effective_triplet_cutoff(self) -> float:
        return self.triplet_cutoff if self.triplet_cutoff is not None else self.cutoff


def _model_at(model: Any, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class found at ``loc`` inside ``model`` (list items and Optional unwrapped)."""

    def unwrap(annotation: Any) -> Any:
        while typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
            annotation = next((a for a in typing.get_args(annotation) if a is not type(None)), None)
        return annotation

    current = unwrap(model)
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        current = unwrap(current.model_fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _explain(item: Any, model: type[BaseModel] | None) -> str:
    """Pydantic's message, with the valid keys for an unknown key and without 'Value error, '."""
    if item["type"] == "value_error" and "error" in item.get("ctx", {}):
        return str(item["ctx"]["error"])
    if item["type"] == "extra_forbidden" and model is not None:
        owner = _model_at(model, tuple(item["loc"][:-1]))
        if owner is not None:
            valid = sorted(owner.model_fields)
            close = difflib.get_close_matches(str(item["loc"][-1]), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return f"unknown option{hint} (valid options: {', '.join(valid)})"
    return item["msg"]


def format_validation_error(error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line per problem: ``path: message``, with the path as a user writes it.

    Given the ``model`` that was validated, an unknown key lists the valid ones.
    """
    lines = []
    for item in error.errors():
        path = prefix
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        lines.append(f"{path or '<config>'}: {_explain(item, model)}")
    return "; ".join(lines)


def parse_model_config(config: ModelConfig | dict[str, Any]) -> ModelConfig:
    if isinstance(config, ModelConfig):
        return config
    try:
        return ModelConfig.model_validate(config)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, model=ModelConfig)) from None
