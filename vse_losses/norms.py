"""Which norm of the violation vector makes a loss term, and that norm computed densely.

For a positive pair the violation vector h holds ``[α − s(a,p) + s_n]_+`` over the negatives n;
the losses differ only in its norm (``docs/design.md``):

    sum   ‖h‖₁                          SumHingeLoss, the paper's eq. 5 (SH)
    max   ‖h‖∞                          MaxViolationLoss, eq. 6 (MH)
    topk  sum of the k largest h        TopKViolationLoss: k=1 is MH, k ≥ #negatives is SH
    lp    (Σ h^p)^{1/p}                 LpViolationLoss: p=1 is SH, p=∞ is MH
    mix   (1−λ)‖h‖₁ + λ‖h‖∞            MixedViolationLoss, the SH→MH warm-up

Padding ``h`` with zeros changes none of these norms, which is why masked-out entries are simply 0.

The temperature axis smooths the maximum of the raw violations ``v_n = α − s(a,p) + s_n``
(unhinged: the positive itself stands for the 0 of the hinge):

    lse      τ·log(1 + Σ exp(v_n/τ))    LogSumExpViolationLoss: τ → 0 is MH
    infonce  log(1 + Σ exp(v_n/τ)), α = 0   InfoNCELoss: CLIP's loss, −log of the positive's softmax

Masked-out entries of ``v`` are −∞ there (exp(−∞) = 0).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import _checks
from .ops.lp_norm import lp_norm, lp_weights
from .ops.topk import topk_lowest

__all__ = ["Norm", "norm_of", "hardest_hinges", "violation_norm", "violation_norm_grad", "smooth_max", "lp_norm"]


@dataclass(frozen=True)
class Norm:
    """Which norm of the violation vector makes a loss term (see the module docstring).

    The constructor canonicalises the ends of each continuum, so that they are computed by
    exactly the same code as SH and MH: ``topk`` with k=1, ``lp`` with p=∞ and ``mix`` with
    λ=1 become ``max``; ``lp`` with p=1 and ``mix`` with λ=0 become ``sum``.
    """

    kind: str
    k: int = 1
    p: float = 1.0
    mix: float = 0.0
    temperature: float | torch.Tensor = 1.0

    def __post_init__(self) -> None:
        kind = _checks.check_choice("norm", self.kind, ("sum", "max", "topk", "lp", "mix", "lse", "infonce"))
        if kind in ("lse", "infonce"):
            _checks.check_temperature(self.temperature)
        if kind == "topk" and _checks.check_k(self.k) == 1:
            kind = "max"
        if kind == "lp":
            p = _checks.check_p(self.p)
            kind = "sum" if p == 1.0 else "max" if p == float("inf") else "lp"
        if kind == "mix":
            mix = _checks.check_mix(self.mix)
            kind = "sum" if mix == 0.0 else "max" if mix == 1.0 else "mix"
        object.__setattr__(self, "kind", kind)

    @property
    def smooth(self) -> bool:
        """A temperature-smoothed maximum of the raw violations (``lse``, ``infonce``)."""
        return self.kind in ("lse", "infonce")

    @property
    def selection_k(self) -> int:
        """How many hardest negatives per row/column the norm needs (0: it needs all of them)."""
        return {"max": 1, "topk": self.k, "mix": 1}.get(self.kind, 0)

    @property
    def hinge_p(self) -> float:
        """The p of the ℓp part of the norm (0: it has none)."""
        return {"sum": 1.0, "lp": self.p, "mix": 1.0}.get(self.kind, 0.0)

    @property
    def selection_weight(self) -> float:
        """Weight of the hardest-negatives part of the term (λ of the mix, else 1)."""
        return self.mix if self.kind == "mix" else 1.0

    @property
    def hinge_weight(self) -> float:
        """Weight of the ℓp part of the term (1 − λ of the mix, else 1)."""
        return 1.0 - self.mix if self.kind == "mix" else 1.0


@functools.lru_cache(maxsize=256, typed=True)
def _norm_of(kind, k, p, mix, temperature) -> Norm:
    return Norm(kind, k, p, mix, temperature)


def norm_of(kind: str, k=1, p=1.0, mix=0.0, temperature=1.0) -> Norm:
    """``Norm(kind, k, p, mix, temperature)``, one object per distinct arguments: the loss classes
    ask for theirs on every call, and at small batches a call is bound by such fixed costs (the
    validation runs once). A tensor temperature (learned) builds a new one each time."""
    # torch.compile traces the construction instead (and warns about a cached call)
    if torch.is_tensor(temperature) or torch.compiler.is_compiling():
        return Norm(kind, k, p, mix, temperature)
    try:
        return _norm_of(kind, k, p, mix, temperature)
    except TypeError:  # an unhashable argument: Norm says what is wrong with it
        return Norm(kind, k, p, mix, temperature)


def hardest_hinges(h: torch.Tensor, norm: Norm) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(values, indices)`` of the ``norm.selection_k`` largest entries of each row of ``h``
    (..., n) — the hardest negatives of MH, top-k and the max part of a mix — or None for the norms
    without a selection (sum, ℓp) and for rows without entries. Ties go to the lowest index
    (:func:`~vse_losses.ops.topk.topk_lowest`), as every implementation of the library takes them."""
    k = min(norm.selection_k, h.shape[-1])
    if k == 0:
        return None
    return topk_lowest(h, k)


