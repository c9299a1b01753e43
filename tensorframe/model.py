"""TensorModel: backbone + (optional triplet lifting) + heads, and ``build_model``."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from tensorframe.backbones.base import Backbone
from tensorframe.config import ConfigError, ModelConfig, format_validation_error, parse_model_config
from tensorframe.conservative import check_conservative_heads, energy_derivatives
from tensorframe.fields import DERIVED_FIELDS, FieldSpec, builtin_field
from tensorframe.graph.collate import build_graph
from tensorframe.heads.base import Head
from tensorframe.io.convert import to_sample
from tensorframe.lifting import TripletLifting
from tensorframe.normalization import FieldScaling
from tensorframe.ops.repulsion import zbl_edge_energy
from tensorframe.ops.scatter import scatter_sum
from tensorframe.registry import PluginError, Registry, get_registry
from tensorframe.specs import FeatureDims, GraphSettings
from tensorframe.types import Graph, InvariantFeatures, Sample


class TensorModel(nn.Module):
    """Predicts every head's field from a batched :class:`Graph`.

    ``forward`` returns ``{field name: tensor}`` in physical units (each head's output
    through its :class:`FieldScaling`) with atom-level fields (N, 3, ...) and
    structure-level fields (B, 3, ...); ``predict`` takes structures and returns numpy.

    With ``config.conservative`` the model also predicts the derivatives of its energy head
    (:func:`tensorframe.conservative.energy_derivatives`): ``forces`` (N, 3) = -dE/dr,
    ``virial`` (B, 3, 3) = -dE/d(strain) and ``stress`` (B, 3, 3) = -virial / V, NaN for
    structures that are not periodic in all three directions. ``config.pair_repulsion`` adds
    the ZBL repulsion (:mod:`tensorframe.ops.repulsion`) to that energy.
    """

    def __init__(self, config: ModelConfig, backbone: Backbone, heads: Sequence[Head], lifting: TripletLifting | None) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.lifting = lifting
        names = [head.field.name for head in heads]
        for name in sorted({n for n in names if names.count(n) > 1}):
            where = ", ".join(f"heads[{i}]" for i, n in enumerate(names) if n == name)
            raise ConfigError(f"heads: {where} predict the same field {name!r}; give each field one head")
        self.heads = nn.ModuleDict({head.field.name: head for head in heads})
        self.scaling = nn.ModuleDict(
            {head.field.name: FieldScaling(head.field, keep_identity=getattr(head, "add_identity", False)) for head in heads}
        )
        self.derived_fields: dict[str, FieldSpec] = {}
        if config.pair_repulsion and not config.conservative:
            raise ConfigError("pair_repulsion: the ZBL repulsion enters the energy, and forces only through "
                              "-dE/dr; set conservative: true (with an energy head) to use it")
        if config.conservative:
            check_conservative_heads(self.heads)
            self.derived_fields = {name: builtin_field(name) for name in DERIVED_FIELDS}
            for name, field in self.derived_fields.items():
                self.scaling[name] = FieldScaling(field, derived=True)

    @property
    def graph_settings(self) -> GraphSettings:
        return GraphSettings(self.config.cutoff, self.config.effective_triplet_cutoff, self.config.max_neighbors,
                             self.config.neighbor_shell_tolerance)

    @property
    def fields(self) -> dict[str, FieldSpec]:
        """Every field the model predicts: its heads', then (conservative) the energy's derivatives."""
        return {**{name: head.field for name, head in self.heads.items()}, **self.derived_fields}

    @property
    def conservative(self) -> bool:
        return bool(self.derived_fields)

    def features(self, graph: Graph) -> InvariantFeatures:
        features = self.backbone(graph)
        if features.triplet is None and self.lifting is not None:
            features = replace(features, triplet=self.lifting(graph, features))
        return features

    def forward(self, graph: Graph, fields: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """``{field: prediction}`` for ``fields`` (default: all of :attr:`fields`).

        Only the heads asked for run. Derivatives of the energy are taken by autograd even
        under ``torch.no_grad`` (then detached); with gradients enabled they keep their graph
        (``create_graph``), so a loss on forces or stress trains the model.
        """
        wanted = list(self.fields) if fields is None else list(fields)
        unknown = [name for name in wanted if name not in self.fields]
        if unknown:
            raise KeyError(f"fields: the model does not predict {', '.join(unknown)} (it predicts: {', '.join(self.fields)})")
        derived = [name for name in wanted if name in self.derived_fields]
        heads = [name for name in self.heads if name in wanted or (derived and name == "energy")]
        if not derived:
            return self.head_outputs(graph, heads)

        outputs = energy_derivatives(partial(self.head_outputs, names=heads), graph,
                                     stress="stress" in derived or "virial" in derived)
        return {name: outputs[name] for name in wanted}

    def head_outputs(self, graph: Graph, names: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """The outputs of the heads ``names`` (default: all), without derivatives."""
        names = list(self.heads) if names is None else list(names)
        features = self.features(graph)
        outputs = {name: self.scaling[name](self.heads[name](graph, features), graph) for name in names}
        if self.config.pair_repulsion and "energy" in outputs:
            pair = zbl_edge_energy(graph.edge_len, graph.numbers.index_select(0, graph.idx_i),
                                   graph.numbers.index_select(0, graph.idx_j), graph.cutoff)
            outputs["energy"] = outputs["energy"] + scatter_sum(pair.double(), graph.edge_batch, graph.num_structures)
        return outputs

    def _reference(self) -> torch.Tensor:
        return next(self.parameters())

    def make_graph(self, samples: Sequence[Sample], device: torch.device | str | None = None) -> Graph:
        """A batched graph with this model's cutoffs, dtype and (by default) device."""
        reference = self._reference()
        settings = self.graph_settings
        return build_graph(
            samples, settings.cutoff, settings.triplet_cutoff, settings.max_neighbors,
            dtype=reference.dtype, device=device if device is not None else reference.device,
            shell_tolerance=settings.neighbor_shell_tolerance,
        )

    @torch.no_grad()
    def predict(self, structures: Iterable[Any], batch_size: int = 16) -> list[dict[str, np.ndarray]]:
        """One dict per structure of numpy arrays keyed by field name.

        Accepts ase.Atoms, pymatgen Structure/Molecule or Sample; e.g. ``forces`` (N, 3),
        ``born_charges`` (N, 3, 3), ``dielectric`` (3, 3), ``piezo`` (3, 3, 3); ``stress`` and
        ``virial`` (3, 3) of a conservative model (``stress`` for 3D-periodic structures only).
        """
        samples = [to_sample(s, index) for index, s in enumerate(structures)]
        was_training = self.training
        self.eval()
        results: list[dict[str, np.ndarray]] = []
        try:
            for start in range(0, len(samples), batch_size):
                chunk = samples[start : start + batch_size]
                graph = self.make_graph(chunk)
                outputs = self(graph)
                ptr = graph.ptr.tolist()
                fields = self.fields
                for b, sample in enumerate(chunk):
                    row = {}
                    for name, value in outputs.items():
                        if name == "stress" and not sample.pbc.all():
                            continue  # needs a volume: cells periodic in all three directions only
                        part = value[ptr[b] : ptr[b + 1]] if fields[name].level == "atom" else value[b]
                        row[name] = part.detach().cpu().numpy()
                    results.append(row)
        finally:
            self.train(was_training)
        return results


