"""A NequIP-style equivariant tensor-product network in pure e3nn, the e3nn peer of the benchmarks.

The model, as people build it with e3nn 0.6 (Batzner et al., NequIP, 2022):

    one-hot element -> o3.Linear -> h (hidden scalars)
    for each interaction layer:
        m_i  = 1/sqrt(<n>) sum_{j->i} TP_uvu(h_j, Y(e_ji); w = MLP(Bessel(r_ji) * envelope(r_ji)))
        h_i <- Gate(o3.Linear(m_i) + FCTP(h_i, one-hot_i))  (+ h_i when the irreps agree)
    per target field: o3.Linear(h_i) -> the field's irreps -> Cartesian (e3nn CartesianTensor's
        change of basis) -> per atom, or summed / averaged over each structure as the field's reduce

Edges (and their unit vectors, lengths and cosine envelope) come from tensorframe's
:class:`~tensorframe.types.Graph`, so this model and tensorframe's backbones see the same
neighbours. Forces are a direct ``1o`` output head (not ``-dE/dx``); energies a ``0e`` head.

Hidden irreps: ``32x0e+16x1o+8x2e`` by default, plus ``8x`` each irrep a target needs that
this set lacks (``1e`` for Born charges, ``2o`` and ``3o`` for piezo / hyperpolarizability),
so that every target's irreps reach the last layer; spherical harmonics up to ``lmax = 2``
(``3`` when a target has rank 3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from e3nn import o3
from e3nn.io import CartesianTensor
from e3nn.nn import FullyConnectedNet, Gate
from torch import nn

from tensorframe.fields import FieldSpec
from tensorframe.normalization import FieldScaling
from tensorframe.ops.radial import BesselBasis
from tensorframe.ops.scatter import scatter_mean, scatter_sum
from tensorframe.types import Graph


@dataclass(frozen=True)
class E3nnConfig:
    """Sizes of the e3nn peer; ``hidden_irreps`` is extended by ``extra_multiplicity`` copies of
    every irrep a target needs and it lacks (see :func:`hidden_irreps_for`)."""

    cutoff: float
    hidden_irreps: str = "32x0e+16x1o+8x2e"
    extra_multiplicity: int = 8
    num_layers: int = 3
    lmax: int | None = None  # None: 2, or 3 when a target has rank 3
    num_basis: int = 8
    radial_hidden: int = 64
    radial_layers: int = 2
    species: tuple[int, ...] = field(default_factory=tuple)  # atomic numbers the model embeds


def field_irreps(spec: FieldSpec) -> tuple[o3.Irreps, torch.Tensor]:
    """The irreps of a field and the change of basis from them to its Cartesian tensor.

    Uses ``CartesianTensor(spec.symmetry)`` (each index a polar vector, parity ``(-1)**rank``);
    a field whose parity differs (a pseudotensor) gets every irrep's parity flipped, with the
    same change of basis.

    Shapes: -> change of basis Q (irreps dim, 3, ..., 3): ``cartesian = irreps @ Q.flatten(1)``
    """
    if spec.rank == 0:
        irreps = o3.Irreps("0e" if spec.parity == 1 else "0o")
        return irreps, torch.ones(1, dtype=torch.float64)
    tensor = CartesianTensor(spec.symmetry)
    rtp = tensor.reduced_tensor_products()
    irreps = o3.Irreps(tensor)
    if spec.parity != (-1) ** spec.rank:
        irreps = o3.Irreps([(mul, (ir.l, -ir.p)) for mul, ir in irreps])
    return irreps, rtp.change_of_basis.to(torch.float64)


def hidden_irreps_for(base: str, fields: Sequence[FieldSpec], multiplicity: int) -> o3.Irreps:
    """``base`` plus ``multiplicity`` copies of every irrep of the fields that it lacks, sorted."""
    irreps = o3.Irreps(base)
    present = {ir for _, ir in irreps}
    extra = []
    for spec in fields:
        for _, ir in field_irreps(spec)[0]:
            if ir not in present:
                present.add(ir)
                extra.append((multiplicity, ir))
    return (irreps + o3.Irreps(extra)).sort().irreps.simplify()


def _gate(irreps_target: o3.Irreps) -> Gate:
    """A gate whose output is ``irreps_target``: SiLU on even scalars, tanh on odd ones, and each
    ``l > 0`` irrep multiplied by a SiLU-gated even scalar (NequIP's choice)."""
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_target if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps_target if ir.l > 0])
    acts = [nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
    gates = o3.Irreps([(mul, "0e") for mul, _ in gated])
    return Gate(scalars, acts, gates, [nn.functional.silu] * len(gates), gated)


class Interaction(nn.Module):
    """One NequIP convolution: a 'uvu' tensor product of neighbour features with the spherical
    harmonics of the edge direction, weighted per edge by a radial MLP, summed onto the centre,
    then a linear map, a species-dependent self-connection, a gate and a residual.

    Shapes: x (N, irreps_in.dim), species one-hot (N, S), sh (E, irreps_sh.dim),
        radial (E, num_basis), idx_i/idx_j (E,) -> (N, irreps_out.dim)
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_target: o3.Irreps, num_species: int,
                 num_basis: int, radial_hidden: int, radial_layers: int) -> None:
        super().__init__()
        self.gate = _gate(irreps_target)
        irreps_gate_in = self.gate.irreps_in
        wanted = {ir for _, ir in irreps_gate_in}
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(irreps_in):
            for j, (_, ir_edge) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_edge:
                    if ir_out in wanted:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        irreps_mid, permutation, _ = o3.Irreps(mid).sort()
        instructions = [(i, j, permutation[k], mode, train) for i, j, k, mode, train in instructions]
        self.linear_in = o3.Linear(irreps_in, irreps_in)
        self.tp = o3.TensorProduct(irreps_in, irreps_sh, irreps_mid, instructions, shared_weights=False,
                                   internal_weights=False)
        self.radial = FullyConnectedNet([num_basis] + [radial_hidden] * radial_layers + [self.tp.weight_numel],
                                        nn.functional.silu)
        self.linear_out = o3.Linear(irreps_mid.simplify(), irreps_gate_in)
        self.self_connection = o3.FullyConnectedTensorProduct(irreps_in, o3.Irreps(f"{num_species}x0e"), irreps_gate_in)
        self.irreps_in, self.irreps_out = irreps_in, self.gate.irreps_out
        self.residual = irreps_in == self.irreps_out

    def forward(self, x: torch.Tensor, species: torch.Tensor, sh: torch.Tensor, radial: torch.Tensor,
                idx_i: torch.Tensor, idx_j: torch.Tensor, inv_sqrt_neighbors: torch.Tensor) -> torch.Tensor:
        h = self.linear_in(x)
        messages = self.tp(h.index_select(0, idx_j), sh, self.radial(radial))
        aggregated = scatter_sum(messages, idx_i, x.shape[0]) * inv_sqrt_neighbors
        out = self.gate(self.linear_out(aggregated) + self.self_connection(x, species))
        return x + out if self.residual else out


class FieldOutput(nn.Module):
    """node irreps -> o3.Linear -> the field's irreps -> Cartesian; reduced over each structure
    for structure-level fields (sum or mean, as the field says); for atom-level fields with
    ``subtract_structure_mean`` each structure's mean atomic tensor is removed (acoustic sum rule).

    Shapes: x (N, irreps_hidden.dim) -> (N, 3, ...) atom-level | (B, 3, ...) structure-level
    """

    def __init__(self, spec: FieldSpec, irreps_hidden: o3.Irreps, subtract_structure_mean: bool = False) -> None:
        super().__init__()
        if subtract_structure_mean and spec.level != "atom":
            raise ValueError(f"field {spec.name!r}: subtract_structure_mean needs an atom-level field")
        self.field = spec
        self.subtract_structure_mean = subtract_structure_mean
        irreps, change_of_basis = field_irreps(spec)
        self.irreps = irreps
        self.linear = o3.Linear(irreps_hidden, irreps)
        # Kept in float64 (cast to the features' dtype in forward), so float64 runs are exact.
        self.register_buffer("change_of_basis", change_of_basis.reshape(irreps.dim, -1))

    def forward(self, x: torch.Tensor, graph: Graph) -> torch.Tensor:
        cartesian = self.linear(x) @ self.change_of_basis.to(x.dtype)
        cartesian = cartesian.reshape(x.shape[0], *self.field.shape)
        if self.field.level == "structure":
            reduce = scatter_mean if self.field.reduce == "mean" else scatter_sum
            return reduce(cartesian, graph.batch, graph.num_structures)
        if self.subtract_structure_mean:
            cartesian = cartesian - scatter_mean(cartesian, graph.batch, graph.num_structures).index_select(0, graph.batch)
        return cartesian


class E3nnTensorModel(nn.Module):
    """The NequIP-style peer: ``forward(graph) -> {field: tensor}`` in physical units.

    Shapes: graph with N atoms, B structures -> atom-level fields (N, 3, ...), structure-level (B, 3, ...)
    """

    def __init__(self, config: E3nnConfig, fields: Mapping[str, FieldSpec],
                 subtract_structure_mean: Sequence[str] = ()) -> None:
        super().__init__()
        if not config.species:
            raise ValueError("species: expected the atomic numbers the model embeds, got none")
        self.config = config
        specs = list(fields.values())
        lmax = config.lmax if config.lmax is not None else (3 if any(s.rank >= 3 for s in specs) else 2)
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.irreps_hidden = hidden_irreps_for(config.hidden_irreps, specs, config.extra_multiplicity)
        species_index = torch.full((max(config.species) + 1,), -1, dtype=torch.long)
        species_index[torch.tensor(config.species)] = torch.arange(len(config.species))
        self.register_buffer("species_index", species_index)
        self.num_species = len(config.species)
        scalars = o3.Irreps([(mul, ir) for mul, ir in self.irreps_hidden if ir.l == 0 and ir.p == 1])
        self.embedding = o3.Linear(o3.Irreps(f"{self.num_species}x0e"), scalars)
        self.radial_basis = BesselBasis(config.cutoff, config.num_basis)
        layers, irreps = [], scalars
        for _ in range(config.num_layers):
            layer = Interaction(irreps, self.irreps_sh, self.irreps_hidden, self.num_species, config.num_basis,
                                config.radial_hidden, config.radial_layers)
            layers.append(layer)
            irreps = layer.irreps_out
        self.layers = nn.ModuleList(layers)
        self.heads = nn.ModuleDict({
            name: FieldOutput(spec, irreps, name in subtract_structure_mean) for name, spec in fields.items()
        })
        self.scaling = nn.ModuleDict({name: FieldScaling(spec) for name, spec in fields.items()})
        self.register_buffer("avg_num_neighbors", torch.ones(()))

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {name: head.field for name, head in self.heads.items()}

    def species_one_hot(self, numbers: torch.Tensor) -> torch.Tensor:
        """Shapes: numbers (N,) -> (N, S)"""
        known = numbers < self.species_index.shape[0]
        index = torch.where(known, self.species_index[numbers.clamp(max=self.species_index.shape[0] - 1)], -1)
        if bool((index < 0).any()):
            bad = sorted(set(numbers[index < 0].tolist()))
            raise ValueError(f"atomic numbers {bad}: not among the species this model embeds {list(self.config.species)}")
        return nn.functional.one_hot(index, self.num_species).to(self.radial_basis.frequencies.dtype)

    def node_features(self, graph: Graph) -> torch.Tensor:
        """Shapes: -> (N, irreps_out.dim) of the last layer"""
        species = self.species_one_hot(graph.numbers).to(graph.edge_vec.dtype)
        sh = o3.spherical_harmonics(self.irreps_sh, graph.edge_dir, normalize=False, normalization="component")
        radial = self.radial_basis(graph.edge_len) * graph.edge_envelope.unsqueeze(-1)
        inv_sqrt_neighbors = self.avg_num_neighbors.to(sh.dtype).rsqrt()
        x = self.embedding(species)
        for layer in self.layers:
            x = layer(x, species, sh, radial, graph.idx_i, graph.idx_j, inv_sqrt_neighbors)
        return x

    def forward(self, graph: Graph) -> dict[str, torch.Tensor]:
        x = self.node_features(graph)
        return {name: self.scaling[name](head(x, graph), graph) for name, head in self.heads.items()}


__all__ = ["E3nnConfig", "E3nnTensorModel", "FieldOutput", "Interaction", "field_irreps", "hidden_irreps_for"]
