"""Explicit, validated configuration of a model: ``name`` picks a plugin, the rest are its options."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration mistake, naming the field path and, where there are any, the valid choices."""


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
    max_neighbors: PositiveInt | None = None
    backbone: PluginChoice
    heads: list[PluginChoice] = Field(min_length=1)
    lifting: LiftingConfig = LiftingConfig()

    @model_validator(mode="after")
    def _triplet_cutoff_within_cutoff(self) -> ModelConfig:
        if self.triplet_cutoff is not None and self.triplet_cutoff > self.cutoff:
            raise ValueError(f"triplet_cutoff ({self.triplet_cutoff}) must not exceed cutoff ({self.cutoff})")
        return self

    @property
    def effective_triplet_cutoff(self) -> float:
        return self.triplet_cutoff if self.triplet_cutoff is not None else self.cutoff


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``path: message``, with the path as a user writes it."""
    lines = []
    for item in error.errors():
        path = prefix
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        lines.append(f"{path or '<config>'}: {item['msg']}")
    return "; ".join(lines)


def parse_model_config(config: ModelConfig | dict[str, Any]) -> ModelConfig:
    if isinstance(config, ModelConfig):
        return config
    try:
        return ModelConfig.model_validate(config)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None