def _validate_options(spec_config: type, options: dict[str, Any], path: str):
    try:
        return spec_config.model_validate(options)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, prefix=path, model=spec_config)) from None


def build_model(config: ModelConfig | dict[str, Any], registry: Registry | None = None) -> TensorModel:
    """A randomly initialised :class:`TensorModel` from a config (dict or :class:`ModelConfig`).

    Raises:
        ConfigError: naming the field path (``heads[1].hidden``) and valid choices.
    """
    config = parse_model_config(config)
    registry = registry or get_registry()
    try:
        backbone_spec = registry.get("backbone", config.backbone.name)
    except PluginError as error:
        raise ConfigError(f"backbone.name: {error}") from None
    settings = GraphSettings(config.cutoff, config.effective_triplet_cutoff, config.max_neighbors,
                             config.neighbor_shell_tolerance)
    backbone = backbone_spec.build(_validate_options(backbone_spec.config, config.backbone.options, "backbone"), settings)
    dims: FeatureDims = backbone.feature_dims
    lift_dims = dims if dims.triplet is not None else replace(dims, triplet=config.lifting.out_dim)
    heads = []
    for index, choice in enumerate(config.heads):
        try:
            head_spec = registry.get("head", choice.name)
        except PluginError as error:
            raise ConfigError(f"heads[{index}].name: {error}") from None
        options = _validate_options(head_spec.config, choice.options, f"heads[{index}]")
        try:
            heads.append(head_spec.build(options, lift_dims))
        except (ValueError, PluginError) as error:
            raise ConfigError(f"heads[{index}]: {error}") from None
    needs_triplets = any(head.needs_triplets for head in heads)
    backbone.prune_outputs(triplet=needs_triplets)
    lifting = None
    if dims.triplet is None and needs_triplets:
        lift = config.lifting
        lifting = TripletLifting(dims.edge, out_dim=lift.out_dim, hidden=lift.hidden, num_angular=lift.num_angular)
    return TensorModel(config, backbone, heads, lifting)
