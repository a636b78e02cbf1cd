"""Every loss's terms of a paired batch from the dense score matrix, the backward written out: the
dense backend's paired call (pair j is row j of x with row j of y, every other pair a negative).

With ``x̂ = x / max(‖x‖, ε)`` (cosine; the dot product: ``x̂ = x``), ``S = x̂ ŷᵀ`` and its diagonal
``d``, both directions are rows of one stack ``U = [S, Sᵀ]`` (k, B, B), k = 2 (one direction:
k = 1, U = [S] for i2t, [Sᵀ] for t2i): row j of U[0] holds pair j's image→text scores, row j of
U[1] its text→image scores, and ``U[·, j, j] = d_j`` is the positive in both. With ``t = d − α``:

    hinge norms (sum, max, top-k, ℓp, mix; the VSE++ formula):
        H = [U − t]_+ with the diagonal set to 0,       term_kj = ‖H_kj‖    (norms.violation_norm)
    smooth maxima (CLIP's formula):
        Z = (U − α·I)/τ,   L_kj = logsumexp(Z_kj) − t_j/τ = log(1 + Σ_n exp((α − d_j + s_n)/τ)),
        term = τ·L (lse) or L (infonce).

Backward, with g the terms' gradient and ``G = g · ∂term/∂U`` (k, B, B):

    hinge:    G_kjn = g_kj · ∂‖H_kj‖/∂H_kjn  (norms.violation_norm_grad: 0 where H = 0),
              ∂t_j = −Σ_k Σ_n G_kjn;
    smooth:   G_kjn = g_kj · c · softmax(Z_kj)_n,  c = 1/τ (infonce) or 1 (lse),  ∂t_j = −Σ_k g_kj c;
              ∂τ = Σ_kj g_kj (−(Σ_n P_kjn Z_kjn − t_j/τ)/τ) for infonce, and
              Σ_kj g_kj (L_kj − (Σ_n P_kjn Z_kjn − t_j/τ)) for lse (P = softmax(Z));
    then ∂S = G[0] + G[1]ᵀ + diag(∂t),  ∂x̂ = ∂S ŷ,  ∂ŷ = ∂Sᵀ x̂,
    and the normalisation's backward  ∂x = (∂x̂ − [‖x‖ > ε] (x̂·∂x̂) x̂) / max(‖x‖, ε)  (F.normalize's).

Written out rather than left to autograd because at the batch sizes most people train with
(B = 32–256) a call is bound by the number of operations, not by arithmetic: this is about 35
operations forward and backward where the formula's autograd graph runs about 100. Memory is the
formula's: U and H (or Z), k·B² each. Not twice differentiable.
"""

from __future__ import annotations

import contextlib

import torch

from ..norms import Norm, violation_norm, violation_norm_grad

EPS = 1e-12  # as F.normalize and PML's CosineSimilarity


