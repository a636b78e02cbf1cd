"""Every loss's terms of a labelled batch from the dense score matrix, the backward written out: the
dense backend's call with labels (PML's call forms), as ``dense_paired`` is for the paired one.

With ``x̂``, ``ŷ`` the (cosine: normalised) rows, ``S = x̂ ŷᵀ`` (B, M), the positive pairs
``(a_k, p_k)`` the entries of the mask of equal labels (row-major; one modality: ``y = x`` and the
pairs ``(i, i)`` left out) and ``t_k = S[a_k, p_k] − α``, pair k's sides are the rows

    i2t:  R_k = S[a_k, :]  (M),   its negatives the columns of another label, its own entry p_k;
    t2i:  C_k = S[:, p_k]  (B),   its negatives the rows of another label, its own entry a_k;

and on each side, as in ``dense_paired``: the hinge norms of ``[side − t_k]_+`` on the negatives
(0 elsewhere), or for the temperature losses ``L_k = −log softmax(Z_k)`` at the own entry, with
``Z_k = (side − α·e_own)/τ`` and −∞ at the other positives.

Backward, per side with ``G = g · ∂term/∂side`` (P, W): the threshold's share ``−Σ_n G_kn``
(hinge) or ``−g_k c`` (smooth) added at the own entry, then ``∂S`` is G's rows added into the
rows ``a`` (i2t) and into the columns ``p`` (t2i), ``∂x̂ = ∂S ŷ``, ``∂ŷ = ∂Sᵀ x̂`` (one
modality: both into x) and F.normalize's backward for every row at once. Memory: S, the masks
and one (P, W) side per direction. Not twice differentiable.
"""

from __future__ import annotations

import torch

from ..norms import Norm, hardest_hinges, violation_norm, violation_norm_grad
from .dense_paired import without_autocast
from .tiling import EPS, cosine_scales, remove_radial_


