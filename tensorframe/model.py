"""TensorModel: backbone + (optional triplet lifting) + heads, and ``build_model``."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn
from torch.overrides import TorchFunctionMode

from tensorframe.backbones.base import Backbone
from tensorframe.config import (
    ConfigError,
    ModelConfig,
    format_validation_error,
    model_memory_budget_gb,
    parse_model_config,
)
from tensorframe.conservative import check_conservative_heads, energy_derivatives
from tensorframe.fields import DERIVED_FIELDS, FieldSpec, builtin_field
from tensorframe.graph.cache import GraphCache, GraphRecipe
from tensorframe.graph.neighbors import well_separated_small_molecules
from tensorframe.graph.padding import pad_graph
from tensorframe.heads.base import Head
from tensorframe.io.convert import to_sample
from tensorframe.io.validation import MAX_ATOMIC_NUMBER, MIN_DISTANCE, InputError, check_structure
from tensorframe.lifting import TripletLifting
from tensorframe.normalization import FieldScaling
from tensorframe.ops.repulsion import zbl_edge_energy
from tensorframe.ops.scatter import scatter_sum
from tensorframe.outputs import split_by_structure
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
            {head.field.name: FieldScaling(head.field, keep_identity=head.add_identity) for head in heads}
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

    backbone_autocast: torch.dtype | None = None
    """A lower precision (``torch.bfloat16``) for the backbone's matrix products, under
    ``torch.autocast`` on the graph's device, or None (the model's dtype throughout). Only the
    backbone: its invariant features are cast back to the model's dtype before the lifting and
    the heads, whose products of edge directions and sums stay in full precision. Not saved
    with the model; set it with :meth:`backbone_precision`."""

    autocast_padding: bool = True
    """Under :attr:`backbone_autocast` on a CPU, the backbone runs on the graph padded to a few
    fixed sizes (:func:`tensorframe.graph.padding.pad_graph`): oneDNN builds a bfloat16 kernel
    per matrix shape, and without padding every batch pays that build again. The features of
    the real atoms, edges and triplets are unchanged. Set by :meth:`backbone_precision`."""

    @contextmanager
    def backbone_precision(self, dtype: torch.dtype | None, *, padding: bool = True) -> Iterator[None]:
        """Run the backbone's matrix products in ``dtype`` (e.g. ``torch.bfloat16``; None: the
        model's dtype) inside the block (see :attr:`backbone_autocast`); ``padding``: on a CPU,
        on a graph padded to bucket sizes (see :attr:`autocast_padding`)."""
        saved = self.backbone_autocast, self.autocast_padding
        self.backbone_autocast, self.autocast_padding = dtype, padding
        try:
            yield
        finally:
            self.backbone_autocast, self.autocast_padding = saved

    def features(self, graph: Graph) -> InvariantFeatures:
        if self.backbone_autocast is None:
            features = self.backbone(graph)
        else:
            device = graph.edge_vec.device.type
            padded = pad_graph(graph) if self.autocast_padding and device == "cpu" and graph.num_nodes else None
            with torch.autocast(device, dtype=self.backbone_autocast):
                features = self.backbone(padded.graph) if padded is not None else self.backbone(graph)
            if padded is not None:
                features = padded.unpad(features)
            dtype = graph.edge_vec.dtype
            features = InvariantFeatures(
                node=features.node.to(dtype), edge=features.edge.to(dtype),
                triplet=features.triplet.to(dtype) if features.triplet is not None else None)
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

    def graph_recipe(self) -> GraphRecipe:
        """This model's graph settings, dtype and activation bytes (for the memory budget), as
        plain data that builds graphs without the model (e.g. in data-loader workers)."""
        settings = self.graph_settings
        return GraphRecipe(settings.cutoff, settings.triplet_cutoff, settings.max_neighbors, self._reference().dtype,
                           settings.neighbor_shell_tolerance, self.activation_bytes())

    def make_graph(self, samples: Sequence[Sample], device: torch.device | str | None = None,
                   names: Sequence[str] | None = None, cache: GraphCache | None = None,
                   keys: Sequence[int] | None = None) -> Graph:
        """A batched graph with this model's cutoffs, dtype and (by default) device; ``names``
        (one per sample, e.g. ``"data.xyz: structure 3"``) label errors. With a ``cache`` and
        ``keys`` (one per sample, e.g. dataset indices), topologies come from the cache (filled
        on first use; emptied first if it holds other graph settings): the same graph."""
        device = device if device is not None else self._reference().device
        return self.graph_recipe().build(samples, device, names, cache, keys)

    ALIVE_ACTIVATIONS = 4
    """Feature-sized tensors per edge (triplet) assumed alive at once in a forward pass."""

    def activation_bytes(self) -> tuple[float, float]:
        """Estimated bytes of activations per edge and per triplet in a forward pass: the
        backbone's edge and triplet widths (or the lifting's), plus the hidden widths of the
        heads' edge and triplet coefficient MLPs, :data:`ALIVE_ACTIVATIONS` times, at the
        model's element size. An estimate for the graph memory budget, not a measurement.
        """
        dims = self.backbone.feature_dims
        lift = self.config.lifting
        if dims.triplet is not None:
            triplet_width = dims.triplet
        else:
            triplet_width = lift.out_dim + lift.hidden if self.lifting is not None else 0
        edge_width = dims.edge
        for head in self.heads.values():
            edge_mlp, triplet_mlp = getattr(head, "edge_coefficients", None), getattr(head, "triplet_coefficients", None)
            edge_width += edge_mlp[0].out_features if edge_mlp is not None else 0
            triplet_width += triplet_mlp[0].out_features if triplet_mlp is not None else 0
        size = self._reference().element_size() * self.ALIVE_ACTIVATIONS
        return float(edge_width * size), float(triplet_width * size)

    @torch.no_grad()
    def predict(self, structures: Iterable[Any], batch_size: int = 16,
                min_distance: float = MIN_DISTANCE, names: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
        """One dict per structure of numpy arrays keyed by field name.

        Accepts ase.Atoms, pymatgen Structure/Molecule or Sample; e.g. ``forces`` (N, 3),
        ``born_charges`` (N, 3, 3), ``dielectric`` (3, 3), ``piezo`` (3, 3, 3); ``stress`` and
        ``virial`` (3, 3) of a conservative model (``stress`` for 3D-periodic structures only).

        Every structure is checked first, as the file readers check theirs
        (:func:`tensorframe.io.validation.check_structure`): atomic numbers 1-118 and within the
        backbone's embedding (``backbone.max_z``), a usable cell, and no two atoms closer than
        ``min_distance`` Å (0 turns that check off, for structures with legitimately close atoms).
        ``names`` (one per structure, e.g. ``"data.xyz: structure 3"``; default ``"structure
        <i>"``) start every error message.

        Raises:
            TypeError: naming the structure index, for an object that is not a structure.
            InputError: naming the structure index (``structure 2: atoms 0 and 1 overlap, ...``).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        samples = self.checked_samples(structures, min_distance, names)
        names = list(names) if names is not None else [f"structure {i}" for i in range(len(samples))]
        # eval() walks and sets every submodule (~0.1 ms for the demo model): only when one trains.
        was_training = self.training
        switch = any(module.training for module in self.modules())
        if switch:
            self.eval()
        results: list[dict[str, np.ndarray]] = []
        try:
            for start in range(0, len(samples), batch_size):
                chunk = samples[start : start + batch_size]
                graph = self.make_graph(chunk, names=names[start : start + batch_size])
                # One numpy conversion per field, then numpy views per structure (slicing numpy
                # is cheaper than slicing tensors and converting each slice).
                outputs = {name: value.detach().cpu().numpy() for name, value in self(graph).items()}
                rows = split_by_structure(outputs, self.fields, graph.ptr)
                for sample, row in zip(chunk, rows, strict=True):
                    if not sample.pbc.all():
                        row.pop("stress", None)  # needs a volume: cells periodic in all three directions only
                    results.append({name: np.asarray(value) for name, value in row.items()})  # 0-d: array, not scalar
        finally:
            if switch:
                self.train(was_training)
        return results

    def checked_samples(self, structures: Iterable[Any], min_distance: float = MIN_DISTANCE,
                        names: Sequence[str] | None = None) -> list[Sample]:
        """``structures`` as Samples, each checked as :meth:`predict` describes.

        Raises:
            TypeError: ``structure <i>: expected ase.Atoms, ...`` for an object of another type.
            InputError: ``structure <i>: ...``, for the first structure that fails a check.
        """
        max_z = embedding_limit(self.backbone)
        samples: list[Sample] = []
        failure: Exception | None = None
        for index, structure in enumerate(structures):
            try:
                samples.append(to_sample(structure, index))
            except (TypeError, ValueError) as error:  # raised in its turn, after the checks before it
                failure = error
                break
        # Small molecules: the overlap test of a whole batch in one pass; only those it flags
        # are checked one by one (which names the atoms).
        separated = well_separated_small_molecules(samples, min_distance) if min_distance > 0 else set()
        for index, sample in enumerate(samples):
            where = names[index] if names is not None else f"structure {index}"
            check_structure(sample, where, 0.0 if index in separated else min_distance)
            problem = unembedded_element(sample.numbers, max_z)
            if problem is not None:
                raise InputError(f"{where}: {problem}")
        if failure is not None:
            raise failure
        return samples


def embedding_limit(backbone: Backbone) -> int | None:
    """The largest atomic number a backbone embeds: its ``max_z`` (:attr:`Backbone.max_z`), else
    the size of its smallest ``nn.Embedding`` minus one, else None (unknown)."""
    if backbone.max_z is not None:
        return backbone.max_z
    sizes = [m.num_embeddings for m in backbone.modules() if isinstance(m, nn.Embedding)]
    return min(sizes) - 1 if sizes else None


def unembedded_element(numbers: np.ndarray, max_z: int | None) -> str | None:
    """What is wrong with the first atom whose atomic number is outside 1..``max_z`` (the
    backbone's :func:`embedding_limit`; 118 when unknown), or None when every atom is inside.

    Shapes: numbers (N,) int
    """
    upper = max_z if max_z is not None else MAX_ATOMIC_NUMBER
    bad = np.flatnonzero((numbers < 1) | (numbers > upper))
    if not bad.size:
        return None
    atom = int(bad[0])
    return f"atom {atom} has atomic number {int(numbers[atom])}, outside the backbone's elements 1..{upper} (backbone.max_z)"


def _validate_options(spec_config: type, options: dict[str, Any], path: str):
    try:
        return spec_config.model_validate(options)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, prefix=path, model=spec_config)) from None