def violation_norm(h: torch.Tensor, norm: Norm, hardest: tuple | None = None) -> torch.Tensor:
    """Norm of each row of ``h`` (..., n), ``h >= 0`` with non-negatives set to 0 → (...).
    ``hardest``: :func:`hardest_hinges` of h, where the caller has them."""
    if norm.kind not in ("sum", "lp", "mix", "max", "topk"):
        raise ValueError(f"{norm.kind} is a smooth maximum of raw violations: use smooth_max")
    if h.shape[-1] == 0 or norm.kind == "sum":
        return h.sum(-1)
    if norm.kind == "lp":
        return lp_norm(h, norm.p)
    vals = (hardest_hinges(h, norm) if hardest is None else hardest)[0]
    if norm.kind == "topk":
        return vals.sum(-1)
    if norm.kind == "max":
        return vals[..., 0]
    return (1.0 - norm.mix) * h.sum(-1) + norm.mix * vals[..., 0]


def violation_norm_grad(h: torch.Tensor, terms: torch.Tensor, norm: Norm, hardest: tuple | None = None) -> torch.Tensor:
    """∂ violation_norm(h)/∂h (..., n) for the hinge norms, given ``terms = violation_norm(h, norm)``
    (and ``hardest``, :func:`hardest_hinges` of h, where the caller kept them): 1 where h > 0
    (sum); 1 at the first maximal entry (max); 1 at each of ``topk``'s k entries (top-k);
    (h/T)^{p−1} (ℓp); their mix. Entries with h = 0 get 0, so the masked ones stay out."""
    if norm.kind not in ("sum", "lp", "mix", "max", "topk"):
        raise ValueError(f"{norm.kind} is a smooth maximum of raw violations: no hinge-norm gradient")
    if h.shape[-1] == 0:
        return torch.zeros_like(h)
    if norm.kind in ("sum", "lp"):
        return lp_weights(h, terms[..., None], norm.p if norm.kind == "lp" else 1.0)
    vals, idx = hardest_hinges(h, norm) if hardest is None else hardest
    w = torch.zeros_like(h).scatter_(-1, idx, (vals > 0).to(h.dtype))
    if norm.kind == "mix":
        return w.mul_(norm.mix).add_(lp_weights(h, terms[..., None], 1.0), alpha=1.0 - norm.mix)
    return w


def smooth_max(v: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The ``lse``/``infonce`` term of each row of the raw violations ``v`` (..., n), −∞ where an
    entry is not a negative → (...): ``log(1 + Σ exp(v/τ))``, times τ for ``lse``."""
    tau = norm.temperature
    if torch.is_tensor(tau):  # −∞ entries stay out of the division: their τ-gradient would be NaN
        ok = v > float("-inf")
        z = torch.where(ok, torch.where(ok, v, torch.zeros_like(v)) / tau, v)
    else:
        z = v / tau
    lse = torch.logsumexp(torch.cat([torch.zeros_like(z[..., :1]), z], -1), -1)  # the 1 + …: exp(0)
    return lse * tau if norm.kind == "lse" else lse
