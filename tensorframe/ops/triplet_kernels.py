"""Fused triplet interactions for DimeNet++-style backbones, with a pure-PyTorch fallback.

A triplet ``t = k -> j -> i`` joins edges ``kj[t]`` and ``ji[t]``. Its basis is a product of
an angular part per triplet and a radial part per edge,

    basis[t, l * N + n] = angular[t, l] * radial[kj[t], l, n]        (T, L * N)

and layers read it through linear maps ``basis @ W``. :class:`TripletBasis` keeps the two
factors. For the sum of filtered messages over the triplets of each edge,

    aggregate(x, W, ji, n)[e, f] = sum_{t: ji[t] = e} x[kj[t], f] * (basis @ W)[t, f],

the compiled kernel (in inference, :attr:`TripletBasis.fused`) applies ``W`` to the radial
part on edges first (``projected[s, l, f] = sum_n radial[s, l, n] W[l * N + n, f]``: S x L x N
x F work instead of T x L x N x F) and makes one pass over the triplets that keeps no (T, F)
tensor and never forms ``basis``. :func:`gather_mul_scatter` fuses the same sum for a
filter that exists as a tensor. Without the compiled kernels (not built, a CUDA tensor,
``TENSORFRAME_NATIVE=0`` or inside ``native_kernels(False)``), the same quantities are computed
as ``basis @ W`` and a gather-multiply-scatter, with the same results to rounding (tested:
1e-6 in float32, 1e-12 in float64, values and gradients).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from tensorframe.ops.native import native_enabled
from tensorframe.ops.scatter import scatter_sum

_allowed = True


@contextmanager
def native_kernels(enabled: bool) -> Iterator[None]:
    """Within the block, use the compiled kernels only if ``enabled`` (and they are loaded)."""
    global _allowed
    previous, _allowed = _allowed, bool(enabled)
    try:
        yield
    finally:
        _allowed = previous


def use_native(*tensors: torch.Tensor) -> bool:
    """Whether the compiled kernels run for these tensors: loaded, allowed, CPU, float32/64, and
    not inside ``torch.compile`` (which fuses the pure-PyTorch form itself)."""
    return (_allowed and not torch.compiler.is_compiling() and native_enabled()
            and all(t.device.type == "cpu" for t in tensors)
            and tensors[0].dtype in (torch.float32, torch.float64))


def _gather_mul_scatter_vjp(grad: torch.Tensor, x: torch.Tensor, kj: torch.Tensor, weight: torch.Tensor,
                            ji: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward of ``gather_mul_scatter`` written with differentiable PyTorch operations, for a
    second derivative (``create_graph=True``, e.g. the force loss of a conservative model): the
    compiled backward kernels have no derivative of their own. Explicit formulas in the saved
    tensors, not ``autograd.grad`` of the reference, which would also count the paths between
    inputs that depend on one another (x on the angular basis through earlier blocks)."""
    upstream = grad.index_select(0, ji)
    return scatter_sum(upstream * weight, kj, x.shape[0]), upstream * x.index_select(0, kj)