def build_model(config: ModelConfig | dict[str, Any], registry: Registry | None = None,
                memory_budget_gb: float | None = None) -> TensorModel:
    """A randomly initialised :class:`TensorModel` from a config (dict or :class:`ModelConfig`),
    with the backbones, heads and fields of ``registry`` (default: the installed plugins,
    :func:`~tensorframe.registry.get_registry`); head builders get ``registry.fields``.

    The model is planned first (:func:`plan_model`: every large tensor on the meta device, so
    nothing big is allocated) and its size checked against the model memory budget
    (``memory_budget_gb``, else the environment variable ``TENSORFRAME_MODEL_MEMORY_GB``, else
    8 GiB) before any large allocation. A component that cannot be planned on the meta device
    is built for real and checked after allocation.

    Raises:
        ConfigError: naming the field path (``heads[1].hidden``) and valid choices, or a model
            over the memory budget (naming its largest part and option).
    """
    config = parse_model_config(config)
    registry = registry or get_registry()
    planned = plan_model(config, registry)
    if planned is not None:
        check_model_memory(planned, memory_budget_gb)
        return materialize_model(planned, registry)
    model = assemble_model(config, registry)
    check_model_memory(model, memory_budget_gb)
    return model


def assemble_model(config: ModelConfig, registry: Registry) -> TensorModel:
    """Backbone, heads and (when heads need triplets the backbone lacks) the lifting, with no
    size check: use :func:`build_model`."""
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
            heads.append(head_spec.build(options, lift_dims, registry.fields))
        except (ValueError, PluginError) as error:
            raise ConfigError(f"heads[{index}]: {error}") from None
    needs_triplets = any(head.needs_triplets for head in heads)
    backbone.prune_outputs(triplet=needs_triplets)
    lifting = None
    if dims.triplet is None and needs_triplets:
        lift = config.lifting
        lifting = TripletLifting(dims.edge, out_dim=lift.out_dim, hidden=lift.hidden, num_angular=lift.num_angular)
    return TensorModel(config, backbone, heads, lifting)


