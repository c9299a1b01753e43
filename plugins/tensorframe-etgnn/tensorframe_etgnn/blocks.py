"""The building blocks of ETGNN (DimeNet++ with triplet messages), in the order a forward uses them.

Notation: edge ``e = j -> i`` carries the message ``m_ji``; triplet ``t = k -> j -> i`` joins
edges ``idx_kj[t]`` and ``idx_ji[t]`` and carries ``m_kji``. Every per-triplet tensor is at
most ``int_emb_size`` or ``triplet_dim`` wide: projections are applied to atoms or edges
first and gathered onto triplets afterwards, never (triplets x hidden x basis). The triplet
basis is a :class:`~tensorframe.TripletBasis` (angular part per triplet, radial part per
edge): with tensorframe's compiled kernels its linear maps run on edges and are gathered
per triplet, and the edge update's sum over triplets is one fused pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from tensorframe import TripletBasis, blocked_inference, gather_mul, gather_mul_scatter, row_blocks, scatter_sum

_ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "softplus": nn.Softplus}


def activate_(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, in place on ``x`` when autograd is off (inference: one pass over the tensor
    and no new allocation). Only for temporaries that nothing else reads.

    Shapes: x (...) -> (...)
    """
    if torch.is_grad_enabled():
        return act(x)
    if isinstance(act, nn.SiLU):
        return nn.functional.silu(x, inplace=True)
    if isinstance(act, nn.Tanh):
        return x.tanh_()
    return act(x)


def make_activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"activation: unknown {name!r}; valid choices: {', '.join(sorted(_ACTIVATIONS))}") from None


class ResidualLayer(nn.Module):
    """``x + act(W2 act(W1 x + b1) + b2)`` (the paper's residual block, Fig. 2(e)).

    Shapes: x (M, width) -> (M, width)
    """

    def __init__(self, width: int, activation: str) -> None:
        super().__init__()
        self.lin1 = nn.Linear(width, width)
        self.lin2 = nn.Linear(width, width)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return x + self.act(self.lin2(self.act(self.lin1(x))))
        return activate_(self.act, self.lin2(activate_(self.act, self.lin1(x)))).add_(x)


def _bottleneck(num_in: int, basis_emb_size: int, num_out: int) -> nn.Sequential:
    """Two bias-free linear maps through ``basis_emb_size`` (DimeNet++'s basis projection)."""
    return nn.Sequential(nn.Linear(num_in, basis_emb_size, bias=False), nn.Linear(basis_emb_size, num_out, bias=False))