def _normalized(t: torch.Tensor, cosine: bool, wide: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(t̂, n)``: the rows of t in ``wide``, divided by max(‖t_i‖, ε) with cosine (n the norms)."""
    t = t.to(wide)
    if not cosine:
        return t, None
    n = torch.linalg.vector_norm(t, dim=1, keepdim=True)
    return t / n.clamp_min(EPS), n


def _unnormalize_grad(g: torch.Tensor, t_hat: torch.Tensor, n: torch.Tensor | None) -> torch.Tensor:
    """F.normalize's backward: ``(g − [n > ε] (t̂·g) t̂) / max(n, ε)``; g itself without cosine."""
    if n is None:
        return g
    proj = (t_hat * g).sum(1, keepdim=True).masked_fill_(n <= EPS, 0.0)
    return (g - proj * t_hat).div_(n.clamp_min(EPS))


def _exact(device: torch.device):
    """Autocast off (the terms are computed in float32 or float64 whatever the input dtype, and
    the backward's products must match the saved tensors' dtype)."""
    on = torch.is_autocast_enabled(device.type)
    return torch.autocast(device.type, enabled=False) if on else contextlib.nullcontext()


class DensePairedTerms(torch.autograd.Function):
    """forward(x, y, margin, norm, directions, cosine, tau) → terms (k·B,), i2t first; float32
    (float64 for float64 inputs). ``tau``: the norm's temperature when it is a tensor (so that it
    gets a gradient), else None."""

    @staticmethod
    def forward(ctx, x, y, margin, norm, directions, cosine, tau):
        with _exact(x.device):
            return DensePairedTerms._forward(ctx, x, y, margin, norm, directions, cosine, tau)

    @staticmethod
    def _forward(ctx, x, y, margin, norm, directions, cosine, tau):
        wide = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
        xh, nx = _normalized(x, cosine, wide)
        yh, ny = _normalized(y, cosine, wide)
        S = xh @ yh.t()
        U = torch.stack((S, S.t())) if directions == "both" else (S if directions == "i2t" else S.t())[None]
        t = S.diagonal() - margin  # (B,): each pair's threshold, the same in both directions
        if norm.smooth:
            temp = norm.temperature if tau is None else tau.to(wide)
            Z = U / temp
            if margin:
                Z.diagonal(dim1=1, dim2=2).sub_(margin / temp)
            L = torch.logsumexp(Z, -1) - t / temp
            terms = L * temp if norm.kind == "lse" else L
            ctx.save_for_backward(xh, yh, nx, ny, Z, L, t, tau)
        else:
            H = (U - t[:, None]).clamp_(min=0)
            H.diagonal(dim1=1, dim2=2).zero_()
            terms = violation_norm(H, norm)
            ctx.save_for_backward(xh, yh, nx, ny, H, terms, None, None)
        ctx.norm, ctx.directions, ctx.dtypes = norm, directions, (x.dtype, y.dtype)
        return terms.reshape(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        with _exact(g.device):
            return DensePairedTerms._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g):
        xh, yh, nx, ny, saved, terms, t, tau = ctx.saved_tensors
        norm, directions = ctx.norm, ctx.directions
        k = saved.shape[0]
        g = g.to(saved.dtype).view(k, -1)
        gtau = None
        if norm.smooth:
            Z, L = saved, terms
            temp = norm.temperature if tau is None else tau.to(Z.dtype)
            P = torch.softmax(Z, -1)
            if tau is not None and ctx.needs_input_grad[6]:
                pz = (P * Z).sum(-1) - t / temp  # Σ_n P_n Z_n − t/τ
                dL = -pz / temp if norm.kind == "infonce" else L - pz
                gtau = (g * dL).sum().to(tau.dtype).reshape(tau.shape)
            c = g if norm.kind == "lse" else g / temp  # (k, B)
            G = P.mul_(c[..., None])
            dt = -c.sum(0)
        else:
            H = saved
            G = violation_norm_grad(H, terms, norm).mul_(g[..., None])
            dt = -G.sum((0, 2))
        if directions == "both":
            dS = G[0] + G[1].t()
        else:
            dS = G[0] if directions == "i2t" else G[0].t()
        dS.diagonal().add_(dt)
        gx = gy = None
        if ctx.needs_input_grad[0]:
            gx = _unnormalize_grad(dS @ yh, xh, nx).to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            gy = _unnormalize_grad(dS.t() @ xh, yh, ny).to(ctx.dtypes[1])
        return gx, gy, None, None, None, None, gtau


def dense_paired_terms(
    x: torch.Tensor, y: torch.Tensor, margin: float, norm: Norm, directions: str, cosine: bool
) -> torch.Tensor:
    """The paired batch's terms (k·B,), i2t terms first (k = 2 for both directions, else 1); see
    the module docstring. x, y: (B, D)."""
    tau = norm.temperature if norm.smooth and torch.is_tensor(norm.temperature) else None
    return DensePairedTerms.apply(x, y, float(margin), norm, directions, bool(cosine), tau)