def _filtered_aggregate_vjp(grad: torch.Tensor, x: torch.Tensor, angular: torch.Tensor, projected: torch.Tensor,
                            kj: torch.Tensor, ji: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward of ``filtered_aggregate`` in differentiable PyTorch operations (see
    :func:`_gather_mul_scatter_vjp`); gathers (T, L, F)."""
    upstream = grad.index_select(0, ji)
    gathered = projected.index_select(0, kj)  # (T, L, F)
    filters = torch.einsum("tl,tlf->tf", angular, gathered)
    product = upstream * x.index_select(0, kj)
    grad_x = scatter_sum(upstream * filters, kj, x.shape[0])
    grad_angular = torch.einsum("tf,tlf->tl", product, gathered)
    grad_projected = scatter_sum(angular.unsqueeze(-1) * product.unsqueeze(1), kj, projected.shape[0])
    return grad_x, grad_angular, grad_projected


class _GatherMulScatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, kj: torch.Tensor, weight: torch.Tensor, ji: torch.Tensor,
                num_out: int) -> torch.Tensor:
        ctx.save_for_backward(x, kj, weight, ji)
        return torch.ops.tensorframe.gather_mul_scatter(x, kj, weight, ji, num_out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, kj, weight, ji = ctx.saved_tensors
        if torch.is_grad_enabled():
            grad_x, grad_weight = _gather_mul_scatter_vjp(grad, x, kj, weight, ji)
        else:
            grad_x, grad_weight = torch.ops.tensorframe.gather_mul_scatter_backward(grad, x, kj, weight, ji)
        return grad_x, None, grad_weight, None, None


class _FilteredAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, angular: torch.Tensor, projected: torch.Tensor, kj: torch.Tensor,
                ji: torch.Tensor, num_out: int) -> torch.Tensor:
        ctx.save_for_backward(x, angular, projected, kj, ji)
        return torch.ops.tensorframe.filtered_aggregate(x, angular, projected, kj, ji, num_out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, angular, projected, kj, ji = ctx.saved_tensors
        if torch.is_grad_enabled():
            grads = _filtered_aggregate_vjp(grad, x, angular, projected, kj, ji)
        else:
            grads = torch.ops.tensorframe.filtered_aggregate_backward(grad, x, angular, projected, kj, ji)
        return grads[0], grads[1], grads[2], None, None, None


def _filtered_aggregate_torch(x: torch.Tensor, angular: torch.Tensor, projected: torch.Tensor, kj: torch.Tensor,
                              ji: torch.Tensor, num_out: int) -> torch.Tensor:
    filters = torch.einsum("tl,tlf->tf", angular, projected.index_select(0, kj))
    return _gather_mul_scatter_torch(x, kj, filters, ji, num_out)


def _gather_mul_scatter_torch(x: torch.Tensor, kj: torch.Tensor, weight: torch.Tensor, ji: torch.Tensor,
                              num_out: int) -> torch.Tensor:
    return scatter_sum(_GatherMul.apply(x, kj, weight), ji, num_out)


class _GatherMul(torch.autograd.Function):
    """``x[index] * weight`` that saves ``x`` (edge-sized), not ``x[index]`` (triplet-sized)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, index, weight)
        return x.index_select(0, index) * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, index, weight = ctx.saved_tensors
        grad_x = scatter_sum(grad * weight, index, x.shape[0]) if ctx.needs_input_grad[0] else None
        grad_weight = grad * x.index_select(0, index) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_weight