class EdgeEmbedding(nn.Module):
    """Element embeddings and the first edge messages ``m_ji = act(W [h_i, h_j, act(W_r rbf)])``.

    Shapes:
        numbers (N,), rbf (E, num_radial), idx_i/idx_j (E,)
        -> messages (E, hidden), atoms (N, hidden), radial (E, hidden)
    """

    def __init__(self, num_radial: int, hidden: int, max_z: int, activation: str) -> None:
        super().__init__()
        self.element = nn.Embedding(max_z + 1, hidden)
        nn.init.uniform_(self.element.weight, -math.sqrt(3.0), math.sqrt(3.0))
        self.radial = nn.Linear(num_radial, hidden)
        self.mix = nn.Linear(3 * hidden, hidden)
        self.act = make_activation(activation)

    def forward(
        self, numbers: torch.Tensor, rbf: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        atoms = self.element(numbers)
        radial = self.act(self.radial(rbf))
        # W [h_i, h_j, r] = W_i h_i + W_j h_j + W_r r: the atom terms are projected per atom and
        # gathered, never an (E, 3 hidden) concatenation.
        hidden = atoms.shape[-1]
        weight = self.mix.weight
        # In place: addmm and add keep nothing for their backward, so this is safe under autograd.
        messages = torch.addmm(self.mix.bias, radial, weight[:, 2 * hidden :].t())
        messages.add_((atoms @ weight[:, :hidden].t()).index_select(0, idx_i))
        messages.add_((atoms @ weight[:, hidden : 2 * hidden].t()).index_select(0, idx_j))
        return activate_(self.act, messages), atoms, radial


class TripletEmbedding(nn.Module):
    """First triplet messages from the three atoms ``k, j, i``, the radial features of edge
    ``ji`` and the spherical basis (whose radial part is the length of ``kj``):
    ``m_kji = act(A_k h_k + A_j h_j + A_i h_i + R r_ji + S sbf_kji)``, a linear map of their
    concatenation written as a sum. The ``k`` term is a function of edge ``kj`` and the
    ``j, i, r_ji`` terms of edge ``ji``, so both are formed on edges and gathered once each.

    Shapes:
        atoms (N, hidden), radial (E, hidden), basis: TripletBasis (T triplets, num_sbf wide),
        idx_i/idx_j (E,), edges (S,) the edges in triplets, kj/ji (T,) indices into ``edges``
        -> (T, triplet_dim)
    """

    def __init__(self, hidden: int, num_sbf: int, triplet_dim: int, activation: str) -> None:
        super().__init__()
        self.atom_k = nn.Linear(hidden, triplet_dim)
        self.atom_j = nn.Linear(hidden, triplet_dim, bias=False)
        self.atom_i = nn.Linear(hidden, triplet_dim, bias=False)
        self.radial = nn.Linear(hidden, triplet_dim, bias=False)
        self.angular = nn.Linear(num_sbf, triplet_dim, bias=False)
        self.act = make_activation(activation)

    def forward(
        self,
        atoms: torch.Tensor,
        radial: torch.Tensor,
        basis: TripletBasis,
        idx_i: torch.Tensor,
        idx_j: torch.Tensor,
        edges: torch.Tensor,
        kj: torch.Tensor,
        ji: torch.Tensor,
    ) -> torch.Tensor:
        # Edge e = b -> a: as kj its neighbour b is k; as ji its neighbour b is j and its centre a is i.
        # Only the edges in triplets (``edges``) are needed; kj/ji index into them.
        centre, neighbour = idx_i.index_select(0, edges), idx_j.index_select(0, edges)
        as_kj = self.atom_k(atoms).index_select(0, neighbour)
        as_ji = (self.atom_j(atoms).index_select(0, neighbour) + self.atom_i(atoms).index_select(0, centre)
                 + self.radial(radial.index_select(0, edges)))
        if blocked_inference():
            return self._blocked(as_kj, as_ji, basis, kj, ji)
        gathered = as_kj.index_select(0, kj) + as_ji.index_select(0, ji)
        return self.act(basis.project([self.angular.weight.t()], add=gathered))

    def _blocked(self, as_kj: torch.Tensor, as_ji: torch.Tensor, basis: TripletBasis, kj: torch.Tensor,
                 ji: torch.Tensor) -> torch.Tensor:
        """The same in inference, on blocks of triplets that stay in cache (:func:`row_blocks`)."""
        dense, weight = basis.dense(), self.angular.weight.t()
        out = as_kj.new_empty((kj.shape[0], weight.shape[1]))
        for rows in row_blocks(kj.shape[0], weight.shape[1]):
            gathered = as_kj.index_select(0, kj[rows]).add_(as_ji.index_select(0, ji[rows]))
            block = torch.addmm(gathered, dense[rows], weight, out=out[rows])
            activated = activate_(self.act, block)
            if activated is not block:  # an activation without an in-place form
                block.copy_(activated)
        return out


class EdgeUpdate(nn.Module):
    """DimeNet++ interaction: ``m_ji`` gathers the down-projected ``m_kj`` of every triplet
    ``k -> j -> i``, filtered by the triplet's angular filter, then residual layers.

        x_kj = act(down(act(W_kj m_kj) * rbf_kj));  agg_ji = sum_k x_kj * s_kji
        h = act(W_ji m_ji) + up(agg_ji) -> residual layers -> act(W h) + m_ji -> residual layers

    Shapes:
        messages (E, hidden), rbf (E, num_radial), edges (S,) the edges in triplets,
        triplet_sum: x_kj (S, int_emb_size) -> agg_ji (S, int_emb_size), the filtered sum over
        the triplets of each edge -> (E, hidden)
    """

    def __init__(
        self, hidden: int, int_emb_size: int, basis_emb_size: int, num_radial: int,
        num_before_skip: int, num_after_skip: int, activation: str,
    ) -> None:
        super().__init__()
        self.radial = _bottleneck(num_radial, basis_emb_size, hidden)
        self.lin_kj = nn.Linear(hidden, hidden)
        self.lin_ji = nn.Linear(hidden, hidden)
        self.down = nn.Linear(hidden, int_emb_size, bias=False)
        self.up = nn.Linear(int_emb_size, hidden, bias=False)
        self.before_skip = nn.ModuleList(ResidualLayer(hidden, activation) for _ in range(num_before_skip))
        self.lin = nn.Linear(hidden, hidden)
        self.after_skip = nn.ModuleList(ResidualLayer(hidden, activation) for _ in range(num_after_skip))
        self.act = make_activation(activation)

    def forward(
        self,
        messages: torch.Tensor,
        rbf: torch.Tensor,
        edges: torch.Tensor,
        triplet_sum: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        x_ji = activate_(self.act, self.lin_ji(messages))
        # Edges outside triplets neither send nor receive (up has no bias: up(0) = 0), so the
        # triplet path runs on ``edges`` only.
        short = messages.index_select(0, edges)
        x_kj = self.act(self.down(self.act(self.lin_kj(short)) * self.radial(rbf.index_select(0, edges))))
        update = self.up(triplet_sum(x_kj))
        # x_ji is a temporary: summed into in place in inference (an activation such as tanh keeps
        # its output for the backward, so not under autograd).
        h = x_ji.index_add_(0, edges, update) if not torch.is_grad_enabled() else x_ji.index_add(0, edges, update)
        for layer in self.before_skip:
            h = layer(h)
        h = activate_(self.act, self.lin(h)).add_(messages) if not torch.is_grad_enabled() else self.act(self.lin(h)) + messages
        for layer in self.after_skip:
            h = layer(h)
        return h


class TripletUpdate(nn.Module):
    """Updates ``m_kji`` from the (new) edge messages ``m_kj`` and ``m_ji``, the radial
    features of ``ji`` and the angular filter, all ``int_emb_size`` wide on triplets:

        g = act(act(A m_kj) * s_kji + (B m_ji) * rbf_ji + C m_kji) -> residual layers
        m_kji <- m_kji + up(g)

    Shapes:
        triplets (T, triplet_dim), messages (E, hidden), rbf (E, num_radial),
        angular_filter (T, int_emb_size), edges (S,) the edges in triplets,
        kj/ji (T,) indices into ``edges`` -> (T, triplet_dim)
    """

    def __init__(
        self, hidden: int, triplet_dim: int, int_emb_size: int, basis_emb_size: int, num_radial: int,
        num_residual: int, activation: str,
    ) -> None:
        super().__init__()
        self.from_kj = nn.Linear(hidden, int_emb_size)
        self.from_ji = nn.Linear(hidden, int_emb_size)
        self.radial = _bottleneck(num_radial, basis_emb_size, int_emb_size)
        self.from_triplet = nn.Linear(triplet_dim, int_emb_size, bias=False)
        self.residual = nn.ModuleList(ResidualLayer(int_emb_size, activation) for _ in range(num_residual))
        self.up = nn.Linear(int_emb_size, triplet_dim, bias=False)
        self.act = make_activation(activation)

    def forward(
        self,
        triplets: torch.Tensor,
        messages: torch.Tensor,
        rbf: torch.Tensor,
        angular_filter: torch.Tensor,
        edges: torch.Tensor,
        kj: torch.Tensor,
        ji: torch.Tensor,
    ) -> torch.Tensor:
        short = messages.index_select(0, edges)
        x_kj = self.act(self.from_kj(short))
        x_ji = self.from_ji(short) * self.radial(rbf.index_select(0, edges))
        if blocked_inference():
            return self._blocked(triplets, x_kj, x_ji, angular_filter, kj, ji)
        g = gather_mul(x_kj, kj, angular_filter) + x_ji.index_select(0, ji)
        g = self.act(torch.addmm(g, triplets, self.from_triplet.weight.t()))
        for layer in self.residual:
            g = layer(g)
        return torch.addmm(triplets, g, self.up.weight.t())

    def _blocked(self, triplets: torch.Tensor, x_kj: torch.Tensor, x_ji: torch.Tensor, angular_filter: torch.Tensor,
                 kj: torch.Tensor, ji: torch.Tensor) -> torch.Tensor:
        """The same in inference, on blocks of triplets that stay in cache (:func:`row_blocks`)."""
        out = torch.empty_like(triplets)
        for rows in row_blocks(triplets.shape[0], max(triplets.shape[1], x_kj.shape[1])):
            g = x_kj.index_select(0, kj[rows]).mul_(angular_filter[rows]).add_(x_ji.index_select(0, ji[rows]))
            g = activate_(self.act, torch.addmm(g, triplets[rows], self.from_triplet.weight.t()))
            for layer in self.residual:
                g = layer(g)
            torch.addmm(triplets[rows], g, self.up.weight.t(), out=out[rows])
        return out


class InteractionBlock(nn.Module):
    """One ETGNN block: an angular filter ``s = S2 S1 sbf`` (through ``basis_emb_size``),
    shared by the edge update and then the triplet update.

    Shapes:
        messages (E, hidden), triplets (T, triplet_dim), rbf (E, num_radial),
        basis: TripletBasis (T triplets, num_sbf wide), edges (S,) the edges in triplets,
        kj/ji (T,) indices into ``edges`` -> messages (E, hidden), triplets (T, triplet_dim)
    """

    def __init__(
        self, hidden: int, triplet_dim: int, int_emb_size: int, basis_emb_size: int, num_radial: int,
        num_sbf: int, num_before_skip: int, num_after_skip: int, num_triplet_residual: int, activation: str,
    ) -> None:
        super().__init__()
        self.angular = _bottleneck(num_sbf, basis_emb_size, int_emb_size)
        self.edge = EdgeUpdate(
            hidden, int_emb_size, basis_emb_size, num_radial, num_before_skip, num_after_skip, activation
        )
        self.triplet = TripletUpdate(
            hidden, triplet_dim, int_emb_size, basis_emb_size, num_radial, num_triplet_residual, activation
        )

    def forward(
        self,
        messages: torch.Tensor,
        triplets: torch.Tensor | None,
        rbf: torch.Tensor,
        basis: TripletBasis,
        edges: torch.Tensor,
        kj: torch.Tensor,
        ji: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``triplets=None`` (no head reads them) skips the triplet update, and the angular
        filter is then never formed: the edge update's triplet sum is one fused pass."""
        chain = [self.angular[0].weight.t(), self.angular[1].weight.t()]
        num_edges = edges.shape[0]
        if triplets is None:
            messages = self.edge(messages, rbf, edges, lambda x_kj: basis.aggregate(x_kj, chain, ji, num_edges))
            return messages, None
        angular_filter = basis.project(chain)
        messages = self.edge(messages, rbf, edges,
                             lambda x_kj: gather_mul_scatter(x_kj, kj, angular_filter, ji, num_edges))
        triplets = self.triplet(triplets, messages, rbf, angular_filter, edges, kj, ji)
        return messages, triplets


class NodeOutput(nn.Module):
    """Node features from the final edge messages (DimeNet++ output block):
    ``h_i = W_out MLP(up(sum_j (W_r rbf_ji) * m_ji))``.

    Shapes: messages (E, hidden), rbf (E, num_radial), idx_i (E,) -> (N, hidden)
    """

    def __init__(self, num_radial: int, hidden: int, out_emb_size: int, num_layers: int, activation: str) -> None:
        super().__init__()
        self.radial = nn.Linear(num_radial, hidden, bias=False)
        self.up = nn.Linear(hidden, out_emb_size, bias=False)
        layers: list[nn.Module] = []
        for _ in range(num_layers):
            layers += [nn.Linear(out_emb_size, out_emb_size), make_activation(activation)]
        self.layers = nn.Sequential(*layers)
        self.out = nn.Linear(out_emb_size, hidden, bias=False)

    def forward(self, messages: torch.Tensor, rbf: torch.Tensor, idx_i: torch.Tensor, num_nodes: int) -> torch.Tensor:
        atoms = scatter_sum(self.radial(rbf) * messages, idx_i, num_nodes)
        return self.out(self.layers(self.up(atoms)))
