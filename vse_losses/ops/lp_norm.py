"""The ℓp norm of hinge vectors, (Σ h^p)^{1/p} for h ≥ 0, computed from running statistics.

A norm is carried as ``(m, s)``: the largest entry m and ``s = Σ (h/m)^p`` (p = 1: m unused,
``s = Σ h``). Scaling by the maximum keeps ``h^p`` from overflowing or underflowing for large p,
and two such pairs merge exactly, which is how tiles of a row (or the partials of the Triton
kernels' programs) are combined. Every ℓp norm in the library is computed here or, inside the
Triton kernels, by the same recurrence.
"""

from __future__ import annotations

import torch


def _safe(m: torch.Tensor) -> torch.Tensor:
    return torch.where(m > 0, m, torch.ones_like(m))


def lp_stats(h: torch.Tensor, p: float, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, s)`` of h along ``dim``. m is detached: ‖h‖_p = m ‖h/m‖_p for any constant m > 0."""
    if p == 1.0:
        return h.detach().new_zeros(()), h.sum(dim)
    m = h.detach().amax(dim)
    r = h / _safe(m).unsqueeze(dim)
    r = r.pow(p) if r.requires_grad else r.pow_(p)
    return m, r.sum(dim)


def lp_merge(m: torch.Tensor, s: torch.Tensor, p: float, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial statistics stacked along ``dim`` into one ``(m, s)``."""
    if p == 1.0:
        return m.amax(dim) if m.dim() else m, s.sum(dim)
    top = m.amax(dim)
    return top, (s * (m / _safe(top).unsqueeze(dim)).pow(p)).sum(dim)


def lp_finish(m: torch.Tensor, s: torch.Tensor, p: float) -> torch.Tensor:
    """The norm ``m · s^{1/p}``; 0 where every entry is 0, with a finite gradient there."""
    if p == 1.0:
        return s
    ok = s > 0
    return torch.where(ok, torch.where(ok, s, torch.ones_like(s)).pow(1.0 / p), torch.zeros_like(s)) * m


def lp_norm(h: torch.Tensor, p: float, dim: int = -1) -> torch.Tensor:
    """(Σ h^p)^{1/p} along ``dim`` for h ≥ 0, differentiable, finite for any p ≥ 1."""
    return lp_finish(*lp_stats(h, p, dim), p)


def lp_weights(h: torch.Tensor, T: torch.Tensor, p: float) -> torch.Tensor:
    """∂‖h‖_p/∂h = (h/T)^{p−1} where h > 0, else 0 (T broadcast against h; T = 0 gives 0)."""
    if p == 1.0:
        return (h > 0).to(h.dtype)
    return (h / _safe(T)).pow_(p - 1.0).masked_fill_(h <= 0, 0.0)