def gather_mul(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x[index] * weight`` without keeping the gathered ``x[index]`` alive for backward.

    Shapes: x (E, F), index (T,), weight (T, F) -> (T, F)
    """
    return _GatherMul.apply(x, index, weight)


def gather_mul_scatter(x: torch.Tensor, kj: torch.Tensor, weight: torch.Tensor, ji: torch.Tensor,
                       num_out: int) -> torch.Tensor:
    """``out[ji[t]] += x[kj[t]] * weight[t]``: with the compiled kernels, one pass and no
    (T, F) product in the forward pass.

    Shapes: x (S, F), kj/ji (T,), weight (T, F) -> (num_out, F)
    """
    if use_native(x, weight):
        return _GatherMulScatter.apply(x, kj, weight, ji, int(num_out))
    return _gather_mul_scatter_torch(x, kj, weight, ji, num_out)


def filtered_aggregate(x: torch.Tensor, angular: torch.Tensor, projected: torch.Tensor, kj: torch.Tensor,
                       ji: torch.Tensor, num_out: int) -> torch.Tensor:
    """``out[ji[t]] += x[kj[t]] * sum_l angular[t, l] projected[kj[t], l]`` (the reference form,
    without the compiled kernels, gathers a (T, L, F) tensor; :class:`TripletBasis` does not).

    Shapes: x (S, F), angular (T, L), projected (S, L, F), kj/ji (T,) -> (num_out, F)
    """
    if use_native(x, angular, projected):
        return _FilteredAggregate.apply(x, angular, projected, kj, ji, int(num_out))
    return _filtered_aggregate_torch(x, angular, projected, kj, ji, num_out)


def chain_matrix(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """The product ``W_1 @ W_2 @ ...`` of a chain of (in, out) matrices."""
    total = weights[0]
    for weight in weights[1:]:
        total = total @ weight
    return total


@dataclass
class TripletBasis:
    """A triplet basis kept as its two factors (see the module docstring).

    Attributes:
        angular: (T, L) angular part per triplet, envelope included.
        radial: (S, L, N) radial part per edge; ``kj`` indexes its rows.
        kj: (T,) the edge ``k -> j`` of each triplet, into ``radial``.

    Linear maps are given as chains of (in, out) matrices, ``basis @ W_1 @ W_2 ...`` (a
    bias-free bottleneck is two): :meth:`project` applies them in turn to the dense basis (made
    once and kept); the compiled :meth:`aggregate` multiplies them out and applies them to
    ``radial``.
    """

    angular: torch.Tensor
    radial: torch.Tensor
    kj: torch.Tensor
    _dense: torch.Tensor | None = field(default=None, repr=False)

    @property
    def native(self) -> bool:
        return use_native(self.angular, self.radial)

    @property
    def fused(self) -> bool:
        """Whether :meth:`aggregate` runs the fused kernel: compiled kernels in use and no autograd
        graph being recorded. With one, the dense basis and :func:`gather_mul_scatter` are as
        fast for a first derivative (training) and much faster for a second (conservative
        forces, whose backward of the fused kernel needs (T, L, F) gathers; measured 0.65x)."""
        return self.native and not torch.is_grad_enabled()

    def dense(self) -> torch.Tensor:
        """The basis itself (T, L * N), made on first use."""
        if self._dense is None:
            # Whole contiguous rows gathered (a radial part with other strides, such as an
            # (L, N, S) layout permuted, would be gathered element by element: ~2x slower),
            # then scaled in place when no autograd graph needs the gathered rows.
            num_edges, num_orders, num_radial = self.radial.shape
            rows = self.radial.reshape(num_edges, num_orders * num_radial).index_select(0, self.kj)
            rows = rows.view(-1, num_orders, num_radial)
            angular = self.angular.unsqueeze(-1)
            if torch.is_grad_enabled():
                rows = rows * angular
            else:
                rows = rows.mul_(angular)
            self._dense = rows.flatten(1)
        return self._dense

    def projected(self, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """The chain applied to the radial part on edges: (S, L, F)."""
        matrix = chain_matrix(weights)
        num_orders, num_radial = self.radial.shape[1], self.radial.shape[2]
        return torch.einsum("sln,lnf->slf", self.radial, matrix.reshape(num_orders, num_radial, -1))

    def project(self, weights: Sequence[torch.Tensor], add: torch.Tensor | None = None) -> torch.Tensor:
        """``basis @ W_1 @ W_2 ... (+ add)``: (T, F), through BLAS on the dense basis on every
        path (a (T, F) result read back from edges would move L x F values per triplet, the
        dense basis L x N); ``add`` is fused into the last product."""
        result = self.dense()
        for weight in weights[:-1]:
            result = result @ weight
        return result @ weights[-1] if add is None else torch.addmm(add, result, weights[-1])

    def aggregate(self, x: torch.Tensor, weights: Sequence[torch.Tensor], ji: torch.Tensor, num_out: int) -> torch.Tensor:
        """``out[ji[t]] += x[kj[t]] * project(weights)[t]``: (num_out, F); one fused pass when
        :attr:`fused`, else the projected filter and :func:`gather_mul_scatter`."""
        if self.fused and use_native(x):
            return filtered_aggregate(x, self.angular, self.projected(weights), self.kj, ji, num_out)
        return gather_mul_scatter(x, self.kj, self.project(weights), ji, num_out)
