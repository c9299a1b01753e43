"""Completeness of a head on degenerate environments (docs/physics.md, "Completeness on degenerate
environments").

Equivariance says what a head may not do; completeness says what it must be able to do. An
environment with point group G allows exactly the G-invariant subspace of the field's tensor
space (Neumann's principle). A head is *complete* on that environment when the span of its
outputs, over all invariant coefficient functions, is that whole subspace::

    from tensorframe.testing import CHECK_DIMS, assert_complete
    from tensorframe.testing.completeness import water

    head = my_builder(options, CHECK_DIMS)
    assert_complete(head, water())   # AssertionError: ... atom 0 (Z=8), site group C2v: span 2 of 3

How the span is measured (:func:`completeness_report`):

1. G: for a molecule, pymatgen's ``PointGroupAnalyzer`` (operations about the centre of
   mass; linear molecules get an explicit C_nv / D_nh with an n = 12 rotation about the axis,
   see :func:`environment_symmetry`); for a crystal, ``SpacegroupAnalyzer`` through
   :func:`tensorframe.testing.invariance.point_group_operations`. Structure-level fields use the
   point group of the whole structure, atom-level fields the site group of each atom (the
   operations mapping it to itself, modulo lattice translations).
2. Required dimension: :func:`invariant_subspace_dim`, the trace of the group average of
   e3nn's ``CartesianTensor(formula).D_from_matrix`` (float64), times det R for fields whose
   parity is not the natural (-1)^rank.
3. Span: the environment's graph (float64) is tiled into copies, and every copy gets its own
   *orbit-invariant* random features: random Fourier features ``sin(W d + b)`` of invariant
   descriptors ``d`` that are equal on symmetry-equivalent atoms, edges and triplets (atomic
   number, radial fingerprints per species, a second round of them, edge lengths, angular
   fingerprints, triplet cosines). The head is re-initialised (``reset_parameters``) before
   every forward pass. With at least 3x the formula's dimension of such samples, the
   outputs' rows of an atom (or of the structure), projected onto the formula, have the rank
   of the head's span. Rows are normalised and the rank counts singular values above
   ``rtol`` (default :data:`SVD_RTOL` = 1e-7) times the largest.
4. Sanity: the outputs' largest component outside the G-invariant subspace, relative to their
   largest component, must stay below ``leak_tol`` (default :data:`LEAK_TOL` = 1e-8; it is
   ~1e-15 for an equivariant head). Above it the head is not equivariant, or the geometry is
   not exactly symmetric (build it from exact coordinates).

Reference environments (exact geometries, float64 :class:`~tensorframe.types.Sample`):
:data:`STANDARD_ENVIRONMENTS`, with :data:`PLANAR_ENVIRONMENTS` and
:data:`LINEAR_ENVIRONMENTS` naming the degenerate ones.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tensorframe.fields import FieldSpec
from tensorframe.ops.symmetry import subspace_dim, symmetric_projector
from tensorframe.registry import PluginError, Registry, get_registry
from tensorframe.specs import FeatureDims
from tensorframe.testing.environments import (
    LINEAR_ENVIRONMENTS,
    PLANAR_ENVIRONMENTS,
    STANDARD_ENVIRONMENTS,
    bcc,
    benzene,
    carbon_dioxide,
    ethylene,
    generic_molecule,
    hbn_monolayer,
    hydrogen_cyanide,
    hypofluorous_acid,
    rock_salt,
    water,
)
from tensorframe.testing.point_groups import (
    LINEAR_AXIS_ORDER,
    EnvironmentSymmetry,
    environment_symmetry,
    generate_group,
    invariant_projector,
    invariant_subspace_dim,
    point_group_name,
)
from tensorframe.types import Graph, InvariantFeatures, Sample

__all__ = [
    "CHECK_DIMS",
    "LEAK_TOL",
    "LINEAR_AXIS_ORDER",
    "LINEAR_ENVIRONMENTS",
    "PLANAR_ENVIRONMENTS",
    "STANDARD_ENVIRONMENTS",
    "SVD_RTOL",
    "CompletenessReport",
    "EnvironmentSymmetry",
    "RegisteredHeadsCompleteness",
    "SiteCompleteness",
    "assert_complete",
    "assert_registered_heads_complete",
    "bcc",
    "benzene",
    "carbon_dioxide",
    "completeness_report",
    "environment_symmetry",
    "ethylene",
    "generate_group",
    "generic_molecule",
    "hbn_monolayer",
    "hydrogen_cyanide",
    "hypofluorous_acid",
    "invariant_projector",
    "invariant_subspace_dim",
    "point_group_name",
    "rock_salt",
    "water",
]

CHECK_DIMS = FeatureDims(node=16, edge=16, triplet=16)
"""Feature widths the checker feeds a head by default (build heads with these)."""

SVD_RTOL = 1e-7
"""Relative singular-value threshold of the span's rank (rows normalised to unit length)."""

