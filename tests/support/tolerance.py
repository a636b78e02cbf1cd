"""The tolerance rule (docs/design.md): a fast path in a low precision is judged by its distance
from the float64 value, against torch's own computation in the same dtype, plus a stated tolerance.

    max|fast − exact| ≤ max|torch − exact| + atol + rtol·max|exact|     (over the tensor)

Normwise, not elementwise: two computations of equal accuracy round differently entry by entry.
A result stored in a half dtype (the gradients of half inputs) is one rounding from its float32
value, so ``rtol`` there is that dtype's epsilon.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dense_paired_terms(
    x: torch.Tensor,
    y: torch.Tensor,
    margin: float,
    kind: str,
    k: int = 1,
    p: float = 1.0,
    mix: float = 0.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The terms of a paired batch as a user would compute them in torch, in the inputs' dtype
    (cosine scores, diagonal, hinge matrices with the diagonal zeroed, the norm of each row and
    column): the measuring stick of what the dtype itself costs."""
    S = F.normalize(x, dim=1) @ F.normalize(y, dim=1).t()
    d = S.diagonal()[:, None]
    eye = torch.eye(S.shape[0], dtype=torch.bool, device=S.device)
    if kind in ("lse", "infonce"):  # the positive's 0 on the diagonal: log Σ exp over the row
        v_i2t = (margin - d + S).masked_fill(eye, 0) / temperature
        v_t2i = (margin - d + S.t()).masked_fill(eye, 0) / temperature
        scale = temperature if kind == "lse" else 1.0
        return torch.cat([torch.logsumexp(v_i2t, 1), torch.logsumexp(v_t2i, 1)]) * scale
    h_i2t = (margin - d + S).clamp(min=0).masked_fill(eye, 0)
    h_t2i = (margin - d + S.t()).clamp(min=0).masked_fill(eye, 0)  # row p: column p of S

    def norm(h):
        if kind == "sum":
            return h.sum(1)
        if kind == "max":
            return h.amax(1)
        if kind == "topk":
            return h.topk(min(k, h.shape[1]), dim=1).values.sum(1)
        if kind == "lp":
            m = h.amax(1, keepdim=True).clamp(min=torch.finfo(h.dtype).tiny)
            return (h / m).pow(p).sum(1).pow(1 / p) * m[:, 0]
        return (1 - mix) * h.sum(1) + mix * h.amax(1)

    return torch.cat([norm(h_i2t), norm(h_t2i)])


def half_rtol(dtype: torch.dtype, fp32: float = 1e-5) -> float:
    """One rounding to ``dtype`` (its epsilon); ``fp32`` for float32 and wider."""
    return torch.finfo(dtype).eps if dtype in (torch.float16, torch.bfloat16) else fp32


def assert_as_close_as_torch(
    got: torch.Tensor,
    exact: torch.Tensor,
    torch_same_dtype: torch.Tensor,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    what: str = "",
) -> None:
    got, exact, base = got.double(), exact.double(), torch_same_dtype.double()
    err, base_err = (got - exact).abs().max().item(), (base - exact).abs().max().item()
    allowed = base_err + atol + rtol * exact.abs().max().item()
    assert err <= allowed, (
        f"{what}: further from float64 than torch in the same dtype: max |fast − exact| {err:.3g} > "
        f"{allowed:.3g} (max |torch − exact| {base_err:.3g} + atol {atol:g} + rtol {rtol:g} · max |exact|)"
    )
