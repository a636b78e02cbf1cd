"""Independent references for the tests: explicit loops of the paper's equations (eq. 5 and 6 and
their continuum), written element by element, and the original VSE++ criterion's dense formula."""

from __future__ import annotations

import math

import torch


def norm_of(h: list, kind: str, k: int = 1, p: float = 1.0, mix: float = 0.0, temperature=1.0) -> torch.Tensor:
    """The term of one violation vector given as a list of 0-d float64 tensors: the raw violations
    α − s(a,p) + s_n (hinged here for the hinge norms; hinged input is left as it is)."""
    if not h:
        return torch.zeros((), dtype=torch.float64)
    if kind in ("lse", "infonce"):  # log(1 + Σ exp(v/τ)), the 1 being the positive
        lse = torch.log(1 + sum(torch.exp(v / temperature) for v in h))
        return lse * temperature if kind == "lse" else lse
    v = torch.clamp(torch.stack(h), min=0)
    if kind == "sum":
        return v.sum()
    if kind == "max":
        return v.max()
    if kind == "topk":
        return torch.sort(v, descending=True).values[:k].sum()
    if kind == "lp":
        if math.isinf(p):
            return v.max()
        return v.pow(p).sum().pow(1.0 / p)
    if kind == "mix":
        return (1 - mix) * v.sum() + mix * v.max()
    raise ValueError(kind)


def loop_terms(S, labels=None, ref_labels=None, self_ref=False, margin=0.2, directions="both", **norm):
    """One term per positive pair and direction, by explicit loops over the score matrix S (B, M).

    i2t term of (a, p): norm over n of [margin − S[a,p] + S[a,n]]_+, n a negative of row a;
    t2i term of (a, p): norm over n of [margin − S[a,p] + S[n,p]]_+, n a negative of column p.
    """
    B, M = S.shape
    if labels is None:
        labels = list(range(B))
        ref_labels = list(range(M))
    labels = [int(v) for v in labels]
    ref_labels = labels if ref_labels is None else [int(v) for v in ref_labels]
    pairs = [(a, p) for a in range(B) for p in range(M) if labels[a] == ref_labels[p] and not (self_ref and a == p)]
    terms = []
    if directions in ("both", "i2t"):
        for a, p in pairs:
            h = [
                margin - S[a, p] + S[a, n] for n in range(M) if labels[a] != ref_labels[n] and not (self_ref and n == a)
            ]
            terms.append(norm_of(h, **norm))
    if directions in ("both", "t2i"):
        for a, p in pairs:
            h = [
                margin - S[a, p] + S[n, p] for n in range(B) if labels[n] != ref_labels[p] and not (self_ref and n == p)
            ]
            terms.append(norm_of(h, **norm))
    return torch.stack(terms) if terms else torch.zeros(0, dtype=torch.float64)


def original_vsepp_loss(im, s, margin=0.2, max_violation=False):
    """The original VSE++ ContrastiveLoss (summed over the batch; rows of im and s are pairs)."""
    scores = im @ s.t()
    diagonal = scores.diag().view(im.size(0), 1)
    d1 = diagonal.expand_as(scores)
    d2 = diagonal.t().expand_as(scores)
    cost_s = (margin + scores - d1).clamp(min=0)
    cost_im = (margin + scores - d2).clamp(min=0)
    mask = torch.eye(scores.size(0), dtype=torch.bool)
    cost_s = cost_s.masked_fill(mask, 0)
    cost_im = cost_im.masked_fill(mask, 0)
    if max_violation:
        cost_s = cost_s.max(1)[0]
        cost_im = cost_im.max(0)[0]
    return cost_s.sum() + cost_im.sum()


def cosine(x, y):
    x = torch.nn.functional.normalize(x, dim=1)
    y = torch.nn.functional.normalize(y, dim=1)
    return x @ y.t()


def paired_max_violation(x, y, margin, use_cosine):
    """Eq. 6 of the paired batch (pair j is (x_j, y_j)): the (i2t, t2i) terms, each (B,), from the
    score matrix with its diagonal masked (``max`` picks the lowest index on ties)."""
    S = cosine(x, y) if use_cosine else x @ y.t()
    d = S.diagonal()
    neg = S.masked_fill(torch.eye(len(x), dtype=torch.bool, device=S.device), float("-inf"))
    return torch.relu(margin - d + neg.max(1).values), torch.relu(margin - d + neg.max(0).values)