LEAK_TOL = 1e-8
"""Largest allowed output component outside the G-invariant subspace, relative to the largest
output component."""

_ZERO_ROW = 1e-10  # output rows shorter than this times the output scale are zero (they vanish by symmetry)


# ---------------------------------------------------------------- orbit-invariant features

_GAMMAS = (0.6, 1.2, 2.4, 4.8)  # 1/Å, radial fingerprints exp(-gamma r)


def _descriptors(graph: Graph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Invariant descriptors equal on symmetry-equivalent atoms, edges and triplets.

    node: one-hot species, per-species radial fingerprints sum_nb exp(-gamma r), and a second
    round (neighbours' fingerprints weighted by exp(-r)); edge: both ends' species and node
    descriptors, the length, and angular fingerprints over the triplets the edge is in (as
    the edge in and as the edge out); triplet: both edges' descriptors and powers of cos.

    Shapes: -> node (N, Dn), edge (E, De), triplet (T, Dt), each column standardised
    """
    numbers = graph.numbers
    species = torch.unique(numbers)
    onehot = (numbers[:, None] == species[None, :]).to(torch.float64)
    r = graph.edge_len.to(torch.float64)
    gammas = torch.tensor(_GAMMAS, dtype=torch.float64)
    radial = torch.exp(-r[:, None] * gammas[None, :])  # (E, M)
    per_edge = (onehot[graph.idx_j][:, :, None] * radial[:, None, :]).flatten(1)
    first = torch.zeros(graph.num_nodes, per_edge.shape[1], dtype=torch.float64).index_add(0, graph.idx_i, per_edge)
    second = torch.zeros_like(first).index_add(0, graph.idx_i, torch.exp(-r)[:, None] * first[graph.idx_j])
    node = torch.cat([onehot, first, second], dim=1)
    cos = graph.triplet_cos.to(torch.float64)
    powers = torch.stack([cos, cos**2, cos**3], dim=1)  # (T, 3)
    angular_in = torch.zeros(graph.num_edges, 3 * 2, dtype=torch.float64)
    angular_out = torch.zeros_like(angular_in)
    if graph.num_triplets:
        weight_ji = torch.exp(-r[graph.idx_ji][:, None] * gammas[None, :2])
        weight_kj = torch.exp(-r[graph.idx_kj][:, None] * gammas[None, :2])
        angular_in = angular_in.index_add(0, graph.idx_kj, (powers[:, :, None] * weight_ji[:, None, :]).flatten(1))
        angular_out = angular_out.index_add(0, graph.idx_ji, (powers[:, :, None] * weight_kj[:, None, :]).flatten(1))
    edge = torch.cat(
        [onehot[graph.idx_i], onehot[graph.idx_j], r[:, None], 1.0 / r[:, None], radial,
         node[graph.idx_i], node[graph.idx_j], angular_in, angular_out],
        dim=1,
    )
    triplet = torch.cat([edge[graph.idx_kj], edge[graph.idx_ji], powers], dim=1)

    def standardise(x: torch.Tensor) -> torch.Tensor:
        # Columns that vary by less than 1e-6 of their size are dropped: dividing by a tiny
        # spread would blow rounding differences between equivalent items up.
        if x.shape[0] == 0:
            return x
        std = x.std(0, unbiased=False)
        varies = std > 1e-6 * x.abs().amax(0)
        return torch.where(varies, (x - x.mean(0)) / torch.where(varies, std, torch.ones_like(std)), torch.zeros_like(x))

    return standardise(node), standardise(edge), standardise(triplet)


def _fourier(
    x: torch.Tensor, copy_index: torch.Tensor, copies: int, width: int, generator: torch.Generator
) -> torch.Tensor:
    """``sin(x W_c + b_c)`` with a fresh random (W_c, b_c) per copy c.

    Shapes: x (X, D), copy_index (X,) -> (X, width)
    """
    d = x.shape[1]
    w = torch.randn(d, copies * width, generator=generator, dtype=torch.float64) * (1.5 / math.sqrt(max(d, 1)))
    b = torch.rand(copies * width, generator=generator, dtype=torch.float64) * (2.0 * math.pi)
    every = (x @ w + b).reshape(x.shape[0], copies, width)
    return torch.sin(every[torch.arange(x.shape[0]), copy_index])


# ---------------------------------------------------------------- the check


@dataclass(frozen=True)
class SiteCompleteness:
    """The span of a head on one atom (``atom`` None: the structure).

    Attributes:
        group: Schoenflies symbol of the group (site group for an atom).
        group_order: its number of operations.
        span: rank of the outputs (projected onto the formula).
        required: dimension of the G-invariant subspace.
        leakage: largest output component outside that subspace, relative to the largest
            output component (about 1e-15 for an equivariant head).
        singular_values: of the normalised output rows, largest first.
    """

    atom: int | None
    element: int | None
    group: str
    group_order: int
    span: int
    required: int
    leakage: float
    singular_values: tuple[float, ...]
    leak_tol: float = LEAK_TOL

    @property
    def complete(self) -> bool:
        return self.span == self.required and self.leakage <= self.leak_tol

    def describe(self) -> str:
        where = "the structure" if self.atom is None else f"atom {self.atom} (Z={self.element})"
        kind = "point group" if self.atom is None else "site group"
        text = f"{where}, {kind} {self.group} (order {self.group_order}): span {self.span} of {self.required}"
        if self.leakage > self.leak_tol:
            text += (f"; outputs leave the invariant subspace by {self.leakage:.2e} (> {self.leak_tol:.0e}): the head "
                     "is not equivariant, or the geometry is not exactly symmetric")
        elif self.span < self.required:
            text += " (components the symmetry allows are missing)"
        return text


@dataclass(frozen=True)
class CompletenessReport:
    """Completeness of one head on one environment, per checked site.

    ``complete`` is True when every site's outputs span exactly its G-invariant subspace.
    """

    field: FieldSpec
    environment: str
    point_group: str
    sites: tuple[SiteCompleteness, ...]
    samples: int
    rtol: float
    leak_tol: float

    @property
    def complete(self) -> bool:
        return all(site.complete for site in self.sites)

    @property
    def span(self) -> tuple[int, ...]:
        return tuple(site.span for site in self.sites)

    @property
    def required(self) -> tuple[int, ...]:
        return tuple(site.required for site in self.sites)

    @property
    def failures(self) -> tuple[SiteCompleteness, ...]:
        return tuple(site for site in self.sites if not site.complete)

    def headline(self) -> str:
        f = self.field
        return (f"field {f.name!r} ({f.level} level, symmetry {f.symmetry!r}, parity {f.parity:+d}) on "
                f"{self.environment} (point group {self.point_group})")

    def __str__(self) -> str:
        state = "complete" if self.complete else "NOT complete"
        lines = [f"{self.headline()}: {state}"]
        lines += [f"  {site.describe()}" for site in self.sites]
        return "\n".join(lines)


_PREPARED: dict[tuple, tuple] = {}  # environment symmetry, tiled graph and descriptors, by sample and settings


def _prepared(sample: Sample, copies: int, cutoff: float, triplet_cutoff: float, symprec: float) -> tuple:
    from tensorframe.graph.collate import build_graph

    key = (sample.numbers.tobytes(), sample.positions.tobytes(), sample.cell.tobytes(), sample.pbc.tobytes(),
           copies, cutoff, triplet_cutoff, symprec)
    if key not in _PREPARED:
        if len(_PREPARED) >= 64:
            _PREPARED.pop(next(iter(_PREPARED)))
        symmetry = environment_symmetry(sample, symprec)
        graph = build_graph([sample] * copies, cutoff, triplet_cutoff, dtype=torch.float64)
        _PREPARED[key] = (symmetry, graph, _descriptors(graph))
    return _PREPARED[key]


def _default_cutoff(sample: Sample) -> float:
    if sample.pbc.any():
        return 4.5
    if sample.num_atoms < 2:
        return 2.0
    distance = np.linalg.norm(sample.positions[:, None] - sample.positions[None], axis=-1)
    return float(max(distance.max() + 0.5, 2.0))


def _reinitialise(head: nn.Module, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in head.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


def completeness_report(
    head: nn.Module | Callable[[FeatureDims], nn.Module],
    sample: Sample,
    atom: int | Sequence[int] | None = None,
    *,
    environment: str | None = None,
    dims: FeatureDims | None = None,
    cutoff: float | None = None,
    triplet_cutoff: float | None = None,
    samples: int | None = None,
    copies: int = 8,
    seed: int = 0,
    symprec: float = 1e-3,
    rtol: float = SVD_RTOL,
    leak_tol: float = LEAK_TOL,
) -> CompletenessReport:
    """Measure the span of a head's outputs on an environment against the dimension its point
    group allows (see the module docstring for the method).

    Args:
        head: a :class:`~tensorframe.heads.base.Head` (with ``field``), or a builder
            ``dims -> Head``. It is copied and run in float64; the original is not touched.
        sample: the environment, an exactly symmetric molecule or crystal (all pbc True; a
            slab or monolayer in a cell with a vacuum gap).
        atom: atom-level fields: the atom(s) to check; default one atom of each
            symmetry-inequivalent orbit. Ignored for structure-level fields.
        environment: a name for messages (default: the chemical formula).
        dims: feature widths the head was built for (default :data:`CHECK_DIMS`).
        cutoff, triplet_cutoff: graph cutoffs in Å; default: every atom of a molecule (largest
            distance + 0.5 Å), 4.5 Å in a crystal; triplets as far as the cutoff.
        samples: number of (features, head initialisation) samples, rounded up to a multiple of
            ``copies``; default 3x the dimension of the formula's subspace (at least 6).
        copies: copies of the structure per forward pass (the head is re-initialised per pass).
        rtol: singular values below ``rtol`` times the largest do not count towards the span.
        leak_tol: largest allowed relative output component outside the invariant subspace.

    Returns:
        a :class:`CompletenessReport` with one :class:`SiteCompleteness` per checked site.
    """
    __tracebackhide__ = True
    dims = dims or CHECK_DIMS
    if dims.triplet is None:
        dims = FeatureDims(dims.node, dims.edge, dims.edge)
    module = head if isinstance(head, nn.Module) else head(dims)
    spec: FieldSpec = module.field
    formula, rank = spec.symmetry, spec.rank
    size = 3**rank
    formula_projector = symmetric_projector(formula, dtype=torch.float64) if formula else torch.ones(1, 1, dtype=torch.float64)
    total = samples if samples is not None else max(6, 3 * (subspace_dim(formula) if formula else 1))
    cutoff = _default_cutoff(sample) if cutoff is None else float(cutoff)
    triplet_cutoff = cutoff if triplet_cutoff is None else float(triplet_cutoff)
    symmetry, graph, (node_d, edge_d, triplet_d) = _prepared(sample, copies, cutoff, triplet_cutoff, symprec)
    if spec.level == "atom":
        if atom is None:
            atoms = symmetry.representatives()
        else:
            atoms = [int(atom)] if isinstance(atom, (int, np.integer)) else [int(a) for a in atom]
        bad = [a for a in atoms if not 0 <= a < sample.num_atoms]
        if bad:
            raise ValueError(f"atom: {bad} out of range for {sample.num_atoms} atoms")
    else:
        atoms = [None]

    working = copy.deepcopy(module).to(torch.float64)
    working.eval()
    node_copy = graph.batch
    edge_copy = graph.edge_batch
    triplet_copy = graph.edge_batch.index_select(0, graph.idx_kj)
    generator = torch.Generator().manual_seed(seed)
    passes = math.ceil(total / copies)
    total = passes * copies
    rows: list[torch.Tensor] = []
    with torch.no_grad():
        for index in range(passes):
            _reinitialise(working, seed * 100_003 + index)
            features = InvariantFeatures(
                node=_fourier(node_d, node_copy, copies, dims.node, generator),
                edge=_fourier(edge_d, edge_copy, copies, dims.edge, generator),
                triplet=_fourier(triplet_d, triplet_copy, copies, dims.triplet, generator),
            )
            out = working(graph, features).to(torch.float64)
            expected = (graph.num_nodes if spec.level == "atom" else copies, *spec.shape)
            if tuple(out.shape) != expected:
                raise ValueError(
                    f"field {spec.name!r}: the head returned shape {tuple(out.shape)}, expected {expected} "
                    f"({copies} copies of a {sample.num_atoms}-atom structure)"
                )
            rows.append(out.reshape(out.shape[0], size))
        # The scale of the outputs when nothing cancels: the same head on features drawn
        # independently for every item (not orbit-invariant), so that outputs that vanish by
        # symmetry are measured against the size of the terms that cancel.
        broken = InvariantFeatures(
            node=torch.sin(torch.randn(node_d.shape[0], dims.node, generator=generator, dtype=torch.float64)),
            edge=torch.sin(torch.randn(edge_d.shape[0], dims.edge, generator=generator, dtype=torch.float64)),
            triplet=torch.sin(torch.randn(triplet_d.shape[0], dims.triplet, generator=generator, dtype=torch.float64)),
        )
        reference = float((working(graph, broken).to(torch.float64).reshape(-1, size) @ formula_projector).abs().max())
    outputs = torch.stack(rows)  # (passes, X, size)

    sites = []
    for a in atoms:
        if a is None:
            x = outputs.reshape(-1, size)
            group = symmetry.point_group
            name = symmetry.name
        else:
            x = outputs[:, graph.ptr[:-1] + a].reshape(-1, size)
            group = symmetry.site_group(a)
            name = symmetry.site_name(a)
        x = x @ formula_projector
        required = invariant_subspace_dim(formula, spec.parity, group)
        element = None if a is None else int(sample.numbers[a])
        scale = max(float(x.abs().max()), reference)
        norms = x.norm(dim=1)
        keep = norms > _ZERO_ROW * scale
        if scale == 0.0 or not bool(keep.any()):
            sites.append(SiteCompleteness(a, element, name, len(group), 0, required, 0.0, (), leak_tol))
            continue
        leakage = float((x - x @ invariant_projector(formula, spec.parity, group)).abs().max()) / scale
        singular = torch.linalg.svdvals(x[keep] / norms[keep, None])
        span = int((singular > rtol * singular[0]).sum())
        sites.append(SiteCompleteness(
            a, element, name, len(group), span, required, leakage, tuple(float(s) for s in singular), leak_tol
        ))
    return CompletenessReport(
        field=spec,
        environment=environment or _formula(sample),
        point_group=symmetry.name,
        sites=tuple(sites),
        samples=total,
        rtol=rtol,
        leak_tol=leak_tol,
    )


def _formula(sample: Sample) -> str:
    from pymatgen.core import Element

    order = list(dict.fromkeys(int(z) for z in sample.numbers))
    counts = {z: int((sample.numbers == z).sum()) for z in order}
    text = "".join(f"{Element.from_Z(z).symbol}{counts[z] if counts[z] > 1 else ''}" for z in order)
    return text + (" crystal" if sample.pbc.any() else "")


def assert_complete(
    head: nn.Module | Callable[[FeatureDims], nn.Module],
    sample: Sample,
    atom: int | Sequence[int] | None = None,
    **options: Any,
) -> CompletenessReport:
    """Assert that a head is complete on an environment (see :func:`completeness_report`, which
    takes the same arguments).

    Raises:
        AssertionError: naming the field, the environment, its point group, and for each
            failing site its (site) group, the span found and the dimension required.
    """
    __tracebackhide__ = True
    report = completeness_report(head, sample, atom, **options)
    if not report.complete:
        failing = "\n".join(f"  {site.describe()}" for site in report.failures)
        raise AssertionError(f"head is not complete: {report.headline()}:\n{failing}")
    return report


# ---------------------------------------------------------------- registered heads


@dataclass
class RegisteredHeadsCompleteness:
    """What :func:`assert_registered_heads_complete` checked: the reports (head label,
    environment) -> report, and the heads it skipped with the reason."""

    reports: dict[tuple[str, str], CompletenessReport] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def failures(self) -> dict[tuple[str, str], CompletenessReport]:
        return {key: report for key, report in self.reports.items() if not report.complete}

    def table(self) -> str:
        """One line per (head, environment): span / required per checked site."""
        width = max([len(label) for label, _ in self.reports] + [4])
        lines = [f"{'head':{width}s}  {'environment':12s} {'point group':14s} span/required per site"]
        for (label, env), report in self.reports.items():
            cells = ", ".join(f"{s.span}/{s.required}" for s in report.sites)
            lines.append(f"{label:{width}s}  {env:12s} {report.point_group:14s} {cells}{'' if report.complete else '  <-'}")
        return "\n".join(lines)


def _label(name: str, options: Mapping[str, Any]) -> str:
    if not options:
        return name
    return f"{name}[{', '.join(f'{k}={v}' for k, v in options.items())}]"


def assert_registered_heads_complete(
    registry: Registry | None = None,
    environments: Mapping[str, Sample | Callable[[], Sample]] | None = None,
    heads: Sequence[str] | None = None,
    options: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    dims: FeatureDims | None = None,
    raise_on_failure: bool = True,
    **check_options: Any,
) -> RegisteredHeadsCompleteness:
    """Check every registered head (or ``heads``) on every environment.

    Each head is built with each option set of ``options[name]`` (default: ``[{}]``, its
    default options) through ``spec.build(spec.config.model_validate(opts), dims, registry.fields)``. A head
    whose options do not validate or whose builder raises ``ValueError`` with them is skipped
    with the reason (the ``tensor`` head needs a ``field``: give
    ``options={"tensor": [{"field": "polarizability"}, ...]}``).

    Args:
        registry: a :class:`~tensorframe.registry.Registry` (default: the installed plugins).
        environments: name -> Sample (or a function returning one); default
            :data:`STANDARD_ENVIRONMENTS`.
        raise_on_failure: raise one AssertionError listing every incomplete (head,
            environment, site); otherwise just return.
        check_options: passed to :func:`completeness_report`.

    Returns:
        :class:`RegisteredHeadsCompleteness`.
    """
    __tracebackhide__ = True
    from pydantic import ValidationError

    registry = registry or get_registry()
    dims = dims or CHECK_DIMS
    environments = STANDARD_ENVIRONMENTS if environments is None else environments
    samples = {name: env() if callable(env) else env for name, env in environments.items()}
    result = RegisteredHeadsCompleteness()
    for name in heads if heads is not None else registry.names("head"):
        spec = registry.get("head", name)
        for opts in (options or {}).get(name, [{}]):
            label = _label(name, opts)
            try:
                head = spec.build(spec.config.model_validate(dict(opts)), dims, registry.fields)
            except ValidationError as error:
                missing = [".".join(map(str, e["loc"])) for e in error.errors()]
                result.skipped[label] = f"needs options: {', '.join(missing)}"
                continue
            except (ValueError, PluginError) as error:
                result.skipped[label] = f"does not build with these options: {error}"
                continue
            for env_name, sample in samples.items():
                result.reports[label, env_name] = completeness_report(
                    head, sample, environment=env_name, dims=dims, **check_options
                )
    if raise_on_failure and result.failures:
        lines = []
        for (label, _), report in result.failures.items():
            for site in report.failures:
                lines.append(f"  head {label}: {report.headline()}: {site.describe()}")
        raise AssertionError(f"{len(result.failures)} (head, environment) pairs are not complete:\n" + "\n".join(lines))
    return result