META_MIN_ELEMENTS = 1 << 20
"""Tensors created while planning a model with at least this many elements (4 MiB in float32)
go to the meta device; smaller ones are real, so components that compute with small tensors
while they are built (a head's tensor basis) still build."""


class _LargeTensorsOnMeta(TorchFunctionMode):
    """Factory calls without an explicit device (``torch.empty``, ``zeros``, ``randn``, ...)
    return meta tensors when the result has at least ``min_elements`` elements."""

    def __init__(self, min_elements: int = META_MIN_ELEMENTS) -> None:
        super().__init__()
        self.min_elements = min_elements
        self.constructors = _factory_functions()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's signature
        kwargs = kwargs or {}
        if func in self.constructors and kwargs.get("device") is None:
            probe = func(*args, **{**kwargs, "device": "meta"})  # shape only: allocates nothing
            if isinstance(probe, torch.Tensor) and probe.numel() >= self.min_elements:
                return probe
        return func(*args, **kwargs)


def _factory_functions() -> set[Any]:
    try:
        from torch.utils._device import _device_constructors  # what torch.device("meta") redirects

        return set(_device_constructors())
    except (ImportError, AttributeError):  # pragma: no cover - private torch API moved
        names = ("empty", "empty_strided", "zeros", "ones", "full", "rand", "randn", "randint", "randperm",
                 "arange", "linspace", "logspace", "eye", "tensor", "as_tensor")
        return {getattr(torch, name) for name in names if hasattr(torch, name)}


