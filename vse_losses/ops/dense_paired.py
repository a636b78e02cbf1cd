"""Every loss's terms of a paired batch from the dense score matrix, the backward written out: the
dense backend's paired call (pair j is row j of x with row j of y, every other pair a negative).

With ``x̂ = x / max(‖x‖, ε)`` (cosine; the dot product: ``x̂ = x``), ``S = x̂ ŷᵀ`` (B, B) and its
diagonal ``d``, pair j's image→text scores are row j of S and its text→image scores column j;
the sides ``Q`` (k, B, B) hold them as rows (S, and Sᵀ copied; k = 2 for both directions), so
that every later step is one operation for both directions. ``d_j`` is the positive in both.
With ``t = d − α``:

    hinge norms (sum, max, top-k, ℓp, mix; the VSE++ formula):
        H = [Q − t]_+ with the diagonals set to 0,   term_j = ‖H_j‖   (norms.violation_norm)
    smooth maxima (CLIP's formula):
        Z = (Q − α·I)/τ,   L_j = logsumexp(Z_j) − Z_jj = −log softmax(Z_j)_j
                                = log(1 + Σ_n exp((α − d_j + s_n)/τ)),
        term = τ·L (lse) or L (infonce).

Backward, with g the terms' gradient and ``G = g · ∂term/∂Q`` (k, B, B):

    hinge:    G_jn = g_j · ∂‖H_j‖/∂H_jn  (norms.violation_norm_grad: 0 where H = 0; max and top-k
              scatter to the indices the forward kept), ∂t_j −= Σ_n G_jn;
    smooth:   G_jn = g_j · c · P_jn,  P = softmax(Z) = exp of the saved log-softmax,
              c = 1/τ (infonce) or 1 (lse),  ∂t_j −= g_j c;
              ∂τ += Σ_j g_j (−(Σ_n P_jn Z_jn − Z_jj)/τ) for infonce, and
              Σ_j g_j (L_j − (Σ_n P_jn Z_jn − Z_jj)) for lse;
    then ∂S = G_i2t + G_t2iᵀ + diag(∂t),  ∂x̂ = ∂S ŷ,  ∂ŷ = ∂Sᵀ x̂,
    and the normalisation's backward  ∂x = (∂x̂ − [‖x‖ > ε] (x̂·∂x̂) x̂) / max(‖x‖, ε)  (F.normalize's),
    for x and y at once (they are stacked into one (2, B, D) tensor in the forward).

Written out rather than left to autograd because at the batch sizes most people train with
(B = 32–256) a call is bound by the number of operations and by Python, not by arithmetic: this
is 55–80 operations forward and backward where the formulas' autograd graphs run 72–116
(``benchmarks/small_batch.py``), and fewer passes over B×B memory at B = 1024. Memory: the
sides (k·B²) kept for the backward, S and the backward's (k + 1)·B² in passing. Not twice
differentiable.
"""

from __future__ import annotations

import torch

from ..norms import Norm, hardest_hinges, violation_norm, violation_norm_grad
from .tiling import EPS, cosine_scales, remove_radial_


def without_autocast(t: torch.Tensor, fn, *args):
    """``fn(*args)`` with autocast off on t's device where it is on: the Functions' terms are
    computed in float32 or float64 whatever the input dtype, and their backward's products must
    match the saved tensors' dtype. A check, not a context manager on every call, and no device
    object for the CPU and CUDA: at small batches every microsecond of Python counts."""
    kind = "cuda" if t.is_cuda else "cpu" if t.is_cpu else t.device.type
    if not torch.is_autocast_enabled(kind):
        return fn(*args)
    with torch.autocast(kind, enabled=False):
        return fn(*args)