class DenseLabelledTerms(torch.autograd.Function):
    """forward(x, y, labels, ref_labels, margin, norm, directions, cosine, tau) → (terms, anchors):
    terms (k·P,) float32 (float64 for float64 inputs), i2t first; anchors (k·P,) the pairs' rows.
    ``y`` None: one modality (y = x). ``tau``: the norm's temperature when it is a tensor."""

    @staticmethod
    def forward(ctx, x, y, labels, ref_labels, margin, norm, directions, cosine, tau):
        fwd = DenseLabelledTerms._forward
        return without_autocast(x, fwd, ctx, x, y, labels, ref_labels, margin, norm, directions, cosine, tau)

    @staticmethod
    def _forward(ctx, x, y, labels, ref_labels, margin, norm, directions, cosine, tau):
        self_ref = y is None
        wide = torch.promote_types(x.dtype if self_ref else torch.promote_types(x.dtype, y.dtype), torch.float32)
        # the rows of x and y in one tensor: the normalisation, and its backward, once for both
        X = x.to(wide) if self_ref else torch.cat((x.to(wide), y.to(wide)))
        X = X.clone() if X is x else X
        B = x.shape[0]
        c = None
        if cosine:
            c = cosine_scales(X, wide).unsqueeze(1)
            X.mul_(c)
        xh, yh = (X, X) if self_ref else (X[:B], X[B:])
        S = xh @ yh.t()
        # what is not a negative: the positives, and with one modality the pairs (i, i); the
        # t2i layout built from the labels, not transposed (gathers along a transposed view and
        # elementwise work on one are an order of magnitude slower on the CPU)
        same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
        same_t = ref_labels.unsqueeze(1) == labels.unsqueeze(0)
        if self_ref:
            a, p = (same & ~torch.eye(B, dtype=torch.bool, device=S.device)).nonzero(as_tuple=True)
            same.fill_diagonal_(True)
            same_t.fill_diagonal_(True)
        else:
            a, p = same.nonzero(as_tuple=True)
        t = S[a, p].sub_(margin)  # (P,): each pair's threshold
        sides = []  # (side, its own-entry index, its non-negatives' mask) per direction
        if directions in ("both", "i2t"):
            sides.append((S.index_select(0, a), p, same.index_select(0, a)))
        if directions in ("both", "t2i"):
            St = S if self_ref else S.t().contiguous()
            sides.append((St.index_select(0, p), a, same_t.index_select(0, p)))
        rows = torch.arange(a.shape[0], device=a.device)
        temp = None
        if norm.smooth:
            temp = norm.temperature if tau is None else tau.to(wide)
        saved, terms = [], []
        for Q, own, other in sides:
            if norm.smooth:
                Q = Q.masked_fill_(other, float("-inf"))
                Q[rows, own] = t  # the own entry: the positive's threshold, the "1 +" of the loss
                Q = torch.log_softmax(Q.div_(temp), -1)
                V = Q[rows, own].neg()
                terms.append(V * temp if norm.kind == "lse" else V)
                saved += [Q, V]
            else:
                Q = Q.sub_(t.unsqueeze(1)).clamp_(min=0).masked_fill_(other, 0.0)
                hardest = hardest_hinges(Q, norm)  # kept: the backward scatters to its indices
                V = violation_norm(Q, norm, hardest)
                terms.append(V)
                saved += [Q, V, *(hardest or (None, None))]
        ctx.save_for_backward(X, c, tau, a, p, *saved)
        ctx.norm, ctx.directions, ctx.self_ref, ctx.B = norm, directions, self_ref, B
        ctx.dtypes = (x.dtype, None if self_ref else y.dtype)
        anchors = torch.cat([a] * len(sides)) if len(sides) > 1 else a
        ctx.mark_non_differentiable(anchors)
        return (torch.cat(terms) if len(terms) > 1 else terms[0]), anchors

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g, _anchors_grad):
        return without_autocast(g, DenseLabelledTerms._backward, ctx, g)

    @staticmethod
    def _backward(ctx, g):
        X, c, tau, a, p, *saved = ctx.saved_tensors
        norm, B, self_ref = ctx.norm, ctx.B, ctx.self_ref
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_tau = tau is not None and ctx.needs_input_grad[8]
        P = a.shape[0]
        owns = [o for o, d in ((p, "i2t"), (a, "t2i")) if ctx.directions in ("both", d)]
        g = g.to(X.dtype).reshape(len(owns), P)
        rows = torch.arange(P, device=a.device)
        xh, yh = (X, X) if self_ref else (X[:B], X[B:])
        dS = torch.zeros(xh.shape[0], yh.shape[0], dtype=X.dtype, device=X.device)
        dSt = None  # the t2i share, in its own layout (M, B): added to dS by one transposing copy
        per = 2 if norm.smooth else 4
        gtau = None
        for i, own in enumerate(owns):
            gi, (Q, V, *hardest) = g[i], saved[i * per : (i + 1) * per]
            if norm.smooth:
                temp = norm.temperature if tau is None else tau.to(Q.dtype)
                Pm = Q.exp()
                if need_tau:  # Σ_n P_n Z_n − Z_own, from the log-softmax as in dense_paired
                    pz = (Pm * Q.masked_fill(Pm == 0, 0.0)).sum(-1) - Q[rows, own]
                    dL = -pz / temp if norm.kind == "infonce" else V - pz
                    gt = (gi * dL).sum()
                    gtau = gt if gtau is None else gtau + gt
                cg = gi if norm.kind == "lse" else gi / temp
                G = Pm.mul_(cg.unsqueeze(1))
                dt = cg
            else:
                G = violation_norm_grad(Q, V, norm, None if hardest[0] is None else tuple(hardest))
                G = G.mul_(gi.unsqueeze(1))
                dt = G.sum(-1)
            G[rows, own] -= dt  # the threshold's share: its own entry is S[a, p]
            if own is p:  # i2t: the rows a of S
                dS.index_add_(0, a, G)
            else:  # t2i: the columns p of S
                dSt = torch.zeros(yh.shape[0], xh.shape[0], dtype=X.dtype, device=X.device).index_add_(0, p, G)
        if dSt is not None:
            dS.add_(dSt.t().contiguous())
        if gtau is not None:
            gtau = gtau.to(tau.dtype).reshape(tau.shape)
        if not (need_x or need_y):
            return None, None, None, None, None, None, None, None, gtau
        if self_ref:
            dX = (dS + dS.t()) @ xh
        else:
            dX = torch.empty_like(X)
            torch.mm(dS, yh, out=dX[:B])
            torch.mm(dS.t(), xh, out=dX[B:])
        if c is not None:  # F.normalize's backward: ∂x = c (∂x̂ − [‖x‖ > ε] (x̂·∂x̂) x̂)
            dX.mul_(c)
            remove_radial_(dX, X, c.squeeze(1).lt(1.0 / EPS))
        if self_ref:
            return dX.to(ctx.dtypes[0]), None, None, None, None, None, None, None, gtau
        gx = dX[:B].to(ctx.dtypes[0]) if need_x else None
        gy = dX[B:].to(ctx.dtypes[1]) if need_y else None
        return gx, gy, None, None, None, None, None, None, gtau


def dense_labelled_terms(
    x: torch.Tensor,
    y: torch.Tensor | None,
    labels: torch.Tensor,
    ref_labels: torch.Tensor,
    margin: float,
    norm: Norm,
    directions: str,
    cosine: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(terms, anchors)`` of a labelled batch (see the module docstring). x: (B, D); y: (M, D), or
    None for one modality; labels (B,), ref_labels (M,) on x's device."""
    tau = norm.temperature if norm.smooth and torch.is_tensor(norm.temperature) else None
    return DenseLabelledTerms.apply(x, y, labels, ref_labels, float(margin), norm, directions, bool(cosine), tau)
