"""DimeNet's 2-D spherical basis of a triplet: spherical Bessel functions of the ``k -> j``
distance times zonal spherical harmonics of the angle ``k-j-i``.

    a_ln(d, angle) = sqrt(2) / |j_{l+1}(z_ln)| * j_l(z_ln d / rc)  *  Y_l0(angle)  * envelope

``z_ln`` is the n-th positive zero of ``j_l``, so every radial function vanishes at the
triplet cutoff ``rc``. ``Y_l0 = sqrt((2l+1)/(4 pi)) P_l(cos)`` comes from Legendre
polynomials of the cosine, never from ``acos``/``atan2``: values and gradients stay finite at
straight (180°) and zero angles.

Everything here is computed without sympy or scipy: the zeros by bisection in numpy when a
module is built, ``j_l`` in torch by its power series for small arguments and the upward
recurrence for large ones (each used where it is accurate).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from tensorframe import TripletBasis, legendre_basis


def spherical_bessel_numpy(order: int, x: np.ndarray) -> np.ndarray:
    """``j_order(x)`` in float64 by upward recurrence; accurate for ``x >~ order`` (used for zeros).

    Shapes: x (...) -> (...)
    """
    x = np.asarray(x, dtype=np.float64)
    previous = np.sin(x) / x
    if order == 0:
        return previous
    current = np.sin(x) / x**2 - np.cos(x) / x
    for n in range(1, order):
        previous, current = current, (2 * n + 1) / x * current - previous
    return current


def spherical_bessel_zeros(num_orders: int, num_zeros: int, iterations: int = 80) -> np.ndarray:
    """The first ``num_zeros`` positive zeros of ``j_0 .. j_{num_orders-1}``.

    The zeros of ``j_0`` are ``n pi``; the zeros of ``j_l`` interlace those of ``j_{l-1}``
    (exactly one lies between two consecutive ones), so each is found by bisection on that
    bracket. Runs once when a basis is built (a loop over orders, not over data).

    Shapes: -> (num_orders, num_zeros), increasing along each row
    """
    if num_orders < 1 or num_zeros < 1:
        raise ValueError(f"num_orders and num_zeros must be >= 1, got {num_orders} and {num_zeros}")
    count = num_zeros + num_orders - 1
    previous = np.arange(1, count + 1, dtype=np.float64) * math.pi
    rows = [previous[:num_zeros]]
    for order in range(1, num_orders):
        low, high = previous[:-1].copy(), previous[1:].copy()
        sign_low = np.sign(spherical_bessel_numpy(order, low))
        if np.any(sign_low * np.sign(spherical_bessel_numpy(order, high)) >= 0):
            raise RuntimeError(f"spherical Bessel zeros: no sign change bracketing a zero of j_{order}")
        for _ in range(iterations):
            middle = 0.5 * (low + high)
            same = np.sign(spherical_bessel_numpy(order, middle)) == sign_low
            low = np.where(same, middle, low)
            high = np.where(same, high, middle)
        previous = 0.5 * (low + high)
        rows.append(previous[:num_zeros])
    return np.stack(rows)


def _double_factorial_odd(order: int) -> float:
    """``(2 order + 1)!! = 1 * 3 * 5 * ... * (2 order + 1)``."""
    return float(np.prod(np.arange(1, 2 * order + 2, 2, dtype=np.float64)))


def spherical_bessel(order: int, x: torch.Tensor) -> torch.Tensor:
    """``j_order(x)`` for ``x > 0``, accurate in float32 and float64, with finite gradients.

    For ``x < order + 1`` the power series
    ``x^l / (2l+1)!! * sum_k (-x^2/2)^k / (k! (2l+3)(2l+5)...(2l+2k+1))`` (no cancellation
    there); elsewhere the upward recurrence ``j_{n+1} = (2n+1)/x j_n - j_{n-1}`` from
    ``sin``/``cos`` (stable for ``x > order``). Each branch sees a clamped argument, so the
    unused branch never produces inf or NaN gradients.

    Shapes: x (...) -> (...)
    """
    threshold = order + 1.0
    use_series = x < threshold
    # Power series on arguments clamped to the region where it is used.
    xs = x.clamp(max=threshold)
    half_square = -0.5 * xs * xs
    term = torch.ones_like(xs)
    total = torch.ones_like(xs)
    for k in range(1, 20 + 2 * order):
        term = term * half_square / (k * (2 * order + 2 * k + 1))
        total = total + term
    series = total * xs**order / _double_factorial_odd(order)
    if order == 0:
        recurrence = torch.sin(x.clamp(min=threshold)) / x.clamp(min=threshold)
        return torch.where(use_series, series, recurrence)
    # Upward recurrence on arguments clamped to x >= order + 1.
    xr = x.clamp(min=threshold)
    sin, cos = torch.sin(xr), torch.cos(xr)
    previous, current = sin / xr, sin / xr**2 - cos / xr
    for n in range(1, order):
        previous, current = current, (2 * n + 1) / xr * current - previous
    return torch.where(use_series, series, current)


def series_terms(num_orders: int, tolerance: float = 1e-17) -> int:
    """How many terms of the power series of ``j_l`` (l < ``num_orders``) reach ``tolerance``
    relative to the first on the whole range where the series is used (``x < l + 1``): the
    ratio of term ``k`` to term ``k - 1`` is at most ``(l + 1)^2 / 2 / (k (2l + 2k + 1))``."""
    needed = 1
    for order in range(num_orders):
        bound, k = 1.0, 0
        while bound >= tolerance or k < 2:
            k += 1
            bound *= (order + 1) ** 2 / 2 / (k * (2 * order + 2 * k + 1))
        needed = max(needed, k)
    return needed


def spherical_bessel_orders(x: torch.Tensor) -> torch.Tensor:
    """``j_l(x[l])`` for every order ``l = 0 .. L-1`` at once (row ``l`` of ``x`` holds the
    arguments of order ``l``), by the same two branches as :func:`spherical_bessel`, each run
    once over all orders instead of once per order (about 80 tensor operations in all instead
    of about 50 per order), with the series summed by Horner's scheme. Orders come first so
    that every per-order constant broadcasts along whole contiguous rows.

    The power series runs to the length of the highest order (extra terms of a lower order
    are below its rounding); the upward recurrence runs on every row to ``L - 1`` and keeps
    row ``l`` at step ``l`` (rows never read are finite: every argument there is >= 1).

    Shapes: x (L, M) -> (L, M)
    """
    num_orders = x.shape[0]
    orders = torch.arange(num_orders, dtype=x.dtype, device=x.device).unsqueeze(-1)  # (L, 1)
    threshold = orders + 1.0
    use_series = x < threshold
    xs = torch.minimum(x, threshold)
    half_square = -0.5 * xs * xs
    # Horner's scheme from the last term down: the partial sums stay near 1, where the running
    # terms of the forward sum underflow to subnormal floats (tens of times slower on x86).
    # Every term's coefficient 1 / (k (2l + 2k + 1)) at once, (K, L, 1) for k = K .. 1: the same
    # float operations as one k at a time, in 4 tensor operations instead of 4 per term.
    one = torch.ones((), dtype=x.dtype, device=x.device)
    terms = torch.arange(series_terms(num_orders), 0, -1, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    coefficients = 1.0 / (terms * (2 * orders + 2 * terms + 1))
    total = torch.ones_like(xs)
    for coefficient in coefficients.unbind(0):
        total = torch.addcmul(one, total * half_square, coefficient)
    power = torch.ones_like(xs)  # xs ** l, row by row
    for order in range(1, num_orders):
        power[order:] *= xs[order:]
    prefactor = torch.tensor([1.0 / _double_factorial_odd(order) for order in range(num_orders)],
                             dtype=x.dtype, device=x.device).unsqueeze(-1)
    series = total * power * prefactor
    xr = torch.maximum(x, threshold)
    sin, cos = torch.sin(xr), torch.cos(xr)
    previous = sin / xr
    rows = [previous[0]]
    if num_orders > 1:
        current = (sin / xr - cos) / xr
        rows.append(current[1])
        for n in range(1, num_orders - 1):
            previous, current = current, (2 * n + 1) / xr * current - previous
            rows.append(current[n + 1])
    return torch.where(use_series, series, torch.stack(rows))

class SphericalBasis(nn.Module):
    """DimeNet's spherical basis for triplets ``k -> j -> i``: radial part on the length of
    edge ``kj``, angular part on the angle at ``j``, times the triplet envelope.

    Args:
        num_spherical: orders ``l = 0 .. num_spherical-1`` (angular resolution).
        num_radial: zeros ``n = 1 .. num_radial`` per order (radial resolution).
        cutoff: the triplet cutoff (Å); every radial function vanishes there.

    Shapes:
        radial(edge_len (E,)) -> (E, num_spherical, num_radial)
        angular(triplet_cos (T,), triplet_envelope (T,)) -> (T, num_spherical)
        factors(edge_len (E,), triplet_cos (T,), idx_kj (T,), triplet_envelope (T,)) -> TripletBasis
        forward(...same...) -> (T, num_spherical * num_radial), the basis formed
    """

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float) -> None:
        super().__init__()
        self.num_spherical = int(num_spherical)
        self.num_radial = int(num_radial)
        self.cutoff = float(cutoff)
        zeros = spherical_bessel_zeros(num_spherical, num_radial)
        norms = np.stack(
            [math.sqrt(2.0) / np.abs(spherical_bessel_numpy(order + 1, zeros[order])) for order in range(num_spherical)]
        )
        harmonic = np.sqrt((2 * np.arange(num_spherical) + 1) / (4 * math.pi))
        # Constants kept in float64 and cast to the input's dtype and device on use (not
        # buffers, which a float32 -> float64 cast of the module would leave at float32 accuracy).
        self._zeros = torch.tensor(zeros, dtype=torch.float64)
        self._norms = torch.tensor(norms, dtype=torch.float64)
        self._harmonic = torch.tensor(harmonic, dtype=torch.float64)

    def radial(self, edge_len: torch.Tensor) -> torch.Tensor:
        zeros, norms = self._zeros.to(edge_len), self._norms.to(edge_len)
        scaled = (edge_len / self.cutoff).reshape(1, 1, -1)
        arguments = (zeros.unsqueeze(-1) * scaled).flatten(0, 1)  # (L * N, E): orders first
        values = spherical_bessel_orders(arguments.reshape(self.num_spherical, -1))
        return values.reshape(self.num_spherical, self.num_radial, -1).permute(2, 0, 1) * norms

    def angular(self, triplet_cos: torch.Tensor, triplet_envelope: torch.Tensor) -> torch.Tensor:
        """``Y_l0(angle) * envelope`` per triplet: (T, L)."""
        angular = legendre_basis(triplet_cos, self.num_spherical) * self._harmonic.to(triplet_cos)
        return angular * triplet_envelope.unsqueeze(-1)

    def factors(self, edge_len: torch.Tensor, triplet_cos: torch.Tensor, idx_kj: torch.Tensor,
                triplet_envelope: torch.Tensor) -> TripletBasis:
        """The basis as its two factors (never formed as a whole by the compiled kernels)."""
        return TripletBasis(self.angular(triplet_cos, triplet_envelope), self.radial(edge_len), idx_kj)

    def forward(
        self,
        edge_len: torch.Tensor,
        triplet_cos: torch.Tensor,
        idx_kj: torch.Tensor,
        triplet_envelope: torch.Tensor,
    ) -> torch.Tensor:
        return self.factors(edge_len, triplet_cos, idx_kj, triplet_envelope).dense()