def plan_model(config: ModelConfig, registry: Registry) -> TensorModel | None:
    """The model with its large tensors (:data:`META_MIN_ELEMENTS`) on the meta device: its
    parameter names, shapes and bytes at the cost of a small model; None when a component
    cannot be built that way (it computes with a large tensor while it is built).

    A plan with no meta tensor is the model itself (the random generator advanced as by
    :func:`assemble_model`); otherwise the generator is restored, so :func:`materialize_model`
    gives the weights a plain build gives.

    Raises:
        ConfigError: as :func:`assemble_model`.
    """
    state = torch.random.get_rng_state()
    try:
        with _LargeTensorsOnMeta():
            planned = assemble_model(config, registry)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - any component failure: build for real and check after
        torch.random.set_rng_state(state)
        return None
    if has_meta_tensors(planned):
        torch.random.set_rng_state(state)
    return planned


def has_meta_tensors(model: nn.Module) -> bool:
    return any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))


def materialize_model(planned: TensorModel, registry: Registry) -> TensorModel:
    """The real model of a plan from :func:`plan_model` (the plan itself when it has no meta tensor)."""
    return planned if not has_meta_tensors(planned) else assemble_model(planned.config, registry)


def check_model_memory(model: TensorModel, budget_gb: float | None = None) -> None:
    """Refuse a model whose parameters and buffers take more than the budget (GiB; default
    :func:`tensorframe.config.model_memory_budget_gb`). Works on planned (meta) models.

    Raises:
        ConfigError: ``<part>: the model would have N parameters (X GiB in float32), over the
            B GiB model budget; ...``, naming the part holding most bytes and its largest option.
    """
    budget = model_memory_budget_gb(budget_gb)
    tensors = list(itertools.chain(model.named_parameters(), model.named_buffers()))
    total = sum(t.numel() * t.element_size() for _, t in tensors)
    if total <= budget * 2**30:
        return
    per_part: dict[str, int] = {}
    for name, tensor in tensors:
        part = ".".join(name.split(".")[:2]) if name.startswith("heads.") else name.split(".")[0]
        per_part[part] = per_part.get(part, 0) + tensor.numel() * tensor.element_size()
    largest = max(per_part, key=per_part.__getitem__)
    path, options = _config_part(model, largest)
    sizes = {k: v for k, v in options.items() if isinstance(v, int) and not isinstance(v, bool)}
    hint = f" (largest size option: {path}.{max(sizes, key=sizes.__getitem__)}={max(sizes.values())})" if sizes else ""
    parameters = sum(p.numel() for p in model.parameters())
    dtype = str(next(model.parameters(), torch.empty(0)).dtype).removeprefix("torch.")
    raise ConfigError(
        f"{path}: the model would have {parameters:,} parameters ({total / 2**30:,.1f} GiB in {dtype}), over the "
        f"{budget:g} GiB model budget; most are in {path}{hint}; shrink the model or raise "
        f"TENSORFRAME_MODEL_MEMORY_GB"
    )


def _config_part(model: TensorModel, part: str) -> tuple[str, dict[str, Any]]:
    """The config path (``backbone``, ``heads[1]``, ``lifting``) and options of a top-level part."""
    config = model.config
    if part == "backbone":
        return "backbone", config.backbone.options
    if part.startswith("heads."):
        index = list(model.heads).index(part.removeprefix("heads."))
        return f"heads[{index}]", config.heads[index].options
    if part == "lifting":
        return "lifting", config.lifting.model_dump()
    return "model", {}
