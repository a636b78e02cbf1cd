"""Every loss's terms of a paired batch from the dense score matrix, the backward written out: the
dense backend's paired call (pair j is row j of x with row j of y, every other pair a negative).

With ``x̂ = x / max(‖x‖, ε)`` (cosine; the dot product: ``x̂ = x``), ``S = x̂ ŷᵀ`` (B, B) and its
diagonal ``d``, pair j's image→text scores are row j of S and its text→image scores column j
(``side(S)``: S itself, or Sᵀ copied into rows); ``d_j`` is the positive in both. With
``t = d − α``:

    hinge norms (sum, max, top-k, ℓp, mix; the VSE++ formula):
        H = [side(S) − t]_+ with the diagonal set to 0,   term_j = ‖H_j‖   (norms.violation_norm)
    smooth maxima (CLIP's formula), per direction:
        Z = (side(S) − α·I)/τ,   L_j = logsumexp(Z_j) − Z_jj = log(1 + Σ_n exp((α − d_j + s_n)/τ)),
        term = τ·L (lse) or L (infonce).

Backward, per direction, with g its terms' gradient and ``G = g · ∂term/∂side(S)`` (B, B):

    hinge:    G_jn = g_j · ∂‖H_j‖/∂H_jn  (norms.violation_norm_grad: 0 where H = 0),
              ∂t_j −= Σ_n G_jn;
    smooth:   G_jn = g_j · c · softmax(side(Z)_j)_n,  c = 1/τ (infonce) or 1 (lse),  ∂t_j −= g_j c;
              ∂τ += Σ_j g_j (−(Σ_n P_jn Z_jn − t_j/τ)/τ) for infonce, and
              Σ_j g_j (L_j − (Σ_n P_jn Z_jn − t_j/τ)) for lse (P the softmax);
    then ∂S = Σ side(G) + diag(∂t),  ∂x̂ = ∂S ŷ,  ∂ŷ = ∂Sᵀ x̂,
    and the normalisation's backward  ∂x = (∂x̂ − [‖x‖ > ε] (x̂·∂x̂) x̂) / max(‖x‖, ε)  (F.normalize's).

Written out rather than left to autograd because at the batch sizes most people train with
(B = 32–256) a call is bound by the number of operations, not by arithmetic: this is 68–116
operations forward and backward where the formulas' autograd graphs run 72–110, and fewer passes
over B×B memory at B = 1024. Memory: S and one H (or Z) per direction, B² each. Not twice
differentiable.
"""

from __future__ import annotations

import contextlib

import torch

from ..norms import Norm, violation_norm, violation_norm_grad
from .tiling import cosine_scales, radial_coefficients, remove_radial_


def _normalized(t: torch.Tensor, cosine: bool, wide: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(t̂, c)``: the rows of t in ``wide``, times ``c = 1/max(‖t_i‖, ε)`` with cosine (else c None)."""
    if not cosine:
        return t.to(wide), None
    c = cosine_scales(t, wide)
    return t.to(wide) * c[:, None], c


def _input_grad(g: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """The gradient of t from ``g``, that of t̂ (F.normalize's backward, as the chunked ops write it:
    :func:`~vse_losses.ops.tiling.remove_radial_` of ``c·g``); g itself without cosine."""
    if c is None:
        return g
    g = g.mul_(c[:, None])
    remove_radial_(g, t, radial_coefficients(c))
    return g


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
        xh, cx = _normalized(x, cosine, wide)
        yh, cy = _normalized(y, cosine, wide)
        S = xh @ yh.t()
        sides = [v for v, d in ((_rows, "i2t"), (_cols, "t2i")) if directions in ("both", d)]
        if norm.smooth:
            temp = norm.temperature if tau is None else tau.to(wide)
            Z = [side(S) / temp for side in sides]
            L = []
            for z in Z:
                if margin:
                    z.diagonal().sub_(margin / temp)
                L.append(torch.logsumexp(z, -1) - z.diagonal())  # Z_jj = t_j/τ, as rounded in Z
            terms = [v * temp for v in L] if norm.kind == "lse" else L
            ctx.save_for_backward(x, y, xh, yh, cx, cy, tau, *Z, *L)
        else:
            t = S.diagonal() - margin  # (B,): each pair's threshold, the same in both directions
            H = [side(S) - t[:, None] for side in sides]
            for h in H:
                h.clamp_(min=0).diagonal().zero_()
            terms = [violation_norm(h, norm) for h in H]
            ctx.save_for_backward(x, y, xh, yh, cx, cy, None, *H, *terms)
        ctx.norm, ctx.sides = norm, sides
        return torch.cat(terms) if len(terms) > 1 else terms[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        with _exact(g.device):
            return DensePairedTerms._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g):
        x, y, xh, yh, cx, cy, tau, *rest = ctx.saved_tensors
        norm, sides = ctx.norm, ctx.sides
        k = len(sides)
        g = g.to(xh.dtype).view(k, -1)
        dS, dt, gtau = None, 0.0, None
        for i, side in enumerate(sides):
            gi, m, v = g[i], rest[i], rest[k + i]  # m: Z or H of this side; v: its L or terms
            if norm.smooth:
                temp = norm.temperature if tau is None else tau.to(m.dtype)
                P = torch.softmax(m, -1)
                if tau is not None and ctx.needs_input_grad[6]:
                    pz = (P * m).sum(-1) - m.diagonal()  # Σ_n P_n Z_n − t/τ
                    dL = -pz / temp if norm.kind == "infonce" else v - pz
                    gtau = (gi * dL).sum() + (0.0 if gtau is None else gtau)
                c = gi if norm.kind == "lse" else gi / temp
                G = P.mul_(c[:, None])
                dt = dt - c
            else:
                G = violation_norm_grad(m, v, norm).mul_(gi[:, None])
                dt = dt - G.sum(-1)
            G = side(G)  # back to S's layout
            dS = G if dS is None else dS.add_(G)
        dS.diagonal().add_(dt)
        gx = gy = None
        if ctx.needs_input_grad[0]:
            gx = _input_grad(dS @ yh, x, cx).to(x.dtype)
        if ctx.needs_input_grad[1]:
            gy = _input_grad(dS.t() @ xh, y, cy).to(y.dtype)
        if gtau is not None:
            gtau = gtau.to(tau.dtype).reshape(tau.shape)
        return gx, gy, None, None, None, None, gtau


def _rows(M: torch.Tensor) -> torch.Tensor:
    """i2t: pair j's scores are row j of S."""
    return M


def _cols(M: torch.Tensor) -> torch.Tensor:
    """t2i: pair j's scores are column j of S, copied into rows: torch's CPU reductions with
    indices (max, topk) and elementwise operations are an order of magnitude slower along a
    transposed view than a blocked transposing copy (measured at B = 1024)."""
    return M.t().contiguous()


def dense_paired_terms(
    x: torch.Tensor, y: torch.Tensor, margin: float, norm: Norm, directions: str, cosine: bool
) -> torch.Tensor:
    """The paired batch's terms (k·B,), i2t terms first (k = 2 for both directions, else 1); see
    the module docstring. x, y: (B, D)."""
    tau = norm.temperature if norm.smooth and torch.is_tensor(norm.temperature) else None
    return DensePairedTerms.apply(x, y, float(margin), norm, directions, bool(cosine), tau)