def _scores_and_sides(xh: torch.Tensor, yh: torch.Tensor, directions: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, Q)``: the scores ``S = x̂ ŷᵀ`` (B, B) and the sides (k, B, B), pair j's negatives in row
    j of each — S itself (i2t) and Sᵀ (t2i) in one tensor, so that each later step is one
    operation for both directions. S is Q's first side where there is one (the product is
    written there: no copy of it), so that work in place on Q changes S. The transposed side is a
    plain copy: torch's CPU reductions with indices (max, topk) and elementwise operations are an
    order of magnitude slower along a transposed view (measured at B = 1024)."""
    if directions == "t2i":
        S = xh @ yh.t()
        return S, S.t().contiguous().unsqueeze(0)
    if directions == "i2t":
        S = xh @ yh.t()
        return S, S.unsqueeze(0)
    Q = xh.new_empty((2, xh.shape[0], yh.shape[0]))
    rows, cols = Q.unbind(0)
    # detached: torch 2.4's torch.compile traces a Function's forward with grad mode on, where
    # out= refuses operands that require grad (eager runs forward without grad: a no-op there)
    torch.mm(xh.detach(), yh.detach().t(), out=rows)
    cols.copy_(rows.t())
    return rows, Q


def _to_scores(G: torch.Tensor, directions: str) -> torch.Tensor:
    """The gradient of S from that of its sides (k, B, B): the inverse of :func:`_scores_and_sides`."""
    if directions == "both":
        rows, cols = G.unbind(0)
        return rows.add_(cols.t().contiguous())  # not along a transposed view: see _scores_and_sides
    return G.squeeze(0) if directions == "i2t" else G.squeeze(0).t()


class DensePairedTerms(torch.autograd.Function):
    """forward(x, y, margin, norm, directions, cosine, tau) → terms (k·B,), i2t first; float32
    (float64 for float64 inputs). ``tau``: the norm's temperature when it is a tensor (so that it
    gets a gradient), else None."""

    @staticmethod
    def forward(ctx, x, y, margin, norm, directions, cosine, tau):
        return without_autocast(x, DensePairedTerms._forward, ctx, x, y, margin, norm, directions, cosine, tau)

    @staticmethod
    def _forward(ctx, x, y, margin, norm, directions, cosine, tau):
        # x and y in one (2, B, D) tensor: the normalisation, and its backward, once for both
        wide = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
        X = torch.stack((x, y)) if x.dtype == y.dtype else torch.stack((x.to(wide), y.to(wide)))
        X = X.to(wide)
        B, D = x.shape
        c = None
        if cosine:
            c = cosine_scales(X.view(2 * B, D), wide).view(2, B, 1)
            X.mul_(c)
        S, Q = _scores_and_sides(*X.unbind(0), directions)  # S a view of Q: not used after t
        hardest = None
        if norm.smooth:
            temp = norm.temperature if tau is None else tau.to(wide)
            Q = Q.div_(temp)
            if margin:
                Q.diagonal(dim1=1, dim2=2).sub_(margin / temp)
            # L_j = logsumexp(Z_j) − Z_jj = −log softmax(Z_j)_j: one fused kernel, whose output
            # is all the backward needs (softmax = its exp)
            Q = torch.log_softmax(Q, -1)
            V = Q.diagonal(dim1=1, dim2=2).neg()
            terms = V * temp if norm.kind == "lse" else V
        else:
            t = S.diagonal().sub(margin)  # (B,): each pair's threshold, the same in both directions
            Q.sub_(t.unsqueeze(1)).clamp_(min=0).diagonal(dim1=1, dim2=2).zero_()
            hardest = hardest_hinges(Q, norm)  # kept: the backward scatters to its indices
            V = terms = violation_norm(Q, norm, hardest)
        ctx.save_for_backward(X, c, tau, Q, V, *(hardest or ()))
        ctx.norm, ctx.directions, ctx.dtypes = norm, directions, (x.dtype, y.dtype)
        return terms.view(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        return without_autocast(g, DensePairedTerms._backward, ctx, g)

    @staticmethod
    def _backward(ctx, g):
        # Q: the sides' log-softmax or H (k, B, B); V: their L or terms; the hardest hinges' values and indices
        X, c, tau, Q, V, *hardest = ctx.saved_tensors
        norm = ctx.norm
        need_x, need_y, *_, need_tau = ctx.needs_input_grad
        g = g.to(X.dtype).reshape(Q.shape[:2])
        gtau = None
        if norm.smooth:
            temp = norm.temperature if tau is None else tau.to(Q.dtype)
            P = Q.exp()
            if tau is not None and need_tau:
                # Σ_n P_n Z_n − Z_jj (Z_jj = t_j/τ), the same with log P = Z − logsumexp(Z) for Z
                pz = (P * Q).sum(-1) - Q.diagonal(dim1=1, dim2=2)
                dL = -pz / temp if norm.kind == "infonce" else V - pz
                gtau = (g * dL).sum().to(tau.dtype).reshape(tau.shape)
            cg = g if norm.kind == "lse" else g / temp
            G = P.mul_(cg.unsqueeze(-1))
            dt = cg
        else:
            G = violation_norm_grad(Q, V, norm, tuple(hardest) or None).mul_(g.unsqueeze(-1))
            dt = G.sum(-1)
        G.diagonal(dim1=1, dim2=2).sub_(dt)  # the positives' share, through t = d − α
        dS = _to_scores(G, ctx.directions)
        if not (need_x or need_y):
            return None, None, None, None, None, None, gtau
        # ∂x̂ = ∂S ŷ, ∂ŷ = ∂Sᵀ x̂ (the saved rows x̂ = X), into one (n, B, D) tensor for the
        # normalisation's backward
        xh, yh = X.unbind(0)
        if need_x and need_y:
            dX = torch.empty_like(X)
            dx, dy = dX.unbind(0)
            torch.mm(dS, yh, out=dx)
            torch.mm(dS.t(), xh, out=dy)
            Xn, cn = X, c
        else:
            i = 0 if need_x else 1
            dX = dS.mm(yh).unsqueeze(0) if need_x else dS.t().mm(xh).unsqueeze(0)
            Xn, cn = X[i : i + 1], None if c is None else c[i : i + 1]
        if cn is not None:
            # F.normalize's backward: ∂x = c (∂x̂ − [‖x‖ > ε] (x̂·∂x̂) x̂)
            n, B, D = dX.shape
            dX.mul_(cn)
            remove_radial_(dX.view(n * B, D), Xn.view(n * B, D), cn.view(n * B).lt(1.0 / EPS))
        if need_x and need_y:
            return dx.to(ctx.dtypes[0]), dy.to(ctx.dtypes[1]), None, None, None, None, gtau
        grad = dX.squeeze(0).to(ctx.dtypes[0 if need_x else 1])
        gx, gy = (grad, None) if need_x else (None, grad)
        return gx, gy, None, None, None, None, gtau


def dense_paired_terms(
    x: torch.Tensor, y: torch.Tensor, margin: float, norm: Norm, directions: str, cosine: bool
) -> torch.Tensor:
    """The paired batch's terms (k·B,), i2t terms first (k = 2 for both directions, else 1); see
    the module docstring. x, y: (B, D)."""
    tau = norm.temperature if norm.smooth and torch.is_tensor(norm.temperature) else None
    return DensePairedTerms.apply(x, y, float(margin), norm, directions, bool(cosine), tau)
